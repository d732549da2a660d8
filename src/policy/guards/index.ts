/**
 * Guards on tool arguments (`servers.<name>.tools.<tool>.guards`): checks
 * that see through the payload, compiled at config load and run at the
 * inbound decision point on every `tools/call` of their tool, after the
 * tenant's grant and the manifest's schema and before the tenant's rules
 * (DESIGN.md: method → tool → arguments → guards).
 *
 * Each guard names one argument (a property name, or a JSON pointer into
 * the arguments) and a kind: `sql`, `shell`, `path`, `url`, `size`,
 * `pattern` (one file each here). This module owns what they share:
 * - an absent argument is not checked (the schema says what is required);
 * - for every kind but `size`, an array is checked element by element, and
 *   the path names the element (`/paths/2`);
 * - guards run in the order configured; the first enforcing refusal
 *   answers, and a guard in `shadow` mode only reports what it would have
 *   refused;
 * - the rule id is the guard's `id`, else `servers.<s>.tools.<t>.guards.<i>`.
 *
 * Checks that ask the host (DNS for `url`, the file system for `path` with
 * symlinks resolved) are asynchronous. A tool whose guards are all
 * synchronous is checked without a promise.
 */
import type { GuardConfig, ServerConfig } from '../../config/schema.js';
import { compilePathGuard } from './path.js';
import { compilePatternGuard } from './pattern.js';
import { compileShellGuard } from './shell.js';
import { compileSizeGuard } from './size.js';
import { compileSqlGuard, loadSqlParser } from './sql.js';
import { GuardOptionError, type AsyncGuardCheck, type GuardCheck } from './types.js';
import { compileUrlGuard } from './url.js';

export { GuardOptionError } from './types.js';

// The PostgreSQL parser is WebAssembly, instantiated once (about 50 ms) when
// the policy is first imported, so that config checks and compiles stay synchronous.
await loadSqlParser();

/** What one guard found: the refusal (or, in shadow mode, what it would have been). */
export interface GuardHit {
  readonly rule: string;
  readonly guard: GuardConfig['kind'];
  /** The JSON pointer of the argument (or element) refused, e.g. `/sql`, `/paths/2`. */
  readonly path: string;
  readonly reason: string;
}

export interface GuardOutcome {
  /** The first refusal of an enforcing guard: the call does not go on. */
  readonly denied?: GuardHit;
  /** What shadow guards would have refused, before the denial if any. */
  readonly shadowed?: readonly GuardHit[];
}

/** The guards of one tool. `check` is synchronous unless one of them asks the host. */
export interface ToolGuards {
  check(args: unknown): GuardOutcome | undefined | Promise<GuardOutcome | undefined>;
}

interface CompiledGuard {
  readonly rule: string;
  readonly kind: GuardConfig['kind'];
  readonly shadow: boolean;
  readonly pointer: readonly string[];
  readonly path: string;
  readonly eachElement: boolean;
  readonly sync?: GuardCheck;
  readonly async?: AsyncGuardCheck;
}

/** `sql` or `/filters/0/value` as the property names it walks (RFC 6901 unescaping). */
export function argumentPointer(argument: string): string[] {
  if (!argument.startsWith('/')) return [argument];
  return argument
    .slice(1)
    .split('/')
    .map((part) => part.replaceAll('~1', '/').replaceAll('~0', '~'));
}

function pointerText(parts: readonly string[]): string {
  return `/${parts.map((p) => p.replaceAll('~', '~0').replaceAll('/', '~1')).join('/')}`;
}

/** The value at `pointer` in `args`, own properties only; undefined when absent. */
function valueAt(args: unknown, pointer: readonly string[]): unknown {
  let here = args;
  for (const key of pointer) {
    if (here === null || typeof here !== 'object') return undefined;
    if (Array.isArray(here)) {
      if (!/^(0|[1-9][0-9]*)$/.test(key)) return undefined;
      here = here[Number(key)];
    } else {
      if (!Object.hasOwn(here, key)) return undefined;
      here = (here as Record<string, unknown>)[key];
    }
  }
  return here;
}

function compileCheck(guard: GuardConfig): GuardCheck | AsyncGuardCheck {
  switch (guard.kind) {
    case 'sql':
      return compileSqlGuard(guard);
    case 'shell':
      return compileShellGuard(guard);
    case 'path':
      return compilePathGuard(guard);
    case 'url':
      return compileUrlGuard(guard);
    case 'size':
      return compileSizeGuard(guard);
    case 'pattern':
      return compilePatternGuard(guard);
  }
}

/** The guards that ask the host (DNS, the file system), and so are asynchronous. */
const asksTheHost = (guard: GuardConfig): boolean =>
  guard.kind === 'url' || (guard.kind === 'path' && guard.resolveSymlinks === true);

