/**
 * The one JSON Schema every Portcullis configuration is validated against.
 * Defaults live here and only here; unknown keys are rejected everywhere
 * (`additionalProperties: false`) so a typo never silently turns a control off.
 * `docs/configuration.md` documents every key and is checked against this file.
 */
import {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
  DEFAULT_STORE_KEY_PREFIX,
} from '../store/index.js';
import type { VirtualToolConfig } from '../policy/virtual.js';

export const DEFAULT_PORT = 8080;
export const DEFAULT_ADMIN_PORT = 9090;
export const DEFAULT_BODY_LIMIT_BYTES = 4 * 1024 * 1024;
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 72_000;
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 15_000;
export const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_UPSTREAM_HEADERS_TIMEOUT_MS = 30_000;
export const DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS = 300_000;
/** 0 = no cap: every open SSE stream holds an upstream connection of its own. */
export const DEFAULT_UPSTREAM_CONNECTIONS = 0;
export const DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_SESSION_IDLE_TIMEOUT_MS = 30 * 60_000;
export const DEFAULT_MAX_SESSIONS = 10_000;
/**
 * Quotas. A principal gets a share small enough that one agent gone wrong
 * cannot crowd out its tenant, and a tenant one that cannot crowd out the
 * others; the global in-flight cap is further lowered to fit the process's
 * open-file limit.
 */
export const DEFAULT_QUOTAS_PER_PRINCIPAL = {
  sessions: 64,
  legacyConnections: 16,
  stdioProcesses: 16,
  inflight: 128,
} as const;
export const DEFAULT_QUOTAS_PER_TENANT = {
  sessions: 1_000,
  legacyConnections: 256,
  stdioProcesses: 64,
  inflight: 1_024,
} as const;
export const DEFAULT_GLOBAL_INFLIGHT = 8_192;
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;
/** The internal listener replicas forward to (cluster.port). */
export const DEFAULT_CLUSTER_PORT = 9091;
export const DEFAULT_RETRY_HINT_MS = 1_000;
export const DEFAULT_JWKS_TIMEOUT_MS = 3_000;
/** Least time between two JWKS fetches triggered by tokens naming an unknown key. */
export const DEFAULT_JWKS_COOLDOWN_MS = 30_000;
export const DEFAULT_JWKS_REFRESH_INTERVAL_MS = 5 * 60_000;
export const DEFAULT_CLOCK_SKEW_MS = 30_000;
/** Longest `exp - iat` accepted: only short-lived tokens get in. */
export const DEFAULT_MAX_TOKEN_LIFETIME_MS = 15 * 60_000;
export const DEFAULT_MAX_TOKEN_BYTES = 8 * 1024;
export const DEFAULT_TOKEN_CACHE_ENTRIES = 10_000;
export const DEFAULT_DPOP_MAX_AGE_MS = 5 * 60_000;
export const DEFAULT_MINT_TTL_MS = 5 * 60_000;
export const DEFAULT_TOKEN_EXCHANGE_TIMEOUT_MS = 5_000;
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
export {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
  DEFAULT_STORE_KEY_PREFIX,
};

/** Asymmetric signatures only: HMAC needs `auth.jwt.hmacSecret`, and `none` is never accepted. */
export const DEFAULT_JWT_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
] as const;
export const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'] as const;
export const DEFAULT_DPOP_ALGORITHMS = [
  'ES256',
  'ES384',
  'EdDSA',
  'Ed25519',
  'RS256',
  'PS256',
] as const;

/** Server names become URL path segments: `/mcp/<name>`. */
export const SERVER_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$';

const ms = (def: number, description: string) =>
  ({ type: 'integer', minimum: 0, default: def, description }) as const;

const UPSTREAM_TIMEOUT_DESCRIPTIONS = {
  connectMs: 'Time to open a TCP/TLS connection.',
  headersMs: 'Time from sending a request to the upstream answering with headers; then 504.',
  idleMs:
    'Longest silence on a response stream answering a request; 0 = none. Listen/GET streams are exempt.',
} as const;

const upstreamTimeouts = {
  type: 'object',
  additionalProperties: false,
  default: {},
  properties: {
    connectMs: ms(DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS, UPSTREAM_TIMEOUT_DESCRIPTIONS.connectMs),
    headersMs: ms(DEFAULT_UPSTREAM_HEADERS_TIMEOUT_MS, UPSTREAM_TIMEOUT_DESCRIPTIONS.headersMs),
    idleMs: ms(DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS, UPSTREAM_TIMEOUT_DESCRIPTIONS.idleMs),
  },
} as const;

const QUOTA_DESCRIPTIONS = {
  sessions: 'Legacy sessions open at once.',
  legacyConnections: 'Legacy HTTP+SSE connections (GET /mcp/<name>/sse) open at once.',
  stdioProcesses: 'stdio server processes started for sessions and stateless callers.',
  inflight: 'Requests in flight at once (open streams included).',
} as const;

const quotaSet = (defaults: Readonly<Record<keyof typeof QUOTA_DESCRIPTIONS, number>>) =>
  ({
    type: 'object',
    additionalProperties: false,
    default: {},
    properties: Object.fromEntries(
      Object.entries(QUOTA_DESCRIPTIONS).map(([key, description]) => [
        key,
        {
          type: 'integer',
          minimum: 1,
          default: defaults[key as keyof typeof QUOTA_DESCRIPTIONS],
          description,
        },
      ]),
    ),
  }) as const;

const override = (description: string) => ({ type: 'integer', minimum: 0, description }) as const;

/**
 * A server's own timeouts carry no defaults: a key left out must fall back to
 * `upstreamDefaults.timeouts`, not be filled with the built-in value that
 * would then override the operator's default.
 */
const upstreamTimeoutOverrides = {
  type: 'object',
  additionalProperties: false,
  properties: {
    connectMs: override(UPSTREAM_TIMEOUT_DESCRIPTIONS.connectMs),
    headersMs: override(UPSTREAM_TIMEOUT_DESCRIPTIONS.headersMs),
    idleMs: override(UPSTREAM_TIMEOUT_DESCRIPTIONS.idleMs),
  },
} as const;

/** stdio: how the process is contained (upstream/sandbox.ts); defaults are the SANDBOX_DEFAULTS. */
const sandboxSchema = {
  type: 'object',
  additionalProperties: false,
  description: 'stdio: the bubblewrap sandbox.',
  properties: {
    mode: {
      enum: ['auto', 'required', 'off'],
      description:
        '"auto" (default): sandboxed where bwrap works, else run without and warn; "required": never run without; "off".',
    },
    network: { type: 'boolean', description: 'Keep the network (default false: none).' },
    writablePaths: {
      type: 'array',
      items: { type: 'string', minLength: 1 },
      description: 'Host paths the process may write (bound read-write); the rest is read-only.',
    },
    hidePaths: {
      type: 'array',
      items: { type: 'string', minLength: 1 },
      description: "Host files masked inside, besides the gateway's own secrets.",
    },
    memoryBytes: {
      type: 'integer',
      minimum: 1,
      description:
        'Address-space limit (RLIMIT_AS). None by default: V8 and WebAssembly reserve far more address space than they use, and a limit kills Node servers that call fetch.',
    },
    cpuSeconds: { type: 'integer', minimum: 1, description: 'CPU time limit (default 3600).' },
    maxOpenFiles: { type: 'integer', minimum: 16, description: 'Open files (default 1024).' },
    maxProcesses: {
      type: 'integer',
      minimum: 4,
      description: 'Processes and threads of its user (default 256).',
    },
    tmpBytes: {
      type: 'integer',
      minimum: 1,
      description: 'Size of its private /tmp (default 64 MiB).',
    },
    gid: {
      type: 'integer',
      minimum: 0,
      description:
        'Group it runs as when the gateway is root (default 65534); its user is one of its own.',
    },
  },
} as const;

