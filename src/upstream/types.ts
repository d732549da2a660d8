/**
 * What every kind of upstream looks like to the relay, whatever its
 * transport: a request goes in, an answer comes back as a status, headers and
 * a body of Streamable HTTP (JSON, or an SSE stream of messages). Streamable
 * HTTP upstreams give that natively (http.ts); stdio and legacy HTTP+SSE
 * upstreams are bridged to it (bridge.ts).
 */
import type { IncomingHttpHeaders } from 'node:http';
import { GatewayError } from '../errors/index.js';

export interface UpstreamRequest {
  method: 'POST' | 'GET' | 'DELETE';
  headers: Record<string, string>;
  body?: string;
  /** Longest silence on the response body; 0 disables (listen and GET streams). */
  idleMs?: number;
  /**
   * Who the request is for (tenant and subject): upstreams that keep state per
   * caller outside a session (a stdio process in the stateless era) key it by this.
   */
  affinity?: string;
  /**
   * Takes the caller's share of upstream channels (stdio processes) before
   * an upstream opens one for it; throws the refusal when none is left.
   */
  channelLease?: () => { release(): void };
  /**
   * The caller's tenant: a channel shared by sessions (`sharing: shared`)
   * serves one tenant only, and is found by this.
   */
  tenant?: string;
}

/** One upstream, as the relay uses it. */
export interface Upstream {
  readonly name: string;
  /** Largest JSON answer, or single SSE event, relayed. */
  readonly maxResponseBytes: number;
  request(req: UpstreamRequest): UpstreamCall;
  /** Whether requests may open a channel (a process) for their caller: `channelLease` is asked then. */
  readonly opensChannels?: boolean;
  /**
   * Ends what the upstream keeps for one caller outside any session (a stateless
   * caller's stdio process), when that caller's access is revoked.
   */
  endCaller?(affinity: string): void;
  close(): Promise<void>;
  /** Why it cannot serve now (a stdio server that cannot start), for readiness; else undefined. */
  notReady?(): string | undefined;
}

/** How a body's producer is paused, resumed and aborted: undici's dispatch controller, or a bridge's. */
export interface BodyController {
  readonly aborted: boolean;
  pause(): void;
  resume(): void;
  abort(reason: Error): void;
}

export interface UpstreamResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: UpstreamBody;
  /**
   * Longest wait for the next message of an SSE body while requests are
   * pending (0 or absent: none). Bytes that carry no message, like comment
   * lines, do not count: undici's body timeout alone would take them as life.
   */
  idleMs?: number;
}

/** One request in flight: its answer, and a way to abort it (a client that went away). */
export interface UpstreamCall {
  readonly response: Promise<UpstreamResponse>;
  readonly aborted: boolean;
  abort(): void;
}

export class UpstreamAbort extends Error {
  constructor() {
    super('request aborted by the gateway');
    this.name = 'AbortError';
  }
}

/**
 * An upstream response body fed straight from undici's dispatch handler: no
 * stream objects or promises per chunk on the hot path. Chunks that arrive
 * before a consumer attaches are kept; `pause`/`resume` are the backpressure.
 */
export class UpstreamBody {
  private buffered: Buffer[] = [];
  private onData: ((chunk: Buffer) => void) | undefined;
  private onEnd: (() => void) | undefined;
  private onError: ((err: Error & { code?: string }) => void) | undefined;
  private ended = false;
  private failure: Error | undefined;

  constructor(private readonly controller: BodyController) {}

  pause(): void {
    this.controller.pause();
  }

  resume(): void {
    this.controller.resume();
  }

  destroy(): void {
    if (!this.ended && !this.failure && !this.controller.aborted)
      this.controller.abort(new UpstreamAbort());
  }

  /** Attaches the one consumer; buffered chunks and a past end or failure are delivered at once. */
  consume(
    onData: (chunk: Buffer) => void,
    onEnd: () => void,
    onError: (err: Error & { code?: string }) => void,
  ): void {
    for (const chunk of this.buffered) onData(chunk);
    this.buffered = [];
    if (this.failure) return onError(this.failure);
    if (this.ended) return onEnd();
    this.onData = onData;
    this.onEnd = onEnd;
    this.onError = onError;
  }

  /** The whole body, refused (and the request aborted) past `limit` bytes. */
  collect(limit: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      this.consume(
        (chunk) => {
          size += chunk.length;
          if (size > limit) {
            this.destroy();
            reject(
              new GatewayError(
                'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
                `response larger than ${limit} bytes`,
              ),
            );
            return;
          }
          chunks.push(chunk);
        },
        () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)),
        reject,
      );
    });
  }

  /** Reads and discards the body. */
  async dump(): Promise<void> {
    await this.collect(Number.MAX_SAFE_INTEGER).catch(() => undefined);
  }

  push(chunk: Buffer): void {
    if (this.onData) this.onData(chunk);
    else this.buffered.push(chunk);
  }

  end(): void {
    this.ended = true;
    this.onEnd?.();
  }

  fail(err: Error): void {
    this.failure = err;
    this.onError?.(err);
  }
}
