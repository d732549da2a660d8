/**
 * The one JSON Schema every Portcullis configuration is validated against.
 * Defaults live here and only here; unknown keys are rejected everywhere
 * (`additionalProperties: false`) so a typo never silently turns a control off.
 * `docs/configuration.md` documents every key and is checked against this file.
 */

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
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;
export const DEFAULT_RETRY_HINT_MS = 1_000;

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
          },
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
      },
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        mode: {
          enum: ['none'],
          default: 'none',
          description: '"none" is accepted only on a loopback listener.',
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
        required: ['url'],
        properties: {
          transport: { enum: ['streamable-http'], default: 'streamable-http' },
          url: { type: 'string', pattern: '^https?://', description: 'The MCP endpoint URL.' },
          description: { type: 'string' },
          headers: {
            type: 'object',
            additionalProperties: { type: 'string' },
            description: 'Extra request headers sent upstream (never from the client).',
          },
          timeouts: upstreamTimeoutOverrides,
        },
      },
    },
    shutdown: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
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
  },
} as const;

export interface UpstreamTimeouts {
  connectMs: number;
  headersMs: number;
  idleMs: number;
}

export interface ServerConfig {
  transport: 'streamable-http';
  url: string;
  description?: string;
  headers?: Record<string, string>;
  timeouts?: Partial<UpstreamTimeouts>;
}

/** A configuration after validation: every default filled in, deeply frozen. */
export interface Config {
  listen: {
    host: string;
    port: number;
    tls?: { cert: string; key: string };
    allowedHosts?: string[];
    allowedOrigins?: string[];
    bodyLimitBytes: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    keepAliveTimeoutMs: number;
    heartbeatIntervalMs: number;
  };
  admin: { enabled: boolean; host: string; port: number };
  auth: { mode: 'none' };
  sessions: { idleTimeoutMs: number; max: number };
  upstreamDefaults: { timeouts: UpstreamTimeouts; connections: number; maxResponseBytes: number };
  servers: Record<string, ServerConfig>;
  shutdown: { drainTimeoutMs: number; retryHintMs: number };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
}
