/**
 * The admin listener: health (/livez, /readyz, public), Prometheus metrics
 * (/metrics), and the admin API under /admin/, which needs its own bearer
 * credential (never an agent's token) and is off when none is configured.
 * /metrics needs the credential too, unless admin.publicMetrics says
 * otherwise or, with no credential configured, the listener is loopback.
 *
 *   GET  /admin/revocations   live revocations
 *   POST /admin/revocations   {kind: "jti"|"sub"|"session", id, tenant?, ttlMs?, reason?}
 *   GET  /admin/pins[?server=S]         pins trusted on first use (servers without a manifest)
 *   DELETE /admin/pins/:server/:tool    forget one, on every replica: its next definition is trusted
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import Fastify, {
  LogController,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { Logger } from 'pino';
import {
  parseSubjectKey,
  subjectKey,
  type Revocation,
  type Revocations,
} from '../auth/revocation.js';
import { GatewayError } from '../errors/index.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { PinEntry } from './pins.js';
import { isLoopbackHost } from '../config/load.js';
import { compileHostCheck } from './allowlist.js';

export interface AdminDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Why the gateway should get no traffic now, or undefined when it is ready. */
  readonly notReady: () => string | undefined;
  /** The admin API's credential; undefined turns the API off. */
  readonly token: string | undefined;
  /** The admin listener's address, and the Host values it accepts (undefined: loopback names). */
  readonly host: string;
  readonly allowedHosts: readonly string[] | undefined;
  /** /metrics without the credential (admin.publicMetrics). */
  readonly publicMetrics: boolean;
  readonly revocations: Revocations;
  /** How long a revocation of a token or subject must last: every token alive now is dead by then. */
  readonly tokenRevocationMs: number;
  readonly sessionRevocationMs: number;
  /** Whether a gateway session is open (a revocation of it then ends it, through the listener). */
  readonly hasSession: (id: string) => boolean;
  /** The pins trusted on first use, shared by every replica. */
  readonly pins: {
    list(server?: string): PinEntry[];
    /** Resolves whether a pin was known; rejects when the store cannot record it. */
    forget(server: string, tool: string): Promise<boolean>;
  };
}

const KINDS = new Set(['jti', 'sub', 'session']);

/** The admin listener's routes that need no credential, and the only ones: health. */
export const PUBLIC_ADMIN_ROUTES: ReadonlySet<string> = new Set(['GET /livez', 'GET /readyz']);
const METRICS_ROUTE = 'GET /metrics';

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function adminError(reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.code(status).send({ error: message });
}

/** The matched route as `METHOD /pattern` (HEAD is GET's twin), or undefined when none matched. */
function routeKey(req: FastifyRequest): string | undefined {
  const url = req.routeOptions.url;
  return url === undefined ? undefined : `${req.method === 'HEAD' ? 'GET' : req.method} ${url}`;
}