/**
 * What the upstream is sent instead of the client's token (which never leaves
 * the gateway). One object for every mode; which keys a mode needs or refuses
 * is checked after the schema (config/load.ts), with a message per key.
 */
const credentialSchema = {
  type: 'object',
  additionalProperties: false,
  default: { mode: 'none' },
  properties: {
    mode: {
      enum: ['none', 'static', 'mint', 'token-exchange'],
      default: 'none',
      description:
        '"none"; "static": a header from config; "mint": a JWT the gateway signs for this upstream; "token-exchange": RFC 8693 at tokenEndpoint.',
    },
    header: {
      type: 'string',
      minLength: 1,
      default: 'authorization',
      description: 'static: the header to set.',
    },
    value: {
      type: 'string',
      minLength: 1,
      description: 'static: the header value, e.g. "Bearer ${DOCS_API_TOKEN}".',
    },
    file: {
      type: 'string',
      minLength: 1,
      description: 'static: file whose content (trimmed) is the value.',
    },
    audience: {
      type: 'string',
      minLength: 1,
      description:
        'mint: "aud" of the minted token (default: the server URL); token-exchange: the audience parameter.',
    },
    scopes: {
      type: 'array',
      items: { type: 'string', minLength: 1 },
      description: 'mint: the most the upstream token may carry, narrowed to what the agent holds.',
    },
    ttlMs: {
      type: 'integer',
      minimum: 10_000,
      maximum: 3_600_000,
      default: DEFAULT_MINT_TTL_MS,
      description: 'mint: lifetime of a minted token.',
    },
    perCall: {
      type: 'boolean',
      description:
        'mint: one credential per tool call, scoped by the verb class of the tool in the manifest (read, write, destructive), living perCallTtlMs (default false).',
    },
    perCallTtlMs: {
      type: 'integer',
      minimum: 1_000,
      maximum: 300_000,
      description: 'mint with perCall: the lifetime of a per-call credential (default 30000).',
    },
    scopesByVerb: {
      type: 'object',
      additionalProperties: false,
      properties: {
        read: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description: 'Scopes of a read tool’s credential (default ["read"]).',
        },
        write: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description: 'Of a write tool’s (default ["read", "write"]).',
        },
        destructive: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description: 'Of a destructive tool’s (default ["read", "write", "destructive"]).',
        },
      },
      description: 'mint with perCall: the scopes each verb class gets.',
    },
    tokenEndpoint: {
      type: 'string',
      pattern: '^https?://',
      description: 'token-exchange: the endpoint.',
    },
    clientId: {
      type: 'string',
      minLength: 1,
      description: "token-exchange: the gateway's client id.",
    },
    clientSecret: {
      type: 'string',
      minLength: 1,
      description: 'token-exchange: e.g. "${TX_SECRET}".',
    },
    clientSecretFile: {
      type: 'string',
      minLength: 1,
      description: 'token-exchange: secret in a file.',
    },
    resource: {
      type: 'string',
      minLength: 1,
      description: 'token-exchange: the resource parameter (default: the server URL).',
    },
    scope: { type: 'string', minLength: 1, description: 'token-exchange: the scope parameter.' },
    timeoutMs: ms(DEFAULT_TOKEN_EXCHANGE_TIMEOUT_MS, 'token-exchange: bound on one token request.'),
  },
} as const;

/** The keys of a journal of files (`audit.file`, `audit.capture`): rotation, retention, bound. */
const journalKeys = (queueMax: number, what: string) =>
  ({
    maxFileBytes: {
      type: 'integer',
      minimum: 1024,
      default: 104_857_600,
      description: 'A new file begins past this size.',
    },
    maxFileAgeMs: ms(86_400_000, '…or past this age.'),
    retentionDays: {
      type: 'integer',
      minimum: 0,
      default: 90,
      description: 'Files last written longer ago are removed; 0 keeps every file.',
    },
    queueMax: {
      type: 'integer',
      minimum: 1,
      default: queueMax,
      description: `${what} waiting for the disk before new requests are refused (503).`,
    },
    fsync: {
      type: 'boolean',
      default: true,
      description: 'fdatasync each batch before it counts as written.',
    },
  }) as const;

/** Keys each credential mode takes (besides `mode`), and the ones it needs. */
export const CREDENTIAL_KEYS = {
  none: { allowed: [], required: [] },
  static: { allowed: ['header', 'value', 'file'], required: [] },
  mint: {
    allowed: ['audience', 'scopes', 'ttlMs', 'perCall', 'perCallTtlMs', 'scopesByVerb'],
    required: [],
  },
  'token-exchange': {
    allowed: [
      'tokenEndpoint',
      'clientId',
      'clientSecret',
      'clientSecretFile',
      'audience',
      'resource',
      'scope',
      'timeoutMs',
    ],
    required: ['tokenEndpoint', 'clientId'],
  },
} as const;

/** Keys the schema fills in on every credential, whatever its mode. */
export const CREDENTIAL_DEFAULTED_KEYS = ['header', 'ttlMs', 'timeoutMs'] as const;

/** A tenant name as it appears in tokens: printable, no control characters. */
export const TENANT_NAME_PATTERN = '^[^\\u0000-\\u001f\\u007f]{1,128}$';
/** A policy rule id: what errors, logs and metrics name. */
export const RULE_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$';

const grantList = (what: string) =>
  ({
    type: 'array',
    items: { type: 'string', minLength: 1, maxLength: 1024 },
    maxItems: 10_000,
    description: `${what}: exact names or globs (\`*\` matches any run of characters); ["*"] grants all. Absent: none.`,
  }) as const;

const serverGrantSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    tools: grantList('Tools the tenant may list and call'),
    prompts: grantList('Prompts it may list and get'),
    resources: grantList('Resource URIs it may list, read and subscribe to'),
    resourceTemplates: grantList(
      'Resource templates it may list and complete; a URI expanding a listed (non-glob) template may be read',
    ),
    sampling: {
      type: 'boolean',
      default: false,
      description:
        "Whether the server may ask the tenant's clients for sampling (sampling/createMessage).",
    },
    elicitation: {
      type: 'array',
      items: { enum: ['form', 'url'] },
      uniqueItems: true,
      default: [],
      description: "The elicitation modes the server may ask the tenant's clients for.",
    },
    roots: {
      type: 'boolean',
      default: false,
      description: "Whether the server may ask the tenant's clients for their roots (roots/list).",
    },
  },
} as const;

/** Limits on what a guard's options may hold (they are compiled at load). */
const MAX_GUARD_LIST_ENTRIES = 1_000;
const MAX_GUARD_PATTERN_CHARS = 4_096;
const MAX_GUARDS_PER_TOOL = 64;