/** The default rule id of a guard, also its config path. */
export function guardRuleId(server: string, tool: string, index: number): string {
  return `servers.${server}.tools.${tool}.guards.${index}`;
}

function compileOne(server: string, tool: string, guard: GuardConfig, i: number): CompiledGuard {
  const check = compileCheck(guard);
  const pointer = argumentPointer(guard.argument);
  const base = {
    rule: guard.id ?? guardRuleId(server, tool, i),
    kind: guard.kind,
    shadow: guard.mode === 'shadow',
    pointer,
    path: pointerText(pointer),
    eachElement: guard.kind !== 'size',
  };
  return asksTheHost(guard)
    ? { ...base, async: check as AsyncGuardCheck }
    : { ...base, sync: check as GuardCheck };
}

/** Each value the guard judges, with its path: the argument, or each element of it. */
function* judged(g: CompiledGuard, value: unknown): Generator<[unknown, string]> {
  if (g.eachElement && Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) yield [value[i], `${g.path}/${i}`];
  } else yield [value, g.path];
}

class Outcomes {
  shadowed: GuardHit[] | undefined;
  denied: GuardHit | undefined;
  /** True when the guard's refusal ends the checking. */
  add(g: CompiledGuard, path: string, reason: string): boolean {
    const hit = { rule: g.rule, guard: g.kind, path, reason };
    if (g.shadow) {
      (this.shadowed ??= []).push(hit);
      return false;
    }
    this.denied = hit;
    return true;
  }
  result(): GuardOutcome | undefined {
    if (!this.denied && !this.shadowed) return undefined;
    return {
      ...(this.denied ? { denied: this.denied } : {}),
      ...(this.shadowed ? { shadowed: this.shadowed } : {}),
    };
  }
}

function compileToolGuards(
  server: string,
  tool: string,
  guards: readonly GuardConfig[],
): ToolGuards {
  const compiled = guards.map((g, i) => compileOne(server, tool, g, i));
  const anyAsync = compiled.some((g) => g.async !== undefined);
  if (!anyAsync)
    return {
      check(args) {
        const out = new Outcomes();
        for (const g of compiled) {
          const value = valueAt(args, g.pointer);
          if (value === undefined) continue;
          for (const [v, path] of judged(g, value)) {
            const reason = (g.sync as GuardCheck)(v);
            if (reason !== undefined) {
              if (out.add(g, path, reason)) return out.result();
              break;
            }
          }
        }
        return out.result();
      },
    };
  return {
    async check(args) {
      const out = new Outcomes();
      for (const g of compiled) {
        const value = valueAt(args, g.pointer);
        if (value === undefined) continue;
        for (const [v, path] of judged(g, value)) {
          const reason = g.sync ? g.sync(v) : await (g.async as AsyncGuardCheck)(v);
          if (reason !== undefined) {
            if (out.add(g, path, reason)) return out.result();
            break;
          }
        }
      }
      return out.result();
    },
  };
}

/** Every server's guarded tools: server → tool → its guards. */
export type GuardBook = ReadonlyMap<string, ReadonlyMap<string, ToolGuards>>;

export function compileGuards(servers: Readonly<Record<string, ServerConfig>>): GuardBook {
  const book = new Map<string, Map<string, ToolGuards>>();
  for (const [server, config] of Object.entries(servers)) {
    for (const [tool, { guards }] of Object.entries(config.tools ?? {})) {
      if (guards.length === 0) continue;
      let tools = book.get(server);
      if (!tools) book.set(server, (tools = new Map()));
      tools.set(tool, compileToolGuards(server, tool, guards));
    }
  }
  return book;
}

/** Guard options that cannot work, at their config paths (for the config check). */
export function guardProblems(
  servers: Readonly<Record<string, ServerConfig>>,
): Array<{ path: string; message: string }> {
  const problems: Array<{ path: string; message: string }> = [];
  const ids = new Map<string, string>();
  for (const [server, config] of Object.entries(servers)) {
    for (const [tool, { guards }] of Object.entries(config.tools ?? {})) {
      guards.forEach((guard, i) => {
        const at = `servers.${server}.tools.${tool}.guards[${i}]`;
        const id = guard.id ?? guardRuleId(server, tool, i);
        const first = ids.get(id);
        if (first !== undefined)
          problems.push({ path: `${at}.id`, message: `'${id}' is also the id of ${first}` });
        else ids.set(id, at);
        try {
          compileCheck(guard);
        } catch (err) {
          problems.push({
            path: at,
            message: err instanceof GuardOptionError ? err.message : String(err),
          });
        }
      });
    }
  }
  return problems;
}
