/**
 * The gateway's public listener as a Fastify app. The pipeline runs in this
 * fixed order for every request (drawn in docs/architecture.md):
 *
 *   listener  Host/Origin allowlist, drain gate (onRequest hook);
 *             Content-Type and body limit (the one content-type parser)
 *   authenticate  → Principal (auth.mode none: the anonymous local principal)
 *   route     /mcp/<name> → upstream; unknown → 404 naming nothing else
 *   frame     parse JSON-RPC, detect the era, check headers against the body,
 *             resolve the legacy session
 *   credential    upstream headers are built from scratch: the client's
 *             Authorization and cookies never reach an upstream
 *   forward   undici Pool per upstream
 *   relay     JSON or SSE, framed message by message (relay.ts)
 */
import Fastify, {
  LogController,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { Logger } from 'pino';
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { Server } from 'node:net';
import { performance } from 'node:perf_hooks';
import { GatewayError, type JsonRpcId } from '../errors/index.js';
import type { Config } from '../config/schema.js';
import { parseBody, requestIds, type Frame, type JsonRpcMessage } from '../mcp/frame.js';
import {
  BATCHING_VERSION,
  detectEra,
  encodeHeaderValue,
  headerValue,
  isModernVersion,
  LEGACY_VERSIONS,
  validateModernRequest,
  type ToolHeaderRegistry,
} from '../mcp/era.js';
import { newSessionId, type Session, type SessionStore } from '../mcp/sessions.js';
import { ANONYMOUS, ownerKey, type Principal } from '../auth/principal.js';
import type { Upstream, UpstreamCall, UpstreamRequest } from '../upstream/types.js';
import type { RateLimits } from './rate-limits.js';
import type { CredentialRequest } from '../auth/credentials.js';
import type { Verb } from '../policy/manifest.js';
import { toGatewayError } from '../upstream/http.js';
import { StoreUnavailableError } from '../store/index.js';
import type { ReplicaLink } from './replicas.js';
import { INTERNAL_TICKET_HEADER, InternalTickets, registerLegacySse } from './legacy-sse.js';
import { compileHostCheck, compileOriginCheck } from './allowlist.js';
import type { Authenticator } from '../auth/authenticate.js';
import type { VerifiedToken } from '../auth/jwt.js';
import type { UpstreamCredential } from '../auth/credentials.js';
import type { SigningKeys } from '../auth/keys.js';
import type { Metrics } from '../telemetry/metrics.js';
import { authHooks, PRM_PATH, registerMetadataRoutes, type ResourceInfo } from './auth-http.js';
import { relayResponse } from './relay.js';
import { Exchange, type ExchangeObserver, type RelayRoute } from './exchange.js';
import type { StreamIdentity, StreamRegistry } from './streams.js';
import type { Lease, Quotas } from './quotas.js';
import { POLICY_OFF, type Policy, type ToolMemory } from '../policy/policy.js';
import { recordDecision } from './decide.js';

export interface Route extends RelayRoute {
  readonly upstream: Upstream;
  /** Scopes a token needs for this server (besides auth.requiredScopes). */
  readonly requiredScopes: readonly string[];
  /** What the upstream is sent in place of the agent's token. */
  readonly credential: () => UpstreamCredential;
}

export interface AppDeps {
  config: Config;
  log: Logger;
  routes: ReadonlyMap<string, Route>;
  sessions: SessionStore;
  /** With cluster configured: this replica's home, and the way to other replicas' sessions. */
  replicas?: ReplicaLink | undefined;
  streams: StreamRegistry;
  isDraining: () => boolean;
  /** Shutting down but still serving (shutdown.leaveRotationMs): each answer closes its connection. */
  isLeaving?: () => boolean;
  /** Hears every message with its decision, and every exchange's end (audit attaches here). */
  observer?: ExchangeObserver | undefined;
  /** With tracing on: starts the request's span, and names it as the upstream's parent. */
  traceparentFor?: ((x: Exchange) => string) | undefined;
  /** True while the audit trail cannot take more records: new requests are refused (503). */
  auditFull?: (() => boolean) | undefined;
  metrics: Metrics;
  quotas: Quotas;
  /** The policy in force (it changes on reload); absent, none: everything is allowed. */
  policy?: (() => Policy) | undefined;
  /** The rate limits in force (they change on reload); absent, none. */
  rateLimits?: (() => RateLimits) | undefined;
  /** What the gateway remembers of servers' tools between messages (pins, verdicts). */
  toolMemory?: ToolMemory | undefined;
  /** Whether whom a stream would serve was revoked since the request was authenticated. */
  isRevoked?: ((identity: StreamIdentity) => boolean) | undefined;
  /** The gateway's own signing keys, published at /.well-known/jwks.json. */
  signingKeys?: SigningKeys | undefined;
  /** auth.mode jwt: the authenticator and the metadata, known once the listener has its address. */
  auth?: { authenticator: () => Authenticator; info: () => ResourceInfo } | undefined;
}

/**
 * The public listener's routes that need no credential, and the only ones:
 * every other route, and every path no route matches, is authenticated.
 * Protected-resource metadata (RFC 9728) and the gateway's JWKS are what a
 * client or an upstream needs before it can hold a credential at all.
 */
export const PUBLIC_ROUTES: ReadonlySet<string> = new Set([
  `GET ${PRM_PATH}`,
  `GET ${PRM_PATH}/mcp/:server`,
  'GET /.well-known/jwks.json',
]);

/** Whether the request matched a route on the public list (HEAD is GET's twin). */
export function isPublicRoute(req: FastifyRequest): boolean {
  const url = req.routeOptions.url;
  return (
    url !== undefined &&
    (req.method === 'GET' || req.method === 'HEAD') &&
    PUBLIC_GET_PATHS.has(url)
  );
}

/** The paths of PUBLIC_ROUTES, made once (every public route is a GET): no string per request. */
const PUBLIC_GET_PATHS: ReadonlySet<string> = new Set(
  [...PUBLIC_ROUTES].map((route) => {
    if (!route.startsWith('GET ')) throw new Error(`public route ${route} is not a GET`);
    return route.slice('GET '.length);
  }),
);

/** Client request headers an upstream may see; everything else (Authorization, Cookie…) stays here. */
const FORWARDED_HEADERS = ['mcp-protocol-version', 'last-event-id'];
/**
 * The 2026-07-28 routing headers. Forwarded only in that era, where they have
 * been checked against the body (validateModernRequest); a legacy request
 * carrying them could tell an upstream or a proxy behind it one thing while
 * its body says another, so they are dropped there.
 */
const MODERN_HEADERS = ['mcp-method', 'mcp-name'];
const UPSTREAM_ACCEPT = 'application/json, text/event-stream';
/** A `tracestate` holds at most 32 members (W3C Trace Context, section 3.3.1.1): 512 bytes is its usual bound. */
const MAX_TRACESTATE = 512;

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
    /** The request's exchange: made first, the only writer of its response. */
    exchange: Exchange;
    /** The verified access token (auth.mode jwt). */
    token: VerifiedToken | undefined;
  }
}