/** Virtual tools one server may offer. */
export const MAX_VIRTUAL_TOOLS_PER_SERVER = 256;

const nameList = (description: string) => ({
  type: 'array',
  maxItems: MAX_GUARD_LIST_ENTRIES,
  items: { type: 'string', minLength: 1, maxLength: 256 },
  description,
});

/** What every guard has; its kind's options are added to it. */
const guardCommon = {
  argument: {
    type: 'string',
    minLength: 1,
    maxLength: 1024,
    description:
      'The argument checked: a property name (`sql`) or a JSON pointer into the arguments (`/filters/0/value`). An absent argument is not checked; an array is checked element by element (except by `size`).',
  },
  mode: {
    enum: ['enforce', 'shadow'],
    default: 'enforce',
    description: '"shadow": report what the guard would refuse, and refuse nothing.',
  },
  id: {
    type: 'string',
    pattern: RULE_ID_PATTERN,
    description:
      'The rule id errors, logs and metrics name (default: servers.<server>.tools.<tool>.guards.<index>).',
  },
} as const;

const guardOf = (kind: string, properties: Record<string, unknown>, required: string[] = []) => ({
  type: 'object',
  additionalProperties: false,
  required: ['kind', 'argument', ...required],
  properties: { kind: { const: kind }, ...guardCommon, ...properties },
});

const guardSchema = {
  type: 'object',
  required: ['kind'],
  properties: { kind: { enum: ['sql', 'shell', 'path', 'url', 'size', 'pattern'] } },
  discriminator: { propertyName: 'kind' },
  oneOf: [
    guardOf('sql', {
      dialect: {
        enum: ['postgresql', 'mysql'],
        default: 'postgresql',
        description:
          'The grammar: PostgreSQL (libpg-query, the real parser) or MySQL (node-sql-parser).',
      },
      readOnly: {
        type: 'boolean',
        description:
          'Exactly one statement, a plain query, calling no dangerous function (default: true unless `statements` is given).',
      },
      statements: nameList(
        'Statement kinds allowed when not readOnly (select, insert, update, delete, …).',
      ),
      tables: nameList('Only these tables (`users`, `public.users`) may be named.'),
      functions: nameList('More functions to refuse, beside the built-in list.'),
      allowFunctions: nameList('Functions taken off the built-in list of dangerous ones.'),
      maxStatements: {
        type: 'integer',
        minimum: 1,
        maximum: 100,
        description: 'How many statements one argument may hold when not readOnly (default 1).',
      },
      maxLength: {
        type: 'integer',
        minimum: 1,
        maximum: 1048576,
        default: 65536,
        description: 'Longer SQL is refused unparsed (characters).',
      },
    }),
    guardOf('shell', {
      programs: nameList('Only these programs may be the command (argv[0]).'),
    }),
    guardOf(
      'path',
      {
        root: {
          type: 'string',
          minLength: 1,
          maxLength: 4096,
          description: 'The absolute directory the path must stay inside.',
        },
        resolveSymlinks: {
          type: 'boolean',
          default: false,
          description:
            'Resolve symlinks on this host (the root is local): a link inside the root that points out of it is refused.',
        },
      },
      ['root'],
    ),
    guardOf('url', {
      schemes: nameList('Schemes allowed (default: http, https).'),
      hosts: nameList('Only these hosts (`api.example.com`, `*.example.com` for subdomains).'),
      resolve: {
        type: 'boolean',
        default: true,
        description: 'Resolve the host and check every address it resolves to.',
      },
      allowPrivate: {
        type: 'boolean',
        default: false,
        description:
          'Allow private, loopback, link-local and metadata addresses (for internal tools only: this turns the SSRF check off).',
      },
    }),
    guardOf('size', {
      maxLength: { type: 'integer', minimum: 0, description: "A string's length in characters." },
      maxItems: { type: 'integer', minimum: 0, description: "An array's length." },
      maxBytes: { type: 'integer', minimum: 0, description: "The UTF-8 size of the value's JSON." },
    }),
    guardOf('pattern', {
      deny: {
        type: 'array',
        maxItems: MAX_GUARD_LIST_ENTRIES,
        items: { type: 'string', minLength: 1, maxLength: MAX_GUARD_PATTERN_CHARS },
        description: 'RE2 patterns: the value is refused when any is found in it.',
      },
      allow: {
        type: 'string',
        minLength: 1,
        maxLength: MAX_GUARD_PATTERN_CHARS,
        description: 'An RE2 pattern the whole value must match.',
      },
    }),
  ],
} as const;

const toolsSchema = {
  type: 'object',
  propertyNames: { minLength: 1, maxLength: 256 },
  additionalProperties: {
    type: 'object',
    additionalProperties: false,
    required: ['guards'],
    properties: {
      guards: {
        type: 'array',
        maxItems: MAX_GUARDS_PER_TOOL,
        items: guardSchema,
        description: 'Checks on the arguments of each call of this tool, in order.',
      },
    },
  },
  description:
    'Per tool: guards on its arguments (sql, shell, path, url, size, pattern). A refusal answers -32602 naming the guard and the argument; nothing reaches the server.',
} as const;

const ruleSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'when'],
  properties: {
    id: {
      type: 'string',
      pattern: RULE_ID_PATTERN,
      description: 'Named in errors, logs and metrics.',
    },
    when: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description:
        'A CEL condition over principal, server, method, target, arguments and message; the rule applies when it is true.',
    },
    effect: { enum: ['deny'], default: 'deny', description: 'What the rule does when it applies.' },
    servers: {
      type: 'array',
      items: { type: 'string', pattern: SERVER_NAME_PATTERN },
      description: 'Only messages to these servers (default: all the tenant may use).',
    },
    methods: {
      type: 'array',
      items: { type: 'string', minLength: 1 },
      description: 'Only these JSON-RPC methods (default: every client request).',
    },
    targets: grantList('Only these tools, prompts or resource URIs'),
    message: {
      type: 'string',
      maxLength: 512,
      description: 'The sentence the agent gets when the rule denies.',
    },
    mode: {
      enum: ['enforce', 'shadow'],
      default: 'enforce',
      description: '"shadow": record what the rule would have denied, deny nothing.',
    },
  },
} as const;

/** The default life of a concurrency lease: a replica that dies frees its slots after this. */
export const DEFAULT_CONCURRENCY_LEASE_MS = 300_000;

const bucketSchema = (description: string) =>
  ({
    type: 'object',
    additionalProperties: false,
    required: ['capacity', 'refillPerSecond'],
    properties: {
      capacity: {
        type: 'integer',
        minimum: 1,
        maximum: 1_000_000_000,
        description: 'The burst: how many requests the bucket holds when full.',
      },
      refillPerSecond: {
        type: 'number',
        exclusiveMinimum: 0,
        maximum: 1_000_000,
        description: 'The sustained rate: tokens added per second (0.5: one every two seconds).',
      },
    },
    description,
  }) as const;

/** What a tenant, or every tenant by default, may send (`rateLimits`, `tenants.<t>.rateLimits`). */
const rateLimitProperties = {
  tenant: bucketSchema('Requests of the tenant: all its agents, on every server, together.'),
  subject: bucketSchema("Requests of one agent of the tenant (its token's `sub`)."),
  tools: {
    type: 'object',
    maxProperties: 256,
    propertyNames: { pattern: '^[^/]+/.+$', maxLength: 512 },
    additionalProperties: bucketSchema('Calls of this tool by the tenant.'),
    description:
      'Per tool, keyed `<server>/<tool>` (the name agents call): its calls by the tenant.',
  },
  concurrency: {
    type: 'integer',
    minimum: 1,
    maximum: 1_000_000,
    description: 'Requests of the tenant in flight at once, on every replica together.',
  },
} as const;

const tenantSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    servers: {
      type: 'object',
      default: {},
      propertyNames: { pattern: SERVER_NAME_PATTERN },
      additionalProperties: serverGrantSchema,
      description: 'The servers this tenant may use, and what on each.',
    },
    rules: {
      type: 'array',
      items: ruleSchema,
      default: [],
      description: 'Deny rules checked, in order, on every client request the grants allow.',
    },
    mode: {
      enum: ['enforce', 'shadow'],
      default: 'enforce',
      description:
        '"shadow": the grants record what they would have denied or hidden, and deny and hide nothing.',
    },
    maxResultBytes: {
      type: 'integer',
      minimum: 1024,
      description:
        "The largest tool result or resource contents this tenant's agents get (its JSON in UTF-8 bytes); a larger one is refused with an error in its place.",
    },
    rateLimits: {
      type: 'object',
      additionalProperties: false,
      properties: rateLimitProperties,
      description:
        "This tenant's limits, replacing the top-level `rateLimits` key by key (its `tools` merged with theirs).",
    },
  },
} as const;

export const configSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://portcullis.dev/schema/config.json',
  title: 'Portcullis configuration',
  type: 'object',
  additionalProperties: false,
  required: ['servers'],
  properties: {
    listen: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        host: { type: 'string', minLength: 1, default: '127.0.0.1' },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: DEFAULT_PORT },
        tls: {
          type: 'object',
          additionalProperties: false,
          required: ['cert', 'key'],
          properties: {
            cert: { type: 'string', minLength: 1, description: 'PEM certificate chain file.' },
            key: { type: 'string', minLength: 1, description: 'PEM private key file.' },
            clientCa: {
              type: 'string',
              minLength: 1,
              description:
                'PEM file of CAs for client certificates (mTLS). Set it to ask clients for a certificate; certificate-bound tokens (cnf.x5t#S256) then need the one they were issued for.',
            },
          },
        },
        behindProxy: {
          type: 'boolean',
          default: false,
          description:
            "Serve plain HTTP off loopback, because a proxy in front is the only way in: one that terminates TLS (an ingress, a load balancer), or one itself reachable on loopback only (the compose file's nginx). Keep the port unreachable from anywhere else.",
        },
        allowedHosts: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description:
            'Host header values accepted (host or host:port, "*" for any). Default: loopback names when listening on loopback; required otherwise.',
        },
        allowedOrigins: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description:
            'Origin values accepted when a request carries one. Default: http(s) loopback origins when listening on loopback, none otherwise.',
        },
        bodyLimitBytes: {
          type: 'integer',
          minimum: 1024,
          default: DEFAULT_BODY_LIMIT_BYTES,
        },
        headersTimeoutMs: ms(DEFAULT_HEADERS_TIMEOUT_MS, 'Time a client has to send headers.'),
        requestTimeoutMs: ms(
          DEFAULT_REQUEST_TIMEOUT_MS,
          'Time a client has to send a whole request; never applies to responses or streams.',
        ),
        keepAliveTimeoutMs: ms(DEFAULT_KEEP_ALIVE_TIMEOUT_MS, 'Idle keep-alive connection life.'),
        heartbeatIntervalMs: {
          type: 'integer',
          minimum: 100,
          default: DEFAULT_HEARTBEAT_INTERVAL_MS,
          description: 'SSE comment heartbeat on quiet streams.',
        },
      },
    },
    admin: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        enabled: { type: 'boolean', default: true },
        host: { type: 'string', minLength: 1, default: '127.0.0.1' },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: DEFAULT_ADMIN_PORT },
        token: {
          type: 'string',
          minLength: 32,
          description:
            'Bearer credential for the admin API (/admin/*) and /metrics, e.g. "${PORTCULLIS_ADMIN_TOKEN}". Without token or tokenFile the admin API is off and /metrics is open only on a loopback admin listener; /livez and /readyz are always open.',
        },
        tokenFile: {
          type: 'string',
          minLength: 1,
          description: 'File holding the admin credential.',
        },
        allowedHosts: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          description:
            'Host header values the admin listener accepts (host or host:port, "*" for any). Default: loopback names when admin.host is loopback; required otherwise.',
        },
        publicMetrics: {
          type: 'boolean',
          default: false,
          description:
            'Serve /metrics without the admin credential (for scrapers that cannot send one).',
        },
      },
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        mode: {
          enum: ['jwt', 'none'],
          default: 'jwt',
          description:
            '"jwt": every request needs a verified short-lived token. "none" is accepted only on a loopback listener.',
        },
        resource: {
          type: 'string',
          pattern: '^https?://[^/?#]+$',
          description:
            "The gateway's resource identifier (RFC 8707/9728): the public origin clients use, e.g. https://mcp.example.com. Each server's resource is <resource>/mcp/<name>. Default: the listener's own origin.",
        },
        authorizationServers: {
          type: 'array',
          items: { type: 'string', pattern: '^https?://' },
          default: [],
          description:
            'Issuer URLs listed in the protected-resource metadata; default: auth.jwt.issuer.',
        },
        requiredScopes: {
          type: 'array',
          items: { type: 'string', minLength: 1 },
          default: [],
          description:
            'Scopes every request needs; a token without them gets 403 insufficient_scope.',
        },
        jwt: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            issuer: {
              type: 'string',
              minLength: 1,
              description: 'Required "iss" (required in jwt mode).',
            },
            audiences: {
              type: 'array',
              items: { type: 'string', minLength: 1 },
              default: [],
              description:
                "Audiences accepted for every server besides the gateway's resource; a server's own resource is accepted for that server only.",
            },
            jwksUrl: {
              type: 'string',
              pattern: '^https?://',
              description: 'JWKS endpoint of the issuer.',
            },
            jwksFile: {
              type: 'string',
              minLength: 1,
              description: 'Local JWKS (JSON) or PEM public key(s), instead of jwksUrl.',
            },
            jwksTimeoutMs: ms(DEFAULT_JWKS_TIMEOUT_MS, 'Bound on one JWKS fetch.'),
            jwksCooldownMs: ms(
              DEFAULT_JWKS_COOLDOWN_MS,
              'Least time between refetches caused by tokens naming an unknown key.',
            ),
            jwksRefreshIntervalMs: ms(
              DEFAULT_JWKS_REFRESH_INTERVAL_MS,
              'Background refetch period; a failed fetch keeps the cached keys.',
            ),
            algorithms: {
              type: 'array',
              items: { enum: [...DEFAULT_JWT_ALGORITHMS, ...HMAC_ALGORITHMS] },
              minItems: 1,
              description:
                'Allowed "alg" values. Default: every asymmetric one; HS* only with hmacSecret.',
            },
            hmacSecret: {
              type: 'string',
              minLength: 32,
              description:
                'Shared secret for HS256/384/512 tokens, e.g. "${JWT_HMAC_SECRET}". Off unless set.',
            },
            clockSkewMs: ms(DEFAULT_CLOCK_SKEW_MS, 'Tolerance on exp, nbf and iat.'),
            maxLifetimeMs: {
              type: 'integer',
              minimum: 1000,
              default: DEFAULT_MAX_TOKEN_LIFETIME_MS,
              description: 'Longest exp - iat accepted.',
            },
            requiredClaims: {
              type: 'array',
              items: { type: 'string', minLength: 1 },
              default: [],
              description: 'Claims a token must carry besides iss, aud, exp, iat and sub.',
            },
            tenantClaim: {
              type: 'string',
              minLength: 1,
              default: 'tenant',
              description: 'Claim naming the tenant.',
            },
            defaultTenant: {
              type: 'string',
              minLength: 1,
              description:
                'Tenant of tokens without the tenant claim; unset, such tokens are refused.',
            },
            maxTokenBytes: {
              type: 'integer',
              minimum: 256,
              default: DEFAULT_MAX_TOKEN_BYTES,
            },
            cacheMaxEntries: {
              type: 'integer',
              minimum: 0,
              default: DEFAULT_TOKEN_CACHE_ENTRIES,
              description:
                'Verified tokens kept (by hash, until they expire); 0 turns the cache off.',
            },
          },
        },
        dpop: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            required: {
              type: 'boolean',
              default: false,
              description: 'Refuse bearer tokens: every token must be DPoP-bound (cnf.jkt).',
            },
            algorithms: {
              type: 'array',
              items: {
                enum: [...DEFAULT_DPOP_ALGORITHMS, 'ES512', 'RS384', 'RS512', 'PS384', 'PS512'],
              },
              minItems: 1,
              default: [...DEFAULT_DPOP_ALGORITHMS],
            },
            maxAgeMs: ms(DEFAULT_DPOP_MAX_AGE_MS, 'Oldest DPoP proof accepted (by its iat).'),
          },
        },
        revocation: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            failClosed: {
              type: 'boolean',
              default: true,
              description:
                'While the shared store cannot be trusted, refuse requests (503) instead of letting them pass unchecked.',
            },
          },
        },
      },
    },
    store: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        kind: {
          enum: ['memory', 'redis'],
          default: 'memory',
          description:
            '"memory" for one process; "redis" to share revocations and DPoP replay across replicas.',
        },
        url: { type: 'string', pattern: '^rediss?://', default: DEFAULT_REDIS_URL },
        keyPrefix: { type: 'string', default: DEFAULT_STORE_KEY_PREFIX },
        commandTimeoutMs: ms(DEFAULT_REDIS_COMMAND_TIMEOUT_MS, 'Bound on one Redis command.'),
        connectTimeoutMs: ms(
          DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
          'Bound on one Redis connection attempt.',
        ),
      },
    },
    signing: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        keysFile: {
          type: 'string',
          minLength: 1,
          description:
            'Private JWKS (`portcullis keys generate`) the gateway signs minted upstream credentials with; the public keys are served at /.well-known/jwks.json.',
        },
        activeKid: {
          type: 'string',
          minLength: 1,
          description: 'Key that signs; default: the first.',
        },
        issuer: {
          type: 'string',
          minLength: 1,
          description: '"iss" of minted tokens; default: auth.resource.',
        },
      },
    },
    audit: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description:
        'The audit trail (docs/audit.md): one record per message and per refused request, hash-chained, to every sink set here. No sink: no audit trail.',
      properties: {
        checkpointIntervalMs: ms(
          60_000,
          "A signed checkpoint of the chain's head at least this often while records come.",
        ),
        checkpointRecords: {
          type: 'integer',
          minimum: 1,
          default: 10_000,
          description: '…or after this many records, whichever is first.',
        },
        stdout: {
          type: 'object',
          additionalProperties: false,
          description: 'Records as JSON lines on standard output (or error), for a log collector.',
          properties: {
            fd: { enum: [1, 2], default: 1, description: '1: standard output; 2: standard error.' },
          },
        },
        file: {
          type: 'object',
          additionalProperties: false,
          required: ['dir'],
          description:
            'Records as JSON lines in a directory, rotated and kept for `retentionDays`.',
          properties: {
            dir: {
              type: 'string',
              minLength: 1,
              description: 'Directory of the audit files (made 0700 if missing).',
            },
            ...journalKeys(100_000, 'Records'),
          },
        },
        http: {
          type: 'object',
          additionalProperties: false,
          required: ['url', 'spoolDir'],
          description:
            'Records POSTed in batches to a SIEM, through an on-disk spool: an outage or a restart loses nothing.',
          properties: {
            url: { type: 'string', pattern: '^https?://', description: 'The collector endpoint.' },
            format: {
              enum: ['json', 'splunk-hec', 'elastic-bulk'],
              default: 'json',
              description:
                'json: an array of records; splunk-hec: HEC event batch; elastic-bulk: `_bulk` NDJSON of `create` actions.',
            },
            headers: {
              type: 'object',
              additionalProperties: { type: 'string' },
              default: {},
              description: 'Request headers, e.g. {"authorization": "Splunk ${SPLUNK_HEC_TOKEN}"}.',
            },
            spoolDir: {
              type: 'string',
              minLength: 1,
              description: 'Directory of the spool (made 0700 if missing).',
            },
            spoolMaxBytes: {
              type: 'integer',
              minimum: 1_048_576,
              default: 1_073_741_824,
              description: 'Bound on the spool; past it, new requests are refused (503).',
            },
            overflow: {
              enum: ['spool', 'block'],
              default: 'spool',
              description:
                'When the SIEM is behind: spool (keep spooling up to spoolMaxBytes) or block (refuse new requests once queueMax records wait).',
            },
            queueMax: {
              type: 'integer',
              minimum: 1,
              default: 100_000,
              description: 'With overflow block: records waiting before new requests are refused.',
            },
            batchMaxRecords: {
              type: 'integer',
              minimum: 1,
              default: 500,
              description: 'Records per POST, at most.',
            },
            flushIntervalMs: ms(1_000, 'A partial batch is sent after this long.'),
            timeoutMs: ms(10_000, 'Bound on one POST; then it is retried.'),
          },
        },
        redisStream: {
          type: 'object',
          additionalProperties: false,
          required: ['url'],
          description: 'Records XADDed to a Redis stream, trimmed by age.',
          properties: {
            url: { type: 'string', pattern: '^rediss?://', description: 'The Redis server.' },
            key: {
              type: 'string',
              minLength: 1,
              default: 'portcullis:audit',
              description: 'The stream.',
            },
            retentionDays: {
              type: 'integer',
              minimum: 1,
              default: 90,
              description: 'Entries older than this are trimmed.',
            },
            queueMax: {
              type: 'integer',
              minimum: 1,
              default: 100_000,
              description: 'Records waiting for Redis before new requests are refused (503).',
            },
          },
        },
        postgres: {
          type: 'object',
          additionalProperties: false,
          required: ['url'],
          description: 'Records in an append-only PostgreSQL table, partitioned by day.',
          properties: {
            url: {
              type: 'string',
              pattern: '^postgres(ql)?://',
              description: 'The database, e.g. postgres://audit@db/portcullis.',
            },
            table: {
              type: 'string',
              pattern: '^[a-z_][a-z0-9_]{0,50}$',
              default: 'portcullis_audit',
              description:
                "The table (made with its partitions if missing); at most 51 characters, so its partitions' names fit.",
            },
            retentionDays: {
              type: 'integer',
              minimum: 1,
              default: 90,
              description: 'Partitions older than this are dropped.',
            },
            queueMax: {
              type: 'integer',
              minimum: 1,
              default: 100_000,
              description: 'Records waiting for PostgreSQL before new requests are refused (503).',
            },
          },
        },
        capture: {
          type: 'object',
          additionalProperties: false,
          required: ['dir', 'keyFile'],
          description:
            'Capture mode: the full message of every message record, AES-256-GCM encrypted and bound to its record, for `portcullis audit replay`. Needs a record sink beside it.',
          properties: {
            dir: {
              type: 'string',
              minLength: 1,
              description: 'Directory of the capture files (made 0700).',
            },
            keyFile: {
              type: 'string',
              minLength: 1,
              description:
                'The 32-byte key as base64 or hex (`openssl rand -base64 32`), mode 0600 or stricter.',
            },
            ...journalKeys(10_000, 'Messages'),
          },
        },
      },
    },
    cluster: {
      type: 'object',
      additionalProperties: false,
      description:
        "How replicas reach each other. A session whose upstream side lives in one replica's process (a stdio server, a legacy HTTP+SSE connection) is served there, whichever replica the client reached: the others forward its requests to this internal listener, signed with the shared secret. Absent: such sessions are served only by the replica that opened them. Needs store.kind redis.",
      properties: {
        host: {
          type: 'string',
          minLength: 1,
          default: '127.0.0.1',
          description:
            "Address of the internal listener; the pod's own address (or 0.0.0.0) where replicas are on separate hosts.",
        },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: DEFAULT_CLUSTER_PORT },
        advertise: {
          type: 'string',
          pattern: '^https?://[^/#]+/?$',
          description:
            'How the other replicas reach this one, e.g. "http://${POD_IP}:9091". Default: http://<host>:<port>.',
        },
        secret: {
          type: 'string',
          minLength: 32,
          description:
            'The key every replica signs and checks forwarded requests with, e.g. "${PORTCULLIS_CLUSTER_SECRET}".',
        },
        secretFile: {
          type: 'string',
          minLength: 1,
          description: 'File holding the cluster secret (at least 32 bytes; read at start).',
        },
      },
    },
    sessions: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        idleTimeoutMs: {
          type: 'integer',
          minimum: 1000,
          default: DEFAULT_SESSION_IDLE_TIMEOUT_MS,
        },
        max: { type: 'integer', minimum: 1, default: DEFAULT_MAX_SESSIONS },
      },
    },
    quotas: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description:
        'What one principal, one tenant, and everyone together may hold at once; over a quota is 429 (503 for the global cap) with Retry-After.',
      properties: {
        perPrincipal: quotaSet(DEFAULT_QUOTAS_PER_PRINCIPAL),
        perTenant: quotaSet(DEFAULT_QUOTAS_PER_TENANT),
        global: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            inflight: {
              type: 'integer',
              minimum: 1,
              default: DEFAULT_GLOBAL_INFLIGHT,
              description:
                'Requests in flight on the whole gateway; lowered at start to what the open-file limit can carry.',
            },
          },
        },
      },
    },
    upstreamDefaults: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        timeouts: upstreamTimeouts,
        connections: {
          type: 'integer',
          minimum: 0,
          default: DEFAULT_UPSTREAM_CONNECTIONS,
          description:
            'Cap on connections open to each upstream; 0 = no cap. Each open stream holds one, so a cap also caps streams.',
        },
        maxResponseBytes: {
          type: 'integer',
          minimum: 1024,
          default: DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES,
        },
      },
    },
    servers: {
      type: 'object',
      minProperties: 1,
      propertyNames: { pattern: SERVER_NAME_PATTERN },
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        // A stdio server is a command; the others are a URL.
        if: { properties: { transport: { const: 'stdio' } }, required: ['transport'] },
        then: { properties: { command: true }, required: ['command'] },
        else: { properties: { url: true }, required: ['url'] },
        properties: {
          transport: {
            enum: ['streamable-http', 'sse', 'stdio'],
            default: 'streamable-http',
            description:
              '"streamable-http": an MCP endpoint URL; "sse": a legacy HTTP+SSE endpoint (2024-11-05); "stdio": a local program the gateway runs.',
          },
          url: {
            type: 'string',
            pattern: '^https?://',
            description: 'The MCP endpoint URL (streamable-http), or the SSE URL (sse).',
          },
          command: { type: 'string', minLength: 1, description: 'stdio: the program to run.' },
          args: {
            type: 'array',
            items: { type: 'string' },
            description: 'stdio: its arguments.',
          },
          cwd: {
            type: 'string',
            minLength: 1,
            description: 'stdio: where it starts. Default: its private /tmp in the sandbox.',
          },
          env: {
            type: 'array',
            items: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
            description:
              "stdio: names of the gateway's environment variables passed on; nothing else is (but PATH, HOME, LANG).",
          },
          setEnv: {
            type: 'object',
            propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
            additionalProperties: { type: 'string' },
            description: 'stdio: variables set for it (values may use ${ENV}).',
          },
          sharing: {
            enum: ['session', 'shared'],
            description:
              'stdio and sse: "session" (default), one process/connection per client session; "shared", one per tenant for all its sessions, with request ids rewritten.',
          },
          idleTimeoutMs: {
            type: 'integer',
            minimum: 1000,
            description:
              'stdio and sse: a stateless-era process/connection unused this long is closed (default 600000).',
          },
          shutdownTimeoutMs: {
            type: 'integer',
            minimum: 0,
            description:
              'stdio: after closing stdin, and again after SIGTERM, how long to wait before the next step (default 2000).',
          },
          warmPool: {
            type: 'integer',
            minimum: 0,
            maximum: 64,
            description:
              'stdio: processes started ahead of need, each handed to one new session (default 2; 0: none; not with sharing: shared).',
          },
          sandbox: sandboxSchema,
          description: { type: 'string' },
          headers: {
            type: 'object',
            additionalProperties: { type: 'string' },
            description: 'Extra request headers sent upstream (never from the client).',
          },
          timeouts: upstreamTimeoutOverrides,
          requiredScopes: {
            type: 'array',
            items: { type: 'string', minLength: 1 },
            default: [],
            description: 'Scopes a token needs for this server (403 insufficient_scope otherwise).',
          },
          credential: credentialSchema,
          manifest: {
            type: 'string',
            minLength: 1,
            description:
              'A tool manifest (`portcullis manifest pull`), relative to the working directory: agents can call only the tools it lists, as approved.',
          },
          tools: toolsSchema,
          virtualTools: {
            type: 'object',
            maxProperties: MAX_VIRTUAL_TOOLS_PER_SERVER,
            propertyNames: { minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.-]+$' },
            additionalProperties: {
              type: 'object',
              additionalProperties: false,
              required: ['tool', 'description', 'inputSchema', 'arguments'],
              properties: {
                tool: {
                  type: 'string',
                  minLength: 1,
                  maxLength: 256,
                  description: "The server's real tool the virtual one calls.",
                },
                title: { type: 'string', maxLength: 256, description: 'Shown to agents.' },
                description: {
                  type: 'string',
                  minLength: 1,
                  maxLength: 4096,
                  description: 'Shown to agents, in place of the real tool’s.',
                },
                inputSchema: {
                  type: 'object',
                  description:
                    'The JSON Schema (type object) of its arguments, checked on every call before anything is built from them.',
                },
                arguments: {
                  type: 'object',
                  maxProperties: 256,
                  description:
                    "The real tool's arguments: constants, `{{name}}` for an argument's value as it is, or strings with typed placeholders `{{name:literal|ident|number|shell|uri}}`.",
                },
                hideTool: {
                  type: 'boolean',
                  default: true,
                  description:
                    'Hide the real tool from agents: it cannot be listed or called but through this one.',
                },
              },
            },
            description:
              'Tools the gateway offers in this server’s name, each carried out by calling one of its real tools with arguments built from a typed template.',
          },
          elicitationUrls: {
            type: 'object',
            additionalProperties: false,
            default: {},
            properties: {
              schemes: nameList('Schemes a URL-mode elicitation may use (default: https).'),
              hosts: nameList(
                'Only these hosts (`auth.example.com`, `*.example.com` for subdomains).',
              ),
              allowPrivate: {
                type: 'boolean',
                default: false,
                description:
                  "Allow loopback, private and local hosts (a development server's own login page).",
              },
            },
            description:
              "The URL of every URL-mode elicitation this server asks for (elicitation/create, an InputRequiredResult's request, a -32042 error's elicitations) is checked before the client sees it: the scheme, no userinfo, a canonical host, no private or metadata address.",
          },
          outputValidation: {
            enum: ['block', 'warn', 'off'],
            default: 'warn',
            description:
              'A tool result whose structuredContent does not match the manifest\'s output schema: "warn" (default) logs and counts it, "block" answers the client with an error instead, "off" does not check.',
          },
          pinning: {
            enum: ['block', 'flag', 'off'],
            default: 'block',
            description:
              'A tool whose definition differs from its pin (the manifest\'s, or without one the first seen): "block" (default) hides it and refuses calls, "flag" only reports it, "off" ignores pins.',
          },
        },
      },
    },
    redaction: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        mode: {
          enum: ['redact', 'off'],
          default: 'redact',
          description:
            '"redact": secrets found in tool results and resource contents are replaced before the agent sees them; "off": results pass as the server sent them.',
        },
        disable: {
          type: 'array',
          maxItems: 256,
          items: { type: 'string', minLength: 1, maxLength: 128 },
          default: [],
          description: 'Rule ids not to run (docs/policy.md#redaction lists them).',
        },
      },
      description:
        'Response redaction: cloud keys, private keys, JWTs, API tokens, passwords in URLs and high-entropy secrets, found and replaced in results.',
    },
    rateLimits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        ...rateLimitProperties,
        onStoreDown: {
          enum: ['allow', 'refuse'],
          default: 'allow',
          description:
            'When the store cannot answer: "allow" the request (the default), or "refuse" it with 503.',
        },
        concurrencyLeaseMs: ms(
          DEFAULT_CONCURRENCY_LEASE_MS,
          'How long an in-flight slot is held at most; a replica that dies frees its slots after this.',
        ),
      },
      description:
        'Token buckets per tenant, subject and tool, and in-flight requests per tenant, in the shared store (every replica together). Over a limit: 429 with Retry-After.',
    },
    tenants: {
      type: 'object',
      propertyNames: { pattern: TENANT_NAME_PATTERN },
      additionalProperties: tenantSchema,
      description:
        'Per-tenant policy. Once present, everything is denied unless granted here; absent, every authenticated principal may use every server.',
    },
    shutdown: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        leaveRotationMs: ms(
          0,
          'After SIGTERM, how long the gateway goes on serving with /readyz at 503 and every response closing its connection, before it stops accepting: time for load balancers to take it out of rotation.',
        ),
        drainTimeoutMs: ms(DEFAULT_DRAIN_TIMEOUT_MS, 'Bound on letting in-flight calls finish.'),
        retryHintMs: ms(DEFAULT_RETRY_HINT_MS, 'SSE retry field sent on streams closed by drain.'),
      },
    },
    log: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        level: {
          enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
          default: 'info',
        },
      },
    },
    tracing: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description:
        'OpenTelemetry traces: a span per request, exported over OTLP/HTTP when `otlp` is set. Without it, a caller’s traceparent still goes upstream.',
      properties: {
        serviceName: {
          type: 'string',
          minLength: 1,
          default: 'portcullis',
          description: 'The `service.name` of the spans.',
        },
        sampleRatio: {
          type: 'number',
          minimum: 0,
          maximum: 1,
          default: 1,
          description:
            'Share of new traces recorded; a caller’s sampled flag is followed whatever this says.',
        },
        otlp: {
          type: 'object',
          additionalProperties: false,
          required: ['url'],
          properties: {
            url: {
              type: 'string',
              pattern: '^https?://',
              description:
                'The collector’s traces endpoint, e.g. http://otel-collector:4318/v1/traces.',
            },
            headers: {
              type: 'object',
              additionalProperties: { type: 'string' },
              default: {},
              description: 'Headers of each export, e.g. an API key.',
            },
            timeoutMs: ms(10_000, 'Bound on one export.'),
          },
        },
      },
    },
  },
} as const;

