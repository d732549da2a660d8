/**
 * Message channels (stdio processes, legacy HTTP+SSE connections) as an
 * upstream that answers like a Streamable HTTP server, so the relay, the
 * sessions and every check in front of it work unchanged.
 *
 * A POST's requests go down the channel; its answer is an SSE stream that
 * carries their responses (matched by id), the progress notifications for
 * their progress tokens, and whatever else the server says while no GET
 * stream is open; it ends once every request is answered. Notifications and
 * responses from the client are sent down and answered 202. A GET opens the
 * session's stream for everything not tied to a request. DELETE ends the
 * session and its channel.
 *
 * Sessions: `initialize` (legacy era) opens a channel of its own, so agents
 * and tenants never share a process; a stateless (2026-07-28) request uses
 * the channel of its caller (`affinity`), opened on demand and closed when
 * idle. With `sharing: shared` the sessions of one tenant share one channel
 * (a pool keyed by tenant), and request ids and progress tokens are rewritten
 * so sessions never see each other's answers.
 *
 * Shared channels, routing rules in order of precedence:
 * 1. A channel serves one tenant only. Over stdio nothing ties a server's
 *    request or notification to the client request it is about (only a
 *    progress token does), so routing cannot always be exact: what cannot be
 *    attributed stays within the tenant, never crosses to another.
 * 2. A response goes to the request it answers; a notification carrying a
 *    progress token, to the request that gave it.
 * 3. A server request goes to one session: the one whose request in flight
 *    is newest (often the only one), else the one used last.
 *    It reaches that session under an id the gateway made; the session's
 *    answer is mapped back to the server's id. An answer to a server request
 *    the session never received is dropped.
 * 4. Any other notification (logging, list changes) goes to every session of
 *    the channel, i.e. of that tenant.
 *
 * Failures: a channel that dies ends every stream open on it with an error
 * (the relay then answers each pending request with a JSON-RPC error), and
 * its session is gone: the next request gets 404 and the client
 * re-initializes. Channels that die soon after opening, again and again, are
 * a crash loop: new ones are refused for a growing backoff, and said so.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { GatewayError, isGatewayError, type JsonRpcId } from '../errors/index.js';
import { saidOf, type JsonRpcMessage, type MessageChannel } from './channel.js';
import { kindOf } from '../mcp/frame.js';
import {
  UpstreamAbort,
  UpstreamBody,
  type BodyController,
  type Upstream,
  type UpstreamCall,
  type UpstreamRequest,
  type UpstreamResponse,
} from './types.js';

/** Server messages kept for a session while no stream is open to take them. */
const BACKLOG_MESSAGES = 1_000;
/** A channel that dies sooner than this after opening counts towards a crash loop. */
const CRASH_WINDOW_MS = 60_000;
/** This many early deaths within the window is a crash loop. */
const CRASH_LOOP_THRESHOLD = 3;
const CRASH_BACKOFF_FIRST_MS = 1_000;
const CRASH_BACKOFF_MAX_MS = 60_000;
/** How long the gateway waits for the server to answer `initialize` of a shared channel. */
const SHARED_INIT_TIMEOUT_MS = 30_000;

export interface BridgeOptions {
  readonly name: string;
  readonly maxResponseBytes: number;
  /** `session` (a channel per session or per caller) or `shared` (one for all, ids rewritten). */
  readonly sharing: 'session' | 'shared';
  /** Stateless-era channels (per caller) close after this long unused. */
  readonly idleTimeoutMs: number;
  /**
   * Opens a channel. `headers` are the ones the gateway built for the request
   * that needs it, the credential step's among them: the opener passes the
   * credential on (a stdio server gets it in a private file).
   */
  readonly open: (headers: Readonly<Record<string, string>>) => Promise<MessageChannel>;
  readonly log: Logger;
  /** Told when a crash loop starts (for metrics). */
  readonly onCrashLoop?: () => void;
  /** How long a request may wait for the server's first message about it; 0: no bound. */
  readonly headersTimeoutMs: number;
  /** Told how many channels are open, whenever that changes (for metrics). */
  readonly onChannels?: (open: number) => void;
  /** The crash-loop window (default CRASH_WINDOW_MS); shorter in tests of the breaker. */
  readonly crashWindowMs?: number;
}

type Key = string;

/** A JSON-RPC id as a map key: 1 and "1" are different ids. */
function keyOf(id: unknown): Key {
  return typeof id === 'string' ? `s:${id}` : `n:${String(id)}`;
}

function isRequest(m: JsonRpcMessage): boolean {
  return kindOf(m) === 'request';
}

