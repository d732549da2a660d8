/**
 * What an agent may see of a server's tools and call, by the server's
 * manifest and pins: the rug-pull defence, held descriptions, hidden
 * characters, argument schemas. Compiled once per server at load.
 *
 * A `tools/list` result is reviewed tool by tool, in this order:
 * 1. an entry that is not a tool definition is left out;
 * 2. with a manifest, a tool it does not list is left out (agents cannot
 *    call what it does not list), and so is one it holds (`held`, not
 *    `approved`);
 * 3. without one, a description that instructs the agent (policy/text.ts)
 *    holds the tool: left out until an operator approves it;
 * 4. the pin (SHA-256 of the definition as the server sent it) is compared
 *    with the manifest's or, without a manifest, with the first one seen
 *    (trust on first use, kept in the pin book): a change is blocked
 *    (`pinning: block`, the default), only reported (`flag`) or ignored
 *    (`off`);
 * 5. what passes is shown with its titles and descriptions cleaned of
 *    hidden characters (tag characters, bidi controls, zero-width, ANSI);
 *    a name with non-ASCII or confusable characters is reported.
 * The verdict of each tool is remembered (by the caller, per server), so a
 * call to a tool whose live definition was blocked is refused too, naming
 * the tool and the command that approves it. A call's arguments are checked
 * against the manifest's input schema (ajv, compiled here; its regular
 * expressions run on RE2, linear in the input).
 *
 * Pure but for the pin book and the verdict memory, which the caller owns.
 */
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Ajv, type ValidateFunction, type ErrorObject } from 'ajv';
import { RE2JS } from 're2js';
import { GatewayError } from '../errors/index.js';
import {
  isApproved,
  pinOf,
  samePin,
  toolDefinitionFrom,
  type Manifest,
  type ManifestTool,
  type ToolDefinition,
} from './manifest.js';
import { useLengthKeywords } from './schema-length.js';
import { cleanText, nameFindings, poisonFindings, definitionTexts } from './text.js';

export type Pinning = 'block' | 'flag' | 'off';

/** Trust on first use: the pins a server's tools were first seen with, shared by every replica. */
export interface PinBook {
  /** The pin a tool is trusted with; undefined when it was never seen. */
  trusted(server: string, tool: string): string | undefined;
  /**
   * Records the first pin seen for a tool; false, recording nothing, when the
   * server has MAX_PINS_PER_SERVER pins already (a server that keeps
   * inventing tool names must not fill the store for everyone).
   */
  trust(server: string, tool: string, pin: string): boolean;
}

/** Pins one server may have without a manifest; a tool first seen beyond it is held. */
export const MAX_PINS_PER_SERVER = 10_000;

/** Why a tool is kept from agents. */
export interface Blocked {
  readonly code:
    | 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND'
    | 'PORTCULLIS_ERR_POLICY_TOOL_HELD'
    | 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED';
  readonly rule: string;
  readonly reason: string;
}

/** A reported finding that blocks nothing. */
export interface Flag {
  readonly tool: string;
  readonly rule: string;
  readonly reason: string;
}

export interface ListReview {
  /** The entries agents see; `undefined` when that is the list as sent. */
  readonly tools: unknown[] | undefined;
  /** The verdict of every tool the list named: undefined when it passed. */
  readonly verdicts: ReadonlyMap<string, Blocked | undefined>;
  readonly blocked: ReadonlyArray<{ tool: string } & Blocked>;
  readonly flags: readonly Flag[];
}

export interface ServerTools {
  readonly server: string;
  reviewList(entries: readonly unknown[], pins: PinBook): ListReview;
  /**
   * A call's refusal, or undefined: `verdict` is what the last reviewed list
   * said of the tool (undefined: it passed, or was never listed here).
   */
  checkCall(tool: string, args: unknown, verdict: Blocked | undefined): GatewayError | undefined;
  /**
   * A tool result's `structuredContent` against the manifest's output schema
   * (spec: servers MUST conform to it; clients SHOULD validate): undefined
   * when it conforms or there is nothing to check, else the JSON pointer of
   * the first bad field and what is wrong.
   */
  checkResult(tool: string, result: unknown): { path: string; message: string } | undefined;
}

