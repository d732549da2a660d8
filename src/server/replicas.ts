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
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Pool } from 'undici';
import { GatewayError } from '../errors/index.js';
import { DispatchedCall } from '../upstream/http.js';
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
/** Nonces remembered against replay, at most (a window's worth at a high rate). */
const MAX_NONCES = 200_000;
const HEADER_SIGNATURE = 'x-portcullis-signature';
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
    const call = new DispatchedCall(this.name, idleMs);
    this.pool.dispatch(
      {
        path: FORWARD_PATH,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [HEADER_TIMESTAMP]: timestamp,
          [HEADER_NONCE]: nonce,
          [HEADER_SIGNATURE]: sign(this.secret, timestamp, nonce, body),
        },
        body,
        bodyTimeout: idleMs,
      },
      call,
    );
    const server = this.name;
    const response = call.response.then(
      async (up): Promise<UpstreamResponse> => {
        if (up.statusCode === 404 && up.headers[HEADER_GONE] !== undefined) {
          await up.body.dump();
          throw gone(server);
        }
        return up;
      },
      (err: unknown) => {
        // Nothing listens where the home was: it is gone, and so is the session.
        if (err instanceof GatewayError && err.data.reason === 'connect') throw gone(server);
        throw err;
      },
    );
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

/** Remembers nonces for the signature window; refuses one seen already. */
class NonceBook {
  private readonly seen = new Map<string, number>();
  fresh(nonce: string, now: number): boolean {
    for (const [n, at] of this.seen) {
      if (now - at <= 2 * SIGNATURE_WINDOW_MS && this.seen.size < MAX_NONCES) break;
      this.seen.delete(n);
    }
    if (this.seen.has(nonce)) return false;
    this.seen.set(nonce, now);
    return true;
  }
}

function refuse(res: ServerResponse, status: number, message: string, extra = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...extra });
  res.end(JSON.stringify({ error: message }));
}

function readBody(req: IncomingMessage, limit: number): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        resolve(undefined);
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
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
  let home = '';

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (req.method !== 'POST' || req.url !== FORWARD_PATH) return refuse(res, 404, 'not found');
    const timestamp = req.headers[HEADER_TIMESTAMP];
    const nonce = req.headers[HEADER_NONCE];
    const signature = req.headers[HEADER_SIGNATURE];
    if (
      typeof timestamp !== 'string' ||
      typeof nonce !== 'string' ||
      typeof signature !== 'string' ||
      nonce.length > 64
    )
      return refuse(res, 401, 'unsigned');
    const body = await readBody(req, settings.maxRequestBytes);
    if (body === undefined) return refuse(res, 413, 'too large');
    const expected = Buffer.from(sign(settings.secret, timestamp, nonce, body));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      return refuse(res, 401, 'bad signature');
    const now = Date.now();
    if (!(Math.abs(now - Number(timestamp)) <= SIGNATURE_WINDOW_MS))
      return refuse(res, 401, 'stale');
    if (!nonces.fresh(nonce, now)) return refuse(res, 401, 'replayed');
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

  const server: Server = createServer((req, res) => {
    serve(req, res).catch((err: unknown) => {
      log.warn({ err: (err as Error).message }, 'internal listener: a forwarded request failed');
      if (!res.headersSent) refuse(res, 500, 'internal error');
      else res.destroy();
    });
  });
  server.listen(settings.port, settings.host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const advertise = (settings.advertise ?? `http://${settings.host}:${port}`).replace(/\/+$/, '');
  home = `${advertise}#${boot}`;
  log.info({ event: 'cluster.listening', home: advertise, port }, 'internal listener ready');

  const pools = new Map<string, Pool>();
  const upstreams = new Map<string, HomeUpstream>();
  return {
    home,
    toHome(target, name) {
      if (target === home) return undefined;
      const key = `${target}\n${name}`;
      let up = upstreams.get(key);
      if (up === undefined) {
        const origin = new URL(target.split('#')[0] as string).origin;
        let pool = pools.get(origin);
        if (pool === undefined) {
          // Homes come and go with replicas: the links to the oldest go first.
          if (pools.size >= MAX_HOMES) {
            const [oldest, stale] = pools.entries().next().value as [string, Pool];
            pools.delete(oldest);
            void stale.destroy();
            for (const [k, u] of upstreams) if (u.origin === oldest) upstreams.delete(k);
          }
          pool = new Pool(origin, { connectTimeout: 2_000, keepAliveTimeout: 30_000 });
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
        upstreams.set(key, up);
      }
      return up;
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await Promise.all([...pools.values()].map((p) => p.destroy()));
    },
  };
}