export interface UpstreamTimeouts {
  connectMs: number;
  headersMs: number;
  idleMs: number;
}

interface CredentialDefaults {
  header: string;
  ttlMs: number;
  timeoutMs: number;
}

export type CredentialConfig = CredentialDefaults &
  (
    | { mode: 'none' }
    | { mode: 'static'; value?: string; file?: string }
    | {
        mode: 'mint';
        audience?: string;
        scopes?: string[];
        perCall?: boolean;
        perCallTtlMs?: number;
        scopesByVerb?: Partial<Record<'read' | 'write' | 'destructive', string[]>>;
      }
    | {
        mode: 'token-exchange';
        tokenEndpoint: string;
        clientId: string;
        clientSecret?: string;
        clientSecretFile?: string;
        audience?: string;
        resource?: string;
        scope?: string;
      }
  );

export interface SandboxSettings {
  mode?: 'auto' | 'required' | 'off';
  network?: boolean;
  writablePaths?: string[];
  hidePaths?: string[];
  memoryBytes?: number;
  cpuSeconds?: number;
  maxOpenFiles?: number;
  maxProcesses?: number;
  tmpBytes?: number;
  gid?: number;
}

export const DEFAULT_STDIO_IDLE_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_STDIO_SHUTDOWN_STEP_MS = 2_000;
/** Warm processes per per-session stdio server: a new session rarely waits for a boot. */
export const DEFAULT_STDIO_WARM_POOL = 2;
/**
 * Sandbox limits when not configured. No address-space limit: a WebAssembly
 * instance reserves about 10 GiB of guard pages (undici's fetch instantiates
 * one), so any RLIMIT_AS a Node server could live with limits nothing real.
 */
