/**
 * A legacy HTTP+SSE server (spec/2024-11-05/basic/transports.mdx, "HTTP with
 * SSE") as a channel: one GET opens the event stream; its first `endpoint`
 * event names the URI to POST messages to; every server message arrives as a
 * `message` event on that stream.
 *
 * Rules:
 * 1. The endpoint is resolved against the SSE URL and MUST stay on its
 *    origin: a server cannot send the gateway's POSTs, and the credential
 *    they carry, anywhere else.
 * 2. Messages are POSTed one after another, in the order they were sent
 *    (the server sees them as a stdio server would); each POST is bounded by
 *    the headers timeout. A POST the server refuses as a bad message (a 4xx
 *    other than 404/410) is that message's failure, not the connection's: a
 *    request gets a JSON-RPC error, and the channel goes on. A client's own
 *    message must never look like the server dying (the crash-loop breaker
 *    would lock everyone out). A silent POST, a 5xx, or 404/410 (the server
 *    forgot the session) ends the channel (the bridge then fails what was in
 *    flight, and the session ends).
 * 3. The stream's end or an error on it ends the channel; silence does not
 *    (a session with nothing to say is not a dead one).
 */
import { createParser } from 'eventsource-parser';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import type { UpstreamTimeouts } from '../config/schema.js';
import { GatewayError } from '../errors/index.js';
import { nestedDeeperThan } from '../mcp/depth.js';
import { kindOf } from '../mcp/frame.js';
import {
  ChannelClosedError,
  ChannelListeners,
  type JsonRpcMessage,
  type MessageChannel,
} from './channel.js';

export interface SseChannelOptions {
  /** The server's name, for logs and errors. */
  readonly server: string;
  /** The SSE endpoint (GET). */
  readonly url: string;
  /** Sent with the GET and every POST (configured headers, the credential). */
  readonly headers: Readonly<Record<string, string>>;
  readonly timeouts: UpstreamTimeouts;
  /** Largest single event accepted. */
  readonly maxEventBytes: number;
  readonly log: Logger;
}

/** One dispatcher for every legacy SSE connection: streams are long-lived, POSTs short. */
let sharedAgent: Agent | undefined;
function agent(): Agent {
  sharedAgent ??= new Agent({ keepAliveTimeout: 10_000, connections: 256 });
  return sharedAgent;
}

export class SseChannel extends ChannelListeners implements MessageChannel {
  private readonly queue: JsonRpcMessage[] = [];
  private posting = false;
  private closing = false;
  private readonly abort = new AbortController();
  private readonly postHeaders: Record<string, string>;
  private body: (AsyncIterable<Buffer> & { pause(): void; resume(): void }) | undefined;

  private constructor(
    private readonly options: SseChannelOptions,
    private readonly endpoint: URL,
  ) {
    super();
    this.postHeaders = { ...options.headers };
  }