export interface ServerToolsConfig {
  readonly manifest?: Manifest;
  /** Where the manifest is, for the commands an error tells the operator to run. */
  readonly manifestFile?: string;
  readonly pinning: Pinning;
}

/** RE2 for the `pattern` keywords of schemas: a hostile argument cannot make a regex backtrack. */
function re2Engine(pattern: string, flags: string): { test(s: string): boolean } {
  const re = RE2JS.compile(pattern, flags.includes('i') ? RE2JS.CASE_INSENSITIVE : 0);
  return { test: (s: string) => re.matcher(s).find() };
}
re2Engine.code = 'RE2JS';

const AJV_OPTIONS = {
  strict: false,
  allErrors: false,
  validateFormats: false,
  code: { regExp: re2Engine },
} as const;

let ajv2020: Ajv2020 | undefined;
let ajv07: Ajv | undefined;

/** A validator for a tool's input schema, by the draft it declares (2020-12 unless draft-07 or older). */
export function compileInputSchema(schema: Readonly<Record<string, unknown>>): ValidateFunction {
  const declared = typeof schema.$schema === 'string' ? schema.$schema : '';
  if (/draft-0[4-7]/.test(declared)) {
    ajv07 ??= useLengthKeywords(new Ajv(AJV_OPTIONS));
    return ajv07.compile(schema);
  }
  ajv2020 ??= useLengthKeywords(new Ajv2020(AJV_OPTIONS));
  // A 2020-12 validator refuses a foreign $schema it does not know; the draft is implied.
  const { $schema: _ignored, ...rest } = schema;
  return ajv2020.compile(rest);
}

/** The path of the field an ajv error is about, as a JSON pointer into the arguments. */
export function schemaErrorPath(e: ErrorObject): string {
  const missing =
    e.keyword === 'required'
      ? (e.params as { missingProperty?: string }).missingProperty
      : undefined;
  return `${e.instancePath}${missing === undefined ? '' : `/${missing}`}` || '/';
}

/** A copy of `entry` with every title and description cleaned; `entry` itself when none changes. */
export function cleanDefinition(entry: unknown): unknown {
  const walk = (value: unknown, depth: number): unknown => {
    if (depth > 64 || value === null || typeof value !== 'object') return value;
    if (Array.isArray(value)) {
      let out: unknown[] | undefined;
      value.forEach((item, i) => {
        const c = walk(item, depth + 1);
        if (c !== item) (out ??= value.slice())[i] = c;
      });
      return out ?? value;
    }
    let out: Record<string, unknown> | undefined;
    for (const [key, item] of Object.entries(value)) {
      const c =
        (key === 'title' || key === 'description') && typeof item === 'string'
          ? cleanText(item)
          : walk(item, depth + 1);
      if (c !== item) (out ??= { ...(value as Record<string, unknown>) })[key] = c;
    }
    return out ?? value;
  };
  return walk(entry, 0);
}

/** Poison findings of a definition, cached by pin: a server lists the same tools over and over. */
const HELD_CACHE_ENTRIES = 4_096;
const heldCache = new Map<string, Blocked | null>();

function heldByText(def: ToolDefinition, pin: string): Blocked | undefined {
  const cached = heldCache.get(pin);
  if (cached !== undefined) return cached ?? undefined;
  let verdict: Blocked | undefined;
  for (const { path, text } of definitionTexts(def)) {
    const finding = poisonFindings(text)[0];
    if (finding) {
      verdict = {
        code: 'PORTCULLIS_ERR_POLICY_TOOL_HELD',
        rule: finding.rule,
        reason: `its ${path} ${finding.reason}`,
      };
      break;
    }
  }
  if (heldCache.size >= HELD_CACHE_ENTRIES) heldCache.clear();
  heldCache.set(pin, verdict ?? null);
  return verdict;
}

