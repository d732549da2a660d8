/**
 * Per-tenant policy, compiled once from the configuration into pure
 * functions the three decision points call:
 *
 * - `route(principal, server)`: may this principal use this server at all
 *   (every HTTP method on it);
 * - `inbound(frame, …)`: each client→server message;
 * - `outbound(frame, answering, …)`: each server→client message, with the
 *   method of the request it answers when it is an answer.
 *
 * Without `tenants` in the configuration the policy is off and every
 * function allows (the gateway then skips the calls entirely). With
 * `tenants`, everything is denied unless granted, in this order:
 * 1. a tenant that is not listed, or a server it is not granted, does not
 *    exist for it (route: the gateway's unknown-server answer);
 * 2. a tool, prompt or resource it is not granted does not exist for it
 *    either: absent from every list, and a request naming it is answered as
 *    a server answers for a name it does not have;
 * 3. the tenant's rules, in order: the first enforcing rule whose condition
 *    holds denies, naming itself; shadow rules only report.
 * Server→client notifications about something not granted
 * (`notifications/resources/updated` for a URI) are dropped.
 */
import { GatewayError } from '../errors/index.js';
import type { Principal } from '../auth/principal.js';
import type { Config, RuleConfig, ServerGrant, TenantConfig } from '../config/schema.js';
import type { Frame, JsonRpcMessage } from '../mcp/frame.js';
import { compileCondition, type Condition, type ConditionVars } from './cel.js';
import {
  ALLOW,
  type Allow,
  type Decision,
  type Deny,
  type Finding,
  type Pending,
  type Replace,
  type ShadowHit,
} from './decision.js';
import { compilePatterns, compileTemplates, MATCH_ALL, type Matcher } from './match.js';
import type { Manifest, Verb } from './manifest.js';
import { cleanText } from './text.js';
import { compileGuards, type GuardHit, type GuardOutcome } from './guards/index.js';
import { compileUrlCheck } from './guards/url.js';
import { compileVirtualTools, type VirtualTool } from './virtual.js';
import { compileRedactor, RedactError, type Redactor } from './redact/index.js';
import type { GuardCheck } from './guards/types.js';
import {
  cleanDefinition,
  compileServerTools,
  type Blocked,
  type PinBook,
  type ServerTools,
} from './tools.js';

export type Era = 'legacy' | 'modern';

/** A guard's refusal as the agent reads it: which guard, which argument, why. */
function guardSentence(hit: GuardHit): string {
  return `guard '${hit.rule}' (${hit.guard}) refused ${hit.path}: ${hit.reason}`;
}

/**
 * What the gateway remembers of each server's tools between messages: the
 * pin book (trust on first use) and the verdict of the last reviewed list.
 */
export interface ToolMemory {
  readonly pins: PinBook;
  verdict(server: string, tool: string): Blocked | undefined;
  remember(server: string, verdicts: ReadonlyMap<string, Blocked | undefined>): void;
}

const NO_MEMORY: ToolMemory = {
  pins: { trusted: () => undefined, trust: () => true },
  verdict: () => undefined,
  remember: () => undefined,
};

/** Where a message is decided: who sent or receives it, on which server, in which era. */
export interface DecisionContext {
  readonly principal: Principal;
  readonly server: string;
  readonly era: Era;
  readonly memory?: ToolMemory;
}

export interface Policy {
  /** False when no tenants are configured: every decision is allow and need not be asked. */
  readonly enabled: boolean;
  /** The names of the configured tenants (for the start banner). */
  readonly tenants: readonly string[];
  route(principal: Principal, server: string): Decision;
  /**
   * Inbound decisions allow or deny; a client's message is rewritten (replace)
   * only when it calls a virtual tool, into the call of the real one. Pending only when a guard of the called tool asks the host (DNS, the file
   * system); every other decision is made without waiting.
   */
  inbound(frame: Frame, ctx: DecisionContext): Allow | Deny | Replace | Pending;
  /** A tool's verb class in its server's manifest; undefined without one or not in it. */
  toolVerb(server: string, tool: string): Verb | undefined;
  /** `target`: the tool, prompt or resource of the request an answer answers, when it named one. */
  outbound(
    frame: Frame,
    answering: string | undefined,
    ctx: DecisionContext,
    target?: string,
  ): Decision;
}

/** A problem with the policy part of a configuration, at its config path. */
export interface PolicyProblem {
  path: string;
  message: string;
}

interface CompiledRule {
  readonly id: string;
  readonly servers: ReadonlySet<string> | undefined;
  readonly methods: ReadonlySet<string> | undefined;
  readonly targets: Matcher;
  readonly condition: Condition;
  readonly message: string | undefined;
  readonly shadow: boolean;
}

interface CompiledGrant {
  readonly tools: Matcher;
  readonly prompts: Matcher;
  readonly resources: Matcher;
  /** URIs that expand a granted (non-glob) template. */
  readonly templateUris: Matcher;
  readonly templates: Matcher;
  /** What the server may ask the tenant's clients for. */
  readonly sampling: boolean;
  readonly elicitation: ReadonlySet<string>;
  readonly roots: boolean;
  /** The rule id prefix of this grant: `tenants.<tenant>.servers.<server>`. */
  readonly rule: string;
  /** The rules a resource or a template not granted names (made once, not per message). */
  readonly resourcesRule: string;
  readonly templatesRule: string;
}

interface CompiledTenant {
  readonly name: string;
  readonly servers: ReadonlyMap<string, CompiledGrant>;
  readonly rules: readonly CompiledRule[];
  /**
   * The rules that apply on a server to a method and target (the tool, prompt or resource;
   * undefined when the message names none), in order (see `indexRules`).
   */
  readonly rulesFor: (
    server: string,
    method: string,
    target: string | undefined,
  ) => readonly CompiledRule[];
  readonly shadow: boolean;
}