  /** Opens the stream and waits for its endpoint (within the headers timeout). */
  static async connect(options: SseChannelOptions): Promise<SseChannel> {
    const url = new URL(options.url);
    const abort = new AbortController();
    let res: Dispatcher.ResponseData;
    try {
      res = await agent().request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: 'GET',
        headers: { ...options.headers, accept: 'text/event-stream' },
        signal: abort.signal,
        headersTimeout: options.timeouts.headersMs,
        // A quiet session is not a dead one: the stream may be silent for hours.
        bodyTimeout: 0,
      });
    } catch (err) {
      throw new ChannelClosedError(
        `cannot open the SSE stream: ${describe(err)}`,
        'could not be reached',
      );
    }
    const type = String(res.headers['content-type'] ?? '');
    if (res.statusCode !== 200 || !type.startsWith('text/event-stream')) {
      await res.body.dump().catch(() => undefined);
      throw new ChannelClosedError(
        `the SSE stream answered ${res.statusCode} ${type || '(no content-type)'}`,
        `answered the SSE stream with ${res.statusCode}`,
      );
    }

    // Messages that arrive before the endpoint (none should) are kept for the channel.
    const early: JsonRpcMessage[] = [];
    // Set once the endpoint is known; the stream's handlers are attached before.
    const opened: { channel?: SseChannel } = {};
    let endpointSeen: ((endpoint: URL) => void) | undefined;
    let failed: ((err: Error) => void) | undefined;
    const parser = createParser({
      maxBufferSize: options.maxEventBytes,
      onEvent(ev) {
        if (ev.event === 'endpoint') {
          let endpoint: URL;
          try {
            endpoint = new URL(ev.data.trim(), url);
          } catch {
            return failed?.(
              new ChannelClosedError(
                `unusable endpoint event '${ev.data}'`,
                'sent an unusable endpoint',
              ),
            );
          }
          // Rule 1: the message endpoint stays on the stream's origin.
          if (endpoint.origin !== url.origin) {
            return failed?.(
              new ChannelClosedError(
                `endpoint ${endpoint.origin} is not on ${url.origin}`,
                'named a message endpoint on another origin',
              ),
            );
          }
          return endpointSeen?.(endpoint);
        }
        if (ev.event !== undefined && ev.event !== 'message') return;
        let message: unknown;
        try {
          message = JSON.parse(ev.data);
        } catch {
          options.log.warn({ server: options.server }, 'dropped an SSE event that is not JSON');
          return;
        }
        // Nothing can wait for an answer before the endpoint is known: an early one is just dropped.
        if (nestedDeeperThan(ev.data)) {
          if (opened.channel) opened.channel.refuseTooDeep(message, options.server, options.log);
          return;
        }
        const messages = (Array.isArray(message) ? message : [message]) as JsonRpcMessage[];
        for (const m of messages) {
          if (opened.channel) opened.channel.deliver(m);
          else early.push(m);
        }
      },
      onError(err) {
        if (err.type === 'max-buffer-size-exceeded') {
          const e = new ChannelClosedError(
            `server '${options.server}' sent an oversized event`,
            'sent an oversized event',
          );
          if (opened.channel) opened.channel.end(e);
          else failed?.(e);
          abort.abort();
        }
      },
    });

    const endpoint = await new Promise<URL>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new ChannelClosedError('no endpoint event on the SSE stream', 'sent no endpoint event'),
        );
      }, options.timeouts.headersMs);
      endpointSeen = (e) => {
        clearTimeout(timer);
        resolve(e);
      };
      failed = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      const decoder = new TextDecoder();
      res.body.on('data', (chunk: Buffer) => parser.feed(decoder.decode(chunk, { stream: true })));
      res.body.once('error', (err) => {
        const e = new ChannelClosedError(
          `SSE stream failed: ${describe(err)}`,
          'broke off the SSE stream',
        );
        if (opened.channel) opened.channel.end(e);
        else failed?.(e);
      });
      res.body.once('end', () => {
        const e = new ChannelClosedError(
          `server '${options.server}' ended the SSE stream`,
          'ended the SSE stream',
        );
        if (opened.channel) opened.channel.end(opened.channel.closing ? undefined : e);
        else failed?.(e);
      });
    }).catch((err: unknown) => {
      abort.abort();
      res.body.destroy();
      throw err;
    });

    const channel = new SseChannel(options, endpoint);
    channel.body = res.body as unknown as SseChannel['body'];
    channel.abort.signal.addEventListener('abort', () => abort.abort(), { once: true });
    opened.channel = channel;
    for (const m of early) channel.deliver(m);
    return channel;
  }

  send(message: JsonRpcMessage): void {
    if (this.ended || this.closing)
      throw new ChannelClosedError(
        `server '${this.options.server}' is not connected`,
        'is not connected',
      );
    this.queue.push(message);
    if (!this.posting) void this.drain();
  }

  /** A header for the POSTs from now on (a renewed credential), over the one given at connect. */
  setHeader(name: string, value: string): void {
    this.postHeaders[name] = value;
  }

  pause(): void {
    this.body?.pause();
  }

  resume(): void {
    this.body?.resume();
  }

  async close(): Promise<void> {
    if (this.ended) return;
    this.closing = true;
    this.abort.abort();
    this.end(undefined);
  }

  private deliver(message: JsonRpcMessage): void {
    if (!this.ended) this.emitMessage(message);
  }

  private end(reason: Error | undefined): void {
    this.queue.length = 0;
    this.abort.abort();
    this.markEnded(reason);
  }

  /** Rule 2: a refused message fails alone; a request among them is answered with an error. */
  private refused(message: JsonRpcMessage, status: number): void {
    this.options.log.warn(
      { server: this.options.server, status, method: message.method },
      'the SSE server refused a message',
    );
    if (kindOf(message) !== 'request') return;
    const err = new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
      `server '${this.options.server}' refused the request (${status})`,
      { server: this.options.server, upstreamStatus: status },
    );
    this.deliver({ jsonrpc: '2.0', id: message.id, error: err.toJsonRpc() });
  }

  /** Rule 2: one POST at a time, in order. */
  private async drain(): Promise<void> {
    this.posting = true;
    try {
      while (this.queue.length > 0 && !this.ended) {
        const message = this.queue.shift() as JsonRpcMessage;
        try {
          const body = JSON.stringify(message);
          const res = await agent().request({
            origin: this.endpoint.origin,
            path: `${this.endpoint.pathname}${this.endpoint.search}`,
            method: 'POST',
            headers: { ...this.postHeaders, 'content-type': 'application/json' },
            body,
            signal: this.abort.signal,
            headersTimeout: this.options.timeouts.headersMs,
            bodyTimeout: this.options.timeouts.headersMs,
          });
          await res.body.dump().catch(() => undefined);
          if (res.statusCode >= 400 && res.statusCode < 500 && !SESSION_GONE.has(res.statusCode)) {
            this.refused(message, res.statusCode);
          } else if (res.statusCode < 200 || res.statusCode >= 300) {
            this.end(
              new ChannelClosedError(
                `server '${this.options.server}' refused a message (${res.statusCode}); its session is gone`,
                `refused a message (${res.statusCode}); its session is gone`,
              ),
            );
          }
        } catch (err) {
          if (!this.ended)
            this.end(
              new ChannelClosedError(
                `posting to '${this.options.server}' failed: ${describe(err)}`,
                'could not be reached',
              ),
            );
        }
      }
    } finally {
      this.posting = false;
    }
  }
}

/** POST statuses that mean the server no longer knows the connection: the channel is over. */
const SESSION_GONE = new Set([404, 410]);

function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e.code ?? e.message ?? String(err);
}
