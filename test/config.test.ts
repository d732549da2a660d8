/**
 * Configuration: the example files, defaults and freezing, unknown keys,
 * every problem reported with its path, `${ENV}` interpolation, the rules
 * across keys, and docs/configuration.md kept in step with the schema.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  buildConfig,
  ConfigError,
  loadConfigFile,
  parseConfig,
  readConfigDocument,
  type ConfigProblem,
} from '../src/config/load.js';
import {
  configSchema,
  DEFAULT_ADMIN_PORT,
  DEFAULT_GLOBAL_INFLIGHT,
  DEFAULT_QUOTAS_PER_PRINCIPAL,
  DEFAULT_QUOTAS_PER_TENANT,
  DEFAULT_CLOCK_SKEW_MS,
  DEFAULT_DPOP_ALGORITHMS,
  DEFAULT_DPOP_MAX_AGE_MS,
  DEFAULT_JWKS_COOLDOWN_MS,
  DEFAULT_JWKS_REFRESH_INTERVAL_MS,
  DEFAULT_JWKS_TIMEOUT_MS,
  DEFAULT_MAX_TOKEN_BYTES,
  DEFAULT_MAX_TOKEN_LIFETIME_MS,
  DEFAULT_MINT_TTL_MS,
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
  DEFAULT_REDIS_URL,
  DEFAULT_STORE_KEY_PREFIX,
  DEFAULT_TOKEN_CACHE_ENTRIES,
  DEFAULT_TOKEN_EXCHANGE_TIMEOUT_MS,
  DEFAULT_BODY_LIMIT_BYTES,
  DEFAULT_DRAIN_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_MAX_SESSIONS,
  DEFAULT_PORT,
  DEFAULT_REQUEST_TIMEOUT_MS,
  DEFAULT_RETRY_HINT_MS,
  DEFAULT_SESSION_IDLE_TIMEOUT_MS,
  DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
  DEFAULT_UPSTREAM_CONNECTIONS,
  DEFAULT_UPSTREAM_HEADERS_TIMEOUT_MS,
  DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
  DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES,
} from '../src/config/schema.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONFIG_DIR = join(ROOT, 'config');
const EXAMPLE = join(CONFIG_DIR, 'portcullis.example.yaml');
const DOCS = join(ROOT, 'docs', 'configuration.md');

/** What a deployment sets for the example files' `${NAME}` references that have no fallback. */
const EXAMPLE_ENV: NodeJS.ProcessEnv = {
  SEARCH_API_TOKEN: 'example-token',
  PORTCULLIS_ADMIN_TOKEN: 'a'.repeat(64),
  TICKETS_CLIENT_SECRET: 'example-secret',
  PORTCULLIS_CLUSTER_SECRET: 'c'.repeat(48),
};

/**
 * Keys the example shows commented out: TLS needs certificate files that do
 * not exist here, and the others are alternatives to a key it sets.
 */
const EXAMPLE_COMMENTED = [
  'listen.tls',
  'admin.tokenFile',
  'cluster.secretFile',
  'auth.jwt.jwksFile',
  'auth.jwt.hmacSecret',
  'servers.<name>.credential.file',
  'servers.<name>.credential.clientSecretFile',
  'servers.<name>.manifest',
  // perCall needs the manifest, which the example leaves commented out.
  'servers.<name>.credential.perCall',
  'servers.<name>.credential.perCallTtlMs',
  'servers.<name>.credential.scopesByVerb',
];

const URL_A = 'http://127.0.0.1:3001/mcp';

/** For tests about other keys: no client authentication (loopback listeners only). */
const NO_AUTH = { mode: 'none' };
/** The least a JWT-authenticated gateway needs. */
const JWT_AUTH = {
  jwt: { issuer: 'https://login.example.com', jwksUrl: 'https://login.example.com/jwks' },
};

/** The problems of a ConfigError thrown by `fn`; fails the test if it does not throw one. */
function problemsOf(fn: () => unknown): ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return [...err.problems];
  }
  assert.fail('expected a ConfigError');
}

async function asyncProblemsOf(fn: () => Promise<unknown>): Promise<ConfigProblem[]> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return [...err.problems];
  }
  assert.fail('expected a ConfigError');
}

function paths(problems: ConfigProblem[]): string[] {
  return problems.map((p) => p.path).sort();
}

/** YAML text → problems, with a fixed environment. */
function yamlProblems(text: string, env: NodeJS.ProcessEnv = {}): ConfigProblem[] {
  return problemsOf(() => parseConfig(text, 'test', env));
}

// --- the schema, walked -----------------------------------------------------

interface SchemaNode {
  properties?: Record<string, SchemaNode>;
  additionalProperties?: boolean | SchemaNode;
  default?: unknown;
  enum?: readonly unknown[];
}

/**
 * Every key the schema defines, by dotted path. The entries of a map whose
 * values are objects with their own keys (`servers`) appear as `<name>`.
 */