/** The rule id a denial names when the principal's tenant is not configured. */
export const RULE_TENANT_UNKNOWN = 'tenants';

/** The policy without tenants: every decision is allow. */
export const POLICY_OFF: Policy = Object.freeze({
  enabled: false,
  tenants: Object.freeze([]) as readonly string[],
  route: () => ALLOW,
  inbound: () => ALLOW,
  outbound: () => ALLOW,
  toolVerb: () => undefined,
});

function compileGrant(tenant: string, server: string, grant: ServerGrant): CompiledGrant {
  const templates = grant.resourceTemplates ?? [];
  return {
    tools: compilePatterns(grant.tools),
    prompts: compilePatterns(grant.prompts),
    resources: compilePatterns(grant.resources),
    templateUris: compileTemplates(templates.filter((t) => !t.includes('*'))),
    templates: compilePatterns(templates),
    sampling: grant.sampling === true,
    elicitation: new Set(grant.elicitation ?? []),
    roots: grant.roots === true,
    rule: `tenants.${tenant}.servers.${server}`,
    resourcesRule: `tenants.${tenant}.servers.${server}.resources`,
    templatesRule: `tenants.${tenant}.servers.${server}.resourceTemplates`,
  };
}

function compileRule(rule: RuleConfig, condition: Condition): CompiledRule {
  return {
    id: rule.id,
    servers: rule.servers ? new Set(rule.servers) : undefined,
    methods: rule.methods ? new Set(rule.methods) : undefined,
    targets: rule.targets ? compilePatterns(rule.targets) : MATCH_ALL,
    condition,
    message: rule.message,
    shadow: rule.mode === 'shadow',
  };
}

/**
 * Everything wrong with the policy part of a configuration that the schema
 * cannot see: grants and rules naming servers that do not exist, duplicate
 * rule ids, conditions that do not compile. Empty when it compiles.
 */
export function policyProblems(config: Pick<Config, 'servers' | 'tenants'>): PolicyProblem[] {
  const problems: PolicyProblem[] = [];
  for (const [tenant, t] of Object.entries(config.tenants ?? {})) {
    const at = `tenants.${tenant}`;
    for (const server of Object.keys(t.servers)) {
      if (!(server in config.servers))
        problems.push({ path: `${at}.servers.${server}`, message: 'is not a configured server' });
    }
    const seen = new Set<string>();
    t.rules.forEach((rule, i) => {
      const ruleAt = `${at}.rules[${i}]`;
      if (seen.has(rule.id))
        problems.push({ path: `${ruleAt}.id`, message: `'${rule.id}' is used twice` });
      seen.add(rule.id);
      for (const server of rule.servers ?? []) {
        if (!(server in t.servers))
          problems.push({
            path: `${ruleAt}.servers`,
            message: `'${server}' is not a server this tenant may use`,
          });
      }
      try {
        compileCondition(rule.when);
      } catch (err) {
        problems.push({ path: `${ruleAt}.when`, message: (err as Error).message });
      }
    });
  }
  return problems;
}

/**
 * The rules that can apply to a message, by server and method, each list in
 * the tenant's order: built at load so that a message visits only those (the
 * rest cannot apply: `applies` would refuse them on their server or method).
 * Targets are still matched per message, by `applies`, on what is left.
 */
function indexRules(
  rules: readonly CompiledRule[],
  servers: Iterable<string>,
): CompiledTenant['rulesFor'] {
  const methods = new Set<string>();
  for (const r of rules) for (const m of r.methods ?? []) methods.add(m);
  const select = (server: string | undefined, method: string | undefined) =>
    rules.filter(
      (r) =>
        (!r.servers || (server !== undefined && r.servers.has(server))) &&
        (!r.methods || (method !== undefined && r.methods.has(method))),
    );
  const byServer = new Map<
    string,
    { byMethod: Map<string, CompiledRule[]>; other: CompiledRule[] }
  >();
  for (const server of servers) {
    const byMethod = new Map([...methods].map((m) => [m, select(server, m)]));
    byServer.set(server, { byMethod, other: select(server, undefined) });
  }
  // A server the tenant is not granted never gets here (route), but would get only unscoped rules.
  const unknown = {
    byMethod: new Map([...methods].map((m) => [m, select(undefined, m)])),
    other: select(undefined, undefined),
  };
  /**
   * Per (server, method) list, the rules left once their `targets` are matched, by target:
   * matching every rule's globs on every call cost more than the conditions that then apply.
   * Bounded: a list's cache holds at most TARGETS_CACHED targets and is emptied when full (a
   * client naming ever new targets pays the matching, as it would without the cache).
   */
  const byTarget = new Map<readonly CompiledRule[], Map<string, readonly CompiledRule[]>>();
  const untargeted = new Map<readonly CompiledRule[], readonly CompiledRule[]>();
  /** The rules of a list that name no targets (what applies to a message that names none). */
  const untargetedOf = (list: readonly CompiledRule[]): readonly CompiledRule[] => {
    let kept = untargeted.get(list);
    if (kept === undefined) {
      kept = list.filter((r) => r.targets === MATCH_ALL);
      untargeted.set(list, kept);
    }
    return kept;
  };
  return (server, method, target) => {
    const at = byServer.get(server) ?? unknown;
    const list = at.byMethod.get(method) ?? at.other;
    const whole = untargetedOf(list);
    if (target === undefined) return whole;
    // No rule of the list names targets: it applies whole to every target, nothing to remember.
    if (whole.length === list.length) return list;
    let cache = byTarget.get(list);
    if (cache === undefined) byTarget.set(list, (cache = new Map()));
    let kept = cache.get(target);
    if (kept === undefined) {
      kept = list.filter((r) => r.targets(target));
      if (cache.size >= TARGETS_CACHED) cache.clear();
      cache.set(target, kept);
    }
    return kept;
  };
}

