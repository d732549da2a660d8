/**
 * The admin listener: health (/livez, /readyz), Prometheus metrics
 * (/metrics), and the admin API under /admin/, which needs its own bearer
 * credential (never an agent's token) and is off when none is configured.
 *
 *   GET  /admin/revocations   live revocations
 *   POST /admin/revocations   {kind: "jti"|"sub"|"session", id, tenant?, ttlMs?, reason?}
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import { subjectKey, type Revocation, type Revocations } from '../auth/revocation.js';
import { GatewayError } from '../errors/index.js';
import type { Metrics } from '../telemetry/metrics.js';

export interface AdminDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Why the gateway should get no traffic now, or undefined when it is ready. */
  readonly notReady: () => string | undefined;
  /** The admin API's credential; undefined turns the API off. */
  readonly token: string | undefined;
  readonly revocations: Revocations;
  /** How long a revocation of a token or subject must last: every token alive now is dead by then. */
  readonly tokenRevocationMs: number;
  readonly sessionRevocationMs: number;
  /** Ends a gateway session (and revokes what was minted for it); false if there is none. */
  readonly endSession: (id: string) => boolean;
}

const KINDS = new Set(['jti', 'sub', 'session']);

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function adminError(reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.code(status).send({ error: message });
}

export function buildAdmin(deps: AdminDeps): FastifyInstance {
  const { log, metrics, revocations } = deps;
  const admin = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 16 * 1024,
  }) as unknown as FastifyInstance;
  admin.get('/livez', async () => ({ status: 'ok' }));
  admin.get('/readyz', async (_req, reply) => {
    const why = deps.notReady();
    return why === undefined ? { status: 'ready' } : reply.code(503).send({ status: why });
  });
  admin.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  const expected = deps.token === undefined ? undefined : digest(deps.token);
  admin.addHook('onRequest', async (req, reply) => {
    if (!req.url.startsWith('/admin/')) return;
    if (expected === undefined) return adminError(reply, 404, 'the admin API is off (admin.token)');
    const auth = req.headers.authorization ?? '';
    const presented = auth.startsWith('Bearer ') ? auth.slice('Bearer '.length) : '';
    // Constant time: compare digests of equal length, never the strings.
    if (!timingSafeEqual(digest(presented), expected)) {
      const err = new GatewayError('PORTCULLIS_ERR_ADMIN_UNAUTHORIZED');
      log.warn(
        { event: 'admin.refused', ip: req.ip, path: req.url },
        'admin API refused a request',
      );
      void reply.header('www-authenticate', 'Bearer error="invalid_token"');
      return adminError(reply, 401, err.message);
    }
  });

  admin.get('/admin/revocations', async () => ({
    revocations: revocations.list().map((r) => {
      if (r.kind !== 'sub') return r;
      const [tenant, subject] = r.id.split('\u0000');
      return { ...r, id: subject, tenant };
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
    const ended = kind === 'session' ? deps.endSession(id) : undefined;
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
  return admin;
}