function isNotification(m: JsonRpcMessage): boolean {
  return kindOf(m) === 'notification';
}

function progressTokenOf(m: JsonRpcMessage): unknown {
  const params = m.params as
    { _meta?: { progressToken?: unknown }; progressToken?: unknown } | undefined;
  return isNotification(m) ? params?.progressToken : params?._meta?.progressToken;
}

/**
 * One answer of the bridge. Its head is decided by the first message: a POST
 * of one request whose response comes first is answered `application/json`
 * (nothing to stream, less to parse on both sides); anything else is an SSE
 * stream. GET streams are SSE from the start.
 */
class EmulatedStream implements BodyController {
  readonly body = new UpstreamBody(this);
  /** Request ids (as sent down the channel) this stream still waits for. */
  readonly pending = new Set<Key>();
  aborted = false;
  ended = false;
  /** Resolves with the head once decided; the relay waits on it. */
  readonly head: Promise<UpstreamResponse>;
  private decided = false;
  private resolveHead!: (head: UpstreamResponse) => void;
  private rejectHead!: (err: Error) => void;
  private headTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly onAbort: (stream: EmulatedStream) => void,
    private readonly onPause: (paused: boolean) => void,
    /** Headers every head carries (a new session's id). */
    private readonly extraHeaders: Record<string, string> = {},
    /** Whether one request is all it answers (a JSON answer is possible). */
    private readonly single = false,
  ) {
    this.head = new Promise<UpstreamResponse>((resolve, reject) => {
      this.resolveHead = resolve;
      this.rejectHead = reject;
    });
    // Nobody may be waiting yet: a failure before the relay looks must not go unhandled.
    this.head.catch(() => undefined);
  }

  /** Decides the head now: an SSE stream (GET streams, and a POST whose first message is not its answer). */
  streamNow(): void {
    if (this.decided) return;
    this.decided = true;
    clearTimeout(this.headTimer);
    this.resolveHead({
      statusCode: 200,
      headers: { 'content-type': 'text/event-stream', ...this.extraHeaders },
      body: this.body,
    });
  }

  /** Fails the request with `err` if no message came within `ms` (the upstream headers timeout). */
  boundHead(ms: number, err: () => Error): void {
    if (ms <= 0 || this.decided) return;
    this.headTimer = setTimeout(() => {
      this.fail(err());
      this.abort();
    }, ms);
    this.headTimer.unref();
  }

  push(message: JsonRpcMessage): void {
    if (this.ended) return;
    // Serialized before anything is decided: a message that cannot be fails this stream
    // (each request on it gets its error), never leaves a head decided but unsent.
    let data: string;
    try {
      data = JSON.stringify(message);
    } catch (err) {
      this.fail(
        new GatewayError(
          'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
          `a message that cannot be relayed (${(err as Error).message})`,
        ),
      );
      // And what the stream still waited for is cancelled at the server.
      this.abort();
      return;
    }
    if (!this.decided) {
      if (this.single && this.pending.size === 0 && message.method === undefined) {
        this.decided = true;
        clearTimeout(this.headTimer);
        this.body.push(Buffer.from(data));
        this.ended = true;
        this.body.end();
        this.resolveHead({
          statusCode: 200,
          headers: { 'content-type': 'application/json', ...this.extraHeaders },
          body: this.body,
        });
        return;
      }
      this.streamNow();
    }
    this.body.push(Buffer.from(`event: message\ndata: ${data}\n\n`));
  }

  end(): void {
    if (this.ended) return;
    this.streamNow();
    this.ended = true;
    this.body.end();
  }

  fail(err: Error): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.decided) {
      this.decided = true;
      clearTimeout(this.headTimer);
      this.rejectHead(err);
      return;
    }
    this.body.fail(err);
  }

  pause(): void {
    this.onPause(true);
  }

  resume(): void {
    this.onPause(false);
  }

  abort(): void {
    if (this.aborted) return;
    if (!this.decided) this.fail(new UpstreamAbort());
    this.aborted = true;
    this.ended = true;
    this.onAbort(this);
  }
}

interface Inflight {
  readonly stream: EmulatedStream;
  /** The session's own id for the request (differs from the channel's in a shared channel). */
  readonly clientId: unknown;
  /** The session's own progress token, if the request carried one. */
  readonly clientToken?: unknown;
  /** Its key in the conduit's progress map (the token it travels under), if it has one. */
  readonly progressKey?: Key;
  readonly session: BridgeSession;
}