export const SANDBOX_DEFAULTS = {
  mode: 'auto',
  network: false,
  cpuSeconds: 3_600,
  maxOpenFiles: 1_024,
  maxProcesses: 256,
  tmpBytes: 64 * 1024 ** 2,
  gid: 65_534,
} as const;

export interface ServerConfig {
  transport: 'streamable-http' | 'sse' | 'stdio';
  url?: string;
  command?: string;
  args?: string[];
  cwd?: string;
  env?: string[];
  setEnv?: Record<string, string>;
  sharing?: 'session' | 'shared';
  idleTimeoutMs?: number;
  shutdownTimeoutMs?: number;
  warmPool?: number;
  sandbox?: SandboxSettings;
  description?: string;
  headers?: Record<string, string>;
  timeouts?: Partial<UpstreamTimeouts>;
  requiredScopes: string[];
  credential: CredentialConfig;
  manifest?: string;
  pinning: 'block' | 'flag' | 'off';
  outputValidation: 'block' | 'warn' | 'off';
  tools?: Record<string, { guards: GuardConfig[] }>;
  elicitationUrls: { schemes?: string[]; hosts?: string[]; allowPrivate: boolean };
  virtualTools?: Record<string, VirtualToolConfig>;
}

interface GuardBase {
  argument: string;
  mode: 'enforce' | 'shadow';
  id?: string;
}