/** Targets whose applying rules one (server, method) list remembers. */
const TARGETS_CACHED = 4_096;

function compileTenant(name: string, t: TenantConfig): CompiledTenant {
  const rules = t.rules.map((r) => compileRule(r, compileCondition(r.when)));
  return {
    name,
    servers: new Map(
      Object.entries(t.servers).map(([server, g]) => [server, compileGrant(name, server, g)]),
    ),
    rules,
    rulesFor: indexRules(rules, Object.keys(t.servers)),
    shadow: t.mode === 'shadow',
  };
}

const notGranted = (
  code:
    | 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND'
    | 'PORTCULLIS_ERR_POLICY_PROMPT_NOT_FOUND'
    | 'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND'
    | 'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025',
  target: string,
  rule: string,
): GatewayError => new GatewayError(code, target, { rule });

function params(frame: Frame): Record<string, unknown> | undefined {
  const p = frame.message.params;
  return p !== null && typeof p === 'object' && !Array.isArray(p)
    ? (p as Record<string, unknown>)
    : undefined;
}

function stringAt(obj: unknown, key: string): string | undefined {
  if (obj === null || typeof obj !== 'object') return undefined;
  const v = (obj as Record<string, unknown>)[key];
  return typeof v === 'string' ? v : undefined;
}

interface GrantCheck {
  readonly granted: boolean;
  readonly error: () => GatewayError;
}

/** What a granted check is: one shared object, so the common case allocates nothing. */
const GRANTED: GrantCheck = Object.freeze({
  granted: true,
  error: () => {
    throw new Error('a granted check has no error');
  },
});

function promptCheck(grant: CompiledGrant, name: string): GrantCheck {
  if (grant.prompts(name)) return GRANTED;
  return {
    granted: false,
    error: () =>
      notGranted('PORTCULLIS_ERR_POLICY_PROMPT_NOT_FOUND', name, `${grant.rule}.prompts`),
  };
}

/** A resource not granted is missing, as the era says a missing resource is. */
function resourceCheck(granted: boolean, uri: string, era: Era, rule: string): GrantCheck {
  if (granted) return GRANTED;
  const code =
    era === 'modern'
      ? 'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND'
      : 'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025';
  return { granted: false, error: () => notGranted(code, uri, rule) };
}

/**
 * What a request names and whether the grant lets the tenant reach it:
 * undefined when the request names nothing grants govern.
 */
function grantCheck(frame: Frame, grant: CompiledGrant, era: Era): GrantCheck | undefined {
  const target = frame.target ?? '';
  switch (frame.method) {
    case 'tools/call':
      if (grant.tools(target)) return GRANTED;
      return {
        granted: false,
        error: () =>
          notGranted('PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND', target, `${grant.rule}.tools`),
      };
    case 'prompts/get':
      return promptCheck(grant, target);
    case 'resources/read':
    case 'resources/subscribe':
    case 'resources/unsubscribe':
      return resourceCheck(
        grant.resources(target) || grant.templateUris(target),
        target,
        era,
        grant.resourcesRule,
      );
    case 'completion/complete': {
      // spec: the ref is a prompt (ref/prompt, name) or a resource template (ref/resource, uri).
      const ref = params(frame)?.ref;
      if (stringAt(ref, 'type') === 'ref/prompt')
        return promptCheck(grant, stringAt(ref, 'name') ?? '');
      const uri = stringAt(ref, 'uri') ?? '';
      return resourceCheck(
        grant.templates(uri) || grant.resources(uri),
        uri,
        era,
        grant.templatesRule,
      );
    }
    default:
      return undefined;
  }
}

/**
 * Whether the grant lets the server ask the client for this (a server→client
 * request's method and params); the rule that refuses it when not, undefined
 * for methods grants do not govern.
 */
function clientRequestRule(
  grant: CompiledGrant,
  method: string | undefined,
  requestParams: unknown,
): string | undefined {
  switch (method) {
    case 'sampling/createMessage':
      return grant.sampling ? undefined : `${grant.rule}.sampling`;
    case 'roots/list':
      return grant.roots ? undefined : `${grant.rule}.roots`;
    case 'elicitation/create': {
      // spec: form is the mode when none is given.
      const mode = stringAt(requestParams, 'mode') ?? 'form';
      return grant.elicitation.has(mode) ? undefined : `${grant.rule}.elicitation`;
    }
    default:
      return undefined;
  }
}

/** The first input request of a 2026-07-28 InputRequiredResult the grant refuses: its rule. */
function inputRequestRule(grant: CompiledGrant, message: JsonRpcMessage): string | undefined {
  const result = message.result;
  if (result === null || typeof result !== 'object') return undefined;
  const r = result as Record<string, unknown>;
  if (r.resultType !== 'input_required') return undefined;
  const requests = r.inputRequests;
  if (requests === null || typeof requests !== 'object') return undefined;
  for (const request of Object.values(requests as Record<string, unknown>)) {
    const rule = clientRequestRule(
      grant,
      stringAt(request, 'method'),
      (request as { params?: unknown } | null)?.params,
    );
    if (rule !== undefined) return rule;
  }
  return undefined;
}

