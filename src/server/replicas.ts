/**
 * Replicas reaching each other. A session whose upstream side lives in one
 * process (a stdio server's child, a legacy HTTP+SSE connection) can only be
 * served by the replica that holds it: its home. A request for such a session
 * that reaches another replica is decided there (authentication, policy, rate
 * limits, audit, all as usual) and then, in place of the local upstream, sent
 * to the home's internal listener, which hands it to its own upstream and
 * streams the answer back as it comes.
 *
 * The internal listener serves only this, and only to a replica holding the
 * cluster's shared secret: every request is signed (HMAC-SHA256 over a
 * timestamp, a nonce and the body), stale or replayed ones are refused, and
 * nothing on it is reachable without a valid signature. It should still face
 * the replicas' private network only (a NetworkPolicy in Kubernetes).
 *
 * A home names the replica and its boot: `<advertise URL>#<boot id>`. A
 * replica that restarted, even at the same address, is not the home of the
 * sessions its earlier self held: they end with 404, and the client opens a
 * new one (spec/2025-11-25/basic/transports.mdx: a client that gets 404 for
 * its session MUST start a new session with initialize).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Pool } from 'undici';
import { ConfigError } from '../config/load.js';
import { GatewayError } from '../errors/index.js';
import { HOME, type RecordSeal } from '../mcp/sessions.js';
import { DispatchedCall, toGatewayError, transportErrorCode } from '../upstream/http.js';
import type {
  Upstream,
  UpstreamCall,
  UpstreamRequest,
  UpstreamResponse,
} from '../upstream/types.js';

export const FORWARD_PATH = '/internal/v1/forward';
/** How far a signed request's timestamp may be from this replica's clock. */
export const SIGNATURE_WINDOW_MS = 30_000;
/** Other replicas' addresses this one keeps connections to, at most. */
const MAX_HOMES = 64;
/** The ways to a server at a home (one per home and server) kept, at most. */
const MAX_HOME_UPSTREAMS = 4 * MAX_HOMES;
/** Nonces remembered against replay, at most (a window's worth at a high rate). */
const MAX_NONCES = 200_000;
/** The cluster secret's least length, in bytes (an HMAC key weaker than its hash is no key). */
export const MIN_SECRET_BYTES = 32;
/** Bytes of forwarded requests being read at once, across all of them, before one is checked. */
const MAX_BUFFERED_BYTES = 64 * 1024 * 1024;
/** Headers must come within this, and the whole request within the signature window. */
const HEADERS_TIMEOUT_MS = 5_000;
/** TCP keepalive on the links: a home that vanished is noticed on a stream that carries nothing. */
const KEEPALIVE_DELAY_MS = 15_000;
/**
 * Failures that mean the home is not there: nothing listens, no such host, no
 * route, or no answer to connecting. A connection reset or closed mid-way is
 * not one (the home may be alive): the call fails, the session stays.
 */
const HOME_GONE = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);
const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const SIGNATURE = /^[0-9a-f]{64}$/;
const TIMESTAMP = /^[0-9]{1,16}$/;
const HEADER_SIGNATURE = 'x-portcullis-signature';
/** Signs the head (timestamp, nonce, length): checked before a byte of the body is read. */
const HEADER_HEAD_SIGNATURE = 'x-portcullis-head-signature';
const HEADER_TIMESTAMP = 'x-portcullis-timestamp';
const HEADER_NONCE = 'x-portcullis-nonce';
/** On a 404: the home named is not this replica's boot (it restarted, or never was). */
const HEADER_GONE = 'x-portcullis-home-gone';
/** Headers of the home's answer passed back; the rest are the internal listener's own. */
const ANSWER_HEADERS = ['content-type', 'mcp-session-id', 'retry-after'];

export interface ClusterSettings {
  readonly host: string;
  readonly port: number;
  /** How other replicas reach this one; defaults to `http://<host>:<port>`. */
  readonly advertise?: string | undefined;
  readonly secret: string;
  /** Largest forwarded request (the public body limit, plus its envelope). */
  readonly maxRequestBytes: number;
  /** Connections the internal listener holds at most (each forwarded stream holds one). */
  readonly maxConnections: number;
}