/** One client session (or one caller, stateless) on a channel. */
class BridgeSession {
  readonly streams = new Set<EmulatedStream>();
  getStream: EmulatedStream | undefined;
  readonly backlog: JsonRpcMessage[] = [];
  lastUsedAt = Date.now();
  constructor(
    readonly id: string,
    readonly conduit: Conduit,
    readonly affinity: string | undefined,
    /** Whom the session was opened for: its requests come in that caller's name only. */
    readonly caller: string | undefined,
  ) {}

  /** Whether a request in `caller`'s name may use this session. */
  servesCaller(caller: string | undefined): boolean {
    return this.caller === undefined || this.caller === caller;
  }
}

/** A server request delivered to a session of a shared channel, until the session answers it. */
interface ServerRequest {
  readonly session: BridgeSession;
  /** The id the server gave it; the session knows it by the gateway's. */
  readonly serverId: unknown;
}

/** Server requests a shared channel keeps waiting for an answer, at most (the oldest go first). */
const MAX_SERVER_REQUESTS = 1_000;

/** A channel and what is in flight on it (one per session, or one shared per tenant). */
class Conduit {
  readonly inflight = new Map<Key, Inflight>();
  readonly progress = new Map<Key, Inflight>();
  readonly sessions = new Set<BridgeSession>();
  /** Shared channels: server requests by the id the session got (rule 3). */
  readonly serverRequests = new Map<Key, ServerRequest>();
  /** Since when no session uses it (a shared channel closes after the idle timeout). */
  idleSince: number | undefined = undefined;
  /** A shared channel being closed for idleness: no new session joins it. */
  retired = false;
  private nextServerId = 0;
  readonly openedAt = Date.now();
  /** Shared channels: the server's answer to the one initialize the gateway sent. */
  initializeResult: Record<string, unknown> | undefined;
  private nextId = 0;
  constructor(
    readonly channel: MessageChannel,
    readonly shared: boolean,
  ) {}
  /** The id a request travels under: its own, or a fresh one on a shared channel. */
  channelId(clientId: unknown): unknown {
    return this.shared ? `pc-${++this.nextId}` : clientId;
  }

  /** Rule 3: the id `session` gets for a server request, remembered until it answers. */
  serverRequestId(session: BridgeSession, serverId: unknown): string {
    const id = `pc-s${++this.nextServerId}`;
    this.serverRequests.set(keyOf(id), { session, serverId });
    if (this.serverRequests.size > MAX_SERVER_REQUESTS) {
      const oldest = this.serverRequests.keys().next().value as Key;
      this.serverRequests.delete(oldest);
    }
    return id;
  }
}

export class ChannelUpstream implements Upstream {
  readonly name: string;
  readonly opensChannels = true;
  readonly maxResponseBytes: number;
  private readonly sessions = new Map<string, BridgeSession>();
  private readonly byAffinity = new Map<string, BridgeSession>();
  /** Stateless callers whose channel is being opened. */
  private readonly opening = new Map<string, Promise<BridgeSession>>();
  /** Shared channels, one per tenant (rule 1). */
  private readonly shared = new Map<string, Promise<Conduit>>();
  private readonly recentCrashes: number[] = [];
  private backoffUntil = 0;
  private backoffMs = CRASH_BACKOFF_FIRST_MS;
  private lastCrashAt = 0;
  private readonly crashWindowMs: number;
  private readonly idleTimer: NodeJS.Timeout;
  private closed = false;
  private openChannels = 0;

  constructor(private readonly options: BridgeOptions) {
    this.name = options.name;
    this.maxResponseBytes = options.maxResponseBytes;
    this.crashWindowMs = options.crashWindowMs ?? CRASH_WINDOW_MS;
    this.idleTimer = setInterval(
      () => this.closeIdle(),
      Math.max(1_000, Math.min(60_000, options.idleTimeoutMs / 4)),
    );
    this.idleTimer.unref();
  }