function schemaKeys(node: SchemaNode, prefix = ''): { path: string; node: SchemaNode }[] {
  const out: { path: string; node: SchemaNode }[] = [];
  for (const [key, child] of Object.entries(node.properties ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    out.push({ path, node: child });
    out.push(...schemaKeys(child, path));
    const entry = child.additionalProperties;
    if (typeof entry === 'object' && entry.properties) {
      out.push({ path: `${path}.<name>`, node: entry });
      out.push(...schemaKeys(entry, `${path}.<name>`));
    }
  }
  return out;
}

const SCHEMA_KEYS = schemaKeys(configSchema as unknown as SchemaNode);

// --- the files in config/ -----------------------------------------------------

test('every file in config/ validates', async (t) => {
  const files = (await readdir(CONFIG_DIR)).filter((f) => /\.ya?ml$/.test(f)).sort();
  assert.ok(files.includes('portcullis.example.yaml'), 'config/portcullis.example.yaml exists');
  assert.ok(files.includes('minimal.yaml'), 'config/minimal.yaml exists');
  for (const file of files) {
    await t.test(file, async () => {
      const config = await loadConfigFile(join(CONFIG_DIR, file), EXAMPLE_ENV);
      assert.ok(Object.keys(config.servers).length >= 1);
    });
  }
});

test('config/minimal.yaml is one server behind an issuer, and nothing else', async () => {
  const document = (await readConfigDocument(join(CONFIG_DIR, 'minimal.yaml'), {})) as {
    auth: { jwt: object };
    servers: object;
  };
  assert.deepEqual(Object.keys(document), ['auth', 'servers']);
  assert.deepEqual(Object.keys(document.auth), ['jwt']);
  assert.deepEqual(Object.keys(document.auth.jwt).sort(), ['issuer', 'jwksUrl']);
  assert.equal(Object.keys(document.servers).length, 1);
});

test('config/portcullis.example.yaml sets every key of the schema', async () => {
  const document = (await readConfigDocument(EXAMPLE, EXAMPLE_ENV)) as Record<string, unknown>;
  const text = await readFile(EXAMPLE, 'utf8');
  const servers = Object.values(document.servers as Record<string, unknown>);
  assert.equal(servers.length, 5);

  /** Whether `path` (with `<name>` matching any server) is set in the document. */
  const isSet = (path: string): boolean => {
    let candidates: unknown[] = [document];
    for (const seg of path.split('.')) {
      candidates = candidates.flatMap((c) => {
        if (c === null || typeof c !== 'object') return [];
        const o = c as Record<string, unknown>;
        return seg === '<name>' ? Object.values(o) : seg in o ? [o[seg]] : [];
      });
    }
    return candidates.length > 0;
  };
  for (const { path } of SCHEMA_KEYS) {
    if (EXAMPLE_COMMENTED.some((c) => path === c || path.startsWith(`${c}.`))) {
      const leaf = path.split('.').pop() ?? '';
      assert.match(text, new RegExp(`^\\s*#\\s*${leaf}:`, 'm'), `${path} shown commented out`);
      continue;
    }
    assert.ok(isSet(path), `config/portcullis.example.yaml sets ${path}`);
  }

  // The headers show both kinds of reference.
  assert.match(text, /\$\{SEARCH_API_TOKEN\}/);
  assert.match(text, /\$\{[A-Z_]+:-[^}]+\}/);
});

// --- defaults and freezing --------------------------------------------------

