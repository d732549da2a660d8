/**
 * Loading a configuration: YAML → `${ENV}` interpolation → schema validation
 * with defaults → checks that span keys → a deeply frozen `Config`.
 * Every problem is collected and reported with its path; nothing stops at the
 * first one, so `portcullis config check` can list them all.
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject } from 'ajv';
import { isPair, isScalar, isSeq, parseDocument, visit, type Document } from 'yaml';
import { policyProblems } from '../policy/policy.js';
import { guardProblems } from '../policy/guards/index.js';
import { virtualToolProblems } from '../policy/virtual.js';
import { REDACT_RULES } from '../policy/redact/index.js';
import {
  configSchema,
  CREDENTIAL_DEFAULTED_KEYS,
  CREDENTIAL_KEYS,
  type Config,
  type ServerConfig,
} from './schema.js';

export interface ConfigProblem {
  /** Dotted path to the offending key, `(root)` for the document itself. */
  path: string;
  message: string;
}

export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  constructor(source: string, problems: ConfigProblem[]) {
    super(
      `Invalid configuration (${source}):\n` +
        problems.map((p) => `  ${p.path}: ${p.message}`).join('\n'),
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const ajv = new Ajv2020({ allErrors: true, useDefaults: true, strict: true, discriminator: true });
const validate = ajv.compile(configSchema);

/**
 * One token of interpolation: `$${` (a literal `${`), a well-formed
 * `${NAME}` / `${NAME:-fallback}`, or any other `${`, which is malformed.
 * A malformed reference is an error rather than literal text: a header like
 * `Bearer ${TOKEN` must never be sent upstream as written.
 */
const ENV_TOKEN = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{/g;

/** A plain (unquoted) scalar's value after interpolation is typed as YAML would type it. */
const PLAIN_INTEGER = /^[-+]?(?:0|[1-9][0-9]*)$/;
const PLAIN_BOOLEAN = /^(?:true|True|TRUE|false|False|FALSE)$/;

function joinPath(base: string, key: string | number): string {
  if (typeof key === 'number') return `${base}[${key}]`;
  return base ? `${base}.${key}` : key;
}

/**
 * Replaces `${NAME}` and `${NAME:-fallback}` in one string. As in the shell,
 * the fallback is used when NAME is unset or empty. An unset NAME without a
 * fallback, a malformed `${` and a nested reference are recorded in
 * `problems` under `path`.
 */
export function interpolateString(
  text: string,
  env: NodeJS.ProcessEnv,
  problems: ConfigProblem[],
  path: string,
): string {
  return text.replace(
    ENV_TOKEN,
    (whole: string, name: string | undefined, fallback: string | undefined) => {
      if (whole === '$${') return '${';
      if (name === undefined) {
        problems.push({
          path,
          message:
            'malformed ${...} reference; write ${NAME} or ${NAME:-fallback}, or $${ for a literal ${',
        });
        return whole;
      }
      if (fallback?.includes('${')) {
        problems.push({
          path,
          message: `the fallback of \${${name}:-...} contains \${; nested references are not supported`,
        });
        return whole;
      }
      const found = env[name];
      if (found !== undefined && (found !== '' || fallback === undefined)) return found;
      if (fallback !== undefined) return fallback;
      problems.push({ path, message: `environment variable ${name} is not set` });
      return '';
    },
  );
}

/** The dotted path of a node in a YAML document, from the visitor's ancestors. */
function yamlPath(ancestors: readonly unknown[], node: unknown): string {
  const chain = [...ancestors, node];
  let path = '';
  for (let i = 0; i + 1 < chain.length; i++) {
    const parent = chain[i];
    const child = chain[i + 1];
    if (isSeq(parent)) path = joinPath(path, parent.items.indexOf(child as never));
    else if (isPair(parent) && parent.value === child) {
      path = joinPath(path, String(isScalar(parent.key) ? parent.key.value : parent.key));
    }
  }
  return path || '(root)';
}

/**
 * Interpolates every scalar value (never a key) of a parsed YAML document in
 * place. Working on the document rather than on plain data keeps YAML's own
 * typing: an unquoted `port: ${PORT}` becomes the integer it would have been
 * had the number been written there, a quoted `"${PORT}"` stays a string.
 */
function interpolateDocument(doc: Document, env: NodeJS.ProcessEnv, problems: ConfigProblem[]) {
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const text = interpolateString(node.value, env, problems, yamlPath(ancestors, node));
      const plain = node.type === 'PLAIN' && !node.tag;
      if (plain && PLAIN_INTEGER.test(text)) node.value = Number(text);
      else if (plain && PLAIN_BOOLEAN.test(text)) node.value = text.toLowerCase() === 'true';
      else node.value = text;
    },
  });
}