/**
 * Whether a legacy session's requests may be JSON-RPC batches: only in
 * 2025-03-26. A replica that has not yet learned the negotiated version goes
 * by the request's MCP-Protocol-Version, and without one assumes 2025-03-26,
 * as spec/2025-11-25/basic/transports.mdx ("Protocol Version Header") says a
 * server SHOULD: later clients MUST send the header.
 */
function batchingAllowed(session: Session | undefined, header: string | undefined): boolean {
  if (session === undefined) return false;
  const version = session.protocolVersion ?? header ?? BATCHING_VERSION;
  return version === BATCHING_VERSION;
}

/** The store's failure, as the agent is told it; anything else is passed on as it is. */
function sessionStoreError(err: unknown): unknown {
  if (!(err instanceof StoreUnavailableError)) return err;
  return new GatewayError('PORTCULLIS_ERR_SESSION_STORE_UNAVAILABLE', err.message);
}

/** The upstream's side of a session the gateway could not keep: a best-effort DELETE. */
function endUpstreamSide(route: Route, upstreamId: string | undefined, owner: string): void {
  if (upstreamId === undefined) return;
  route.upstream
    .request({ method: 'DELETE', headers: { 'mcp-session-id': upstreamId }, affinity: owner })
    .response.then((r) => r.body.dump())
    .catch(() => undefined);
}

function acceptsBoth(accept: string | undefined): boolean {
  return (
    accept !== undefined &&
    accept.includes('application/json') &&
    accept.includes('text/event-stream')
  );
}

/**
 * A 2026-07-28 call rewritten by the policy (a virtual tool's real call):
 * the routing headers say what the body now says. `Mcp-Name` names the real
 * tool; the client's `Mcp-Param-*` mirrored the virtual tool's arguments, so
 * they go (spec/2026-07-28/basic/transports/streamable-http.mdx: the headers
 * MUST match the body).
 */
function realCallHeaders(
  headers: Record<string, string>,
  message: JsonRpcMessage,
  toolHeaders: ToolHeaderRegistry,
): void {
  const params = message.params as { name?: unknown; arguments?: unknown } | undefined;
  for (const h of Object.keys(headers)) if (h.startsWith('mcp-param-')) delete headers[h];
  if (typeof params?.name !== 'string') return;
  headers['mcp-name'] = encodeHeaderValue(params.name);
  // The real tool's own x-mcp-header parameters, from the rendered arguments.
  for (const p of toolHeaders.get(params.name) ?? []) {
    let v: unknown = params.arguments;
    for (const key of p.path)
      v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[key] : undefined;
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')
      headers[p.header] = encodeHeaderValue(String(v));
  }
}