test('defaults are filled in and the result is deeply frozen', () => {
  const document = { auth: JWT_AUTH, servers: { a: { url: URL_A } } };
  const config = buildConfig(document);
  assert.deepEqual(config, {
    listen: {
      host: '127.0.0.1',
      port: DEFAULT_PORT,
      bodyLimitBytes: DEFAULT_BODY_LIMIT_BYTES,
      headersTimeoutMs: DEFAULT_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS,
      keepAliveTimeoutMs: DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
      heartbeatIntervalMs: DEFAULT_HEARTBEAT_INTERVAL_MS,
      behindProxy: false,
    },
    admin: { enabled: true, host: '127.0.0.1', port: DEFAULT_ADMIN_PORT, publicMetrics: false },
    quotas: {
      perPrincipal: { ...DEFAULT_QUOTAS_PER_PRINCIPAL },
      perTenant: { ...DEFAULT_QUOTAS_PER_TENANT },
      global: { inflight: DEFAULT_GLOBAL_INFLIGHT },
    },
    auth: {
      mode: 'jwt',
      authorizationServers: [],
      requiredScopes: [],
      jwt: {
        issuer: 'https://login.example.com',
        jwksUrl: 'https://login.example.com/jwks',
        audiences: [],
        jwksTimeoutMs: DEFAULT_JWKS_TIMEOUT_MS,
        jwksCooldownMs: DEFAULT_JWKS_COOLDOWN_MS,
        jwksRefreshIntervalMs: DEFAULT_JWKS_REFRESH_INTERVAL_MS,
        clockSkewMs: DEFAULT_CLOCK_SKEW_MS,
        maxLifetimeMs: DEFAULT_MAX_TOKEN_LIFETIME_MS,
        requiredClaims: [],
        tenantClaim: 'tenant',
        maxTokenBytes: DEFAULT_MAX_TOKEN_BYTES,
        cacheMaxEntries: DEFAULT_TOKEN_CACHE_ENTRIES,
      },
      dpop: {
        required: false,
        algorithms: [...DEFAULT_DPOP_ALGORITHMS],
        maxAgeMs: DEFAULT_DPOP_MAX_AGE_MS,
      },
      revocation: { failClosed: true },
    },
    store: {
      kind: 'memory',
      url: DEFAULT_REDIS_URL,
      keyPrefix: DEFAULT_STORE_KEY_PREFIX,
      commandTimeoutMs: DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
      connectTimeoutMs: DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
    },
    signing: {},
    audit: { checkpointIntervalMs: 60_000, checkpointRecords: 10_000 },
    sessions: { idleTimeoutMs: DEFAULT_SESSION_IDLE_TIMEOUT_MS, max: DEFAULT_MAX_SESSIONS },
    redaction: { mode: 'redact', disable: [] },
    upstreamDefaults: {
      timeouts: {
        connectMs: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
        headersMs: DEFAULT_UPSTREAM_HEADERS_TIMEOUT_MS,
        idleMs: DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
      },
      connections: DEFAULT_UPSTREAM_CONNECTIONS,
      maxResponseBytes: DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES,
    },
    servers: {
      a: {
        url: URL_A,
        transport: 'streamable-http',
        requiredScopes: [],
        pinning: 'block',
        outputValidation: 'warn',
        elicitationUrls: { allowPrivate: false },
        credential: {
          mode: 'none',
          header: 'authorization',
          ttlMs: DEFAULT_MINT_TTL_MS,
          timeoutMs: DEFAULT_TOKEN_EXCHANGE_TIMEOUT_MS,
        },
      },
    },
    shutdown: {
      leaveRotationMs: 0,
      drainTimeoutMs: DEFAULT_DRAIN_TIMEOUT_MS,
      retryHintMs: DEFAULT_RETRY_HINT_MS,
    },
    log: { level: 'info' },
    tracing: { serviceName: 'portcullis', sampleRatio: 1 },
  });

  for (const part of [
    config,
    config.listen,
    config.upstreamDefaults.timeouts,
    config.servers,
    config.servers.a,
  ]) {
    assert.ok(Object.isFrozen(part));
  }
  assert.throws(() => {
    (config.listen as { port: number }).port = 1;
  }, TypeError);
  assert.throws(() => {
    (config.servers as Record<string, unknown>).b = { url: URL_A };
  }, TypeError);
  // The caller's document is neither filled in nor frozen.
  assert.deepEqual(document, { auth: JWT_AUTH, servers: { a: { url: URL_A } } });
  assert.ok(!Object.isFrozen(document));
});

test('values given are kept over defaults', () => {
  const config = buildConfig({
    listen: { port: 0, bodyLimitBytes: 2048 },
    admin: { enabled: false },
    log: { level: 'debug' },
    auth: NO_AUTH,
    servers: { a: { url: URL_A } },
  });
  assert.equal(config.listen.port, 0);
  assert.equal(config.listen.bodyLimitBytes, 2048);
  assert.equal(config.listen.host, '127.0.0.1');
  assert.equal(config.admin.enabled, false);
  assert.equal(config.log.level, 'debug');
});

test("a server's partial timeouts fall back to upstreamDefaults, not to built-in defaults", () => {
  const config = buildConfig({
    upstreamDefaults: { timeouts: { headersMs: 60_000, idleMs: 0 } },
    auth: NO_AUTH,
    servers: { a: { url: URL_A, timeouts: { connectMs: 1_000 } } },
  });
  // The server entry holds only what was written, so merging over the defaults is right.
  assert.deepEqual(config.servers.a?.timeouts, { connectMs: 1_000 });
  assert.deepEqual(
    { ...config.upstreamDefaults.timeouts, ...config.servers.a?.timeouts },
    { connectMs: 1_000, headersMs: 60_000, idleMs: 0 },
  );
});

// --- unknown keys and problem reporting ---------------------------------------

test('unknown keys are rejected with their full path', () => {
  const problems = problemsOf(() =>
    buildConfig({
      bogus: true,
      listen: { prot: 8080 },
      upstreamDefaults: { timeouts: { connectMS: 1 } },
      servers: {
        a: { url: URL_A, timeout: 5, timeouts: { idle: 1 }, headers: { 'X-Ok': 'yes' } },
      },
    }),
  );
  assert.deepEqual(problems.map((p) => `${p.path}: ${p.message}`).sort(), [
    'bogus: unknown key',
    'listen.prot: unknown key',
    'servers.a.timeout: unknown key',
    'servers.a.timeouts.idle: unknown key',
    'upstreamDefaults.timeouts.connectMS: unknown key',
  ]);
});