/**
 * A JSON pointer as a dotted path. The document is walked alongside, so only
 * array positions become `[i]`; a key that looks like a number (a server
 * named `1`) stays `servers.1`.
 */
function pointerToPath(pointer: string, document: unknown): string {
  let path = '';
  let at: unknown = document;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(at)) {
      path = joinPath(path, Number(seg));
      at = at[Number(seg)];
    } else {
      path = joinPath(path, seg);
      at = at !== null && typeof at === 'object' ? (at as Record<string, unknown>)[seg] : undefined;
    }
  }
  return path;
}

function describeAjvError(err: ErrorObject, document: unknown): ConfigProblem {
  const base = pointerToPath(err.instancePath, document);
  switch (err.keyword) {
    case 'additionalProperties':
      return {
        path: joinPath(base, String(err.params.additionalProperty)),
        message: 'unknown key',
      };
    case 'required':
      return {
        path: joinPath(base, String(err.params.missingProperty)),
        message: 'is required',
      };
    case 'propertyNames':
      return {
        path: joinPath(base, String(err.params.propertyName)),
        message:
          'server names must be 1-63 letters, digits, "_" or "-", starting with a letter or digit',
      };
    case 'minProperties':
      return {
        path: base || '(root)',
        message:
          base === 'servers'
            ? 'at least one server is required'
            : `must have at least ${String(err.params.limit)} key(s)`,
      };
    case 'pattern':
      if (err.schemaPath.endsWith('/url/pattern'))
        return { path: base, message: 'must be an http:// or https:// URL' };
      return { path: base || '(root)', message: err.message ?? err.keyword };
    case 'enum':
      return {
        path: base || '(root)',
        message: `must be one of ${(err.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`,
      };
    default:
      return { path: base || '(root)', message: err.message ?? err.keyword };
  }
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1';
  return false;
}

/** Rules that span several keys, run after the schema has filled in defaults. */
function crossChecks(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const loopback = isLoopbackHost(config.listen.host);
  if (config.auth.mode === 'none' && !loopback) {
    problems.push({
      path: 'auth.mode',
      message: `"none" is only allowed when listen.host is a loopback address (got ${config.listen.host})`,
    });
  }
  if (!loopback && !config.listen.tls && !config.listen.behindProxy) {
    problems.push({
      path: 'listen.tls',
      message:
        'is required when listen.host is not a loopback address (plain HTTP is loopback-only, unless listen.behindProxy says a proxy in front is the only way in)',
    });
  }
  if (config.listen.behindProxy && config.listen.tls) {
    problems.push({
      path: 'listen.behindProxy',
      message: 'give listen.tls or listen.behindProxy, not both',
    });
  }
  if (!loopback && !config.listen.allowedHosts?.length) {
    problems.push({
      path: 'listen.allowedHosts',
      message: 'is required when listen.host is not a loopback address (DNS-rebinding protection)',
    });
  }
  for (const [name, server] of Object.entries(config.servers)) {
    problems.push(...transportChecks(name, server));
  }
  problems.push(...authChecks(config));
  // Grants and rules naming what does not exist, conditions that do not compile.
  problems.push(...policyProblems(config));
  problems.push(...guardProblems(config.servers));
  problems.push(...virtualToolProblems(config.servers));
  const rules = new Set(REDACT_RULES.map((r) => r.id));
  config.redaction.disable.forEach((id, i) => {
    if (!rules.has(id))
      problems.push({
        path: `redaction.disable[${i}]`,
        message: `no redaction rule is named '${id}'`,
      });
  });
  // A tool bucket of a server that does not exist would never count anything.
  const limited: Array<[string, Record<string, unknown> | undefined]> = [
    ['rateLimits.tools', config.rateLimits?.tools],
    ...Object.entries(config.tenants ?? {}).map(
      ([t, tenant]) =>
        [`tenants.${t}.rateLimits.tools`, tenant.rateLimits?.tools] as [
          string,
          Record<string, unknown> | undefined,
        ],
    ),
  ];
  for (const [at, tools] of limited)
    for (const key of Object.keys(tools ?? {})) {
      const server = key.slice(0, key.indexOf('/'));
      if (!Object.hasOwn(config.servers, server))
        problems.push({ path: `${at}.${key}`, message: `names no server '${server}'` });
    }
  if (
    config.admin.enabled &&
    !isLoopbackHost(config.admin.host) &&
    !config.admin.allowedHosts?.length
  ) {
    problems.push({
      path: 'admin.allowedHosts',
      message: 'is required when admin.host is not a loopback address (DNS-rebinding protection)',
    });
  }
  if (config.admin.enabled && config.admin.port !== 0 && config.admin.port === config.listen.port) {
    problems.push({ path: 'admin.port', message: 'must differ from listen.port' });
  }
  return problems;
}