const VERB_RANK: Readonly<Record<Verb, number>> = { read: 0, write: 1, destructive: 2 };

/**
 * The tools a request calls upstream, with the verb class of the most
 * powerful (from the manifest; a tool it does not class counts as
 * destructive, the widest). Undefined when it calls none.
 */
function toolCalls(
  messages: readonly JsonRpcMessage[],
  server: string,
  policy: Policy,
): CredentialRequest['calls'] {
  let tools: string[] | undefined;
  let verb: Verb = 'read';
  for (const m of messages) {
    if (m.method !== 'tools/call') continue;
    const name = (m.params as { name?: unknown } | undefined)?.name;
    if (typeof name !== 'string') continue;
    (tools ??= []).push(name);
    const v = policy.toolVerb(server, name) ?? 'destructive';
    if (VERB_RANK[v] > VERB_RANK[verb]) verb = v;
  }
  return tools && { tools, verb };
}

function upstreamHeaders(
  req: FastifyRequest,
  session: Session | undefined,
  modern: boolean,
  traceparentFor: ((x: Exchange) => string) | undefined,
): Record<string, string> {
  const out: Record<string, string> = {};
  const h = req.headers;
  for (const name of FORWARDED_HEADERS) {
    const v = h[name];
    if (typeof v === 'string') out[name] = v;
  }
  // W3C Trace Context: the caller's trace goes on upstream, when it is well-formed; with
  // tracing on, as a child of the gateway's span for the request.
  const caller = req.exchange.callerTrace();
  const callerTraced = caller !== null;
  if (traceparentFor) out.traceparent = traceparentFor(req.exchange);
  else if (caller !== null) out.traceparent = caller[0];
  const tracestate = h.tracestate;
  if (callerTraced && typeof tracestate === 'string' && tracestate.length <= MAX_TRACESTATE)
    out.tracestate = tracestate;
  if (!modern) {
    if (session?.upstreamId !== undefined) out['mcp-session-id'] = session.upstreamId;
    return out;
  }
  for (const name of MODERN_HEADERS) {
    const v = h[name];
    if (typeof v === 'string') out[name] = v;
  }
  // Intermediaries MUST forward Mcp-Param-* they do not recognise (RFC 9110, spec "Server Behavior for Custom Headers").
  for (const name in h) {
    if (name.startsWith('mcp-param-')) {
      const v = h[name];
      if (typeof v === 'string') out[name] = v;
    }
  }
  if (session?.upstreamId !== undefined) out['mcp-session-id'] = session.upstreamId;
  return out;
}

/**
 * Marks whom an exchange serves, so that revoking the subject, token or
 * session ends its stream, and the policy its messages are decided by (the
 * one in force when the request came: a reload mid-stream changes nothing
 * for it).
 */
function identify(
  req: FastifyRequest,
  x: Exchange,
  policy: Policy,
  metrics: Metrics,
  memory: ToolMemory | undefined,
): Exchange {
  x.owner = ownerKey(req.principal);
  x.jti = req.token?.tokenId;
  x.identity = x;
  x.principal = req.principal;
  x.policy = policy;
  x.metrics = metrics;
  x.memory = memory;
  return x;
}

const LEASE = Symbol('portcullis.inflightLease');
type LeasedResponse = ServerResponse & { [LEASE]?: Lease };

/** The in-flight share goes back when the response closes; one function for all, no closure each. */
function releaseLease(this: ServerResponse): void {
  (this as LeasedResponse)[LEASE]?.release();
}

/**
 * The client left before its answer was complete: stop the upstream side.
 * Bound per request instead of a closure, so the request's state is not kept
 * reachable through a closure context (see DispatchedCall in upstream/http.ts).
 */