export function buildAdmin(deps: AdminDeps): FastifyInstance {
  const { log, metrics, revocations } = deps;
  const admin = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 16 * 1024,
  }) as unknown as FastifyInstance;
  const hostAllowed = compileHostCheck(deps.host, deps.allowedHosts);
  const expected = deps.token === undefined ? undefined : digest(deps.token);
  // Without a credential, metrics are open only where just this machine can ask.
  const metricsOpen = deps.publicMetrics || (expected === undefined && isLoopbackHost(deps.host));

  // In order: Host (DNS rebinding), browsers from elsewhere, then the credential,
  // decided on the route the router matched: every spelling of a path gets the
  // check its canonical spelling gets, and a path no route matches needs the
  // credential as much as one that does.
  admin.addHook('onRequest', async (req, reply) => {
    if (!hostAllowed(req.headers.host)) {
      log.warn({ event: 'admin.refused', host: req.headers.host }, 'admin: Host not allowed');
      return adminError(reply, 403, 'Host is not allowed by the admin listener');
    }
    // The admin listener serves no page: any browser request that names an origin, or
    // that the browser marks as coming from another site, is a cross-origin one.
    const site = req.headers['sec-fetch-site'];
    if (req.headers.origin !== undefined || (site !== undefined && site !== 'none')) {
      log.warn(
        { event: 'admin.refused', origin: req.headers.origin, site },
        'admin: cross-origin browser request refused',
      );
      return adminError(reply, 403, 'cross-origin requests are not allowed by the admin listener');
    }
    const route = routeKey(req);
    if (route !== undefined && PUBLIC_ADMIN_ROUTES.has(route)) return;
    if (route === METRICS_ROUTE && metricsOpen) return;
    if (expected === undefined) {
      return adminError(
        reply,
        404,
        route === METRICS_ROUTE
          ? '/metrics needs admin.token (or admin.publicMetrics) on a non-loopback admin listener'
          : 'the admin API is off (admin.token)',
      );
    }
    const auth = req.headers.authorization ?? '';
    const presented = auth.startsWith('Bearer ') ? auth.slice('Bearer '.length) : '';
    // Constant time: compare digests of equal length, never the strings.
    if (!timingSafeEqual(digest(presented), expected)) {
      const err = new GatewayError('PORTCULLIS_ERR_ADMIN_UNAUTHORIZED');
      log.warn(
        { event: 'admin.refused', ip: req.ip, path: req.url.split('?')[0] },
        'admin API refused a request',
      );
      void reply.header('www-authenticate', 'Bearer error="invalid_token"');
      return adminError(reply, 401, err.message);
    }
  });

  admin.get('/livez', async () => ({ status: 'ok' }));
  admin.get('/readyz', async (_req, reply) => {
    const why = deps.notReady();
    return why === undefined ? { status: 'ready' } : reply.code(503).send({ status: why });
  });
  admin.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  admin.get('/admin/revocations', async () => ({
    revocations: revocations.list().map((r) => {
      if (r.kind !== 'sub') return r;
      const named = parseSubjectKey(r.id);
      return named === undefined ? r : { ...r, id: named.subject, tenant: named.tenant };
    }),
  }));

  admin.post('/admin/revocations', async (req, reply) => {
    const body = (req.body ?? {}) as Record<string, unknown>;
    const kind = body.kind;
    const id = body.id;
    if (typeof kind !== 'string' || !KINDS.has(kind)) {
      return adminError(reply, 400, 'kind must be "jti", "sub" or "session"');
    }
    if (typeof id !== 'string' || id === '') return adminError(reply, 400, 'id must be a string');
    if (kind === 'sub' && typeof body.tenant !== 'string') {
      return adminError(reply, 400, 'a subject revocation needs its tenant');
    }
    const ttlMs =
      typeof body.ttlMs === 'number' && body.ttlMs > 0
        ? body.ttlMs
        : kind === 'session'
          ? deps.sessionRevocationMs
          : deps.tokenRevocationMs;
    const revocation: Revocation = {
      kind: kind as Revocation['kind'],
      id: kind === 'sub' ? subjectKey(body.tenant as string, id) : id,
      expiresAt: Date.now() + ttlMs,
      ...(typeof body.reason === 'string' ? { reason: body.reason } : {}),
    };
    const open = kind === 'session' ? deps.hasSession(id) : undefined;
    try {
      await revocations.revoke(revocation);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'could not record a revocation');
      return adminError(
        reply,
        503,
        `the shared store could not record it: ${(err as Error).message}`,
      );
    }
    const ended = open === undefined ? undefined : open && !deps.hasSession(id);
    log.warn(
      {
        event: 'revocation',
        kind,
        id,
        tenant: body.tenant,
        expiresAt: revocation.expiresAt,
        reason: body.reason,
      },
      'revoked',
    );
    return reply
      .code(201)
      .send({ revocation, ...(ended === undefined ? {} : { sessionEnded: ended }) });
  });

  admin.get('/admin/pins', async (req) => {
    const { server } = req.query as { server?: unknown };
    return { pins: deps.pins.list(typeof server === 'string' ? server : undefined) };
  });

  admin.delete('/admin/pins/:server/:tool', async (req, reply) => {
    const { server, tool } = req.params as { server: string; tool: string };
    let known: boolean;
    try {
      known = await deps.pins.forget(server, tool);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'could not forget a pin');
      return adminError(
        reply,
        503,
        `the shared store could not forget it: ${(err as Error).message}`,
      );
    }
    if (!known) return adminError(reply, 404, `no pin for tool '${tool}' on server '${server}'`);
    log.warn(
      { event: 'pins.reset', server, tool },
      `pin of ${tool} on ${server} forgotten: its next definition is trusted`,
    );
    return { forgotten: { server, tool } };
  });
  return admin;
}