test('every problem is reported at once, each with its path', () => {
  const problems = yamlProblems(`
listen:
  port: 70000
  bodyLimitBytes: 10
  allowedHosts: [localhost, 7]
admin:
  enabled: "yes"
auth:
  mode: basic
log:
  level: loud
servers:
  a:
    url: http://127.0.0.1:3001/mcp
    transport: carrier-pigeon
    headers:
      X-Count: 5
  b:
    description: no url
`);
  assert.deepEqual(paths(problems), [
    'admin.enabled',
    'auth.mode',
    'listen.allowedHosts[1]',
    'listen.bodyLimitBytes',
    'listen.port',
    'log.level',
    'servers.a.headers.X-Count',
    'servers.a.transport',
    'servers.b.url',
  ]);
  const byPath = new Map(problems.map((p) => [p.path, p.message]));
  assert.equal(byPath.get('servers.b.url'), 'is required');
  assert.equal(byPath.get('auth.mode'), 'must be one of "jwt", "none"');
  assert.match(byPath.get('log.level') ?? '', /"info"/);
  assert.match(byPath.get('listen.port') ?? '', /65535/);
});

test('the ConfigError message lists every problem and the source', () => {
  try {
    parseConfig('listen: {prot: 1}\nservers: {}\n', 'my.yaml', {});
    assert.fail('expected a ConfigError');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /my\.yaml/);
    assert.match(err.message, /^ {2}listen\.prot: unknown key$/m);
    assert.match(err.message, /^ {2}servers: at least one server is required$/m);
  }
});

test('a document without servers, or not a mapping, is refused', () => {
  assert.deepEqual(yamlProblems(''), [{ path: 'servers', message: 'is required' }]);
  assert.deepEqual(yamlProblems('servers: {}'), [
    { path: 'servers', message: 'at least one server is required' },
  ]);
  assert.deepEqual(paths(yamlProblems('- a\n- b\n')), ['(root)']);
});

test('YAML syntax errors and duplicate keys are reported by line', () => {
  const syntax = yamlProblems('servers:\n  a:\n    url: [unclosed\n');
  assert.ok(syntax.length >= 1);
  assert.match(syntax[0]?.path ?? '', /^line \d+$/);
  const duplicate = yamlProblems(`servers:\n  a:\n    url: ${URL_A}\n  a:\n    url: ${URL_A}\n`);
  assert.deepEqual(paths(duplicate), ['line 4']);
  assert.match(duplicate[0]?.message ?? '', /unique/i);
});

test('an unreadable file is a problem under (file)', async () => {
  const problems = await asyncProblemsOf(() => loadConfigFile(join(ROOT, 'config', 'nope.yaml')));
  assert.deepEqual(paths(problems), ['(file)']);
  assert.match(problems[0]?.message ?? '', /ENOENT/);
});

// --- ${ENV} interpolation ---------------------------------------------------

test('${NAME} and ${NAME:-fallback} are replaced in values', () => {
  const config = parseConfig(
    `
listen:
  host: \${HOST:-127.0.0.1}
auth:
  mode: none
servers:
  a:
    url: \${A_URL}
    description: "\${WHO} at \${PLACE:-home}, \${EMPTY:-was empty}, [\${EMPTY}], costs $5"
    headers:
      Authorization: Bearer \${TOKEN}
`,
    'test',
    { A_URL: URL_A, WHO: 'Ada', TOKEN: 's3cret', EMPTY: '' },
  );
  assert.equal(config.listen.host, '127.0.0.1');
  assert.equal(config.servers.a?.url, URL_A);
  assert.equal(config.servers.a?.description, 'Ada at home, was empty, [], costs $5');
  assert.deepEqual(config.servers.a?.headers, { Authorization: 'Bearer s3cret' });
});

test('$${ is a literal ${ and is not interpolated', () => {
  const config = parseConfig(
    `auth: {mode: none}\nservers:\n  a:\n    url: ${URL_A}\n    description: "$\${TOKEN} and $\${not a reference"\n`,
    'test',
    { TOKEN: 'leak' },
  );
  assert.equal(config.servers.a?.description, '${TOKEN} and ${not a reference');
});

test('an unset variable without a fallback is a problem naming the key', () => {
  const problems = yamlProblems(`
listen:
  allowedHosts:
    - localhost
    - \${EXTRA_HOST}
servers:
  a:
    url: ${URL_A}
    headers:
      Authorization: Bearer \${SEARCH_API_TOKEN}
  b:
    url: \${B_URL}
`);
  assert.deepEqual(problems, [
    { path: 'listen.allowedHosts[1]', message: 'environment variable EXTRA_HOST is not set' },
    {
      path: 'servers.a.headers.Authorization',
      message: 'environment variable SEARCH_API_TOKEN is not set',
    },
    { path: 'servers.b.url', message: 'environment variable B_URL is not set' },
  ]);
});

test('a malformed or nested reference is a problem, never sent as written', () => {
  const problems = yamlProblems(
    `servers:\n  a:\n    url: ${URL_A}\n    headers:\n      A: "Bearer \${TOKEN"\n      B: "\${1X}"\n      C: "\${X:-\${Y}}"\n`,
    { TOKEN: 't', Y: 'y' },
  );
  assert.deepEqual(paths(problems), [
    'servers.a.headers.A',
    'servers.a.headers.B',
    'servers.a.headers.C',
  ]);
  assert.match(problems[0]?.message ?? '', /malformed/);
  assert.match(problems[2]?.message ?? '', /nested/);
});

