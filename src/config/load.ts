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
import { parseDocument } from 'yaml';
import { configSchema, type Config } from './schema.js';

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

const ajv = new Ajv2020({ allErrors: true, useDefaults: true, strict: true });
const validate = ajv.compile(configSchema);

/** `${NAME}` or `${NAME:-fallback}`; `$${` is a literal `${`. */
const ENV_REFERENCE = /\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

function joinPath(base: string, key: string | number): string {
  if (typeof key === 'number') return `${base}[${key}]`;
  return base ? `${base}.${key}` : key;
}

/** Replaces `${ENV}` references in every string value, recording unset names. */
export function interpolateEnv(
  value: unknown,
  env: NodeJS.ProcessEnv,
  problems: ConfigProblem[],
  path = '',
): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REFERENCE, (whole, escaped: string, name: string, fallback) => {
      if (escaped) return whole.slice(1);
      const found = env[name];
      if (found !== undefined) return found;
      if (fallback !== undefined) return fallback as string;
      problems.push({
        path: path || '(root)',
        message: `environment variable ${name} is not set`,
      });
      return '';
    });
  }
  if (Array.isArray(value))
    return value.map((v, i) => interpolateEnv(v, env, problems, joinPath(path, i)));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = interpolateEnv(v, env, problems, joinPath(path, k));
    return out;
  }
  return value;
}

function pointerToPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce<string>((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : joinPath(acc, seg)), '');
}

function describeAjvError(err: ErrorObject): ConfigProblem {
  const base = pointerToPath(err.instancePath);
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
  if (!loopback && !config.listen.tls) {
    problems.push({
      path: 'listen.tls',
      message:
        'is required when listen.host is not a loopback address (plain HTTP is loopback-only)',
    });
  }
  if (!loopback && !config.listen.allowedHosts?.length) {
    problems.push({
      path: 'listen.allowedHosts',
      message: 'is required when listen.host is not a loopback address (DNS-rebinding protection)',
    });
  }
  for (const [name, server] of Object.entries(config.servers)) {
    try {
      new URL(server.url);
    } catch {
      problems.push({ path: `servers.${name}.url`, message: 'is not a valid URL' });
    }
  }
  if (config.admin.enabled && config.admin.port !== 0 && config.admin.port === config.listen.port) {
    problems.push({ path: 'admin.port', message: 'must differ from listen.port' });
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
    throw new ConfigError(source, (validate.errors ?? []).map(describeAjvError));
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
  const interpolated = interpolateEnv(doc.toJS(), env, problems);
  if (problems.length) throw new ConfigError(source, problems);
  return interpolated;
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
