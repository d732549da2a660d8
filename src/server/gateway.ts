/**
 * The composition root: wires config, upstreams, sessions, the public app and
 * the admin listener, and owns start-up and the SIGTERM drain. Nothing
 * imports this module but the CLI and the tests.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { bothObservers, openAudit } from '../audit/index.js';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import type { Authenticator } from '../auth/authenticate.js';
import { createCredential, type UpstreamCredential } from '../auth/credentials.js';
import { SigningKeys } from '../auth/keys.js';
import { Revocations } from '../auth/revocation.js';
import { isLoopbackHost, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { GatewayError } from '../errors/index.js';
import { ToolHeaderRegistry } from '../mcp/era.js';
import type { ExchangeObserver } from './exchange.js';
import { SharedSessionStore, type Session } from '../mcp/sessions.js';
import { clusterSecret, recordSeal, startReplicaLink } from './replicas.js';
import { openStore } from '../store/index.js';
import { createMetrics } from '../telemetry/metrics.js';
import { metricsObserver } from '../telemetry/exchange-metrics.js';
import { createUpstream, gatewaySecrets } from './upstreams.js';
import { buildAdmin } from './admin.js';
import { buildApp, type Route } from './app.js';
import type { ResourceInfo } from './auth-http.js';
import { createAuthenticator, keySource, resourceInfoFor } from './identity.js';
import { StreamRegistry } from './streams.js';
import { inflightCap, openFileLimit, Quotas } from './quotas.js';
import { trackIdleSockets } from './idle-sockets.js';
import type { Policy } from '../policy/policy.js';
import { buildPolicy } from './policy-loader.js';
import { compileRateLimits, type RateLimitDeps, type RateLimits } from './rate-limits.js';
import { limitersFor } from '../limits/index.js';
import { LiveTools } from './decide.js';
import { StorePinBook } from './pins.js';
import { startReloader, type ReloadResult } from './reload.js';

export interface Gateway {
  /** Base URL of the public listener, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Base URL of the admin listener, if enabled. */
  readonly adminUrl: string | undefined;
  /** The MCP endpoint of a configured server. */
  urlFor(server: string): string;
  /**
   * Reads the configuration file again and puts its policy in force; refused
   * (the running policy kept) on any problem. Without `configFile`, refused.
   */
  reload(): Promise<ReloadResult>;
  /** Stops accepting, lets in-flight calls finish within the drain bound, closes everything. */
  close(): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
  /** Hears every message with its decision, and the end of every exchange (audit attaches here). */
  observer?: ExchangeObserver;
  /**
   * The file `config` was loaded from. Given, the gateway reloads its policy
   * when the file (or a manifest it names) changes, and on `reload()`.
   */
  configFile?: string;
  /**
   * How to load `configFile` again (default `loadConfigFile`); the CLI passes
   * one that lays its command-line flags over the file, as at start.
   */
  loadConfig?: (file: string) => Promise<Config>;
}

/** The servers that pin by a manifest file (the pin book is not asked for them). */
function manifestServers(config: Config): ReadonlySet<string> {
  return new Set(
    Object.entries(config.servers)
      .filter(([, server]) => server.manifest !== undefined)
      .map(([name]) => name),
  );
}

function baseUrl(app: FastifyInstance, tls: boolean): string {
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return `${tls ? 'https' : 'http'}://${host}:${addr.port}`;
}