function abortUnlessAnswered(this: ServerResponse, call: UpstreamCall): void {
  if (!this.writableFinished) call.abort();
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const { config, log, routes, sessions, streams } = deps;
  const listen = config.listen;
  const https = listen.tls
    ? {
        cert: readFileSync(listen.tls.cert),
        key: readFileSync(listen.tls.key),
        // mTLS: ask for a client certificate, but let the handshake succeed without
        // one (or with an unknown one): a certificate-bound token then gets a 401 with
        // a reason instead of a bare TLS failure, and unbound tokens still work.
        ...(listen.tls.clientCa
          ? { ca: readFileSync(listen.tls.clientCa), requestCert: true, rejectUnauthorized: false }
          : {}),
      }
    : null;
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: listen.bodyLimitBytes,
    // Socket inactivity timeout off: live SSE streams are quiet for long stretches.
    connectionTimeout: 0,
    keepAliveTimeout: listen.keepAliveTimeoutMs,
    // Bounds receiving the request only; a response stream is never cut by it.
    requestTimeout: listen.requestTimeoutMs,
    // The drain decides what a request arriving while closing gets (the onRequest hook below).
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    ...(https ? { https } : {}),
  }) as unknown as FastifyInstance;
  // Node's http close destroys every connection with no request in progress,
  // one accepted a moment ago whose request is on the wire included: its
  // sender (a load balancer) cannot tell whether the request was sent, and
  // will not retry a POST elsewhere. Closing only stops accepting here; the
  // drain (idle-sockets.ts) ends each connection once it is idle for sure.
  app.server.close = function (this: Server, callback?: (err?: Error) => void) {
    Server.prototype.close.call(this, callback);
    return this;
  } as typeof app.server.close;
  app.server.headersTimeout = Math.min(
    listen.headersTimeoutMs,
    listen.requestTimeoutMs || Infinity,
  );

  const tickets = new InternalTickets();
  const hostAllowed = compileHostCheck(listen.host, listen.allowedHosts);
  const originAllowed = compileOriginCheck(listen.host, listen.allowedOrigins);

  app.decorateRequest('principal', null as unknown as Principal);
  app.decorateRequest('exchange', null as unknown as Exchange);
  /** The request's exchange; one is made for a request that failed before the first hook. */
  const exchangeOf = (req: FastifyRequest, reply: FastifyReply): Exchange =>
    (req.exchange ??= new Exchange(reply, log, deps.observer));
  app.decorateRequest('token', undefined);

  const auth = deps.auth
    ? authHooks(deps.auth.authenticator, deps.auth.info, log, deps.metrics, (reply, err) =>
        exchangeOf(reply.request, reply).fail(err),
      )
    : undefined;
  if (deps.auth) registerMetadataRoutes(app, deps.auth.info);
  const signingKeys = deps.signingKeys;
  if (signingKeys) {
    // What upstreams verify minted credentials with.
    app.get('/.well-known/jwks.json', async (_req, reply) => {
      void reply.header('cache-control', 'public, max-age=300');
      return signingKeys.jwks();
    });
  }

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    // Counted as received, whatever becomes of the request next.
    req.exchange.body = body as string;
    done(null, body);
  });

  /**
   * The in-flight quota, taken once the caller is known and held until the
   * response is over (a stream holds it while it is open).
   */
  const admit = (req: FastifyRequest, reply: FastifyReply, done: () => void): void => {
    let lease: Lease;
    try {
      lease = deps.quotas.acquire('inflight', req.principal);
    } catch (err) {
      log.warn(
        {
          event: 'quota.refused',
          quota: (err as GatewayError).data.quota,
          tenant: req.principal.tenant,
        },
        'refused a request over a quota',
      );
      return req.exchange.fail(err as GatewayError);
    }
    (reply.raw as LeasedResponse)[LEASE] = lease;
    reply.raw.on('close', releaseLease);
    done();
  };

  app.addHook('onRequest', (req, reply, done) => {
    req.principal = ANONYMOUS;
    const x = (req.exchange = new Exchange(reply, log, deps.observer));
    if (!hostAllowed(req.headers.host)) {
      log.warn(
        { host: req.headers.host, url: req.url },
        'refused a request for a host not on the allowlist',
      );
      return x.fail(new GatewayError('PORTCULLIS_ERR_HTTP_FORBIDDEN_HOST'));
    }
    if (!originAllowed(req.headers.origin)) {
      log.warn(
        { origin: req.headers.origin, url: req.url },
        'refused a request from an origin not on the allowlist',
      );
      return x.fail(new GatewayError('PORTCULLIS_ERR_HTTP_FORBIDDEN_ORIGIN'));
    }
    // On the raw response: relayed answers are written past Fastify's reply.
    if (deps.isDraining()) {
      reply.raw.setHeader('connection', 'close');
      // No new connection is accepted now; a call on one already open is still
      // answered (a load balancer cannot send a POST elsewhere once it has sent
      // it here), but a new stream, which would outlive the drain, is refused.
      if (req.method === 'GET')
        return x.fail(new GatewayError('PORTCULLIS_ERR_HTTP_SHUTTING_DOWN'));
    }
    // A load balancer reusing a kept-alive connection gets this answer, then opens a new one,
    // to a replica in rotation: none is left idle here to be cut under a request.
    else if (deps.isLeaving?.()) reply.raw.setHeader('connection', 'close');
    // Nothing runs that could not be recorded; the refusal itself is counted by the log.
    if (deps.auditFull?.() && !isPublicRoute(req)) {
      return x.fail(
        new GatewayError('PORTCULLIS_ERR_AUDIT_UNAVAILABLE', undefined, { retryAfterSeconds: 1 }),
      );
    }
    // An in-process request for a legacy SSE client: authenticated already, its result in the ticket.
    const ticket = req.headers[INTERNAL_TICKET_HEADER];
    if (ticket !== undefined) {
      delete req.headers[INTERNAL_TICKET_HEADER];
      const identity = tickets.redeem(headerValue(ticket));
      if (identity === undefined) {
        log.warn({ url: req.url }, 'refused a request with a forged or reused internal ticket');
        return x.fail(new GatewayError('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'unknown ticket'));
      }
      req.principal = identity.principal;
      req.token = identity.token;
      return admit(req, reply, done);
    }
    // Decided on the route the router matched, never on the raw URL: every
    // spelling of a path (percent-encoding, absolute-form target) reaches the
    // same route and so the same check. Unmatched paths authenticate too, so an
    // unauthenticated caller learns nothing about which routes or servers exist,
    // and costs no parsing: authentication runs before the body is read.
    if (isPublicRoute(req)) return done();
    if (auth) return auth.authenticate(req, reply, () => admit(req, reply, done));
    admit(req, reply, done);
  });

  app.setErrorHandler((err: Error & { code?: string; statusCode?: number }, req, reply) => {
    let gerr: GatewayError;
    if (err instanceof GatewayError) {
      if (err.challenge && auth) return auth.refuse(req, reply, err);
      gerr = err;
    } else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      gerr = new GatewayError(
        'PORTCULLIS_ERR_HTTP_BODY_TOO_LARGE',
        `limit is ${listen.bodyLimitBytes} bytes`,
      );
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      gerr = new GatewayError('PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
    } else if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
      gerr = new GatewayError('PORTCULLIS_ERR_JSONRPC_PARSE', 'empty body');
    } else if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      gerr = new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', err.message);
    } else {
      req.log.error({ err }, 'unexpected error');
      gerr = new GatewayError('PORTCULLIS_ERR_INTERNAL');
    }
    exchangeOf(req, reply).fail(gerr);
  });

  app.setNotFoundHandler((req, reply) =>
    exchangeOf(req, reply).fail(new GatewayError('PORTCULLIS_ERR_HTTP_NOT_FOUND')),
  );

  const policyNow = deps.policy ?? (() => POLICY_OFF);
  const sink = { log, metrics: deps.metrics };

  const routeFor = (req: FastifyRequest<{ Params: { server: string } }>): Route => {
    const route = routes.get(req.params.server);
    // Tenants learn nothing about servers they cannot reach: the error names none.
    if (!route) throw new GatewayError('PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER');
    // The route decision point. A server the tenant is not granted answers
    // exactly as one that does not exist (the rule is in the log, not the answer).
    const policy = policyNow();
    if (policy.enabled) {
      const decision = policy.route(req.principal, route.name);
      if (decision.kind !== 'allow' || decision.shadowed)
        recordDecision(sink, decision, route.name, req.principal, req.method);
      if (decision.kind === 'deny') throw decision.error;
    }
    if (req.token && deps.auth) {
      deps.auth.authenticator().authorize(req.token, route.name, route.requiredScopes);
    }
    req.exchange.toRoute(route);
    return route;
  };

  /**
   * The credential step: upstream headers are built from scratch (the
   * client's Authorization and cookies are never among them), then the
   * server's own credential is added.
   */
  const credentialHeaders = async (
    req: FastifyRequest,
    route: Route,
    session: Session | undefined,
    /** Whether the request is of the 2026-07-28 era (its routing headers checked). */
    modern: boolean,
    /** For initialize: the id the session will have, so what is minted for it dies with it. */
    newSessionId?: string,
    /** The tool calls the request carries upstream, for a per-call credential. */
    calls?: CredentialRequest['calls'],
  ): Promise<Record<string, string>> => {
    const headers = upstreamHeaders(req, session, modern, deps.traceparentFor);
    const extra = route.credential().headers({
      token: req.token,
      sessionId: session?.id ?? newSessionId,
      ...(calls ? { calls } : {}),
    });
    if (extra !== undefined) Object.assign(headers, extra instanceof Promise ? await extra : extra);
    return headers;
  };

  /**
   * For a legacy exchange: how to answer the upstream in the client's place
   * (a server→client request the policy refuses), in the session's name.
   */
  const replierFor =
    (req: FastifyRequest, route: Route, session: Session) =>
    (message: string): void => {
      void credentialHeaders(req, route, session, false)
        .then((headers) => {
          delete headers['last-event-id'];
          headers['content-type'] = 'application/json';
          headers.accept = UPSTREAM_ACCEPT;
          return upstreamFor(route, session).request({
            method: 'POST',
            headers,
            body: message,
            affinity: ownerKey(req.principal),
            tenant: req.principal.tenant,
          }).response;
        })
        .then((up) => up.body.dump())
        .catch((err: unknown) =>
          log.warn(
            { server: route.name, err: (err as Error).message },
            'could not answer a refused server request upstream',
          ),
        );
    };

  const sessionFor = async (
    req: FastifyRequest,
    route: Route,
  ): Promise<{ id: string | undefined; session: Session | undefined }> => {
    const id = headerValue(req.headers['mcp-session-id']);
    if (id === undefined) return { id, session: undefined };
    // A stream being resumed may have been closed on another replica: ask the
    // store which answers it may still carry.
    const fresh = req.headers['last-event-id'] !== undefined;
    try {
      return { id, session: await sessions.get(id, route.name, ownerKey(req.principal), fresh) };
    } catch (err) {
      throw sessionStoreError(err);
    }
  };

  /**
   * Where a session's requests go: the route's upstream, or, for a session
   * whose upstream side another replica holds (a stdio process), that replica.
   */
  const upstreamFor = (route: Route, session: Session | undefined): Upstream =>
    (session?.home !== undefined && deps.replicas?.toHome(session.home, route.name)) ||
    route.upstream;

  /** Sends the request upstream and relays the answer; upstream failures answer every pending id. */
  const forward = async (
    x: Exchange,
    route: Route,
    req: UpstreamRequest,
    onAnswer?: (
      status: number,
      upstreamSessionId: string | undefined,
    ) => Promise<Session | undefined>,
  ): Promise<void> => {
    // Authentication was at the door; the body may have taken its time to come.
    // A revocation meanwhile is caught here, and from here on by the registry
    // (nothing is awaited between this check and the registration below).
    if (x.identity && deps.isRevoked?.(x.identity)) {
      return x.fail(
        new GatewayError('PORTCULLIS_ERR_AUTH_TOKEN_REVOKED', 'revoked while the request was read'),
        [...x.pending],
      );
    }
    if (x.longLived) req.idleMs = 0;
    x.upstreamSentAt = performance.now();
    const call = upstreamFor(route, x.session).request(req);
    x.call = call;
    const res = x.response;
    const onClose = abortUnlessAnswered.bind(res, call);
    res.once('close', onClose);
    const ids = [...x.pending];
    // Until its answer begins, a revocation of whom it serves gives up on it.
    const pending = x.identity;
    if (pending) streams.addCall(pending);
    try {
      const up = await call.response;
      if (pending) streams.removeCall(pending);
      if (onAnswer) {
        let session: Session | undefined;
        try {
          session = await onAnswer(up.statusCode, headerValue(up.headers['mcp-session-id']));
        } catch (err) {
          void up.body.dump().catch(() => undefined);
          throw err;
        }
        if (session) {
          x.session = session;
          x.responseHeaders = { 'mcp-session-id': session.id };
        }
      }
      if (up.statusCode === 404 && x.session) {
        // The upstream ended the session: drop the mapping so the client re-initializes.
        sessions.delete(x.session.id);
        log.info({ server: route.name, session: x.session.id }, 'upstream ended the session');
      }
      await relayResponse(x, up, streams);
    } catch (err) {
      if (pending) streams.removeCall(pending);
      if (x.revoked) return x.fail(x.revoked, ids);
      if (call.aborted && res.destroyed) return;
      const gerr = toGatewayError(err, route.name);
      if (gerr.code === 'PORTCULLIS_ERR_SESSION_UNKNOWN' && x.session) {
        // The replica holding the session's process is gone, and the session with it.
        sessions.delete(x.session.id);
        log.info({ server: route.name, session: x.session.id }, 'session ended: its home is gone');
        return x.fail(gerr, ids);
      }
      log.warn(
        { server: route.name, code: gerr.code, err: (err as Error).message },
        'upstream request failed',
      );
      x.fail(gerr, ids);
    } finally {
      res.off('close', onClose);
    }
  };

  app.post<{ Params: { server: string } }>('/mcp/:server', async (req, reply) => {
    const route = routeFor(req);
    const x = req.exchange;
    if (typeof req.body !== 'string')
      throw new GatewayError('PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
    if (!acceptsBoth(req.headers.accept))
      throw new GatewayError('PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE');
    const { id: sessionId, session } = await sessionFor(req, route);

    let frames: Frame[];
    let batch: boolean;
    let sessionLease: Lease | undefined;
    try {
      ({ frames, batch } = parseBody(
        req.body,
        'client-to-server',
        batchingAllowed(session, headerValue(req.headers['mcp-protocol-version'])),
      ));
    } catch (err) {
      if (err instanceof GatewayError) return x.fail(err);
      throw err;
    }
    const ids = requestIds(frames);
    const fail = (err: GatewayError) => x.fail(err, ids);

    const era = detectEra(frames, req.headers);
    const first = frames[0] as Frame;
    const initialize = frames.some((f) => f.kind === 'request' && f.method === 'initialize');
    if (era === 'modern') {
      try {
        validateModernRequest(first, req.headers, route.toolHeaders);
      } catch (err) {
        return fail(err as GatewayError);
      }
    } else if (initialize) {
      if (batch)
        return fail(
          new GatewayError(
            'PORTCULLIS_ERR_JSONRPC_INVALID',
            'initialize must not be part of a batch',
          ),
        );
      if (sessionId !== undefined) {
        return fail(
          new GatewayError(
            'PORTCULLIS_ERR_JSONRPC_INVALID',
            'initialize must not carry Mcp-Session-Id',
          ),
        );
      }
      if (sessions.size >= config.sessions.max)
        return fail(new GatewayError('PORTCULLIS_ERR_SESSION_LIMIT'));
      // Taken before the upstream is asked, so a burst of initializes cannot outrun the count.
      try {
        sessionLease = deps.quotas.acquire('sessions', req.principal);
      } catch (err) {
        return fail(err as GatewayError);
      }
    } else {
      if (sessionId === undefined) return fail(new GatewayError('PORTCULLIS_ERR_SESSION_MISSING'));
      if (!session) return fail(new GatewayError('PORTCULLIS_ERR_SESSION_UNKNOWN'));
      // spec/2025-11-25/basic/transports.mdx: an invalid or unsupported
      // MCP-Protocol-Version MUST get 400. Any legacy revision is accepted, as
      // the SDKs do; the upstream judges the rest.
      const version = headerValue(req.headers['mcp-protocol-version']);
      if (version !== undefined && !LEGACY_VERSIONS.has(version)) {
        return fail(
          new GatewayError(
            'PORTCULLIS_ERR_PROTOCOL_VERSION',
            `'${version}' is not a revision a session can use (this one negotiated '${session.protocolVersion ?? 'unknown'}')`,
          ),
        );
      }
    }

    const methodsById = new Map<JsonRpcId, string>();
    let targetsById: Map<JsonRpcId, string> | undefined;
    for (const f of frames) {
      if (f.kind !== 'request' || f.id === undefined) continue;
      methodsById.set(f.id, f.method as string);
      if (f.target !== undefined) (targetsById ??= new Map()).set(f.id, f.target);
    }
    const policy = policyNow();
    identify(req, x, policy, deps.metrics, deps.toolMemory).begin(
      era,
      session,
      new Set(ids),
      methodsById,
      targetsById,
      era === 'modern' && first.method === 'subscriptions/listen',
    );
    if (era === 'legacy' && session) x.replyUpstream = replierFor(req, route, session);

    // Rate limits, before the policy: refused calls are charged like any other.
    const limits = deps.rateLimits?.();
    if (limits?.enabled) {
      const admission = await limits.admit(req.principal, route.name, frames);
      if ('refused' in admission) {
        sessionLease?.release();
        return fail(admission.refused);
      }
      const { release } = admission.admitted;
      if (reply.raw.writableEnded) release();
      else reply.raw.once('close', release);
    }

    // The inbound decision point: a batch is decided whole (one denial refuses all of it).
    let shadowedBy: Map<Frame, string[]> | undefined;
    // Calls of virtual tools, rewritten into calls of the real ones.
    let replaced: Map<Frame, { rule: string; message: JsonRpcMessage }> | undefined;
    if (policy.enabled) {
      const ctx = x.decisionContext();
      for (const f of frames) {
        const decided = policy.inbound(f, ctx);
        // A promise only for a tool whose guards ask the host (DNS, the file system).
        const decision = decided.kind === 'pending' ? await decided.decision : decided;
        if (decision.kind === 'allow' && !decision.shadowed) continue;
        recordDecision(sink, decision, route.name, req.principal, f.method);
        if (decision.kind === 'deny') {
          if (x.observer?.message) for (const g of frames) x.noteMessage(g, 'deny', decision.rule);
          sessionLease?.release();
          return fail(decision.error);
        }
        if (decision.kind === 'replace')
          (replaced ??= new Map()).set(f, { rule: decision.rule, message: decision.message });
        if (decision.shadowed && x.observer?.message)
          (shadowedBy ??= new Map()).set(
            f,
            decision.shadowed.map((hit) => hit.rule),
          );
      }
    }
    if (x.observer?.message)
      for (const f of frames) {
        const r = replaced?.get(f);
        x.noteMessage(f, r ? 'replace' : 'allow', r?.rule, shadowedBy?.get(f));
      }
    const owner = x.owner;
    const sessionIdToBe = initialize ? newSessionId() : undefined;
    // What goes upstream: the client's bytes, or the calls a virtual tool became.
    const messages = replaced && frames.map((f) => replaced?.get(f)?.message ?? f.message);
    let headers: Record<string, string>;
    try {
      headers = await credentialHeaders(
        req,
        route,
        session,
        era === 'modern',
        sessionIdToBe,
        route.credential().readsCalls === true
          ? toolCalls(messages ?? frames.map((f) => f.message), route.name, policy)
          : undefined,
      );
    } catch (err) {
      sessionLease?.release();
      return fail(err instanceof GatewayError ? err : new GatewayError('PORTCULLIS_ERR_INTERNAL'));
    }
    headers['content-type'] = 'application/json';
    headers.accept = UPSTREAM_ACCEPT;
    let body = req.body;
    if (messages) {
      body = JSON.stringify(batch ? messages : messages[0]);
      if (era === 'modern')
        realCallHeaders(headers, messages[0] as JsonRpcMessage, route.toolHeaders);
    }

    await forward(
      x,
      route,
      {
        method: 'POST',
        headers,
        body,
        affinity: owner,
        tenant: req.principal.tenant,
        // Only where a request may start a process: nothing to allocate elsewhere.
        channelLease: route.upstream.opensChannels
          ? () => deps.quotas.acquire('stdioProcesses', req.principal)
          : undefined,
      },
      initialize
        ? async (status, upstreamId) => {
            if (status !== 200) return undefined;
            let created: Session | undefined;
            try {
              created = await sessions.create(
                route.name,
                owner,
                upstreamId,
                sessionIdToBe,
                // Its upstream side (a process) lives here: other replicas forward to this one.
                route.upstream.opensChannels ? deps.replicas?.home : undefined,
              );
            } catch (err) {
              endUpstreamSide(route, upstreamId, owner);
              throw sessionStoreError(err);
            }
            if (created) {
              // Released when the session ends, however it ends.
              created.lease = sessionLease;
              sessionLease = undefined;
              log.info({ server: route.name, session: created.id }, 'session opened');
            } else {
              // No room for it after all (a burst got past the count): the upstream's side
              // must not live on unreachable, holding a process.
              endUpstreamSide(route, upstreamId, owner);
            }
            return created;
          }
        : undefined,
    );
    sessionLease?.release();
  });

  app.get<{ Params: { server: string } }>('/mcp/:server', async (req) => {
    const route = routeFor(req);
    const accept = req.headers.accept;
    if (!accept?.includes('text/event-stream'))
      throw new GatewayError('PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE_STREAM');
    const { id: sessionId, session } = await sessionFor(req, route);
    if (sessionId === undefined) {
      // A modern client has no GET stream (spec/2026-07-28: respond 405); a legacy one forgot its session.
      if (isModernVersion(headerValue(req.headers['mcp-protocol-version']))) {
        throw new GatewayError(
          'PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED',
          'the 2026-07-28 transport has no GET stream',
        );
      }
      throw new GatewayError('PORTCULLIS_ERR_SESSION_MISSING');
    }
    if (!session) throw new GatewayError('PORTCULLIS_ERR_SESSION_UNKNOWN');
    const x = identify(req, req.exchange, policyNow(), deps.metrics, deps.toolMemory).begin(
      'legacy',
      session,
      new Set(),
      new Map(),
      undefined,
      true,
    );
    x.replyUpstream = replierFor(req, route, session);
    const headers = await credentialHeaders(req, route, session, false);
    headers.accept = 'text/event-stream';
    await forward(x, route, { method: 'GET', headers, affinity: x.owner });
  });

  app.delete<{ Params: { server: string } }>('/mcp/:server', async (req) => {
    const route = routeFor(req);
    const { id: sessionId, session } = await sessionFor(req, route);
    if (sessionId === undefined) throw new GatewayError('PORTCULLIS_ERR_SESSION_MISSING');
    if (!session) throw new GatewayError('PORTCULLIS_ERR_SESSION_UNKNOWN');
    const x = identify(req, req.exchange, policyNow(), deps.metrics, deps.toolMemory);
    // The answer carries no Mcp-Session-Id: the session is over.
    x.session = session;
    // The upstream's credential is taken while the session lives: ending it revokes what it minted.
    const headers =
      session.upstreamId === undefined
        ? undefined
        : await credentialHeaders(req, route, session, false);
    // DELETE ends both sides: the gateway's mapping goes whatever the upstream says.
    sessions.delete(session.id);
    log.info({ server: route.name, session: session.id }, 'session closed by the client');
    if (headers === undefined) return x.sendEmpty(200);
    try {
      x.upstreamSentAt = performance.now();
      const up = await upstreamFor(route, session).request({
        method: 'DELETE',
        headers,
        affinity: session.owner,
      }).response;
      x.upstreamAnsweredAt = performance.now();
      await up.body.dump();
      // 405 means the upstream does not let clients end sessions; the gateway's side has ended anyway.
      return x.sendEmpty(up.statusCode === 405 ? 200 : up.statusCode);
    } catch (err) {
      throw toGatewayError(err, route.name);
    }
  });

  registerLegacySse({
    app,
    tickets,
    streams,
    log,
    quotas: deps.quotas,
    isRevoked: deps.isRevoked,
    checkRoute: routeFor,
  });

  app.route({
    method: ['PUT', 'PATCH', 'OPTIONS'],
    url: '/mcp/:server',
    handler: async () => {
      throw new GatewayError('PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED', 'use POST, GET or DELETE');
    },
  });

  return app;
}