test('an unquoted reference takes the YAML type of its value; a quoted one stays a string', () => {
  const env = { PORT: '8089', ADMIN: 'false', VERSION: '2' };
  const config = parseConfig(
    `
listen:
  port: \${PORT}
admin:
  enabled: \${ADMIN}
  port: \${ADMIN_PORT:-9099}
auth:
  mode: none
servers:
  a:
    url: ${URL_A}
    headers:
      X-Quoted: "\${VERSION}"
      X-Tagged: !!str \${VERSION}
`,
    'test',
    env,
  );
  assert.equal(config.listen.port, 8089);
  assert.equal(config.admin.enabled, false);
  assert.equal(config.admin.port, 9099);
  assert.deepEqual(config.servers.a?.headers, { 'X-Quoted': '2', 'X-Tagged': '2' });

  // Written unquoted in a string-valued key, it is a number, as a literal 2 would be.
  assert.deepEqual(
    yamlProblems(`servers:\n  a:\n    url: ${URL_A}\n    headers:\n      X: \${VERSION}\n`, env),
    [{ path: 'servers.a.headers.X', message: 'must be string' }],
  );
  // Quoted in an integer-valued key, it is a string.
  assert.deepEqual(
    paths(yamlProblems(`listen:\n  port: "\${PORT}"\nservers: {a: {url: ${URL_A}}}\n`, env)),
    ['listen.port'],
  );
});

test('keys are never interpolated', () => {
  const config = parseConfig(
    `auth: {mode: none}\nservers:\n  a:\n    url: ${URL_A}\n    headers:\n      "\${NAME}": v\n`,
    'test',
    { NAME: 'X-Injected' },
  );
  assert.deepEqual(config.servers.a?.headers, { '${NAME}': 'v' });
});

// --- server names and URLs ----------------------------------------------------

test('bad server names are refused, each under its own path', () => {
  const long = 'a'.repeat(64);
  const bad = ['bad name', '-lead', '_lead', 'a.b', 'a/b', 'ü', long];
  const servers = Object.fromEntries(bad.map((n) => [n, { url: URL_A }]));
  const problems = problemsOf(() => buildConfig({ servers }));
  assert.deepEqual(paths(problems), bad.map((n) => `servers.${n}`).sort());
  for (const p of problems) assert.match(p.message, /server names must be 1-63 letters/);
});

test('good server names are accepted, and a numeric one keeps a dotted path', () => {
  const good = ['a', '1', 'A_b-c', 'a'.repeat(63)];
  const config = buildConfig({
    auth: NO_AUTH,
    servers: Object.fromEntries(good.map((n) => [n, { url: URL_A }])),
  });
  assert.deepEqual(Object.keys(config.servers).sort(), [...good].sort());
  assert.deepEqual(
    problemsOf(() => buildConfig({ servers: { 1: { url: URL_A, x: 1 } } })),
    [{ path: 'servers.1.x', message: 'unknown key' }],
  );
});

test('a server URL must be an absolute http(s) URL', () => {
  const problems = problemsOf(() =>
    buildConfig({
      servers: {
        ftp: { url: 'ftp://example.com/mcp' },
        relative: { url: '/mcp' },
        empty: { url: 'http://' },
        spaces: { url: 'http://exa mple.com/mcp' },
        missing: {},
        ok: { url: 'https://example.com:8443/mcp?x=1' },
      },
    }),
  );
  assert.deepEqual(problems.map((p) => `${p.path}: ${p.message}`).sort(), [
    'servers.ftp.url: must be an http:// or https:// URL',
    'servers.missing.url: is required',
    'servers.relative.url: must be an http:// or https:// URL',
  ]);
  // Only once the schema is satisfied do the URLs get parsed.
  const unparsable = problemsOf(() =>
    buildConfig({
      auth: NO_AUTH,
      servers: { empty: { url: 'http://' }, spaces: { url: 'http://exa mple.com/' } },
    }),
  );
  assert.deepEqual(unparsable.map((p) => `${p.path}: ${p.message}`).sort(), [
    'servers.empty.url: is not a valid URL',
    'servers.spaces.url: is not a valid URL',
  ]);
});

// --- rules across keys --------------------------------------------------------

test('auth.mode none is refused on 0.0.0.0, even with tls and allowedHosts', () => {
  const problems = problemsOf(() =>
    buildConfig({
      listen: {
        host: '0.0.0.0',
        tls: { cert: '/etc/cert.pem', key: '/etc/key.pem' },
        allowedHosts: ['mcp.example.com'],
      },
      auth: { mode: 'none' },
      servers: { a: { url: URL_A } },
    }),
  );
  assert.deepEqual(paths(problems), ['auth.mode']);
  assert.match(problems[0]?.message ?? '', /loopback/);
  assert.match(problems[0]?.message ?? '', /0\.0\.0\.0/);
});