export function compileServerTools(server: string, config: ServerToolsConfig): ServerTools {
  const { manifest, pinning } = config;
  const byName = new Map<string, ManifestTool>(manifest?.tools.map((t) => [t.name, t]) ?? []);
  // Compiled once, at load: the hot path never compiles a schema.
  const validators = new Map<string, ValidateFunction | undefined>();
  const outputValidators = new Map<string, ValidateFunction | undefined>();
  const compileOrNothing = (schema: Readonly<Record<string, unknown>>) => {
    try {
      return compileInputSchema(schema);
    } catch {
      // A schema ajv cannot compile validates nothing.
      return undefined;
    }
  };
  for (const tool of manifest?.tools ?? []) {
    validators.set(tool.name, compileOrNothing(tool.inputSchema));
    if (tool.outputSchema) outputValidators.set(tool.name, compileOrNothing(tool.outputSchema));
  }
  const file = config.manifestFile ?? 'MANIFEST';
  const pullHint = (tool: string) =>
    `pull a manifest with \`portcullis manifest pull --config CONFIG --server ${server} --out FILE\`, approve it (\`portcullis manifest approve --manifest FILE --tool ${tool}\`) and set servers.${server}.manifest`;
  const approveHint = (tool: string, code: Blocked['code']) =>
    manifest
      ? `review it with \`portcullis manifest diff --config CONFIG --server ${server}\` and take it with \`portcullis manifest approve --manifest ${file} --config CONFIG --server ${server} --tool ${tool}\``
      : code === 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED'
        ? `trust its current definition on every replica with \`portcullis pins reset --server ${server} --tool ${tool}\`, or ${pullHint(tool)}`
        : // A held description is held whatever the pins say: only a manifest approves it.
          pullHint(tool);
  const manifestRule = `servers.${server}.manifest`;
  const pinRule = `servers.${server}.pinning`;

  const verdictOf = (
    def: ToolDefinition,
    pin: string,
    pins: PinBook,
  ): Blocked | Flag | undefined => {
    const name = def.name;
    if (manifest) {
      const entry = byName.get(name);
      if (!entry)
        return {
          code: 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND',
          rule: manifestRule,
          reason: 'not in the manifest',
        };
      if (!isApproved(entry)) {
        const why = entry.held?.reasons[0];
        return {
          code: 'PORTCULLIS_ERR_POLICY_TOOL_HELD',
          rule: why?.rule ?? manifestRule,
          reason: `held in the manifest (${why?.reason ?? 'no reason given'})`,
        };
      }
      if (pinning === 'off' || samePin(entry.pin, pin)) return undefined;
      const reason = 'its definition differs from the one in the manifest';
      if (pinning === 'flag') return { tool: name, rule: pinRule, reason };
      return { code: 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED', rule: pinRule, reason };
    }
    const held = heldByText(def, pin);
    if (held) return held;
    if (pinning === 'off') return undefined;
    const trusted = pins.trusted(server, name);
    if (trusted === undefined) {
      if (pins.trust(server, name, pin)) return undefined;
      return {
        code: 'PORTCULLIS_ERR_POLICY_TOOL_HELD',
        rule: pinRule,
        reason: `is one tool too many to pin: the server already has ${MAX_PINS_PER_SERVER} tools first seen; give it a manifest`,
      };
    }
    if (samePin(trusted, pin)) return undefined;
    const reason = 'its definition changed since it was first seen';
    if (pinning === 'flag') return { tool: name, rule: pinRule, reason };
    return { code: 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED', rule: pinRule, reason };
  };

  return {
    server,

    reviewList(entries, pins) {
      const verdicts = new Map<string, Blocked | undefined>();
      const blocked: Array<{ tool: string } & Blocked> = [];
      const flags: Flag[] = [];
      let out: unknown[] | undefined;
      entries.forEach((entry, i) => {
        let def: ToolDefinition;
        try {
          def = toolDefinitionFrom(entry);
        } catch (err) {
          flags.push({ tool: '?', rule: 'tools.malformed', reason: (err as Error).message });
          out ??= entries.slice(0, i);
          return;
        }
        const pin = pinOf(def);
        const verdict = verdictOf(def, pin, pins);
        for (const finding of nameFindings(def.name))
          flags.push({
            tool: def.name,
            rule: finding,
            reason: 'the name has characters agents may misread',
          });
        if (verdict && 'code' in verdict) {
          verdicts.set(def.name, verdict);
          blocked.push({ tool: def.name, ...verdict });
          out ??= entries.slice(0, i);
          return;
        }
        if (verdict) flags.push(verdict);
        verdicts.set(def.name, undefined);
        const shown = cleanDefinition(entry);
        if (shown !== entry) out ??= entries.slice(0, i);
        out?.push(shown);
      });
      return { tools: out, verdicts, blocked, flags };
    },

    checkCall(tool, args, verdict) {
      if (manifest) {
        const entry = byName.get(tool);
        // Absent from the manifest: absent, as a server answers for a tool it lacks.
        if (!entry)
          return new GatewayError('PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND', tool, {
            rule: manifestRule,
          });
        if (!isApproved(entry)) verdict ??= verdictOf(entry, entry.pin, NO_PINS) as Blocked;
      }
      if (verdict) {
        if (verdict.code === 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND')
          return new GatewayError(verdict.code, tool, { rule: verdict.rule });
        return new GatewayError(
          verdict.code,
          `'${tool}' ${verdict.reason}; ${approveHint(tool, verdict.code)}`,
          {
            rule: verdict.rule,
            tool,
          },
        );
      }
      const validate = validators.get(tool);
      if (validate && !validate(args ?? {})) {
        const e = validate.errors?.[0];
        const path = e ? schemaErrorPath(e) : '/';
        return new GatewayError(
          'PORTCULLIS_ERR_POLICY_INVALID_ARGUMENTS',
          `'${tool}' ${path}: ${e?.message ?? 'does not match the input schema'}`,
          { rule: manifestRule, tool, path },
        );
      }
      return undefined;
    },

    checkResult(tool, result) {
      const validate = outputValidators.get(tool);
      if (!validate || result === null || typeof result !== 'object') return undefined;
      const r = result as Record<string, unknown>;
      // An error result carries no structured content to check.
      if (r.isError === true || r.resultType === 'input_required') return undefined;
      if (r.structuredContent === undefined)
        return {
          path: '/structuredContent',
          message: 'is missing, but the tool has an output schema',
        };
      if (validate(r.structuredContent)) return undefined;
      const e = validate.errors?.[0];
      return {
        path: `/structuredContent${e ? schemaErrorPath(e).replace(/^\/$/, '') : ''}`,
        message: e?.message ?? 'does not match the output schema',
      };
    },
  };
}

/** A pin book for checks that must not record anything. */
const NO_PINS: PinBook = { trusted: () => undefined, trust: () => true };

/** A pin book that lives as long as the gateway: trust on first use, this replica only. */
export class MemoryPinBook implements PinBook {
  private readonly pins = new Map<string, string>();
  trusted(server: string, tool: string): string | undefined {
    return this.pins.get(JSON.stringify([server, tool]));
  }
  private readonly counts = new Map<string, number>();
  trust(server: string, tool: string, pin: string): boolean {
    const count = this.counts.get(server) ?? 0;
    if (count >= MAX_PINS_PER_SERVER) return false;
    this.counts.set(server, count + 1);
    this.pins.set(JSON.stringify([server, tool]), pin);
    return true;
  }
}