/**
 * The first of a 2026-07-28 retry's `inputResponses` the grant would not have
 * let the server ask for: its rule. The era is stateless, so the gateway
 * cannot know what was asked; it judges each response by its shape (a
 * ListRootsResult has `roots`, an ElicitResult `action`, a CreateMessageResult
 * `model` or `role`). A tenant granted none of the three sends none: any
 * entry, whatever its shape, is refused, so a client cannot hand a server an
 * answer to a question the policy would never have let through.
 */
function inputResponseRule(grant: CompiledGrant, requestParams: unknown): string | undefined {
  const responses = (requestParams as { inputResponses?: unknown } | undefined)?.inputResponses;
  if (responses === null || typeof responses !== 'object') return undefined;
  const none = !grant.sampling && !grant.roots && grant.elicitation.size === 0;
  for (const response of Object.values(responses as Record<string, unknown>)) {
    if (none) return `${grant.rule}.inputResponses`;
    if (response === null || typeof response !== 'object') continue;
    const r = response as Record<string, unknown>;
    if ('roots' in r && !grant.roots) return `${grant.rule}.roots`;
    if ('action' in r && grant.elicitation.size === 0) return `${grant.rule}.elicitation`;
    if (('model' in r || 'role' in r) && !grant.sampling) return `${grant.rule}.sampling`;
  }
  return undefined;
}

const clientRequestDenied = (rule: string, what: string): GatewayError =>
  new GatewayError('PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED', what, { rule });

/** What conditions see of a principal, made once per principal (a principal is immutable). */
const principalVarsOf = new WeakMap<Principal, ConditionVars['principal']>();

function principalVars(principal: Principal): ConditionVars['principal'] {
  let vars = principalVarsOf.get(principal);
  if (vars === undefined) {
    vars = {
      tenant: principal.tenant,
      subject: principal.subject,
      // Absent, not undefined: `has(principal.client)` must be false without one.
      ...(principal.clientId === undefined ? {} : { client: principal.clientId }),
      scopes: principal.scopes,
    };
    principalVarsOf.set(principal, vars);
  }
  return vars;
}

/** One shape for every message (an absent target or arguments is undefined: CEL sees null, {}). */
function conditionVars(frame: Frame, ctx: DecisionContext): ConditionVars {
  const p = params(frame);
  const args =
    frame.method === 'tools/call' || frame.method === 'prompts/get' ? p?.arguments : undefined;
  return {
    principal: principalVars(ctx.principal),
    server: ctx.server,
    method: frame.method ?? '',
    target: frame.target,
    arguments: args,
    message: frame.message,
  };
}

/** Which list a result carries for a list method, and how an entry is named in the grant. */
const LISTS: Record<
  string,
  {
    key: string;
    name: (entry: unknown) => string | undefined;
    granted: (g: CompiledGrant, n: string) => boolean;
    what: string;
  }
> = {
  'tools/list': {
    key: 'tools',
    name: (e) => stringAt(e, 'name'),
    granted: (g, n) => g.tools(n),
    what: 'tools',
  },
  'prompts/list': {
    key: 'prompts',
    name: (e) => stringAt(e, 'name'),
    granted: (g, n) => g.prompts(n),
    what: 'prompts',
  },
  'resources/list': {
    key: 'resources',
    name: (e) => stringAt(e, 'uri'),
    granted: (g, n) => g.resources(n) || g.templateUris(n),
    what: 'resources',
  },
  'resources/templates/list': {
    key: 'resourceTemplates',
    name: (e) => stringAt(e, 'uriTemplate'),
    granted: (g, n) => g.templates(n),
    what: 'resourceTemplates',
  },
};

/** A list result with the entries the grant does not cover taken out; undefined when none are. */
function filterList(
  frame: Frame,
  answering: string,
  grant: CompiledGrant,
): JsonRpcMessage | undefined {
  const list = LISTS[answering];
  const result = frame.message.result;
  if (!list || result === null || typeof result !== 'object') return undefined;
  const entries = (result as Record<string, unknown>)[list.key];
  if (!Array.isArray(entries)) return undefined;
  const kept = entries.filter((e) => {
    const n = list.name(e);
    return n !== undefined && list.granted(grant, n);
  });
  if (kept.length === entries.length) return undefined;
  return { ...frame.message, result: { ...(result as Record<string, unknown>), [list.key]: kept } };
}

function withShadow<D extends Decision>(decision: D, shadowed: ShadowHit[] | undefined): D {
  if (!shadowed?.length) return decision;
  return { ...decision, shadowed };
}

/** A server's manifest as the gateway loaded it. */
export interface LoadedManifest {
  readonly manifest: Manifest;
  readonly file: string;
}

/** The result entries of a list answer, when it is one. */
function listEntries(message: JsonRpcMessage, key: string): unknown[] | undefined {
  const result = message.result;
  if (result === null || typeof result !== 'object') return undefined;
  const entries = (result as Record<string, unknown>)[key];
  return Array.isArray(entries) ? entries : undefined;
}

function withEntries(message: JsonRpcMessage, key: string, entries: unknown[]): JsonRpcMessage {
  return { ...message, result: { ...(message.result as Record<string, unknown>), [key]: entries } };
}

/** Every entry of a prompt or resource list with its titles and descriptions cleaned; undefined if none changes. */
function cleanedEntries(entries: readonly unknown[]): unknown[] | undefined {
  let out: unknown[] | undefined;
  entries.forEach((entry, i) => {
    const c = cleanDefinition(entry);
    if (c !== entry) (out ??= entries.slice())[i] = c;
  });
  return out;
}