/** Keys that only a stdio server takes, and those that stdio and sse take. */
const STDIO_KEYS = [
  'command',
  'args',
  'cwd',
  'env',
  'setEnv',
  'shutdownTimeoutMs',
  'warmPool',
  'sandbox',
] as const;
const CHANNEL_KEYS = ['sharing', 'idleTimeoutMs'] as const;

function transportChecks(name: string, server: ServerConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const at = (key: string) => `servers.${name}.${key}`;
  // Which of url and command is required is the schema's (if/then/else); here, what is left over.
  if (server.transport === 'stdio') {
    if (server.url !== undefined)
      problems.push({ path: at('url'), message: 'is not used by transport "stdio"' });
  } else {
    try {
      new URL(server.url as string);
    } catch {
      problems.push({ path: at('url'), message: 'is not a valid URL' });
    }
    for (const key of STDIO_KEYS) {
      if (server[key] !== undefined)
        problems.push({ path: at(key), message: `is not used by transport "${server.transport}"` });
    }
    if (server.transport === 'streamable-http') {
      for (const key of CHANNEL_KEYS) {
        if (server[key] !== undefined)
          problems.push({ path: at(key), message: 'is not used by transport "streamable-http"' });
      }
    }
  }
  // One shared process serves every principal of a tenant, and holds one credential
  // at a time: a credential made per principal would act for whoever asked last.
  const mode = server.credential.mode;
  if (server.sharing === 'shared' && (mode === 'mint' || mode === 'token-exchange')) {
    problems.push({
      path: at('sharing'),
      message: `"shared" cannot carry a per-principal credential (credential.mode "${mode}"): use sharing "session", or a static credential`,
    });
  }
  return problems;
}

