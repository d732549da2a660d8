/**
 * Prometheus metrics, in one registry per gateway (served at /metrics on the
 * admin listener). Counters are created once here; the hot path only calls
 * `inc` on them.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  readonly registry: Registry;
  readonly authRefusals: Counter<'code' | 'reason'>;
  readonly tokenVerifications: Counter<'result'>;
  readonly jwksFetches: Counter<'result'>;
  readonly revocationUnchecked: Counter;
  readonly storeHealthy: Gauge;
  readonly credentialsIssued: Counter<'server' | 'mode' | 'result'>;
  readonly crashLoops: Counter<'server'>;
  readonly upstreamProcesses: Gauge<'server'>;
  /** Policy decisions other than a plain allow; `decision` is deny, replace, drop or shadow. */
  readonly policyDecisions: Counter<'server' | 'rule' | 'decision'>;
  readonly rateLimited: Counter<'limit'>;
  readonly rateLimitStoreErrors: Counter<'outcome'>;
  /** Configuration reloads, by result: `ok` (the new policy is in force) or `failed` (kept the old one). */
  readonly configReloads: Counter<'result'>;
  /** 1 when the last reload succeeded (or none was tried), 0 while the file on disk is refused. */
  readonly configLastReloadSuccessful: Gauge;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  // prom-client's own names begin with `process_` and `nodejs_`: the prefix is the product's
  // alone (`portcullis_process_cpu_seconds_total`, not `portcullis_process_process_…`).
  collectDefaultMetrics({ register: registry, prefix: 'portcullis_' });
  return {
    registry,
    authRefusals: new Counter({
      name: 'portcullis_auth_refusals_total',
      help: 'Requests refused at authentication, by error code and reason.',
      labelNames: ['code', 'reason'],
      registers: [registry],
    }),
    tokenVerifications: new Counter({
      name: 'portcullis_token_verifications_total',
      help: 'Token checks, by result: cache "hit" (no crypto, no network) or "miss" (verified).',
      labelNames: ['result'],
      registers: [registry],
    }),
    jwksFetches: new Counter({
      name: 'portcullis_jwks_fetches_total',
      help: 'JWKS fetches from the issuer, by result.',
      labelNames: ['result'],
      registers: [registry],
    }),
    revocationUnchecked: new Counter({
      name: 'portcullis_revocation_unchecked_total',
      help: 'Requests let through without a revocation check while the store was unavailable (failClosed: false).',
      registers: [registry],
    }),
    storeHealthy: new Gauge({
      name: 'portcullis_store_healthy',
      help: '1 while the shared store answers and revocations are loaded, else 0.',
      registers: [registry],
    }),
    credentialsIssued: new Counter({
      name: 'portcullis_upstream_credentials_total',
      help: 'Upstream credentials obtained (minted or exchanged), by server, mode and result.',
      labelNames: ['server', 'mode', 'result'],
      registers: [registry],
    }),
    policyDecisions: new Counter({
      name: 'portcullis_policy_decisions_total',
      help: 'Policy decisions that were not a plain allow, by server, rule and decision (deny, replace, drop; shadow: a shadow rule would have denied, replaced or dropped).',
      labelNames: ['server', 'rule', 'decision'],
      registers: [registry],
    }),
    rateLimited: new Counter({
      name: 'portcullis_rate_limited_total',
      help: 'Requests refused over a rate limit, by limit (tenant, subject, tool, concurrency).',
      labelNames: ['limit'],
      registers: [registry],
    }),
    rateLimitStoreErrors: new Counter({
      name: 'portcullis_rate_limit_store_errors_total',
      help: 'Requests the shared store could not count against their rate limits, by outcome (allowed or refused, per rateLimits.onStoreDown).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    configReloads: new Counter({
      name: 'portcullis_config_reloads_total',
      help: 'Configuration reloads (SIGHUP, file change, API), by result: ok (new policy in force) or failed (the running one kept).',
      labelNames: ['result'],
      registers: [registry],
    }),
    configLastReloadSuccessful: new Gauge({
      name: 'portcullis_config_last_reload_successful',
      help: '1 when the last configuration reload succeeded or none was tried; 0 while the file on disk is refused.',
      registers: [registry],
    }),
    crashLoops: new Counter({
      name: 'portcullis_upstream_crash_loops_total',
      help: 'Times a stdio or legacy HTTP+SSE server was found crash-looping (new sessions refused for a backoff).',
      labelNames: ['server'],
      registers: [registry],
    }),
    upstreamProcesses: new Gauge({
      name: 'portcullis_upstream_channels',
      help: 'Open channels (stdio processes, legacy HTTP+SSE connections) per server.',
      labelNames: ['server'],
      registers: [registry],
    }),
  };
}