/** Schemes a URL-mode elicitation may use unless the server's `elicitationUrls` says otherwise. */
export const DEFAULT_ELICITATION_URL_SCHEMES: readonly string[] = ['https'];

/** The URL of a URL-mode elicitation request's params (spec: form is the mode when none is given). */
function elicitationUrl(params: unknown): { url: unknown } | undefined {
  if (params === null || typeof params !== 'object') return undefined;
  const p = params as Record<string, unknown>;
  return p.mode === 'url' ? { url: p.url } : undefined;
}

/**
 * Every URL-mode elicitation a server→client message carries, wherever the
 * eras put it: an `elicitation/create` request (2025-11-25), the requests of
 * a 2026-07-28 `InputRequiredResult`, and the `elicitations` of a
 * URLElicitationRequiredError (-32042). The first refused URL's reason.
 */
function elicitationUrlRefusal(frame: Frame, check: GuardCheck): string | undefined {
  const judge = (found: { url: unknown } | undefined): string | undefined =>
    found === undefined ? undefined : check(found.url);
  const m = frame.message as Record<string, unknown>;
  if (frame.kind === 'request')
    return frame.method === 'elicitation/create' ? judge(elicitationUrl(m.params)) : undefined;
  if (frame.kind === 'response') {
    const result = m.result as Record<string, unknown> | null | undefined;
    const requests = result?.resultType === 'input_required' ? result.inputRequests : undefined;
    if (requests === null || typeof requests !== 'object') return undefined;
    for (const request of Object.values(requests as Record<string, unknown>)) {
      if (stringAt(request, 'method') !== 'elicitation/create') continue;
      const refused = judge(elicitationUrl((request as { params?: unknown }).params));
      if (refused) return refused;
    }
    return undefined;
  }
  if (frame.kind === 'error') {
    const error = m.error as { code?: unknown; data?: unknown } | undefined;
    if (error?.code !== URL_ELICITATION_REQUIRED) return undefined;
    const list = (error.data as { elicitations?: unknown } | null | undefined)?.elicitations;
    if (!Array.isArray(list)) return undefined;
    for (const e of list) {
      const refused = judge(elicitationUrl(e));
      if (refused) return refused;
    }
  }
  return undefined;
}

/** spec 2025-11-25 client/elicitation: URLElicitationRequiredError. */
const URL_ELICITATION_REQUIRED = -32042;

/** Compiled redactors by their disabled rules: compiling one takes about 85 ms, so once. */
const redactors = new Map<string, Redactor>();

function redactorFor(disable: readonly string[]): Redactor {
  const key = [...disable].sort().join('\u0000');
  let r = redactors.get(key);
  if (r === undefined) redactors.set(key, (r = compileRedactor({ disable })));
  return r;
}

/** The methods whose results are scanned for secrets and bounded in size. */
const SCANNED_RESULTS: ReadonlySet<string> = new Set(['tools/call', 'resources/read']);

