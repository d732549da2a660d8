/**
 * Streamable HTTP upstreams: one undici Pool per configured server, and the
 * mapping of transport failures to gateway errors (refused → 502, slow → 504).
 * This module knows no policy and verifies no credential: the headers it sends
 * are the ones it is handed, plus the operator's configured `headers`.
 */
import { Pool } from 'undici';
import type { Dispatcher } from 'undici';
import { GatewayError } from '../errors/index.js';
import type { ServerConfig, UpstreamTimeouts } from '../config/schema.js';

export interface UpstreamRequest {
  method: 'POST' | 'GET' | 'DELETE';
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
  /** Longest silence on the response body; 0 disables (listen and GET streams). */
  idleMs?: number;
}

export type UpstreamResponse = Dispatcher.ResponseData;

const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNRESET',
  'EPIPE',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);
const TIMEOUTS = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/** The error code of a transport failure, looking through undici's `cause` chain. */
export function transportErrorCode(err: unknown): string | undefined {
  let e = err as { code?: string; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 4; depth++) {
    if (typeof e.code === 'string' && (CONNECT_FAILURES.has(e.code) || TIMEOUTS.has(e.code)))
      return e.code;
    e = e.cause as typeof e;
  }
  return (err as { code?: string } | undefined)?.code;
}

export function toGatewayError(err: unknown, server: string): GatewayError {
  if (err instanceof GatewayError) return err;
  const code = transportErrorCode(err);
  if (code && TIMEOUTS.has(code)) {
    return new GatewayError('PORTCULLIS_ERR_UPSTREAM_TIMEOUT', `server '${server}' (${code})`, {
      server,
    });
  }
  if (code && CONNECT_FAILURES.has(code)) {
    return new GatewayError('PORTCULLIS_ERR_UPSTREAM_UNREACHABLE', `server '${server}' (${code})`, {
      server,
    });
  }
  return new GatewayError(
    'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE',
    `server '${server}' (${(err as Error)?.message ?? String(err)})`,
    { server },
  );
}

export class HttpUpstream {
  readonly name: string;
  readonly url: URL;
  readonly timeouts: UpstreamTimeouts;
  readonly maxResponseBytes: number;
  private readonly pool: Pool;
  private readonly path: string;
  private readonly extraHeaders: Readonly<Record<string, string>>;

  constructor(
    name: string,
    server: ServerConfig,
    defaults: { timeouts: UpstreamTimeouts; connections: number; maxResponseBytes: number },
  ) {
    this.name = name;
    this.url = new URL(server.url);
    this.path = `${this.url.pathname}${this.url.search}`;
    this.timeouts = { ...defaults.timeouts, ...server.timeouts };
    this.maxResponseBytes = defaults.maxResponseBytes;
    this.extraHeaders = Object.fromEntries(
      Object.entries(server.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]),
    );
    this.pool = new Pool(this.url.origin, {
      // null = no cap: a held SSE stream occupies a connection for its whole life.
      connections: defaults.connections || null,
      connectTimeout: this.timeouts.connectMs,
      headersTimeout: this.timeouts.headersMs,
      bodyTimeout: this.timeouts.idleMs,
      keepAliveTimeout: 30_000,
      pipelining: 1,
    });
  }

  /** Sends one request; resolves once the upstream has answered with headers. */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const headers = { ...req.headers, ...this.extraHeaders, host: this.url.host };
    try {
      return await this.pool.request({
        path: this.path,
        method: req.method,
        headers,
        body: req.body,
        signal: req.signal,
        bodyTimeout: req.idleMs ?? this.timeouts.idleMs,
      });
    } catch (err) {
      throw toGatewayError(err, this.name);
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