/** One guard on a tool argument (`servers.<name>.tools.<tool>.guards[]`). */
export type GuardConfig =
  | (GuardBase & {
      kind: 'sql';
      dialect: 'postgresql' | 'mysql';
      readOnly?: boolean;
      statements?: string[];
      tables?: string[];
      functions?: string[];
      allowFunctions?: string[];
      maxStatements?: number;
      maxLength: number;
    })
  | (GuardBase & { kind: 'shell'; programs?: string[] })
  | (GuardBase & { kind: 'path'; root: string; resolveSymlinks: boolean })
  | (GuardBase & {
      kind: 'url';
      schemes?: string[];
      hosts?: string[];
      resolve: boolean;
      allowPrivate: boolean;
    })
  | (GuardBase & { kind: 'size'; maxLength?: number; maxItems?: number; maxBytes?: number })
  | (GuardBase & { kind: 'pattern'; deny?: string[]; allow?: string });

export interface JwtConfig {
  issuer?: string;
  audiences: string[];
  jwksUrl?: string;
  jwksFile?: string;
  jwksTimeoutMs: number;
  jwksCooldownMs: number;
  jwksRefreshIntervalMs: number;
  algorithms?: string[];
  hmacSecret?: string;
  clockSkewMs: number;
  maxLifetimeMs: number;
  requiredClaims: string[];
  tenantClaim: string;
  defaultTenant?: string;
  maxTokenBytes: number;
  cacheMaxEntries: number;
}

