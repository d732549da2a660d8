/**
 * The exchange: one request through the gateway, from its first byte to the
 * end of its answer. Every request on the public listener has one (made in
 * the first hook, before authentication), so a refusal at the door is an
 * exchange too; an `/mcp` request (POST, GET or DELETE) and every message of
 * a legacy SSE client (relayed in process through `/mcp`) fill it in as they
 * learn who asks, for which server, in which era and session.
 *
 * Owns: what is known of the request (principal, server, era, session, the
 * requests still waiting for an answer), its timings and byte counts, and
 * every write to the client. Nothing else in `server/` writes to a client's
 * response: a JSON body, an error, an SSE stream, its heartbeats and its
 * retry hint all go through here, so what is counted is what was sent.
 *
 * What it tells: an `ExchangeObserver` hears each message with its decision
 * (inbound once decided, outbound once admitted and decided) and the end of
 * each exchange; that is where audit attaches. Without an observer nothing
 * is recorded and nothing extra is allocated.
 */
import type { FastifyReply } from 'fastify';
import type { ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { ANONYMOUS, type Principal } from '../auth/principal.js';
import type { GatewayError, JsonRpcId } from '../errors/index.js';
import type { Era, ToolHeaderRegistry } from '../mcp/era.js';
import type { Frame } from '../mcp/frame.js';
import { SSE_HEADERS } from '../mcp/sse.js';
import type { Session } from '../mcp/sessions.js';
import {
  POLICY_OFF,
  type DecisionContext,
  type Policy,
  type ToolMemory,
} from '../policy/policy.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { UpstreamCall } from '../upstream/types.js';
import type { OutboundExchange } from './decide.js';
import { newLinks, type ListLinks, type PendingCall } from './streams.js';
import { TRACEPARENT } from '../telemetry/trace-context.js';

/** What became of one message at a decision point. */
export type MessageOutcome = 'allow' | 'deny' | 'replace' | 'drop';

/** Where audit (and tests) attach: every message with its decision, and every exchange's end. */
export interface ExchangeObserver {
  /**
   * A message crossed the gateway or was stopped at it. `rule` names the rule
   * of a denial, replacement or drop; `shadowed`, the shadow rules that
   * would have denied it (an allowed message).
   */
  message?(
    x: Exchange,
    frame: Frame,
    outcome: MessageOutcome,
    rule: string | undefined,
    shadowed: readonly string[] | undefined,
  ): void;
  /** The exchange is over: its response finished, or the client went away. */
  end?(x: Exchange): void;
}

/** What a relay needs to know of the route it relays for. */
export interface RelayRoute {
  readonly name: string;
  readonly toolHeaders: ToolHeaderRegistry;
  readonly maxResponseBytes: number;
}

const NO_METHODS: ReadonlyMap<JsonRpcId, string> = new Map();
/**
 * Until `begin`, nothing is pending: one shared empty set (only a begun
 * exchange relays, and only a relay removes from its set; nothing adds).
 */
const NOTHING_PENDING = new Set<JsonRpcId>();
const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

const EXCHANGE = Symbol('portcullis.exchange');
type ExchangeResponse = ServerResponse & { [EXCHANGE]?: Exchange };

/** One function for every response's close, no closure each. */
function endOfExchange(this: ServerResponse): void {
  const x = (this as ExchangeResponse)[EXCHANGE];
  if (x === undefined) return;
  x.endedAt = performance.now();
  // What Fastify sent itself (a route's returned value) has its status only here.
  if (x.status === 0 && this.headersSent) x.status = this.statusCode;
  x.observer?.end?.(x);
}

/**
 * A class with one shape, every field set in the constructor: copying a wide
 * object literal per request (`{ ...x, more }`) made more of each request
 * survive young-generation collections (bench/README.md, "What makes the
 * numbers move").
 */
export class Exchange implements PendingCall, OutboundExchange {
  // ---- where: set by `toRoute` and `begin` -------------------------------------------------
  server = '';
  /** The route's registry of tool parameter headers (none before the route is known). */
  toolHeaders: ToolHeaderRegistry | undefined = undefined;
  maxResponseBytes = 0;
  era: Era = 'legacy';
  /** The legacy session; set by the initialize answer for a new one. */
  session: Session | undefined = undefined;
  /** Ids of the client's requests that still need an answer. */
  pending: Set<JsonRpcId>;
  /** Method of each pending request, to recognise the answers the gateway learns from. */
  methodsById: ReadonlyMap<JsonRpcId, string> = NO_METHODS;
  /** The tool, prompt or resource each pending request named, where it named one. */
  targetsById: Map<JsonRpcId, string> | undefined = undefined;
  /** Extra response headers (the gateway's own Mcp-Session-Id); never mutated, replaced. */
  responseHeaders: Readonly<Record<string, string>> = NO_HEADERS;
  /** GET streams and modern `subscriptions/listen` streams: long-lived, nothing pending. */
  longLived = false;

  // ---- who: set by `identify` ---------------------------------------------------------------
  principal: Principal = ANONYMOUS;
  owner = '';
  jti: string | undefined = undefined;
  /** Whom the exchange serves (itself, once identified): a revocation of them ends it. */
  identity: PendingCall | undefined = undefined;
  /** The policy in force when the request came: a reload mid-stream changes nothing for it. */
  policy: Policy = POLICY_OFF;
  metrics: Metrics | undefined = undefined;
  memory: ToolMemory | undefined = undefined;
  replyUpstream: ((message: string) => void) | undefined = undefined;

  // ---- the upstream side --------------------------------------------------------------------
  /** The upstream request, once sent; aborted when the relay gives up on it. */
  call: UpstreamCall | undefined = undefined;
  /** Set when a revocation gave up on the call before its answer began. */
  revoked: GatewayError | undefined = undefined;
  /** Its place among the registry's calls while it waits for its answer (streams.ts). */
  readonly callLinks: ListLinks<PendingCall> = newLinks();

  // ---- timings (performance.now(), ms; 0 until it happened) and bytes -----------------------
  readonly startedAt: number;
  upstreamSentAt = 0;
  upstreamAnsweredAt = 0;
  endedAt = 0;
  /** The request body as received (its bytes are counted when asked). */
  body: string | undefined = undefined;
  bytesOut = 0;
  /** The HTTP status sent to the client (0 until the head is written). */
  status = 0;
  /** The gateway's error code, when the gateway answered with its own error. */
  errorCode: string | undefined = undefined;

  private context: DecisionContext | undefined = undefined;
  /** The caller's `traceparent`, parsed at first use (undefined: not yet). */
  private trace: RegExpExecArray | null | undefined = undefined;
  private readonly res: ServerResponse;

  constructor(
    readonly reply: FastifyReply,
    readonly log: Logger,
    readonly observer: ExchangeObserver | undefined,
  ) {
    this.startedAt = performance.now();
    this.res = reply.raw;
    this.pending = NOTHING_PENDING;
    if (observer?.end) {
      (this.res as ExchangeResponse)[EXCHANGE] = this;
      this.res.once('close', endOfExchange);
    }
  }

  /**
   * The caller's `traceparent` if it is well-formed (W3C Trace Context,
   * trace-context.ts), parsed once for the relay, the span and the audit
   * records: `[, traceId, parentId, flags]`, or null.
   */
  callerTrace(): RegExpExecArray | null {
    if (this.trace === undefined) {
      const header = this.reply.request.headers.traceparent;
      this.trace = typeof header === 'string' ? TRACEPARENT.exec(header) : null;
    }
    return this.trace;
  }

  /** The request's body size in bytes (0 without a body). */
  get bytesIn(): number {
    return this.body === undefined ? 0 : Buffer.byteLength(this.body);
  }

  /** The server the request is for. */
  toRoute(route: RelayRoute): this {
    this.server = route.name;
    this.toolHeaders = route.toolHeaders;
    this.maxResponseBytes = route.maxResponseBytes;
    return this;
  }

  /** What the request carries, once framed. */
  begin(
    era: Era,
    session: Session | undefined,
    pending: Set<JsonRpcId>,
    methodsById: ReadonlyMap<JsonRpcId, string>,
    targetsById: Map<JsonRpcId, string> | undefined,
    longLived: boolean,
  ): this {
    this.era = era;
    this.session = session;
    this.pending = pending;
    this.methodsById = methodsById;
    this.targetsById = targetsById;
    this.longLived = longLived;
    if (session) this.responseHeaders = { 'mcp-session-id': session.id };
    return this;
  }

  decisionContext(): DecisionContext {
    this.context ??= {
      principal: this.principal,
      server: this.server,
      era: this.era,
      memory: this.memory,
    };
    return this.context;
  }

  abort(): void {
    this.call?.abort();
  }

  sessionId(): string | undefined {
    return this.session?.id;
  }

  cancel(reason: GatewayError): void {
    this.revoked = reason;
    this.call?.abort();
  }

  /** Tells the observer what became of a message. */
  noteMessage(
    frame: Frame,
    outcome: MessageOutcome,
    rule?: string,
    shadowed?: readonly string[],
  ): void {
    this.observer?.message?.(this, frame, outcome, rule, shadowed);
  }

  // ---- writing to the client: the only place in server/ that does -------------------------

  /** Whether the client's side can still be written to. */
  get writable(): boolean {
    return !this.res.writableEnded && !this.res.destroyed;
  }

  /**
   * A gateway-made JSON-RPC error for `ids` (one object, or an array for a
   * batch; id null when none). Nothing if the answer has begun.
   */
  fail(err: GatewayError, ids: readonly JsonRpcId[] = []): void {
    if (this.res.headersSent) return;
    const reply = this.reply;
    if (typeof err.data.retryAfterSeconds === 'number') {
      void reply.header('retry-after', String(err.data.retryAfterSeconds));
    }
    const body = JSON.stringify(errorPayload(err, ids));
    this.status = err.status;
    this.errorCode = err.code;
    this.bytesOut += Buffer.byteLength(body);
    void reply.code(err.status).header('content-type', 'application/json').send(body);
  }

  /**
   * A JSON body, the hot path: written straight to the socket, past Fastify's
   * reply hooks (none are registered).
   */
  sendJson(status: number, body: Buffer): void {
    this.reply.hijack();
    this.status = status;
    this.bytesOut += body.length;
    this.res.writeHead(status, {
      ...this.responseHeaders,
      'content-type': 'application/json',
      'content-length': body.length,
    });
    this.res.end(body);
  }

  /** A JSON body through Fastify (an upstream's error status passed on). */
  sendJsonStatus(status: number, body: string | Buffer): void {
    this.status = status;
    this.bytesOut += typeof body === 'string' ? Buffer.byteLength(body) : body.length;
    void this.reply
      .code(status)
      .headers(this.responseHeaders)
      .header('content-type', 'application/json')
      .send(body);
  }

  /** A short plain-text body (a legacy message's 202 `Accepted`). */
  sendText(status: number, text: string): void {
    this.status = status;
    this.bytesOut += Buffer.byteLength(text);
    void this.reply.code(status).header('content-type', 'text/plain; charset=utf-8').send(text);
  }

  /** A status with no body (202 to a notification, 200 to a DELETE). */
  sendEmpty(status: number): void {
    this.status = status;
    void this.reply.code(status).headers(this.responseHeaders).send();
  }

  /** Opens an SSE stream to the client; its head is sent at once. */
  openStream(
    status: number,
    headers: Readonly<Record<string, string>> = this.responseHeaders,
  ): void {
    this.reply.hijack();
    this.status = status;
    this.res.writeHead(status, { ...SSE_HEADERS, ...headers });
    this.res.flushHeaders();
  }

  /** Writes to the open stream; false when the client's buffer is full (wait for `drain`). */
  write(chunk: string): boolean {
    this.bytesOut += Buffer.byteLength(chunk);
    return this.res.write(chunk);
  }

  /** Calls `resume` once the client has taken what was written. */
  onDrain(resume: () => void): void {
    this.res.once('drain', resume);
  }

  /** Ends the stream (after `chunk`, if any). */
  end(chunk?: string): void {
    if (chunk !== undefined) this.bytesOut += Buffer.byteLength(chunk);
    this.res.end(chunk);
  }

  /** Calls `listener` when the client's connection closes (or the response ends). */
  onClose(listener: () => void): void {
    this.res.once('close', listener);
  }

  /** The response, for what only watches it (close listeners, in-flight leases). */
  get response(): ServerResponse {
    return this.res;
  }
}

/** A JSON-RPC error body for every pending request (one object, or an array for a batch). */
export function errorPayload(err: GatewayError, ids: readonly JsonRpcId[]): unknown {
  if (ids.length <= 1) return err.toResponse(ids[0] ?? null);
  return ids.map((id) => err.toResponse(id));
}