test('auth.mode none is refused on any non-loopback address', () => {
  for (const host of [
    '0.0.0.0',
    '::',
    '[::]',
    '192.168.1.10',
    'mcp.example.com',
    '::ffff:127.0.0.1',
  ]) {
    const problems = problemsOf(() =>
      buildConfig({ listen: { host }, auth: NO_AUTH, servers: { a: { url: URL_A } } }),
    );
    assert.ok(
      problems.some((p) => p.path === 'auth.mode'),
      `auth none refused on ${host}`,
    );
  }
});

test('loopback listeners accept auth.mode none', () => {
  for (const host of [
    '127.0.0.1',
    '127.0.0.2',
    'localhost',
    'LOCALHOST',
    'api.localhost',
    '::1',
    '[::1]',
  ]) {
    const config = buildConfig({ listen: { host }, auth: NO_AUTH, servers: { a: { url: URL_A } } });
    assert.equal(config.auth.mode, 'none', host);
  }
});

test('a non-loopback listener without tls and allowedHosts is refused', () => {
  const problems = problemsOf(() =>
    buildConfig({ listen: { host: '10.0.0.5' }, auth: JWT_AUTH, servers: { a: { url: URL_A } } }),
  );
  assert.deepEqual(paths(problems), ['auth.resource', 'listen.allowedHosts', 'listen.tls']);
  assert.match(
    new Map(problems.map((p) => [p.path, p.message])).get('auth.resource') ?? '',
    /origin clients use/,
  );
  const byPath = new Map(problems.map((p) => [p.path, p.message]));
  assert.match(byPath.get('listen.tls') ?? '', /loopback/);
  assert.match(byPath.get('listen.allowedHosts') ?? '', /DNS-rebinding/);

  const emptyHosts = problemsOf(() =>
    buildConfig({
      listen: { host: '10.0.0.5', allowedHosts: [], tls: { cert: 'c', key: 'k' } },
      auth: { ...JWT_AUTH, resource: 'https://mcp.example.com' },
      servers: { a: { url: URL_A } },
    }),
  );
  assert.deepEqual(paths(emptyHosts), ['listen.allowedHosts']);
});

test('sharing: shared with a per-principal credential (mint, token-exchange) is refused: one process would act for whoever asked last', () => {
  for (const credential of [
    { mode: 'mint' },
    {
      mode: 'token-exchange',
      tokenEndpoint: 'https://login.example.com/token',
      clientId: 'gw',
      clientSecret: 'x',
    },
  ]) {
    const problems = problemsOf(() =>
      buildConfig({
        auth: JWT_AUTH,
        signing: { keysFile: '/etc/portcullis/keys.json' },
        servers: {
          s: { transport: 'stdio', command: 'node', sharing: 'shared', credential },
        },
      }),
    );
    assert.ok(
      problems.some(
        (p) => p.path === 'servers.s.sharing' && /per-principal credential/.test(p.message),
      ),
      JSON.stringify(problems),
    );
  }
});

test('a non-loopback admin listener needs admin.allowedHosts (DNS rebinding)', () => {
  const problems = problemsOf(() =>
    buildConfig({ admin: { host: '0.0.0.0' }, auth: JWT_AUTH, servers: { a: { url: URL_A } } }),
  );
  assert.deepEqual(paths(problems), ['admin.allowedHosts']);
  assert.match(problems[0]?.message ?? '', /DNS-rebinding/);
  buildConfig({
    admin: { host: '0.0.0.0', allowedHosts: ['*'] },
    auth: JWT_AUTH,
    servers: { a: { url: URL_A } },
  });
});

test('listen.tls needs both cert and key', () => {
  const problems = problemsOf(() =>
    buildConfig({ listen: { tls: { cert: 'c' } }, servers: { a: { url: URL_A } } }),
  );
  assert.deepEqual(problems, [{ path: 'listen.tls.key', message: 'is required' }]);
});

test('admin.port must differ from listen.port unless a port is 0 or admin is off', () => {
  const servers = { a: { url: URL_A } };
  const auth = NO_AUTH;
  assert.deepEqual(
    problemsOf(() => buildConfig({ listen: { port: 9000 }, admin: { port: 9000 }, auth, servers })),
    [{ path: 'admin.port', message: 'must differ from listen.port' }],
  );
  buildConfig({ listen: { port: 0 }, admin: { port: 0 }, auth, servers });
  buildConfig({ listen: { port: 9000 }, admin: { port: 9000, enabled: false }, auth, servers });
});

test('authentication is JWT by default, and JWT needs an issuer and its keys', () => {
  const problems = problemsOf(() => buildConfig({ servers: { a: { url: URL_A } } }));
  assert.deepEqual(paths(problems), ['auth.jwt.issuer', 'auth.jwt.jwksUrl']);
  assert.match(problems[0]?.message ?? '', /--auth none/);
  assert.equal(buildConfig({ auth: JWT_AUTH, servers: { a: { url: URL_A } } }).auth.mode, 'jwt');
  const hmacOnly = buildConfig({
    auth: { jwt: { issuer: 'iss', hmacSecret: 's'.repeat(32) } },
    servers: { a: { url: URL_A } },
  });
  assert.equal(hmacOnly.auth.jwt.hmacSecret, 's'.repeat(32));
});