export async function startGateway(config: Config, options: StartOptions = {}): Promise<Gateway> {
  const log = options.log ?? pino({ level: config.log.level });
  // Read before anything is opened: a bad secret stops the start with nothing to close.
  const secret = config.cluster === undefined ? undefined : clusterSecret(config.cluster);
  const routes = new Map<string, Route>();
  // Credentials are made once the listener has its address (a minted token's
  // issuer defaults to the gateway's resource); no request is read before.
  const credentials = new Map<string, UpstreamCredential>();
  const metrics = createMetrics();
  const upstreamDeps = { config, log, metrics, secrets: gatewaySecrets(config) };
  for (const [name, server] of Object.entries(config.servers)) {
    const upstream = createUpstream(name, server, upstreamDeps);
    routes.set(name, {
      name,
      upstream,
      toolHeaders: new ToolHeaderRegistry(),
      maxResponseBytes: upstream.maxResponseBytes,
      requiredScopes: server.requiredScopes,
      credential: () => credentials.get(name) as UpstreamCredential,
    });
  }
  const signingKeys =
    config.signing.keysFile === undefined
      ? undefined
      : await SigningKeys.load(config.signing.keysFile, config.signing.activeKid);
  const store = await openStore(
    config.store.kind === 'redis'
      ? {
          kind: 'redis',
          url: config.store.url,
          keyPrefix: config.store.keyPrefix,
          commandTimeoutMs: config.store.commandTimeoutMs,
          connectTimeoutMs: config.store.connectTimeoutMs,
        }
      : { kind: 'memory' },
    (event, detail) => {
      if (event === 'connected')
        log.info({ store: config.store.kind, ...detail }, 'store connected');
      else log.warn({ store: config.store.kind, ...detail }, `store ${event}`);
    },
  );
  const revocations = new Revocations(store, (err, what) => {
    metrics.storeErrors.inc({ component: 'revocations' });
    log.warn({ err: (err as Error).message }, `store: ${what} failed`);
  });
  // Trust on first use, shared: each replica answers from its mirror of the store's pins.
  const pins = new StorePinBook(store, log);
  // Subscribed before the mirrors load: a subscription made later would flap the store's health.
  const sessionSweepMs = Math.min(
    60_000,
    Math.max(1_000, Math.floor(config.sessions.idleTimeoutMs / 4)),
  );
  // Declared before the store is built: an expiry calls it.
  let endUpstreamSession: (s: Session) => void = () => undefined;
  const sessions = new SharedSessionStore(store, {
    seal: secret === undefined ? undefined : recordSeal(secret),
    onCallbackError: (what, err) =>
      log.error({ err: (err as Error).message }, `sessions: could not ${what}`),
    idleTimeoutMs: config.sessions.idleTimeoutMs,
    max: config.sessions.max,
    sweepIntervalMs: sessionSweepMs,
    onEnd: (session) => credentials.get(session.server)?.sessionEnded(session.id),
    onExpire: (s) => {
      log.info({ server: s.server, session: s.id }, 'session expired');
      endUpstreamSession(s);
    },
    onStoreError: (what, err) => {
      metrics.storeErrors.inc({ component: 'sessions' });
      log.warn({ event: 'sessions.store_error', err: (err as Error).message }, `could not ${what}`);
    },
  });
  await Promise.all([revocations.start(), pins.start()]);
  const storeTrusted = (): boolean => revocations.current;
  metrics.storeHealthy.set(storeTrusted() ? 1 : 0);
  store.onHealth(() => metrics.storeHealthy.set(storeTrusted() ? 1 : 0));
  const keys = config.auth.mode === 'jwt' ? await keySource(config, log, metrics) : undefined;
  // Before the listener: no request is served that could not be recorded.
  const audit = await openAudit(config, { log, metrics, signingKeys });
  // The SDK is loaded only when traces are exported.
  const tracing =
    config.tracing.otlp === undefined
      ? undefined
      : (await import('../telemetry/tracing.js')).createTracing(config.tracing);
  const observer = bothObservers(
    bothObservers(
      bothObservers(audit?.observer, metricsObserver(metrics, config)),
      tracing?.observer,
    ),
    options.observer,
  );
  const streams = new StreamRegistry(
    config.listen.heartbeatIntervalMs,
    config.shutdown.retryHintMs,
  );
  metrics.live.sessions = () => sessions.size;
  metrics.live.streams = () => streams.size;
  metrics.live.storeOperations = () => store.operations;
  let draining = false;
  /** From SIGTERM on: not ready, and no connection kept open after its answer. */
  let leaving = false;
  let listening = false;
  const globalInflight = inflightCap(config.quotas.global.inflight);
  if (globalInflight < config.quotas.global.inflight) {
    log.warn(
      {
        configured: config.quotas.global.inflight,
        cap: globalInflight,
        openFiles: openFileLimit(),
      },
      'quotas.global.inflight lowered to what the open-file limit can carry',
    );
  }
  const quotas = new Quotas({
    // Without authentication every caller is the one anonymous principal: its
    // quota would be the whole tenant's, so the tenant's is the one that applies.
    perPrincipal: config.auth.mode === 'none' ? undefined : config.quotas.perPrincipal,
    perTenant: config.quotas.perTenant,
    globalInflight,
  });

  // Compiled once per (re)load; the config was checked (policyProblems) when it
  // was built. A reload replaces it in one assignment: each exchange keeps the
  // policy of its request's arrival, so in-flight streams are decided as they began.
  const limiters = await limitersFor(store);
  const limiterDeps: RateLimitDeps = {
    ...limiters,
    onEvent: (e) => {
      if (e.kind === 'refused') {
        metrics.rateLimited.inc({ limit: e.limit.startsWith('tools.') ? 'tool' : e.limit });
        log.info(
          { event: 'rate_limit.refused', limit: e.limit, tenant: e.tenant },
          'refused a request over a rate limit',
        );
      } else {
        metrics.rateLimitStoreErrors.inc({ outcome: e.admitted ? 'allowed' : 'refused' });
        metrics.storeErrors.inc({ component: 'rate-limits' });
        log.warn(
          {
            event: 'rate_limit.store_down',
            tenant: e.tenant,
            admitted: e.admitted,
            err: (e.err as Error).message,
          },
          e.admitted
            ? 'rate limits not counted: the store is down (onStoreDown: allow)'
            : 'refused a request: the store holding the rate limits is down',
        );
      }
    },
  };
  let rateLimits = compileRateLimits(config, limiterDeps);
  const rateLimitsBy = new WeakMap<Policy, RateLimits>();
  let policy: Policy = buildPolicy(config);
  if (config.tenants === undefined) {
    log.info(
      { event: 'policy.no_tenants' },
      'no tenants configured: every authenticated principal may use every server',
    );
  }
  const toolMemory = new LiveTools(pins);
  // A forgotten pin (`portcullis pins reset`) is an approval: a call this replica
  // refused because the tool had changed goes through again, without waiting for
  // the agent to list the tools here. Not with a manifest, which pins by itself.
  let manifested = manifestServers(config);
  const manifestedBy = new WeakMap<Policy, ReadonlySet<string>>();
  pins.onForget((server, tool) => {
    if (manifested.has(server)) return;
    if (toolMemory.verdict(server, tool)?.code === 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED')
      toolMemory.remember(server, new Map([[tool, undefined]]));
  });

  const replicas =
    config.cluster === undefined
      ? undefined
      : await startReplicaLink(
          {
            host: config.cluster.host,
            port: config.cluster.port,
            advertise: config.cluster.advertise,
            secret: secret as string,
            // A forwarded request is the client's body and the headers, in JSON.
            maxRequestBytes: 2 * config.listen.bodyLimitBytes + 64 * 1024,
            // A stream per session at most, for sessions opened here and served elsewhere.
            maxConnections: 2 * config.sessions.max + 256,
          },
          (server) => {
            const up = routes.get(server)?.upstream;
            return up?.opensChannels ? up : undefined;
          },
          {
            maxResponseBytes: config.upstreamDefaults.maxResponseBytes,
            idleMs: config.upstreamDefaults.timeouts.idleMs,
          },
          log,
        );

  let authenticator: Authenticator | undefined;
  let resourceInfo: ResourceInfo | undefined;
  const app = buildApp({
    replicas,
    policy: () => policy,
    rateLimits: () => rateLimits,
    toolMemory,
    config,
    log,
    routes,
    sessions,
    streams,
    isDraining: () => draining,
    isLeaving: () => leaving,
    quotas,
    isRevoked: (who) => revocations.check(who.jti, who.owner, who.sessionId()) === 'revoked',
    observer,
    auditFull: audit ? () => audit.log.full : undefined,
    traceparentFor: tracing && ((x) => tracing.upstreamTraceparent(x)),
    metrics,
    signingKeys,
    auth:
      config.auth.mode === 'jwt'
        ? {
            // Both are set as soon as the listener has its address, before any request is read.
            authenticator: () => authenticator as Authenticator,
            info: () => resourceInfo as ResourceInfo,
          }
        : undefined,
  });

  /** The upstream's side of an ended session: a best-effort DELETE (a stdio process stops). */
  endUpstreamSession = (s: Session): void => {
    const route = routes.get(s.server);
    if (route && s.upstreamId !== undefined) {
      const upstream =
        (s.home !== undefined && replicas?.toHome(s.home, route.name)) || route.upstream;
      upstream
        .request({
          method: 'DELETE',
          headers: { 'mcp-session-id': s.upstreamId },
          affinity: s.owner,
        })
        .response.then((r) => r.body.dump())
        .catch(() => undefined);
    }
  };

  // A revocation ends what is open, not only what comes next: the revoked
  // subject's or session's streams are cut (pending requests answered with the
  // revocation), their sessions end on both sides, and a stateless caller's
  // process stops. Revocations from other replicas arrive here the same way.
  revocations.onRevoked((r) => {
    const reason = new GatewayError(
      'PORTCULLIS_ERR_AUTH_TOKEN_REVOKED',
      r.kind === 'session' ? 'the session was revoked' : undefined,
    );
    const ended: Session[] = [];
    if (r.kind === 'session') {
      const s = sessions.peek(r.id);
      if (s !== undefined) ended.push(s);
      // Not held here: still ended in the store, so no replica serves it again.
      else sessions.delete(r.id);
    } else if (r.kind === 'sub') {
      for (const s of sessions.all()) if (s.owner === r.id) ended.push(s);
    }
    for (const s of ended) sessions.delete(s.id);
    const streamsEnded = streams.terminateWhere(
      (who) =>
        (r.kind === 'sub' && who.owner === r.id) ||
        (r.kind === 'jti' && who.jti === r.id) ||
        (r.kind === 'session' && who.sessionId() === r.id),
      reason,
    );
    for (const s of ended) endUpstreamSession(s);
    if (r.kind === 'sub') for (const route of routes.values()) route.upstream.endCaller?.(r.id);
    if (ended.length > 0 || streamsEnded > 0) {
      log.warn(
        {
          event: 'revocation.enforced',
          kind: r.kind,
          sessions: ended.length,
          streams: streamsEnded,
        },
        'revocation ended open sessions and streams',
      );
    }
  });

  // Idle sessions are ended on both sides: the upstream gets a best-effort DELETE.
  const sweeper = setInterval(() => void sessions.sweep(), sessionSweepMs);
  sweeper.unref();

  const idleSockets = trackIdleSockets(app.server, Boolean(config.listen.tls));
  await app.listen({ host: config.listen.host, port: config.listen.port });
  listening = true;
  const url = baseUrl(app, Boolean(config.listen.tls));
  const resource = config.auth.resource ?? url;
  if (config.auth.mode === 'jwt') {
    resourceInfo = resourceInfoFor(config, resource);
    authenticator = createAuthenticator(config, resource, keys, revocations, store, metrics);
  }
  for (const [name, server] of Object.entries(config.servers)) {
    credentials.set(
      name,
      createCredential(server.credential, {
        server: name,
        // A stdio server has no URL: a minted token names it by the gateway's name for it.
        serverUrl: server.url ?? `urn:portcullis:server:${name}`,
        signingIssuer: config.signing.issuer ?? resource,
        keys: signingKeys,
        revocations,
        onIssued: (srv, mode, result) =>
          metrics.credentialsIssued.inc({ server: srv, mode, result }),
      }),
    );
  }

  let admin: FastifyInstance | undefined;
  let adminUrl: string | undefined;
  if (config.admin.enabled) {
    admin = buildAdmin({
      log,
      metrics,
      notReady: () => {
        if (!listening || leaving) return 'draining';
        if (audit?.log.full) return 'an audit sink is behind';
        // Failing closed, this replica refuses every authenticated request: take it out of rotation.
        if (config.auth.mode === 'jwt' && config.auth.revocation.failClosed && !storeTrusted()) {
          return 'store unavailable';
        }
        // Until the issuer's keys were fetched once, every token is refused: not in rotation
        // yet. Out of rotation no token asks for them, so the probe itself retries the fetch.
        if (keys !== undefined && !keys.ready) {
          keys.retry();
          return 'issuer keys (JWKS) not fetched yet';
        }
        for (const route of routes.values()) {
          const why = route.upstream.notReady?.();
          if (why !== undefined) return why;
        }
        return undefined;
      },
      token:
        config.admin.token ??
        (config.admin.tokenFile === undefined
          ? undefined
          : readFileSync(config.admin.tokenFile, 'utf8').trim()),
      host: config.admin.host,
      allowedHosts: config.admin.allowedHosts,
      publicMetrics: config.admin.publicMetrics,
      revocations,
      tokenRevocationMs: config.auth.jwt.maxLifetimeMs + config.auth.jwt.clockSkewMs,
      sessionRevocationMs: config.sessions.idleTimeoutMs,
      hasSession: (id) => sessions.peek(id) !== undefined,
      pins,
    });
    await admin.listen({ host: config.admin.host, port: config.admin.port });
    adminUrl = baseUrl(admin, false);
  }
  log.info({ url, adminUrl, servers: [...routes.keys()] }, 'gateway listening');
  if (config.listen.behindProxy && !isLoopbackHost(config.listen.host)) {
    log.warn(
      { event: 'listen.plain_http', host: config.listen.host },
      'serving plain HTTP off loopback (listen.behindProxy): only the proxy in front may reach this port',
    );
  }

  // After the listeners: a start that fails leaves no watch behind.
  const reloader =
    options.configFile === undefined
      ? undefined
      : startReloader({
          file: options.configFile,
          load: options.loadConfig ?? ((file) => loadConfigFile(file)),
          running: config,
          build: (next) => {
            const built = buildPolicy(next);
            manifestedBy.set(built, manifestServers(next));
            rateLimitsBy.set(built, compileRateLimits(next, limiterDeps));
            return built;
          },
          apply: (next) => {
            policy = next;
            manifested = manifestedBy.get(next) ?? manifested;
            rateLimits = rateLimitsBy.get(next) ?? rateLimits;
          },
          log,
          metrics,
        });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      leaving = true;
      if (config.shutdown.leaveRotationMs > 0) {
        // Still serving: load balancers see /readyz fail and connections close after each answer.
        log.info(
          {
            event: 'shutdown.leaving_rotation',
            ms: config.shutdown.leaveRotationMs,
            streamsEnded: streams.endIdle(),
          },
          'leaving rotation',
        );
        await sleep(config.shutdown.leaveRotationMs);
      }
      draining = true;
      const drainStarted = Date.now();
      await reloader?.close();
      log.info(
        { streams: streams.size, drainTimeoutMs: config.shutdown.drainTimeoutMs },
        'draining',
      );
      const closed = app.close();
      idleSockets.closeIdle();
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
      await Promise.all([...routes.values()].map((r) => r.upstream.close()));
      await replicas?.close();
      // Within the drain bound (at least a second): what is left stays in a spool for the next start.
      await audit?.log.close(
        Math.max(drainStarted + config.shutdown.drainTimeoutMs, Date.now() + 1_000),
      );
      await admin?.close();
      await tracing
        ?.close()
        .catch((err: unknown) =>
          log.warn(
            { err: (err as Error).message },
            'tracing: the last spans could not be exported',
          ),
        );
      keys?.close();
      revocations.close();
      await pins.close();
      await store.close();
      log.info('gateway stopped');
    })();
    return closing;
  };

  return {
    url,
    adminUrl,
    urlFor: (server) => `${url}/mcp/${encodeURIComponent(server)}`,
    reload: () =>
      reloader?.reload() ??
      Promise.resolve({
        ok: false,
        problems: [
          {
            file: '(none)',
            path: '(gateway)',
            message: 'the gateway was started without a configuration file: nothing to reload',
          },
        ],
      }),
    close,
  };
}
