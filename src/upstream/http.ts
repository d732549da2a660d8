/**
 * Streamable HTTP upstreams: one undici Pool per configured server, and the
 * mapping of transport failures to gateway errors (refused → 502, slow → 504).
 * This module knows no policy and verifies no credential: the headers it sends
 * are the ones it is handed, plus the operator's configured `headers`.
 */
import { Pool } from 'undici';
import type { Dispatcher } from 'undici';
import type { IncomingHttpHeaders } from 'node:http';
import { GatewayError } from '../errors/index.js';
import {
  UpstreamAbort,
  UpstreamBody,
  type Upstream,
  type UpstreamCall,
  type UpstreamRequest,
  type UpstreamResponse,
} from './types.js';

export type { Upstream, UpstreamCall, UpstreamRequest, UpstreamResponse } from './types.js';
import type { ServerConfig, UpstreamTimeouts } from '../config/schema.js';

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

/**
 * The client-facing error for a transport failure. It names the server and a
 * coarse reason, never the upstream's address or the system's error text:
 * those are for the operator's log (the caller logs `err`).
 */
export function toGatewayError(err: unknown, server: string): GatewayError {
  if (err instanceof GatewayError) return err;
  const code = transportErrorCode(err);
  if (code && TIMEOUTS.has(code)) {
    return new GatewayError('PORTCULLIS_ERR_UPSTREAM_TIMEOUT', `server '${server}'`, {
      server,
      reason: 'timeout',
    });
  }
  return new GatewayError(
    'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE',
    `server '${server}' could not be reached`,
    { server, reason: code && CONNECT_FAILURES.has(code) ? 'connect' : 'transport' },
  );
}

/**
 * One request in flight, and its own undici dispatch handler. A class, not
 * closures over a per-request scope, on purpose: with closures, much of each
 * request outlived young-generation collections and was copied and promoted,
 * and scavenges took 10-30 ms under load (measured: bench/README.md, "What
 * makes the numbers move").
 */
export class DispatchedCall implements UpstreamCall, Dispatcher.DispatchHandler {
  readonly response: Promise<UpstreamResponse>;
  aborted = false;
  private controller: Dispatcher.DispatchController | undefined;
  private body: UpstreamBody | undefined;
  private resolve!: (res: UpstreamResponse) => void;
  private reject!: (err: unknown) => void;

  constructor(
    private readonly server: string,
    private readonly idleMs: number,
    /** What a failure before the answer began means to the caller: by default, toGatewayError. */
    private readonly failure: (err: Error, server: string) => unknown = toGatewayError,
  ) {
    this.response = new Promise<UpstreamResponse>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    if (this.controller && !this.controller.aborted) this.controller.abort(new UpstreamAbort());
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.aborted) controller.abort(new UpstreamAbort());
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
  ): void {
    this.body = new UpstreamBody(controller);
    this.resolve({ statusCode, headers, body: this.body, idleMs: this.idleMs });
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.body?.push(chunk);
  }

  onResponseEnd(): void {
    this.body?.end();
    this.release();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (this.body) this.body.fail(err);
    else this.reject(this.failure(err, this.server));
    this.release();
  }

  /** Drops the links to undici's request once it is over. */
  private release(): void {
    this.controller = undefined;
    this.body = undefined;
  }
}

export class HttpUpstream implements Upstream {
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
    if (server.url === undefined) throw new Error(`server '${name}' has no url`);
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

  /**
   * Sends one request through undici's dispatch API; `response` resolves once
   * the upstream has answered with headers, or rejects with a GatewayError.
   */
  request(req: UpstreamRequest): UpstreamCall {
    const idleMs = req.idleMs ?? this.timeouts.idleMs;
    const call = new DispatchedCall(this.name, idleMs);
    this.pool.dispatch(
      {
        path: this.path,
        method: req.method,
        headers: { ...req.headers, ...this.extraHeaders, host: this.url.host },
        body: req.body ?? null,
        bodyTimeout: idleMs,
      },
      call,
    );
    return call;
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