export interface AuthConfig {
  mode: 'jwt' | 'none';
  resource?: string;
  authorizationServers: string[];
  requiredScopes: string[];
  jwt: JwtConfig;
  dpop: { required: boolean; algorithms: string[]; maxAgeMs: number };
  revocation: { failClosed: boolean };
}

export interface StoreConfig {
  kind: 'memory' | 'redis';
  url: string;
  keyPrefix: string;
  commandTimeoutMs: number;
  connectTimeoutMs: number;
}

/** A configuration after validation: every default filled in, deeply frozen. */
export interface Config {
  listen: {
    host: string;
    port: number;
    tls?: { cert: string; key: string; clientCa?: string };
    behindProxy: boolean;
    allowedHosts?: string[];
    allowedOrigins?: string[];
    bodyLimitBytes: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    keepAliveTimeoutMs: number;
    heartbeatIntervalMs: number;
  };
  admin: {
    enabled: boolean;
    host: string;
    port: number;
    token?: string;
    tokenFile?: string;
    allowedHosts?: string[];
    publicMetrics: boolean;
  };
  auth: AuthConfig;
  store: StoreConfig;
  cluster?: {
    host: string;
    port: number;
    advertise?: string;
    secret?: string;
    secretFile?: string;
  };
  signing: { keysFile?: string; activeKid?: string; issuer?: string };
  sessions: { idleTimeoutMs: number; max: number };
  audit: AuditConfig;
  quotas: {
    perPrincipal: QuotaSet;
    perTenant: QuotaSet;
    global: { inflight: number };
  };
  upstreamDefaults: { timeouts: UpstreamTimeouts; connections: number; maxResponseBytes: number };
  servers: Record<string, ServerConfig>;
  /** Absent: no per-tenant policy (every principal may use every server). */
  tenants?: Record<string, TenantConfig>;
  rateLimits?: RateLimitSettings;
  redaction: { mode: 'redact' | 'off'; disable: string[] };
  shutdown: { leaveRotationMs: number; drainTimeoutMs: number; retryHintMs: number };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
  tracing: {
    serviceName: string;
    sampleRatio: number;
    otlp?: { url: string; headers: Record<string, string>; timeoutMs: number };
  };
}

/** `audit`: its sinks (each absent when not set) and its checkpoints. */
export interface AuditConfig {
  checkpointIntervalMs: number;
  checkpointRecords: number;
  stdout?: { fd: 1 | 2 };
  file?: {
    dir: string;
    maxFileBytes: number;
    maxFileAgeMs: number;
    retentionDays: number;
    queueMax: number;
    fsync: boolean;
  };
  http?: {
    url: string;
    format: 'json' | 'splunk-hec' | 'elastic-bulk';
    headers: Record<string, string>;
    spoolDir: string;
    spoolMaxBytes: number;
    overflow: 'spool' | 'block';
    queueMax: number;
    batchMaxRecords: number;
    flushIntervalMs: number;
    timeoutMs: number;
  };
  redisStream?: { url: string; key: string; retentionDays: number; queueMax: number };
  postgres?: { url: string; table: string; retentionDays: number; queueMax: number };
  capture?: {
    dir: string;
    keyFile: string;
    maxFileBytes: number;
    maxFileAgeMs: number;
    retentionDays: number;
    queueMax: number;
    fsync: boolean;
  };
}

/** What a tenant may use on one server. */
export interface ServerGrant {
  tools?: string[];
  prompts?: string[];
  resources?: string[];
  resourceTemplates?: string[];
  /** Defaults (false, [], false) are filled in by the schema; optional for code that builds grants. */
  sampling?: boolean;
  elicitation?: Array<'form' | 'url'>;
  roots?: boolean;
}

export interface RuleConfig {
  id: string;
  when: string;
  effect: 'deny';
  servers?: string[];
  methods?: string[];
  targets?: string[];
  message?: string;
  mode: 'enforce' | 'shadow';
}

export interface TenantConfig {
  servers: Record<string, ServerGrant>;
  rules: RuleConfig[];
  mode: 'enforce' | 'shadow';
  rateLimits?: RateLimitSettings;
  maxResultBytes?: number;
}

/** One token bucket's size. */
export interface BucketConfig {
  capacity: number;
  refillPerSecond: number;
}

/** `rateLimits` and `tenants.<t>.rateLimits` (onStoreDown and concurrencyLeaseMs at the top only). */
export interface RateLimitSettings {
  tenant?: BucketConfig;
  subject?: BucketConfig;
  tools?: Record<string, BucketConfig>;
  concurrency?: number;
  onStoreDown?: 'allow' | 'refuse';
  concurrencyLeaseMs?: number;
}

/** One set of quotas (per principal or per tenant). */
export interface QuotaSet {
  sessions: number;
  legacyConnections: number;
  stdioProcesses: number;
  inflight: number;
}
