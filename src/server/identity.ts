/**
 * Builds the identity pieces from configuration: the issuer's key source,
 * the token verifier, the authenticator, and what the protected-resource
 * metadata says. Part of the composition root: only gateway.ts imports it.
 */
import type { Logger } from 'pino';
import { Authenticator, serverResource } from '../auth/authenticate.js';
import { FileJwks, RemoteJwks, type KeySource } from '../auth/jwks.js';
import { TokenVerifier } from '../auth/jwt.js';
import type { Revocations } from '../auth/revocation.js';
import { DEFAULT_JWT_ALGORITHMS, HMAC_ALGORITHMS, type Config } from '../config/schema.js';
import type { Store } from '../store/index.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ResourceInfo } from './auth-http.js';

/** The issuer's keys: fetched (first fetch awaited, failures tolerated) or read from a file. */
export async function keySource(
  config: Config,
  log: Logger,
  metrics: Metrics,
): Promise<KeySource | undefined> {
  const jwt = config.auth.jwt;
  if (jwt.jwksFile !== undefined) return FileJwks.load(jwt.jwksFile);
  if (jwt.jwksUrl === undefined) return undefined;
  const remote = new RemoteJwks({
    url: jwt.jwksUrl,
    timeoutMs: jwt.jwksTimeoutMs,
    cooldownMs: jwt.jwksCooldownMs,
    refreshIntervalMs: jwt.jwksRefreshIntervalMs,
    onFetch: (result, detail) => {
      metrics.jwksFetches.inc({ result });
      if (result === 'ok') log.info({ url: jwt.jwksUrl, keys: detail.keys }, 'JWKS fetched');
      else log.warn({ url: jwt.jwksUrl, err: detail.error }, 'JWKS fetch failed; cached keys kept');
    },
  });
  await remote.start();
  return remote;
}

/** The algorithms a token may use: configured, or every asymmetric one (plus HS* with a secret). */
export function allowedAlgorithms(config: Config): string[] {
  const jwt = config.auth.jwt;
  if (jwt.algorithms !== undefined) return [...jwt.algorithms];
  return jwt.hmacSecret === undefined
    ? [...DEFAULT_JWT_ALGORITHMS]
    : [...DEFAULT_JWT_ALGORITHMS, ...HMAC_ALGORITHMS];
}

export function createAuthenticator(
  config: Config,
  resource: string,
  keys: KeySource | undefined,
  revocations: Revocations,
  store: Store,
  metrics: Metrics,
): Authenticator {
  const { jwt, dpop } = config.auth;
  // Label children bound once: the hot path only increments.
  const hits = metrics.tokenVerifications.labels('hit');
  const misses = metrics.tokenVerifications.labels('miss');
  const gatewayAudiences = [resource, ...jwt.audiences];
  const verifier = new TokenVerifier({
    issuer: jwt.issuer as string,
    audiences: [
      ...gatewayAudiences,
      ...Object.keys(config.servers).map((name) => serverResource(resource, name)),
    ],
    algorithms: allowedAlgorithms(config),
    clockSkewMs: jwt.clockSkewMs,
    maxLifetimeMs: jwt.maxLifetimeMs,
    requiredClaims: jwt.requiredClaims,
    tenantClaim: jwt.tenantClaim,
    defaultTenant: jwt.defaultTenant,
    maxTokenBytes: jwt.maxTokenBytes,
    cacheMaxEntries: jwt.cacheMaxEntries,
    keys,
    hmacSecret: jwt.hmacSecret,
    onVerify: (hit) => (hit ? hits : misses).inc(),
  });
  return new Authenticator({
    verifier,
    revocations,
    dpop: {
      algorithms: dpop.algorithms,
      maxAgeMs: dpop.maxAgeMs,
      clockSkewMs: jwt.clockSkewMs,
      required: dpop.required,
    },
    claimOnce: (key, ttlMs) => store.setIfAbsent(key, '1', ttlMs),
    resource,
    gatewayAudiences,
    requiredScopes: config.auth.requiredScopes,
    failClosed: config.auth.revocation.failClosed,
    onUnchecked: () => metrics.revocationUnchecked.inc(),
  });
}

export function resourceInfoFor(config: Config, resource: string): ResourceInfo {
  const { auth } = config;
  const serverScopes = new Map(
    Object.entries(config.servers).map(([name, s]) => [name, s.requiredScopes]),
  );
  return {
    resource,
    authorizationServers:
      auth.authorizationServers.length > 0
        ? auth.authorizationServers
        : auth.jwt.issuer === undefined
          ? []
          : [auth.jwt.issuer],
    scopesSupported: auth.requiredScopes,
    dpopAlgorithms: auth.dpop.algorithms,
    dpopRequired: auth.dpop.required,
    certificateBound: config.listen.tls?.clientCa !== undefined,
    servers: serverScopes,
  };
}