export function compilePolicy(
  config: Pick<Config, 'servers' | 'tenants'> & { readonly redaction?: Config['redaction'] },
  manifests: ReadonlyMap<string, LoadedManifest> = new Map(),
): Policy {
  const tenants = new Map(
    Object.entries(config.tenants ?? {}).map(([name, t]) => [name, compileTenant(name, t)]),
  );
  const tenantsOn = config.tenants !== undefined;
  const tools = new Map<string, ServerTools>(
    Object.entries(config.servers).map(([name, server]) => {
      const loaded = manifests.get(name);
      return [
        name,
        compileServerTools(name, {
          pinning: server.pinning ?? 'block',
          ...(loaded ? { manifest: loaded.manifest, manifestFile: loaded.file } : {}),
        }),
      ];
    }),
  );
  const guards = compileGuards(config.servers);
  const redaction = config.redaction ?? { mode: 'redact', disable: [] };
  const redactor = redaction.mode === 'off' ? undefined : redactorFor(redaction.disable);
  const virtuals = new Map(
    Object.entries(config.servers).flatMap(([name, server]) => {
      const v = compileVirtualTools(name, server.virtualTools);
      return v ? [[name, v] as const] : [];
    }),
  );
  // Every server's, configured or not: the defaults hold where `elicitationUrls` is absent.
  const elicitationChecks = new Map(
    Object.entries(config.servers).map(([name, server]) => {
      const o = server.elicitationUrls ?? { allowPrivate: false };
      return [
        name,
        compileUrlCheck({
          schemes: o.schemes ?? DEFAULT_ELICITATION_URL_SCHEMES,
          allowPrivate: o.allowPrivate,
          ...(o.hosts ? { hosts: o.hosts } : {}),
        }),
      ];
    }),
  );
  const unknownServer = () =>
    new GatewayError('PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER', undefined, {});

  /** Each tenant's grant on each server with the tenant, paired once here, not per message. */
  const grants = new Map(
    [...tenants].map(([name, tenant]) => [
      name,
      new Map([...tenant.servers].map(([server, grant]) => [server, { tenant, grant }])),
    ]),
  );
  const grantOf = (
    ctx: DecisionContext,
  ): { tenant: CompiledTenant; grant: CompiledGrant } | undefined =>
    grants.get(ctx.principal.tenant)?.get(ctx.server);

  /** A list answer after the tenant's grants, the tool review and cleaning. */
  const reviewList = (frame: Frame, answering: string, ctx: DecisionContext): Decision => {
    const list = LISTS[answering] as (typeof LISTS)[string];
    let message = frame.message;
    let rule: string | undefined;
    let shadowed: ShadowHit[] | undefined;
    const findings: Finding[] = [];
    const found = tenantsOn ? grantOf(ctx) : undefined;
    if (found) {
      const replaced = filterList(frame, answering, found.grant);
      if (replaced) {
        const grantRule = `${found.grant.rule}.${list.what}`;
        if (found.tenant.shadow)
          shadowed = [{ rule: grantRule, would: 'replace', reason: `${answering} entries hidden` }];
        else {
          message = replaced;
          rule = grantRule;
        }
      }
    }
    const entries = listEntries(message, list.key);
    if (entries) {
      if (answering === 'tools/list') {
        const review = (tools.get(ctx.server) as ServerTools).reviewList(
          entries,
          ctx.memory?.pins ?? NO_MEMORY.pins,
        );
        ctx.memory?.remember(ctx.server, review.verdicts);
        for (const b of review.blocked)
          findings.push({ tool: b.tool, rule: b.rule, effect: 'blocked', reason: b.reason });
        for (const f of review.flags)
          findings.push({ tool: f.tool, rule: f.rule, effect: 'flagged', reason: f.reason });
        if (review.tools) {
          message = withEntries(message, list.key, review.tools);
          rule ??= review.blocked[0]?.rule ?? 'descriptions.cleaned';
        }
      } else {
        const clean = cleanedEntries(entries);
        if (clean) {
          message = withEntries(message, list.key, clean);
          rule ??= 'descriptions.cleaned';
        }
      }
    }
    const virtual = answering === 'tools/list' ? virtuals.get(ctx.server) : undefined;
    if (virtual) {
      // Reviewed with the rest (their pins hold for the virtual tools' calls), hidden
      // tools then leave; the virtual ones the tenant is granted join the last page.
      const current = listEntries(message, list.key) ?? [];
      const kept = current.filter((t) => !virtual.hidden.has(list.name(t) ?? ''));
      const result = message.result as Record<string, unknown> | undefined;
      const added =
        result?.nextCursor === undefined
          ? [...virtual.tools.values()]
              .filter((v) => !found || found.tenant.shadow || found.grant.tools(v.name))
              .map((v) => cleanDefinition(v.definition))
          : [];
      if (kept.length !== current.length || added.length > 0) {
        message = withEntries(message, list.key, [...kept, ...added]);
        rule ??= `servers.${ctx.server}.virtualTools`;
      }
    }
    const extra = {
      ...(shadowed ? { shadowed } : {}),
      ...(findings.length ? { findings } : {}),
    };
    if (rule === undefined || message === frame.message)
      return shadowed || findings.length ? { kind: 'allow', ...extra } : ALLOW;
    return { kind: 'replace', rule, message, ...extra };
  };

  const outputValidation = new Map(
    Object.entries(config.servers).map(([name, server]) => [
      name,
      server.outputValidation ?? 'warn',
    ]),
  );
  /** A tool result against the manifest's output schema: undefined when there is nothing to say. */
  const checkOutput = (frame: Frame, tool: string, ctx: DecisionContext): Decision | undefined => {
    const mode = outputValidation.get(ctx.server) ?? 'off';
    if (mode === 'off') return undefined;
    const bad = tools.get(ctx.server)?.checkResult(tool, frame.message.result);
    if (!bad) return undefined;
    const rule = `servers.${ctx.server}.outputValidation`;
    const reason = `${bad.path} ${bad.message}`;
    if (mode === 'warn')
      return { kind: 'allow', findings: [{ tool, rule, effect: 'flagged', reason }] };
    return {
      kind: 'deny',
      rule,
      error: new GatewayError('PORTCULLIS_ERR_POLICY_INVALID_OUTPUT', `'${tool}' ${reason}`, {
        rule,
        tool,
        path: bad.path,
      }),
    };
  };

  const maxResultBytes = new Map(
    Object.entries(config.tenants ?? {}).flatMap(([name, t]) =>
      t.maxResultBytes === undefined ? [] : [[name, t.maxResultBytes] as const],
    ),
  );
  /**
   * A result before the agent sees it: within the tenant's size cap, then
   * with the secrets it holds redacted. Undefined when it goes on as it is.
   */
  const reviewResult = (
    frame: Frame,
    ctx: DecisionContext,
    target: string | undefined,
  ): Decision | undefined => {
    const result = frame.message.result;
    const cap = maxResultBytes.get(ctx.principal.tenant);
    if (cap !== undefined) {
      const json = JSON.stringify(result) ?? '';
      // A UTF-16 unit is at most 3 bytes of UTF-8: only a long text needs counting.
      if (json.length * 3 > cap && Buffer.byteLength(json, 'utf8') > cap) {
        const rule = `tenants.${ctx.principal.tenant}.maxResultBytes`;
        return {
          kind: 'deny',
          rule,
          error: new GatewayError(
            'PORTCULLIS_ERR_POLICY_RESULT_TOO_LARGE',
            `${Buffer.byteLength(json, 'utf8')} bytes, over ${cap}`,
            { rule, limitBytes: cap },
          ),
        };
      }
    }
    if (!redactor) return undefined;
    let redacted: ReturnType<Redactor['redactResult']>;
    try {
      redacted = redactor.redactResult(result);
    } catch (err) {
      if (!(err instanceof RedactError)) throw err;
      return {
        kind: 'deny',
        rule: 'redaction',
        error: new GatewayError('PORTCULLIS_ERR_POLICY_RESULT_UNSCANNABLE', err.message, {
          rule: 'redaction',
        }),
      };
    }
    if (!redacted) return undefined;
    const rules = [...new Set(redacted.findings.map((f) => f.rule))];
    return {
      kind: 'replace',
      rule: `redaction.${rules[0] as string}`,
      message: { ...frame.message, result: redacted.result },
      findings: redacted.findings.map((f) => ({
        tool: target ?? '',
        rule: `redaction.${f.rule}`,
        effect: 'flagged' as const,
        reason: `a secret (${f.rule}) at ${f.path || '/'} was redacted`,
      })),
    };
  };

  /** The tenant's rules, in order: the first enforcing rule whose condition holds denies. */
  const decideByRules = (
    frame: Frame,
    ctx: DecisionContext,
    tenant: CompiledTenant | undefined,
    shadowed: ShadowHit[] | undefined,
  ): Allow | Deny => {
    if (!tenant || tenant.rules.length === 0) return withShadow(ALLOW, shadowed);
    let vars: ConditionVars | undefined;
    for (const rule of tenant.rulesFor(ctx.server, frame.method ?? '', frame.target)) {
      vars ??= conditionVars(frame, ctx);
      const { value, error } = rule.condition.evaluateDetailed(vars);
      // A deny rule whose condition cannot be evaluated denies: fail closed.
      if (!value && error === undefined) continue;
      const reason =
        error === undefined
          ? (rule.message ?? 'denied by policy')
          : `its condition failed (${error})`;
      if (rule.shadow) {
        (shadowed ??= []).push({ rule: rule.id, would: 'deny', reason });
        continue;
      }
      return withShadow(
        {
          kind: 'deny',
          rule: rule.id,
          error: new GatewayError('PORTCULLIS_ERR_POLICY_DENIED', `rule '${rule.id}': ${reason}`, {
            rule: rule.id,
          }),
        },
        shadowed,
      );
    }
    return withShadow(ALLOW, shadowed);
  };

  /** A tool's guards have judged its arguments: refuse, or go on to the rules. */
  const afterGuards = (
    outcome: GuardOutcome | undefined,
    frame: Frame,
    ctx: DecisionContext,
    tenant: CompiledTenant | undefined,
    shadowed: ShadowHit[] | undefined,
  ): Allow | Deny => {
    for (const hit of outcome?.shadowed ?? [])
      (shadowed ??= []).push({ rule: hit.rule, would: 'deny', reason: guardSentence(hit) });
    const hit = outcome?.denied;
    if (hit) {
      const error = new GatewayError('PORTCULLIS_ERR_POLICY_GUARD', guardSentence(hit), {
        rule: hit.rule,
        guard: hit.guard,
        path: hit.path,
        tool: frame.target ?? '',
      });
      return withShadow({ kind: 'deny', rule: hit.rule, error }, shadowed);
    }
    return decideByRules(frame, ctx, tenant, shadowed);
  };

  /**
   * A call of a virtual tool: its arguments checked and rendered, then the
   * real call judged as any call of the real tool is (its manifest entry,
   * pins, schema and guards), then the tenant's rules on the call as the
   * agent made it. Allowed, the real call goes upstream in its place.
   */
  const virtualCall = (
    v: VirtualTool,
    frame: Frame,
    ctx: DecisionContext,
    tenant: CompiledTenant | undefined,
    shadowed: ShadowHit[] | undefined,
  ): Deny | Replace | Pending => {
    const rendered = v.render(params(frame)?.arguments);
    if ('error' in rendered)
      return withShadow({ kind: 'deny', rule: v.rule, error: rendered.error }, shadowed);
    const args = rendered.arguments;
    const refusal = tools
      .get(ctx.server)
      ?.checkCall(v.tool, args, ctx.memory?.verdict(ctx.server, v.tool));
    if (refusal)
      return withShadow(
        { kind: 'deny', rule: refusal.data.rule as string, error: refusal },
        shadowed,
      );
    const message = frame.message;
    const real: JsonRpcMessage = {
      ...message,
      params: { ...(message.params as Record<string, unknown>), name: v.tool, arguments: args },
    };
    const finish = (d: Allow | Deny): Deny | Replace =>
      d.kind === 'deny'
        ? d
        : {
            kind: 'replace',
            rule: v.rule,
            message: real,
            ...(d.shadowed ? { shadowed: d.shadowed } : {}),
          };
    const toolGuards = guards.get(ctx.server)?.get(v.tool);
    const outcome = toolGuards?.check(args);
    if (outcome instanceof Promise)
      return {
        kind: 'pending',
        decision: outcome.then((o) => finish(afterGuards(o, frame, ctx, tenant, shadowed))),
      };
    return finish(afterGuards(outcome, frame, ctx, tenant, shadowed));
  };

  const verbs = new Map(
    [...manifests].map(([server, loaded]) => [
      server,
      new Map(loaded.manifest.tools.map((t) => [t.name, t.verb])),
    ]),
  );

  return {
    enabled: true,
    toolVerb: (server, tool) => verbs.get(server)?.get(tool),
    tenants: Object.freeze([...tenants.keys()]),

    route(principal, server) {
      if (!tenantsOn) return ALLOW;
      const tenant = tenants.get(principal.tenant);
      if (!tenant) return { kind: 'deny', rule: RULE_TENANT_UNKNOWN, error: unknownServer() };
      if (tenant.servers.has(server)) return ALLOW;
      const rule = `tenants.${tenant.name}.servers`;
      if (tenant.shadow)
        return {
          kind: 'allow',
          shadowed: [{ rule, would: 'deny', reason: `server ${server} not granted` }],
        };
      return { kind: 'deny', rule, error: unknownServer() };
    },

    inbound(frame, ctx) {
      if (frame.kind !== 'request') return ALLOW;
      let shadowed: ShadowHit[] | undefined;
      let tenant: CompiledTenant | undefined;
      if (tenantsOn) {
        const found = grantOf(ctx);
        // route() refused these already; a message cannot get here without it.
        if (!found) return { kind: 'deny', rule: RULE_TENANT_UNKNOWN, error: unknownServer() };
        tenant = found.tenant;
        const check = grantCheck(frame, found.grant, ctx.era);
        if (check && !check.granted) {
          const error = check.error();
          const rule = error.data.rule as string;
          if (!tenant.shadow) return { kind: 'deny', rule, error };
          (shadowed ??= []).push({ rule, would: 'deny', reason: error.message });
        }
        if (ctx.era === 'modern') {
          const rule = inputResponseRule(found.grant, params(frame));
          if (rule !== undefined) {
            const error = clientRequestDenied(
              rule,
              'the request answers a question this tenant does not let servers ask (inputResponses)',
            );
            if (!tenant.shadow) return { kind: 'deny', rule, error };
            (shadowed ??= []).push({ rule, would: 'deny', reason: error.message });
          }
        }
      }
      if (frame.method === 'tools/call') {
        const name = frame.target ?? '';
        const virtual = virtuals.get(ctx.server);
        const v = virtual?.tools.get(name);
        if (v) return virtualCall(v, frame, ctx, tenant, shadowed);
        if (virtual?.hidden.has(name)) {
          const rule = `servers.${ctx.server}.virtualTools`;
          const error = new GatewayError('PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND', name, { rule });
          return withShadow({ kind: 'deny', rule, error }, shadowed);
        }
        const args = params(frame)?.arguments;
        const refusal = tools
          .get(ctx.server)
          ?.checkCall(name, args, ctx.memory?.verdict(ctx.server, name));
        if (refusal)
          return withShadow(
            { kind: 'deny', rule: refusal.data.rule as string, error: refusal },
            shadowed,
          );
        const toolGuards = guards.get(ctx.server)?.get(name);
        if (toolGuards) {
          const outcome = toolGuards.check(args);
          if (outcome instanceof Promise)
            return {
              kind: 'pending',
              decision: outcome.then((o) => afterGuards(o, frame, ctx, tenant, shadowed)),
            };
          return afterGuards(outcome, frame, ctx, tenant, shadowed);
        }
      }
      return decideByRules(frame, ctx, tenant, shadowed);
    },

    outbound(frame, answering, ctx, target) {
      if (frame.kind === 'response' && answering !== undefined && answering in LISTS)
        return reviewList(frame, answering, ctx);
      // A server's instructions reach the agent as its descriptions do: cleaned the same way.
      if (
        frame.kind === 'response' &&
        (answering === 'initialize' || answering === 'server/discover')
      ) {
        const result = frame.message.result as Record<string, unknown> | undefined;
        const instructions = result?.instructions;
        if (typeof instructions !== 'string') return ALLOW;
        const clean = cleanText(instructions);
        if (clean === instructions) return ALLOW;
        return {
          kind: 'replace',
          rule: 'descriptions.cleaned',
          message: { ...frame.message, result: { ...result, instructions: clean } },
        };
      }
      if (frame.kind === 'response' && answering !== undefined && SCANNED_RESULTS.has(answering)) {
        const checked =
          answering === 'tools/call' && target !== undefined
            ? checkOutput(frame, target, ctx)
            : undefined;
        if (checked && checked.kind !== 'allow') return checked;
        const reviewed = reviewResult(frame, ctx, target);
        if (reviewed)
          return checked?.findings ? { ...reviewed, findings: checked.findings } : reviewed;
        if (checked) return checked;
      }
      // A URL the user is to open must not lead to the user's own network or
      // carry credentials: checked before the tenant's grant, for every server.
      if (frame.kind !== 'notification') {
        const check = elicitationChecks.get(ctx.server);
        const refused = check && elicitationUrlRefusal(frame, check);
        if (refused) {
          const rule = `servers.${ctx.server}.elicitationUrls`;
          const what = `the server asks the user to open a URL the gateway refuses: ${refused}`;
          return { kind: 'deny', rule, error: clientRequestDenied(rule, what) };
        }
      }
      // Server→client requests: each kind is the tenant's to allow.
      if (tenantsOn && (frame.kind === 'request' || frame.kind === 'response')) {
        const found = grantOf(ctx);
        if (!found) return ALLOW;
        const { tenant, grant } = found;
        const rule =
          frame.kind === 'request'
            ? clientRequestRule(grant, frame.method, frame.message.params)
            : inputRequestRule(grant, frame.message);
        if (rule === undefined) return ALLOW;
        const what =
          frame.kind === 'request'
            ? `${frame.method ?? ''} is not granted to this tenant`
            : 'the server asks for input this tenant does not grant';
        if (tenant.shadow)
          return { kind: 'allow', shadowed: [{ rule, would: 'deny', reason: what }] };
        return { kind: 'deny', rule, error: clientRequestDenied(rule, what) };
      }
      if (
        tenantsOn &&
        frame.kind === 'notification' &&
        frame.method === 'notifications/resources/updated'
      ) {
        const found = grantOf(ctx);
        if (!found) return ALLOW;
        const { tenant, grant } = found;
        const uri = stringAt(params(frame), 'uri') ?? '';
        if (grant.resources(uri) || grant.templateUris(uri)) return ALLOW;
        const rule = `${grant.rule}.resources`;
        if (tenant.shadow)
          return { kind: 'allow', shadowed: [{ rule, would: 'drop', reason: `update of ${uri}` }] };
        return { kind: 'drop', rule, reason: `update of a resource not granted` };
      }
      return ALLOW;
    },
  };
}