test('JWT key sources and algorithms that cannot work together are refused', () => {
  const servers = { a: { url: URL_A } };
  const both = problemsOf(() =>
    buildConfig({
      auth: { jwt: { ...JWT_AUTH.jwt, jwksFile: '/etc/keys.json' } },
      servers,
    }),
  );
  assert.deepEqual(paths(both), ['auth.jwt.jwksFile']);
  const hmacWithoutSecret = problemsOf(() =>
    buildConfig({ auth: { jwt: { ...JWT_AUTH.jwt, algorithms: ['ES256', 'HS256'] } }, servers }),
  );
  assert.deepEqual(hmacWithoutSecret, [
    { path: 'auth.jwt.algorithms', message: 'HS256 need auth.jwt.hmacSecret' },
  ]);
  // `none` is not an algorithm the schema knows.
  assert.deepEqual(
    paths(
      problemsOf(() =>
        buildConfig({ auth: { jwt: { ...JWT_AUTH.jwt, algorithms: ['none'] } }, servers }),
      ),
    ),
    ['auth.jwt.algorithms[0]'],
  );
  const shortSecret = problemsOf(() =>
    buildConfig({ auth: { jwt: { issuer: 'iss', hmacSecret: 'short' } }, servers }),
  );
  assert.deepEqual(paths(shortSecret), ['auth.jwt.hmacSecret']);
});

test('each credential mode takes its own keys, and says which are missing or foreign', () => {
  const auth = JWT_AUTH;
  const problems = problemsOf(() =>
    buildConfig({
      auth,
      servers: {
        a: { url: URL_A, credential: { mode: 'static' } },
        b: { url: URL_A, credential: { mode: 'static', value: 'v', file: '/f' } },
        c: { url: URL_A, credential: { mode: 'mint', value: 'v' } },
        d: { url: URL_A, credential: { mode: 'token-exchange', clientSecret: 's' } },
        e: { url: URL_A, credential: { mode: 'none', scopes: ['x'] } },
      },
    }),
  );
  assert.deepEqual(problems.map((p) => `${p.path}: ${p.message}`).sort(), [
    'servers.a.credential: mode "static" needs exactly one of value and file',
    'servers.b.credential: mode "static" needs exactly one of value and file',
    'servers.c.credential.value: is not used by mode "mint"',
    'servers.c.credential: mode "mint" needs signing.keysFile (create one with: portcullis keys generate)',
    'servers.d.credential.clientId: is required by mode "token-exchange"',
    'servers.d.credential.tokenEndpoint: is required by mode "token-exchange"',
    'servers.e.credential.scopes: is not used by mode "none"',
  ]);
  const ok = buildConfig({
    auth,
    signing: { keysFile: '/etc/portcullis/keys.json' },
    servers: {
      a: { url: URL_A, credential: { mode: 'static', header: 'x-api-key', value: 'v' } },
      b: { url: URL_A, credential: { mode: 'mint', scopes: ['read'] } },
      c: {
        url: URL_A,
        credential: {
          mode: 'token-exchange',
          tokenEndpoint: 'https://login.example.com/token',
          clientId: 'gw',
          clientSecretFile: '/run/secret',
        },
      },
    },
  });
  assert.equal(ok.servers.b?.credential.mode, 'mint');
  assert.equal(ok.servers.b?.credential.ttlMs, DEFAULT_MINT_TTL_MS);
});

test('credentials that act for an agent need JWT authentication', () => {
  const problems = problemsOf(() =>
    buildConfig({
      auth: NO_AUTH,
      signing: { keysFile: '/etc/keys.json' },
      servers: {
        a: { url: URL_A, credential: { mode: 'mint' } },
        b: {
          url: URL_A,
          credential: {
            mode: 'token-exchange',
            tokenEndpoint: 'https://login.example.com/token',
            clientId: 'gw',
            clientSecret: 's',
          },
        },
      },
    }),
  );
  assert.deepEqual(paths(problems), ['servers.a.credential', 'servers.b.credential']);
  for (const p of problems) assert.match(p.message, /auth\.mode "jwt"/);
});

test('the admin credential is one of token and tokenFile, and at least 32 characters', () => {
  const servers = { a: { url: URL_A } };
  assert.deepEqual(
    paths(
      problemsOf(() =>
        buildConfig({
          auth: NO_AUTH,
          admin: { token: 't'.repeat(32), tokenFile: '/f' },
          servers,
        }),
      ),
    ),
    ['admin.tokenFile'],
  );
  assert.deepEqual(
    paths(problemsOf(() => buildConfig({ auth: NO_AUTH, admin: { token: 'short' }, servers }))),
    ['admin.token'],
  );
});