function authChecks(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const { auth } = config;
  if (auth.mode === 'jwt') {
    const jwt = auth.jwt;
    if (jwt.issuer === undefined) {
      problems.push({
        path: 'auth.jwt.issuer',
        message:
          'is required when auth.mode is "jwt" (on loopback, --auth none runs without tokens)',
      });
    }
    if (jwt.jwksUrl !== undefined && jwt.jwksFile !== undefined) {
      problems.push({ path: 'auth.jwt.jwksFile', message: 'give jwksUrl or jwksFile, not both' });
    }
    if (jwt.jwksUrl === undefined && jwt.jwksFile === undefined && jwt.hmacSecret === undefined) {
      problems.push({
        path: 'auth.jwt.jwksUrl',
        message: 'is required when auth.mode is "jwt" (or jwksFile, or hmacSecret for HS* tokens)',
      });
    }
    if (auth.resource === undefined && !isLoopbackHost(config.listen.host)) {
      // Tokens must name the address clients use, which a wildcard listener cannot know.
      problems.push({
        path: 'auth.resource',
        message: `is required when listen.host is not a loopback address: the origin clients use, e.g. https://mcp.example.com (tokens must be issued for it)`,
      });
    }
    const hmac = (jwt.algorithms ?? []).filter((a) => a.startsWith('HS'));
    if (hmac.length > 0 && jwt.hmacSecret === undefined) {
      problems.push({
        path: 'auth.jwt.algorithms',
        message: `${hmac.join(', ')} need auth.jwt.hmacSecret`,
      });
    }
  }
  if (config.listen.tls?.clientCa !== undefined && auth.mode !== 'jwt') {
    problems.push({
      path: 'listen.tls.clientCa',
      message: 'client certificates bind tokens: it needs auth.mode "jwt"',
    });
  }
  for (const [name, server] of Object.entries(config.servers)) {
    const c = server.credential;
    const keys = CREDENTIAL_KEYS[c.mode];
    const allowed = new Set<string>(['mode', ...CREDENTIAL_DEFAULTED_KEYS, ...keys.allowed]);
    for (const key of Object.keys(c)) {
      if (!allowed.has(key)) {
        problems.push({
          path: `servers.${name}.credential.${key}`,
          message: `is not used by mode "${c.mode}"`,
        });
      }
    }
    for (const key of keys.required) {
      if (!(key in c)) {
        problems.push({
          path: `servers.${name}.credential.${key}`,
          message: `is required by mode "${c.mode}"`,
        });
      }
    }
    if (c.mode === 'static' && (c.value === undefined) === (c.file === undefined)) {
      problems.push({
        path: `servers.${name}.credential`,
        message: 'mode "static" needs exactly one of value and file',
      });
    }
    if (c.mode === 'mint' && config.signing.keysFile === undefined) {
      problems.push({
        path: `servers.${name}.credential`,
        message: 'mode "mint" needs signing.keysFile (create one with: portcullis keys generate)',
      });
    }
    // The verb class of a tool comes from the manifest: without one, nothing says it.
    if (c.mode === 'mint' && c.perCall === true && server.manifest === undefined) {
      problems.push({
        path: `servers.${name}.credential.perCall`,
        message: `scopes each call by its tool's verb class in the manifest: it needs servers.${name}.manifest`,
      });
    }
    if (c.mode === 'mint' && auth.mode !== 'jwt') {
      problems.push({
        path: `servers.${name}.credential`,
        message: 'mode "mint" acts for an authenticated agent: it needs auth.mode "jwt"',
      });
    }
    if (
      c.mode === 'token-exchange' &&
      (c.clientSecret === undefined) === (c.clientSecretFile === undefined)
    ) {
      problems.push({
        path: `servers.${name}.credential`,
        message: 'token-exchange needs exactly one of clientSecret and clientSecretFile',
      });
    }
    if (c.mode === 'token-exchange' && auth.mode !== 'jwt') {
      problems.push({
        path: `servers.${name}.credential`,
        message: 'mode "token-exchange" exchanges the agent\'s token: it needs auth.mode "jwt"',
      });
    }
  }
  if (config.cluster !== undefined) {
    const { secret, secretFile } = config.cluster;
    if ((secret === undefined) === (secretFile === undefined))
      problems.push({
        path: 'cluster.secret',
        message: 'give cluster.secret or cluster.secretFile (exactly one)',
      });
    if (config.store.kind !== 'redis')
      problems.push({
        path: 'cluster',
        message: 'replicas share sessions through the store: cluster needs store.kind redis',
      });
    if (
      config.cluster.advertise === undefined &&
      /^(0\.0\.0\.0|::|\[::\])$/.test(config.cluster.host)
    )
      problems.push({
        path: 'cluster.advertise',
        message: `cluster.host ${config.cluster.host} listens everywhere: say how the other replicas reach this one`,
      });
  }
  if (config.admin.token !== undefined && config.admin.tokenFile !== undefined) {
    problems.push({
      path: 'admin.tokenFile',
      message: 'give admin.token or admin.tokenFile, not both',
    });
  }
  return problems;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Validates an already-parsed document (after interpolation), fills in the
 * schema's defaults, runs the cross-key checks and returns a frozen Config.
 * Throws ConfigError listing every problem.
 */
export function buildConfig(document: unknown, source = 'inline'): Config {
  const copy = structuredClone(document ?? {});
  if (!validate(copy)) {
    // An error inside `propertyNames` is also reported by `propertyNames`
    // itself, which names the key; keep only that one.
    const errors = (validate.errors ?? []).filter(
      // `if` only says which branch failed; the branch's own error says what is wrong.
      (e) => e.propertyName === undefined && e.keyword !== 'if',
    );
    throw new ConfigError(
      source,
      errors.map((e) => describeAjvError(e, copy)),
    );
  }
  const config = copy as unknown as Config;
  const problems = crossChecks(config);
  if (problems.length) throw new ConfigError(source, problems);
  return deepFreeze(config);
}

/** Parses YAML text and interpolates the environment: the document before validation. */
export function parseConfigDocument(
  text: string,
  source: string,
  env: NodeJS.ProcessEnv = process.env,
): unknown {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => ({
        path: e.linePos ? `line ${e.linePos[0].line}` : '(root)',
        message: e.message.split('\n')[0] ?? e.message,
      })),
    );
  }
  const problems: ConfigProblem[] = [];
  interpolateDocument(doc, env, problems);
  if (problems.length) throw new ConfigError(source, problems);
  return doc.toJS();
}

/** Parses YAML text, interpolates the environment, and builds the Config. */
export function parseConfig(
  text: string,
  source: string,
  env: NodeJS.ProcessEnv = process.env,
): Config {
  return buildConfig(parseConfigDocument(text, source, env), source);
}

/** Reads a file into a configuration document (not yet validated). */
export async function readConfigDocument(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [{ path: '(file)', message: (err as Error).message }]);
  }
  return parseConfigDocument(text, path, env);
}

export async function loadConfigFile(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Config> {
  return buildConfig(await readConfigDocument(path, env), path);
}