/** The cluster secret, from the config or its file, refused if too short to be a key. */
export function clusterSecret(cluster: { secret?: string; secretFile?: string }): string {
  let secret = cluster.secret;
  const source = cluster.secretFile ?? 'cluster.secret';
  if (secret === undefined) {
    try {
      secret = readFileSync(cluster.secretFile as string, 'utf8').trim();
    } catch (err) {
      throw new ConfigError(source, [
        {
          path: 'cluster.secretFile',
          message: `cannot read it: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        },
      ]);
    }
  }
  const bytes = Buffer.byteLength(secret);
  if (bytes < MIN_SECRET_BYTES)
    throw new ConfigError(source, [
      {
        path: cluster.secretFile === undefined ? 'cluster.secret' : 'cluster.secretFile',
        message: `the cluster secret is ${bytes} bytes; it needs at least ${MIN_SECRET_BYTES} (e.g. openssl rand -base64 48)`,
      },
    ]);
  return secret;
}

/** Seals session records with a key of their own, derived from the cluster secret. */
export function recordSeal(secret: string): RecordSeal {
  const key = createHmac('sha256', secret).update('portcullis session record').digest();
  const seal = (id: string, fields: string): string =>
    createHmac('sha256', key).update(`${id}\n${fields}`).digest('base64url');
  return {
    seal,
    check(id, fields, given) {
      const a = Buffer.from(seal(id, fields));
      const b = Buffer.from(given);
      return a.length === b.length && timingSafeEqual(a, b);
    },
  };
}

/** The advertised address, as a URL origin; a configuration error if it is not one. */
function advertisedOrigin(advertise: string): string {
  const url = URL.canParse(advertise) ? new URL(advertise) : undefined;
  if (url === undefined || !/^https?:$/.test(url.protocol) || url.pathname !== '/')
    throw new ConfigError('cluster.advertise', [
      { path: 'cluster.advertise', message: `"${advertise}" is not an http(s) origin` },
    ]);
  return url.origin;
}

/** What one replica sends another: an upstream request, as the relay built it. */
interface Envelope {
  readonly server: string;
  readonly home: string;
  readonly method: UpstreamRequest['method'];
  readonly headers: Record<string, string>;
  readonly body?: string;
  readonly affinity?: string;
  readonly tenant?: string;
}

export interface ReplicaLink {
  /** This replica's home, as sessions it holds record it. */
  readonly home: string;
  /**
   * The way to `server` at `home`: undefined when `home` is this replica (use
   * the local upstream). Its failures to reach a gone home reject with
   * PORTCULLIS_ERR_SESSION_UNKNOWN, so the session ends and the client re-initializes.
   */
  toHome(home: string, server: string): Upstream | undefined;
  close(): Promise<void>;
}

function hostForUrl(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

function signHead(secret: string, timestamp: string, nonce: string, length: number): string {
  return createHmac('sha256', secret).update(`head.${timestamp}.${nonce}.${length}`).digest('hex');
}

function sign(secret: string, timestamp: string, nonce: string, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${nonce}.`).update(body).digest('hex');
}

function gone(server: string): GatewayError {
  return new GatewayError(
    'PORTCULLIS_ERR_SESSION_UNKNOWN',
    'the replica that held this session is gone',
    { server },
  );
}

/** A home's upstream, reached over its internal listener. */
class HomeUpstream implements Upstream {
  readonly maxResponseBytes: number;
  constructor(
    readonly name: string,
    private readonly home: string,
    readonly origin: string,
    private readonly pool: Pool,
    private readonly secret: string,
    maxResponseBytes: number,
    private readonly idleMs: number,
  ) {
    this.maxResponseBytes = maxResponseBytes;
  }

  request(req: UpstreamRequest): UpstreamCall {
    const envelope: Envelope = {
      server: this.name,
      home: this.home,
      method: req.method,
      headers: req.headers,
      ...(req.body !== undefined ? { body: req.body } : {}),
      ...(req.affinity !== undefined ? { affinity: req.affinity } : {}),
      ...(req.tenant !== undefined ? { tenant: req.tenant } : {}),
    };
    const body = JSON.stringify(envelope);
    const timestamp = String(Date.now());
    const nonce = randomBytes(16).toString('base64url');
    const idleMs = req.idleMs ?? this.idleMs;
    const server = this.name;
    // Nothing answers where the home was: it is gone, and so is the session.
    const call = new DispatchedCall(server, idleMs, (err) => {
      const code = transportErrorCode(err);
      return code !== undefined && HOME_GONE.has(code) ? gone(server) : toGatewayError(err, server);
    });
    this.pool.dispatch(
      {
        path: FORWARD_PATH,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [HEADER_TIMESTAMP]: timestamp,
          [HEADER_NONCE]: nonce,
          [HEADER_SIGNATURE]: sign(this.secret, timestamp, nonce, body),
          [HEADER_HEAD_SIGNATURE]: signHead(this.secret, timestamp, nonce, Buffer.byteLength(body)),
        },
        body,
        bodyTimeout: idleMs,
      },
      call,
    );
    const response = call.response.then(async (up): Promise<UpstreamResponse> => {
      if (up.statusCode === 404 && up.headers[HEADER_GONE] !== undefined) {
        await up.body.dump();
        throw gone(server);
      }
      return up;
    });
    return {
      response,
      get aborted() {
        return call.aborted;
      },
      abort: () => call.abort(),
    };
  }

  async close(): Promise<void> {
    // The pool is the link's, shared by every server at this home.
  }
}

/**
 * Remembers nonces for the signature window; refuses one seen already. Full
 * of nonces still inside the window, it refuses new ones ('full') rather than
 * forget one that could then be replayed.
 */
class NonceBook {
  private readonly seen = new Map<string, number>();
  /** `now` is monotonic (performance.now()): a clock stepped back cannot keep old nonces for ever. */
  check(nonce: string, now: number): 'fresh' | 'replayed' | 'full' {
    for (const [n, at] of this.seen) {
      if (now - at <= 2 * SIGNATURE_WINDOW_MS) break;
      this.seen.delete(n);
    }
    if (this.seen.has(nonce)) return 'replayed';
    if (this.seen.size >= MAX_NONCES) return 'full';
    this.seen.set(nonce, now);
    return 'fresh';
  }
}

function refuse(res: ServerResponse, status: number, message: string, extra = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...extra });
  res.end(JSON.stringify({ error: message }));
}

/** Refuses a request whose body is left unread: answered, then its connection closed. */
function refuseUnread(
  req: IncomingMessage,
  res: ServerResponse,
  status: number,
  message: string,
  extra = {},
): void {
  res.once('finish', () => req.socket.destroy());
  refuse(res, status, message, { connection: 'close', ...extra });
}

/** Bytes being read, across every request on the listener. */
class ByteBudget {
  private used = 0;
  constructor(private readonly limit: number) {}
  take(n: number): boolean {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }
  give(n: number): void {
    this.used -= n;
  }
}

/** The body, or why not: over `limit`, or over what the listener may hold at once. */
function readBody(
  req: IncomingMessage,
  limit: number,
  budget: ByteBudget,
): Promise<string | 'too large' | 'busy'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (result: string | 'too large' | 'busy'): void => {
      budget.give(size);
      size = 0;
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      if (size + chunk.length > limit || !budget.take(chunk.length)) {
        // Read no more; the caller answers, and closes the connection.
        req.off('data', onData);
        req.pause();
        done(size + chunk.length > limit ? 'too large' : 'busy');
        return;
      }
      size += chunk.length;
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => done(Buffer.concat(chunks).toString('utf8')));
    req.once('error', (err) => {
      budget.give(size);
      size = 0;
      reject(err);
    });
  });
}