  request(req: UpstreamRequest): UpstreamCall {
    let aborted = false;
    let stream: EmulatedStream | undefined;
    const response = this.handle(req, (s) => {
      stream = s;
      if (aborted) s.abort();
    });
    return {
      response,
      get aborted() {
        return aborted;
      },
      abort() {
        aborted = true;
        stream?.abort();
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.idleTimer);
    const conduits = new Set([...this.sessions.values()].map((s) => s.conduit));
    for (const pending of this.shared.values()) {
      const c = await pending.catch(() => undefined);
      if (c) conduits.add(c);
    }
    await Promise.all([...conduits].map((c) => c.channel.close()));
  }

  private async handle(
    req: UpstreamRequest,
    onStream: (s: EmulatedStream) => void,
  ): Promise<UpstreamResponse> {
    const sessionId = req.headers['mcp-session-id'];
    if (req.method === 'DELETE') return this.deleteSession(sessionId, req.affinity);
    if (req.method === 'GET') return this.openGetStream(sessionId, req.affinity, onStream);

    let parsed: unknown;
    try {
      parsed = JSON.parse(req.body ?? '');
    } catch {
      return refusal(new GatewayError('PORTCULLIS_ERR_JSONRPC_PARSE'), null);
    }
    const messages = (Array.isArray(parsed) ? parsed : [parsed]) as JsonRpcMessage[];
    const initialize = messages.find((m) => m.method === 'initialize');

    let session: BridgeSession;
    let created = false;
    if (sessionId !== undefined) {
      const known = this.sessions.get(sessionId);
      if (known === undefined || !known.servesCaller(req.affinity))
        return sessionNotFound(messages);
      session = known;
    } else if (initialize !== undefined) {
      session = await this.newSession(undefined, req, poolKey(req));
      created = true;
    } else {
      // Stateless (2026-07-28): the caller's own channel, opened on demand, once:
      // a burst of first calls waits for the one being opened instead of each
      // opening a channel that nothing would ever close.
      const affinity = req.affinity ?? 'anonymous';
      const known = this.byAffinity.get(affinity);
      if (known && !known.conduit.channel.closed) {
        session = known;
      } else {
        let opening = this.opening.get(affinity);
        if (opening === undefined) {
          opening = this.newSession(affinity, req, poolKey(req)).finally(() =>
            this.opening.delete(affinity),
          );
          this.opening.set(affinity, opening);
        }
        session = await opening;
      }
    }
    session.lastUsedAt = Date.now();
    // A credential minted for the session is renewed before it expires: the server gets the new one.
    if (!created) session.conduit.channel.updateCredential?.(req.headers);

    const requests = messages.filter(isRequest);
    if (requests.length === 0) {
      for (const m of messages) this.sendDown(session, m);
      return { statusCode: 202, headers: {}, body: emptyBody() };
    }
    const stream = this.newStream(
      session,
      created ? { 'mcp-session-id': session.id } : {},
      requests.length === 1 && !Array.isArray(parsed),
    );
    if (created) {
      // The session's id reaches the gateway only with the head: if the head never
      // comes (the client left, the server never answered), nobody could end the
      // session later, so it ends here, and its process with it.
      stream.head.catch(() => this.abandon(session));
    }
    onStream(stream);
    stream.boundHead(
      this.options.headersTimeoutMs,
      () =>
        new GatewayError(
          'PORTCULLIS_ERR_UPSTREAM_TIMEOUT',
          `server '${this.name}' did not answer within ${this.options.headersTimeoutMs} ms`,
          { server: this.name },
        ),
    );
    const conduit = session.conduit;
    for (const m of messages) {
      if (isRequest(m)) {
        if (conduit.shared && m.method === 'initialize' && conduit.initializeResult !== undefined) {
          // The shared channel is initialized once; each session gets that answer.
          stream.push({ jsonrpc: '2.0', id: m.id, result: conduit.initializeResult });
          continue;
        }
        const channelId = conduit.channelId(m.id);
        const token = progressTokenOf(m);
        const channelToken =
          token === undefined ? undefined : conduit.shared ? `${String(channelId)}:p` : token;
        const progressKey = channelToken === undefined ? undefined : keyOf(channelToken);
        const entry: Inflight = {
          stream,
          clientId: m.id,
          clientToken: token,
          progressKey,
          session,
        };
        conduit.inflight.set(keyOf(channelId), entry);
        stream.pending.add(keyOf(channelId));
        let down = m;
        if (progressKey !== undefined) {
          conduit.progress.set(progressKey, entry);
          if (conduit.shared) down = withProgressToken(m, channelToken);
        }
        if (conduit.shared) down = { ...down, id: channelId };
        this.sendDownRaw(session, down, stream);
      } else {
        this.sendDown(session, m);
      }
    }
    if (stream.pending.size === 0) stream.end();
    return stream.head;
  }

  private sendDownRaw(
    session: BridgeSession,
    message: JsonRpcMessage,
    stream?: EmulatedStream,
  ): void {
    try {
      session.conduit.channel.send(message);
    } catch (err) {
      stream?.fail(err as Error);
    }
  }

  /** A client notification or response, sent down; a cancellation also releases its request. */
  private sendDown(session: BridgeSession, message: JsonRpcMessage): void {
    const conduit = session.conduit;
    if (conduit.shared && message.method === undefined) {
      // Rule 3: an answer goes back under the server's id, and only from the session asked.
      const key = keyOf(message.id);
      const asked = conduit.serverRequests.get(key);
      if (asked === undefined || asked.session !== session) {
        this.options.log.warn(
          { server: this.name, id: message.id },
          'dropped an answer to a server request this session never received',
        );
        return;
      }
      conduit.serverRequests.delete(key);
      message = { ...message, id: asked.serverId };
    }
    if (message.method === 'notifications/cancelled' && conduit.shared) {
      // The server knows the request by the id it travelled under.
      const params = message.params as { requestId?: unknown } | undefined;
      const found = [...conduit.inflight.entries()].find(
        ([, e]) => e.session === session && e.clientId === params?.requestId,
      );
      if (found === undefined) return;
      message = { ...message, params: { ...params, requestId: unkey(found[0]) } };
    }
    this.sendDownRaw(session, message);
  }

  private newStream(
    session: BridgeSession,
    headers?: Record<string, string>,
    single?: boolean,
  ): EmulatedStream {
    const stream = new EmulatedStream(
      (s) => this.onStreamAborted(session, s),
      (paused) => (paused ? session.conduit.channel.pause() : session.conduit.channel.resume()),
      headers,
      single,
    );
    session.streams.add(stream);
    return stream;
  }

  /** The client went away from a stream: cancel what it still waited for (spec, stdio "Cancellation"). */
  private onStreamAborted(session: BridgeSession, stream: EmulatedStream): void {
    session.streams.delete(stream);
    if (session.getStream === stream) session.getStream = undefined;
    const conduit = session.conduit;
    for (const key of stream.pending) {
      const entry = conduit.inflight.get(key);
      conduit.inflight.delete(key);
      if (entry === undefined) continue;
      if (entry.progressKey !== undefined) conduit.progress.delete(entry.progressKey);
      this.sendDownRaw(session, {
        jsonrpc: '2.0',
        method: 'notifications/cancelled',
        params: { requestId: unkey(key), reason: 'the client went away' },
      });
    }
    stream.pending.clear();
  }

  /** The session with this id, if `caller` may use it. */
  private sessionFor(
    sessionId: string | undefined,
    caller: string | undefined,
  ): BridgeSession | undefined {
    const session = sessionId === undefined ? undefined : this.sessions.get(sessionId);
    return session?.servesCaller(caller) ? session : undefined;
  }

  private async openGetStream(
    sessionId: string | undefined,
    caller: string | undefined,
    onStream: (s: EmulatedStream) => void,
  ): Promise<UpstreamResponse> {
    const session = this.sessionFor(sessionId, caller);
    if (session === undefined) return sessionNotFound([]);
    if (session.getStream !== undefined && !session.getStream.ended) {
      return json(409, {
        jsonrpc: '2.0',
        id: null,
        error: { code: -32600, message: 'Only one GET stream per session' },
      });
    }
    const stream = this.newStream(session);
    stream.streamNow();
    session.getStream = stream;
    onStream(stream);
    for (const m of session.backlog.splice(0)) stream.push(m);
    return stream.head;
  }

  private async deleteSession(
    sessionId: string | undefined,
    caller: string | undefined,
  ): Promise<UpstreamResponse> {
    const session = this.sessionFor(sessionId, caller);
    if (session === undefined) return sessionNotFound([]);
    this.dropSession(session);
    if (!session.conduit.shared) await session.conduit.channel.close();
    return { statusCode: 200, headers: {}, body: emptyBody() };
  }

  private dropSession(session: BridgeSession, err?: Error): void {
    this.sessions.delete(session.id);
    if (session.affinity !== undefined && this.byAffinity.get(session.affinity) === session) {
      this.byAffinity.delete(session.affinity);
    }
    session.conduit.sessions.delete(session);
    if (session.conduit.sessions.size === 0) session.conduit.idleSince = Date.now();
    for (const [key, asked] of session.conduit.serverRequests) {
      if (asked.session === session) session.conduit.serverRequests.delete(key);
    }
    for (const s of session.streams) {
      if (err) s.fail(err);
      else s.end();
    }
    session.streams.clear();
  }

  private async newSession(
    affinity: string | undefined,
    req: UpstreamRequest,
    pool: string,
  ): Promise<BridgeSession> {
    if (this.closed) throw new GatewayError('PORTCULLIS_ERR_HTTP_SHUTTING_DOWN');
    let conduit: Conduit;
    if (this.options.sharing === 'shared') {
      conduit = await this.sharedConduit(req.headers, pool);
    } else {
      // A channel of its own is a process (or a connection) of its own: the caller's quota.
      const lease = req.channelLease?.();
      try {
        conduit = await this.openConduit(req.headers);
      } catch (err) {
        lease?.release();
        throw err;
      }
      if (lease) conduit.channel.onClose(() => lease.release());
    }
    const session = new BridgeSession(
      randomBytes(16).toString('hex'),
      conduit,
      affinity,
      req.affinity,
    );
    this.sessions.set(session.id, session);
    if (affinity !== undefined) this.byAffinity.set(affinity, session);
    conduit.sessions.add(session);
    conduit.idleSince = undefined;
    return session;
  }

  private async openConduit(headers: Readonly<Record<string, string>>): Promise<Conduit> {
    const now = Date.now();
    if (now < this.backoffUntil) {
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE',
        `server '${this.name}' keeps crashing; next start allowed in ${Math.ceil((this.backoffUntil - now) / 1000)} s`,
        { server: this.name, reason: 'crash_loop' },
      );
    }
    let channel: MessageChannel;
    try {
      channel = await this.options.open(headers);
    } catch (err) {
      // A server that cannot start is the operator's to fix: not a crash, and said so.
      if (isGatewayError(err) && err.code === 'PORTCULLIS_ERR_UPSTREAM_CANNOT_START') throw err;
      this.noteCrash();
      // The detail (an address, errno text) is the operator's; the client learns what happened.
      this.options.log.warn(
        { server: this.name, err: (err as Error).message },
        'could not open an upstream channel',
      );
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE',
        saidOf(this.name, err as Error),
        {
          server: this.name,
        },
      );
    }
    const conduit = new Conduit(channel, this.options.sharing === 'shared');
    this.options.onChannels?.(++this.openChannels);
    channel.onMessage((m) => {
      // Whatever one message does, it fails on its own: the gateway and the other channels go on.
      try {
        this.fromServer(conduit, m);
      } catch (err) {
        this.options.log.error(
          { server: this.name, err: (err as Error).message },
          'failed to route a message from the server',
        );
      }
    });
    channel.onClose((reason) => this.channelClosed(conduit, reason));
    return conduit;
  }

  /** The tenant's shared channel (rule 1), initialized by the gateway once. */
  private sharedConduit(headers: Readonly<Record<string, string>>, pool: string): Promise<Conduit> {
    const known = this.shared.get(pool);
    if (known) {
      return known.then((c) => {
        if (!c.channel.closed && !c.retired) return c;
        if (this.shared.get(pool) === known) this.shared.delete(pool);
        return this.sharedConduit(headers, pool);
      });
    }
    const opening = (async () => {
      const conduit = await this.openConduit(headers);
      const result = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error('no answer to initialize')),
          SHARED_INIT_TIMEOUT_MS,
        );
        const probe = new BridgeSession('gateway', conduit, undefined, undefined);
        const stream = this.newStream(probe);
        conduit.inflight.set(keyOf('pc-init'), { stream, clientId: 'pc-init', session: probe });
        stream.pending.add(keyOf('pc-init'));
        stream.body.consume(
          (chunk) => {
            const data = /data: (.*)\n/.exec(chunk.toString())?.[1];
            const msg =
              data === undefined
                ? undefined
                : (JSON.parse(data) as { result?: Record<string, unknown> });
            if (msg?.result) {
              clearTimeout(timer);
              resolve(msg.result);
            }
          },
          () => undefined,
          (err) => reject(err),
        );
        conduit.channel.send({
          jsonrpc: '2.0',
          id: 'pc-init',
          method: 'initialize',
          params: {
            protocolVersion: '2025-11-25',
            capabilities: { sampling: {}, elicitation: {}, roots: {} },
            clientInfo: { name: 'portcullis', version: '1' },
          },
        });
      });
      conduit.initializeResult = result;
      conduit.channel.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      return conduit;
    })();
    this.shared.set(pool, opening);
    opening.catch(() => {
      if (this.shared.get(pool) === opening) this.shared.delete(pool);
    });
    return opening;
  }

  /** Routes one message from the server to the stream that should carry it. */
  private fromServer(conduit: Conduit, message: JsonRpcMessage): void {
    const kind = kindOf(message);
    if ((kind === 'response' || kind === 'error') && message.id !== undefined) {
      const key = keyOf(message.id);
      const entry = conduit.inflight.get(key);
      if (entry === undefined) {
        this.options.log.debug(
          { server: this.name, id: message.id },
          'dropped a response nobody waits for',
        );
        return;
      }
      conduit.inflight.delete(key);
      if (entry.progressKey !== undefined) conduit.progress.delete(entry.progressKey);
      entry.stream.pending.delete(key);
      entry.stream.push(conduit.shared ? { ...message, id: entry.clientId } : message);
      if (entry.stream.pending.size === 0) {
        entry.stream.end();
        entry.session.streams.delete(entry.stream);
      }
      return;
    }
    const token = progressTokenOf(message);
    if (token !== undefined) {
      const entry = conduit.progress.get(keyOf(token));
      if (entry !== undefined) {
        entry.stream.push(conduit.shared ? withProgressToken(message, entry.clientToken) : message);
        return;
      }
    }
    // Not tied to a request the gateway can see: the session's GET stream, else the
    // newest stream still open, else kept until one opens.
    if (!conduit.shared) {
      const only = conduit.sessions.values().next().value;
      if (only !== undefined) this.deliver(only, message);
      return;
    }
    if (isRequest(message)) {
      const session = this.askedSession(conduit);
      if (session === undefined) {
        this.options.log.warn(
          { server: this.name, method: message.method },
          'dropped a server request: no session of this channel is open',
        );
        return;
      }
      return this.deliver(session, {
        ...message,
        id: conduit.serverRequestId(session, message.id),
      });
    }
    if (message.method === 'notifications/cancelled') {
      // The server withdraws a request of its own: told to the one session that got it.
      const params = message.params as { requestId?: unknown } | undefined;
      for (const [key, asked] of conduit.serverRequests) {
        if (asked.serverId !== params?.requestId) continue;
        conduit.serverRequests.delete(key);
        const requestId = unkey(key);
        return this.deliver(asked.session, { ...message, params: { ...params, requestId } });
      }
      return;
    }
    // Rule 4: the channel is the tenant's alone, so its sessions are the tenant's.
    for (const session of conduit.sessions) this.deliver(session, message);
  }

  /** Rule 3: the session a server request on a shared channel goes to. */
  private askedSession(conduit: Conduit): BridgeSession | undefined {
    let newest: BridgeSession | undefined;
    for (const entry of conduit.inflight.values()) {
      if (conduit.sessions.has(entry.session)) newest = entry.session;
    }
    if (newest !== undefined) return newest;
    let last: BridgeSession | undefined;
    for (const session of conduit.sessions) {
      if (last === undefined || session.lastUsedAt >= last.lastUsedAt) last = session;
    }
    return last;
  }

  private deliver(session: BridgeSession, message: JsonRpcMessage): void {
    if (session.getStream !== undefined && !session.getStream.ended)
      return session.getStream.push(message);
    const open = [...session.streams].filter((s) => !s.ended);
    const newest = open.at(-1);
    if (newest !== undefined) return newest.push(message);
    session.backlog.push(message);
    if (session.backlog.length > BACKLOG_MESSAGES) session.backlog.shift();
  }

  private channelClosed(conduit: Conduit, reason: Error | undefined): void {
    this.options.onChannels?.(--this.openChannels);
    if (reason !== undefined && !this.closed) {
      this.options.log.warn(
        { server: this.name, err: reason.message, sessions: conduit.sessions.size },
        'upstream channel ended',
      );
      if (Date.now() - conduit.openedAt < this.crashWindowMs) this.noteCrash();
    }
    // A channel that lived past the window was healthy: whatever looped before is over.
    if (Date.now() - conduit.openedAt >= this.crashWindowMs)
      this.backoffMs = CRASH_BACKOFF_FIRST_MS;
    // What every request still in flight on it is answered with (a JSON-RPC error each).
    const err = new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED',
      saidOf(this.name, reason),
      {
        server: this.name,
      },
    );
    for (const entry of conduit.inflight.values()) entry.stream.fail(err);
    conduit.inflight.clear();
    conduit.progress.clear();
    for (const session of [...conduit.sessions]) this.dropSession(session, err);
  }

  /**
   * Counts an early death. Only deaths count: a message the server refused
   * (sse.ts) is that message's failure, so a client cannot trip the breaker.
   * The backoff doubles per loop, and starts over once a whole window has
   * passed without a crash since the last backoff ended (a loop that goes on
   * right after its backoff keeps doubling).
   */
  private noteCrash(): void {
    const now = Date.now();
    if (now - Math.max(this.lastCrashAt, this.backoffUntil) >= this.crashWindowMs)
      this.backoffMs = CRASH_BACKOFF_FIRST_MS;
    this.lastCrashAt = now;
    this.recentCrashes.push(now);
    while (
      this.recentCrashes.length > 0 &&
      (this.recentCrashes[0] as number) < now - this.crashWindowMs
    )
      this.recentCrashes.shift();
    if (this.recentCrashes.length >= CRASH_LOOP_THRESHOLD) {
      this.backoffUntil = now + this.backoffMs;
      this.options.log.error(
        {
          server: this.name,
          crashes: this.recentCrashes.length,
          windowMs: this.crashWindowMs,
          backoffMs: this.backoffMs,
        },
        'upstream server is crash-looping; refusing new sessions for a while',
      );
      this.options.onCrashLoop?.();
      this.backoffMs = Math.min(CRASH_BACKOFF_MAX_MS, this.backoffMs * 2);
      this.recentCrashes.length = 0;
    }
  }

  /** Ends a session nobody can reach any more (its id was never handed out). */
  private abandon(session: BridgeSession): void {
    if (this.sessions.get(session.id) !== session) return;
    this.dropSession(session);
    if (!session.conduit.shared) void session.conduit.channel.close();
    this.options.log.info(
      { server: this.name },
      'ended a session whose initialize was never answered to the client',
    );
  }

  endCaller(affinity: string): void {
    const session = this.byAffinity.get(affinity);
    if (session === undefined) return;
    this.dropSession(
      session,
      new GatewayError('PORTCULLIS_ERR_AUTH_TOKEN_REVOKED', 'the caller was revoked'),
    );
    if (!session.conduit.shared) void session.conduit.channel.close();
  }

  private closeIdle(): void {
    const cutoff = Date.now() - this.options.idleTimeoutMs;
    // A tenant's shared channel that no session has used for the idle timeout: one per
    // tenant that ever came would otherwise run for ever.
    for (const [pool, opening] of this.shared) {
      void opening.then(
        (c) => {
          if (c.sessions.size > 0 || c.idleSince === undefined || c.idleSince >= cutoff) return;
          if (this.shared.get(pool) === opening) this.shared.delete(pool);
          c.retired = true;
          void c.channel.close();
        },
        () => undefined,
      );
    }
    for (const session of [...this.byAffinity.values()]) {
      if (session.lastUsedAt < cutoff && session.streams.size === 0) {
        this.dropSession(session);
        if (!session.conduit.shared) void session.conduit.channel.close();
      }
    }
  }
}

