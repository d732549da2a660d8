/**
 * The composition root: wires config, upstreams, sessions, the public app and
 * the admin listener, and owns start-up and the SIGTERM drain. Nothing
 * imports this module but the CLI and the tests.
 */
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config/schema.js';
import { ToolHeaderRegistry } from '../mcp/era.js';
import type { FrameObserver } from '../mcp/frame.js';
import { MemorySessionStore } from '../mcp/sessions.js';
import { HttpUpstream } from '../upstream/http.js';
import { buildApp, type Route } from './app.js';
import { StreamRegistry } from './streams.js';

export interface Gateway {
  /** Base URL of the public listener, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Base URL of the admin listener, if enabled. */
  readonly adminUrl: string | undefined;
  /** The MCP endpoint of a configured server. */
  urlFor(server: string): string;
  /** Stops accepting, lets in-flight calls finish within the drain bound, closes everything. */
  close(): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
  /** Sees every framed message in both directions (policy and audit attach here). */
  onFrame?: FrameObserver;
}

function baseUrl(app: FastifyInstance, tls: boolean): string {
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return `${tls ? 'https' : 'http'}://${host}:${addr.port}`;
}

function buildAdmin(log: Logger, ready: () => boolean): FastifyInstance {
  const admin = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
  }) as unknown as FastifyInstance;
  admin.get('/livez', async () => ({ status: 'ok' }));
  admin.get('/readyz', async (_req, reply) =>
    ready() ? { status: 'ready' } : reply.code(503).send({ status: 'draining' }),
  );
  return admin;
}

export async function startGateway(config: Config, options: StartOptions = {}): Promise<Gateway> {
  const log = options.log ?? pino({ level: config.log.level });
  const routes = new Map<string, Route>();
  for (const [name, server] of Object.entries(config.servers)) {
    const http = new HttpUpstream(name, server, config.upstreamDefaults);
    routes.set(name, {
      name,
      http,
      toolHeaders: new ToolHeaderRegistry(),
      maxResponseBytes: http.maxResponseBytes,
    });
  }
  const sessions = new MemorySessionStore(config.sessions.idleTimeoutMs, config.sessions.max);
  const streams = new StreamRegistry(
    config.listen.heartbeatIntervalMs,
    config.shutdown.retryHintMs,
  );
  let draining = false;
  let listening = false;

  const app = buildApp({
    config,
    log,
    routes,
    sessions,
    streams,
    isDraining: () => draining,
    onFrame: options.onFrame,
  });

  // Idle sessions are ended on both sides: the upstream gets a best-effort DELETE.
  const sweeper = setInterval(
    () => {
      for (const s of sessions.sweep(Date.now())) {
        log.info({ server: s.server, session: s.id }, 'session expired');
        const route = routes.get(s.server);
        if (route && s.upstreamId !== undefined) {
          route.http
            .request({ method: 'DELETE', headers: { 'mcp-session-id': s.upstreamId } })
            .response.then((r) => r.body.dump())
            .catch(() => undefined);
        }
      }
    },
    Math.min(60_000, Math.max(1_000, Math.floor(config.sessions.idleTimeoutMs / 4))),
  );
  sweeper.unref();

  await app.listen({ host: config.listen.host, port: config.listen.port });
  listening = true;
  const url = baseUrl(app, Boolean(config.listen.tls));

  let admin: FastifyInstance | undefined;
  let adminUrl: string | undefined;
  if (config.admin.enabled) {
    admin = buildAdmin(log, () => listening && !draining);
    await admin.listen({ host: config.admin.host, port: config.admin.port });
    adminUrl = baseUrl(admin, false);
  }
  log.info({ url, adminUrl, servers: [...routes.keys()] }, 'gateway listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      log.info(
        { streams: streams.size, drainTimeoutMs: config.shutdown.drainTimeoutMs },
        'draining',
      );
      const closed = app.close();
      await streams.drain(config.shutdown.drainTimeoutMs);
      const hardStop = setTimeout(
        () => app.server.closeAllConnections(),
        config.shutdown.drainTimeoutMs,
      );
      await closed;
      clearTimeout(hardStop);
      listening = false;
      clearInterval(sweeper);
      streams.close();
      await Promise.all([...routes.values()].map((r) => r.http.close()));
      await admin?.close();
      log.info('gateway stopped');
    })();
    return closing;
  };

  return {
    url,
    adminUrl,
    urlFor: (server) => `${url}/mcp/${encodeURIComponent(server)}`,
    close,
  };
}