function parseEnvelope(text: string): Envelope | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const e = v as Record<string, unknown>;
  if (typeof e.server !== 'string' || typeof e.home !== 'string') return undefined;
  if (e.method !== 'POST' && e.method !== 'GET' && e.method !== 'DELETE') return undefined;
  if (typeof e.headers !== 'object' || e.headers === null || Array.isArray(e.headers))
    return undefined;
  if (!Object.values(e.headers).every((h) => typeof h === 'string')) return undefined;
  for (const k of ['body', 'affinity', 'tenant'] as const)
    if (e[k] !== undefined && typeof e[k] !== 'string') return undefined;
  // Only a session's requests are forwarded, each in its owner's name: nothing
  // else (a new session, a stateless call) is served here for another replica.
  const headers = e.headers as Record<string, unknown>;
  if (typeof headers['mcp-session-id'] !== 'string' || typeof e.affinity !== 'string')
    return undefined;
  return e as unknown as Envelope;
}

/**
 * Starts this replica's internal listener and returns the link to the others.
 * `localUpstream` gives this replica's own upstream of a server, if it has one
 * that holds sessions in process.
 */
export async function startReplicaLink(
  settings: ClusterSettings,
  localUpstream: (server: string) => Upstream | undefined,
  defaults: { maxResponseBytes: number; idleMs: number },
  log: Logger,
): Promise<ReplicaLink> {
  const boot = randomBytes(12).toString('base64url');
  const nonces = new NonceBook();
  // Room for a few of the largest requests at once, whatever the body limit.
  const budget = new ByteBudget(Math.max(MAX_BUFFERED_BYTES, 4 * settings.maxRequestBytes));
  const advertised =
    settings.advertise === undefined ? undefined : advertisedOrigin(settings.advertise);
  let home = '';

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (req.method !== 'POST' || req.url !== FORWARD_PATH) return refuse(res, 404, 'not found');
    const timestamp = req.headers[HEADER_TIMESTAMP];
    const nonce = req.headers[HEADER_NONCE];
    const signature = req.headers[HEADER_SIGNATURE];
    const headSignature = req.headers[HEADER_HEAD_SIGNATURE];
    if (
      typeof timestamp !== 'string' ||
      typeof nonce !== 'string' ||
      typeof signature !== 'string' ||
      !TIMESTAMP.test(timestamp) ||
      !NONCE.test(nonce) ||
      !SIGNATURE.test(signature) ||
      typeof headSignature !== 'string' ||
      !SIGNATURE.test(headSignature)
    )
      return refuseUnread(req, res, 401, 'unsigned');
    // A stale request is refused before its body is read; a fresh one's body is
    // read within the bounds above, as its signature covers it.
    if (!(Math.abs(Date.now() - Number(timestamp)) <= SIGNATURE_WINDOW_MS))
      return refuseUnread(req, res, 401, 'stale');
    // The head is signed with the length: without the secret nothing gets as
    // far as having its body read (and buffered).
    const length = req.headers['content-length'];
    if (length === undefined || !/^[0-9]{1,12}$/.test(length))
      return refuseUnread(req, res, 411, 'a length is required');
    const head = Buffer.from(signHead(settings.secret, timestamp, nonce, Number(length)));
    const givenHead = Buffer.from(headSignature);
    if (givenHead.length !== head.length || !timingSafeEqual(givenHead, head))
      return refuseUnread(req, res, 401, 'bad signature');
    if (Number(length) > settings.maxRequestBytes) return refuseUnread(req, res, 413, 'too large');
    const body = await readBody(req, settings.maxRequestBytes, budget);
    if (body === 'too large') return refuseUnread(req, res, 413, body);
    if (body === 'busy') return refuseUnread(req, res, 503, body, { 'retry-after': '1' });
    const expected = Buffer.from(sign(settings.secret, timestamp, nonce, body));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      return refuse(res, 401, 'bad signature');
    const now = Date.now();
    if (!(Math.abs(now - Number(timestamp)) <= SIGNATURE_WINDOW_MS))
      return refuse(res, 401, 'stale');
    const seen = nonces.check(nonce, performance.now());
    if (seen === 'replayed') return refuse(res, 401, 'replayed');
    if (seen === 'full') return refuse(res, 503, 'busy', { 'retry-after': '1' });
    const envelope = parseEnvelope(body);
    if (envelope === undefined) return refuse(res, 400, 'bad envelope');
    if (envelope.home !== home)
      return refuse(res, 404, 'not the home of this session', { [HEADER_GONE]: '1' });
    const upstream = localUpstream(envelope.server);
    if (upstream === undefined) return refuse(res, 404, 'no such server', { [HEADER_GONE]: '1' });
    const call = upstream.request({
      method: envelope.method,
      headers: envelope.headers,
      ...(envelope.body !== undefined ? { body: envelope.body } : {}),
      ...(envelope.affinity !== undefined ? { affinity: envelope.affinity } : {}),
      ...(envelope.tenant !== undefined ? { tenant: envelope.tenant } : {}),
      // The replica that forwarded keeps the time: it sees the answer's pace.
      idleMs: 0,
    });
    // The forwarding replica's client went away: so does the call.
    res.once('close', () => {
      if (!res.writableFinished) call.abort();
    });
    let up: UpstreamResponse;
    try {
      up = await call.response;
    } catch (err) {
      const status = err instanceof GatewayError ? err.status : 502;
      return refuse(res, status, (err as Error).message);
    }
    const headers: Record<string, string> = {};
    for (const name of ANSWER_HEADERS) {
      const v = up.headers[name];
      if (typeof v === 'string') headers[name] = v;
    }
    res.writeHead(up.statusCode, headers);
    res.flushHeaders();
    up.body.consume(
      (chunk) => {
        if (!res.write(chunk)) {
          up.body.pause();
          res.once('drain', () => up.body.resume());
        }
      },
      () => res.end(),
      () => res.destroy(),
    );
  };

  const server: Server = createServer(
    {
      headersTimeout: HEADERS_TIMEOUT_MS,
      requestTimeout: SIGNATURE_WINDOW_MS,
      // Longer than the links' own idle timeout: the forwarding side closes an idle link first.
      keepAliveTimeout: 60_000,
    },
    (req, res) => {
      serve(req, res).catch((err: unknown) => {
        log.warn({ err: (err as Error).message }, 'internal listener: a forwarded request failed');
        if (!res.headersSent) refuse(res, 500, 'internal error');
        else res.destroy();
      });
    },
  );
  server.maxConnections = settings.maxConnections;
  server.on('connection', (socket) => socket.setKeepAlive(true, KEEPALIVE_DELAY_MS));
  server.listen(settings.port, settings.host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const advertise = advertised ?? advertisedOrigin(`http://${hostForUrl(settings.host)}:${port}`);
  home = `${advertise}#${boot}`;
  if (!HOME.test(home)) {
    server.close();
    throw new ConfigError('cluster.advertise', [
      {
        path: 'cluster.advertise',
        message: `"${advertise}" is not an address other replicas can be sent to (letters, digits, . _ - : [ ] only)`,
      },
    ]);
  }
  log.info({ event: 'cluster.listening', home: advertise, port }, 'internal listener ready');

  const pools = new Map<string, Pool>();
  const upstreams = new Map<string, HomeUpstream>();
  /**
   * Homes come and go with replicas: the link used longest ago goes, one
   * carrying nothing if there is one (a stream on a link is not cut for a
   * new home while an idle link can go instead).
   */
  const dropLink = (): void => {
    let victim: string | undefined;
    for (const [origin, pool] of pools) {
      victim ??= origin;
      if (pool.stats.running === 0 && pool.stats.pending === 0) {
        victim = origin;
        break;
      }
    }
    if (victim === undefined) return;
    const stale = pools.get(victim) as Pool;
    pools.delete(victim);
    void stale.destroy();
    for (const [k, u] of upstreams) if (u.origin === victim) upstreams.delete(k);
  };
  return {
    home,
    toHome(target, name) {
      if (target === home) return undefined;
      const key = `${target}\n${name}`;
      let up = upstreams.get(key);
      if (up === undefined) {
        // Homes come sealed from the store (src/mcp/sessions.ts); a bad one is no home.
        let origin: string;
        try {
          origin = new URL(target.split('#')[0] as string).origin;
        } catch {
          throw gone(name);
        }
        let pool = pools.get(origin);
        if (pool === undefined) {
          if (pools.size >= MAX_HOMES) dropLink();
          pool = new Pool(origin, {
            connectTimeout: 2_000,
            keepAliveTimeout: 30_000,
            connect: { keepAlive: true, keepAliveInitialDelay: KEEPALIVE_DELAY_MS },
          });
          pools.set(origin, pool);
        }
        up = new HomeUpstream(
          name,
          target,
          origin,
          pool,
          settings.secret,
          defaults.maxResponseBytes,
          defaults.idleMs,
        );
        // Each restart of a replica is a new home at the same origin: the oldest go.
        if (upstreams.size >= MAX_HOME_UPSTREAMS)
          upstreams.delete(upstreams.keys().next().value as string);
      }
      // Least recently used last out: re-inserted on every use.
      upstreams.delete(key);
      upstreams.set(key, up);
      const pool = pools.get(up.origin) as Pool;
      pools.delete(up.origin);
      pools.set(up.origin, pool);
      return up;
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await Promise.all([...pools.values()].map((p) => p.destroy()));
    },
  };
}