/**
 * Which shared channel a request's session joins: its tenant's (rule 1). The
 * caller's own key stands in when the tenant is not known, which keeps tenants
 * apart too (at one channel per caller).
 */
function poolKey(req: UpstreamRequest): string {
  return req.tenant !== undefined ? `t:${req.tenant}` : `a:${req.affinity ?? ''}`;
}

function withProgressToken(m: JsonRpcMessage, token: unknown): JsonRpcMessage {
  const params = { ...(m.params as Record<string, unknown> | undefined) };
  if (isNotification(m)) return { ...m, params: { ...params, progressToken: token } };
  return {
    ...m,
    params: { ...params, _meta: { ...(params._meta as object | undefined), progressToken: token } },
  };
}

function unkey(key: Key): unknown {
  return key.startsWith('s:') ? key.slice(2) : Number(key.slice(2));
}

function emptyBody(): UpstreamBody {
  const body = new UpstreamBody({
    aborted: false,
    pause: () => undefined,
    resume: () => undefined,
    abort: () => undefined,
  });
  body.end();
  return body;
}

function json(status: number, payload: unknown): UpstreamResponse {
  const body = new UpstreamBody({
    aborted: false,
    pause: () => undefined,
    resume: () => undefined,
    abort: () => undefined,
  });
  body.push(Buffer.from(JSON.stringify(payload)));
  body.end();
  return { statusCode: status, headers: { 'content-type': 'application/json' }, body };
}

/** spec/2025-11-25/basic/transports.mdx: a request for an ended session MUST get 404. */
function sessionNotFound(messages: JsonRpcMessage[]): UpstreamResponse {
  const id = (messages.find(isRequest)?.id ?? null) as JsonRpcId;
  return refusal(
    new GatewayError('PORTCULLIS_ERR_SESSION_UNKNOWN', 'the session and its process have ended'),
    id,
  );
}

/** A refusal as the gateway words it: its status, and its JSON-RPC error with the code clients act on. */
function refusal(err: GatewayError, id: JsonRpcId): UpstreamResponse {
  return json(err.status, err.toResponse(id));
}