test('plain HTTP off loopback only behind a TLS proxy, said so; and never without authentication', () => {
  const servers = { a: { url: URL_A } };
  const listen = { host: '0.0.0.0', allowedHosts: ['gw:8080'] };
  const auth = { ...JWT_AUTH, resource: 'https://mcp.example.com' };
  assert.deepEqual(paths(problemsOf(() => buildConfig({ auth, listen, servers }))), ['listen.tls']);
  const behind = buildConfig({
    auth,
    listen: { ...listen, behindProxy: true },
    servers,
  });
  assert.equal(behind.listen.behindProxy, true);
  assert.deepEqual(
    paths(
      problemsOf(() =>
        buildConfig({ auth: NO_AUTH, listen: { ...listen, behindProxy: true }, servers }),
      ),
    ),
    ['auth.mode'],
  );
});

test('cluster needs one secret, a shared store, and an address others can reach', () => {
  const servers = { a: { url: URL_A } };
  const redis = { kind: 'redis' };
  const secret = 's'.repeat(32);
  assert.deepEqual(
    paths(problemsOf(() => buildConfig({ auth: NO_AUTH, store: redis, cluster: {}, servers }))),
    ['cluster.secret'],
  );
  assert.deepEqual(
    paths(problemsOf(() => buildConfig({ auth: NO_AUTH, cluster: { secret }, servers }))),
    ['cluster'],
  );
  assert.deepEqual(
    paths(
      problemsOf(() =>
        buildConfig({ auth: NO_AUTH, store: redis, cluster: { host: '0.0.0.0', secret }, servers }),
      ),
    ),
    ['cluster.advertise'],
  );
  const ok = buildConfig({ auth: NO_AUTH, store: redis, cluster: { secret }, servers });
  assert.equal(ok.cluster?.port, 9091);
});

// --- the documentation --------------------------------------------------------

test('docs/configuration.md documents every key of the schema, with its default', async () => {
  const docs = await readFile(DOCS, 'utf8');
  // Reference rows: | `listen.port` | type | default | what it does |
  const rows = new Map<string, string>();
  for (const line of docs.split('\n')) {
    const m = /^\|\s*`([^`]+)`\s*\|(.*)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) rows.set(m[1], m[2]);
  }
  const known = new Set(SCHEMA_KEYS.map((k) => k.path));
  const topLevel = new Set(Object.keys(configSchema.properties));

  for (const { path, node } of SCHEMA_KEYS) {
    const row = rows.get(path);
    assert.ok(row !== undefined, `docs/configuration.md has a row for \`${path}\``);
    if (node.default !== undefined) {
      const shown =
        typeof node.default === 'object' ? JSON.stringify(node.default) : String(node.default);
      assert.ok(row.includes(`\`${shown}\``), `the row for ${path} gives its default \`${shown}\``);
    }
    for (const value of node.enum ?? []) {
      assert.ok(
        row.includes(`\`${String(value)}\``),
        `the row for ${path} names \`${String(value)}\``,
      );
    }
  }
  // …and documents no key the schema does not have.
  for (const path of rows.keys()) {
    const head = path.split('.')[0] ?? '';
    if (topLevel.has(head)) assert.ok(known.has(path), `\`${path}\` in the docs is in the schema`);
  }
});

test('docs/configuration.md describes the ${ENV} rules, the rules across keys and the CLI', async () => {
  const docs = await readFile(DOCS, 'utf8');
  for (const needle of [
    '`${NAME}`',
    '`${NAME:-fallback}`',
    '`$${`',
    'is not set',
    'loopback',
    '`--host H`',
    '`--port P`',
    '`--admin-port P`',
    '`--server NAME=URL`',
    '`--auth none`',
    '`--log-level LEVEL`',
    '`--demo`',
    '`--config FILE`',
    'portcullis config check',
  ]) {
    assert.ok(docs.includes(needle), `docs/configuration.md mentions ${needle}`);
  }
});

test('a config file written to disk loads with the given environment', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'gateway.yaml');
  await writeFile(
    file,
    'auth: {mode: none}\nservers:\n  a:\n    url: ${A_URL:-http://127.0.0.1:1/mcp}\n',
  );
  assert.equal((await loadConfigFile(file, {})).servers.a?.url, 'http://127.0.0.1:1/mcp');
  assert.equal((await loadConfigFile(file, { A_URL: URL_A })).servers.a?.url, URL_A);
});

test('docs/architecture.md lists every error code the gateway can return', async () => {
  const { errorCatalog } = await import('../src/errors/index.js');
  const docs = await readFile(join(ROOT, 'docs', 'architecture.md'), 'utf8');
  for (const { code } of errorCatalog()) {
    // A row may group codes of one area: `PORTCULLIS_ERR_AUTH_X` / `_Y` names both.
    const suffixes = [...code.matchAll(/_/g)].map((m) => code.slice(m.index));
    assert.ok(
      docs.includes(`\`${code}\``) || suffixes.some((s) => docs.includes(`/ \`${s}\``)),
      `docs/architecture.md names ${code}`,
    );
  }
});
