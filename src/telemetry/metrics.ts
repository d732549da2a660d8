/**
 * Prometheus metrics, in one registry per gateway (served at /metrics on the
 * admin listener). Counters are created once here; the hot path only calls
 * `inc` on them.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
  /** Client requests, by server, tenant, method and decision (allow, deny, shadow-deny, refuse). */
  readonly requests: Counter<'server' | 'tenant' | 'method' | 'decision'>;
  /** Time the gateway itself spent on a call (its whole time less the upstream's). */
  readonly gatewayDuration: Histogram<'server' | 'method'>;
  /** Time from sending a call upstream to its answer's start. */
  readonly upstreamDuration: Histogram<'server' | 'method'>;
  readonly activeSessions: Gauge;
  readonly activeStreams: Gauge;
  readonly storeOperations: Counter;
  /** What the active-session and stream gauges read at each scrape (set by the gateway). */
  readonly live: {
    sessions?: () => number;
    streams?: () => number;
    storeOperations?: () => number;
  };
  /** Calls that failed upstream (unreachable, timed out, a 5xx, an oversized answer), by server and code. */
  readonly upstreamErrors: Counter<'server' | 'code'>;
  /** Audit records per sink: `written` (the destination has them) or `failed` (a delivery attempt failed; retried). */
  readonly auditRecords: Counter<'sink' | 'outcome'>;
  readonly auditQueued: Gauge<'sink'>;
  readonly auditSpoolBytes: Gauge<'sink'>;
  /** Shared-store operations that failed, by what asked (revocations, pins, rate limits, audit). */
  readonly storeErrors: Counter<'component'>;
}

/** Latency buckets in seconds: 0.5 ms to 30 s. */
const LATENCY_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

export function createMetrics(): Metrics {
  const registry = new Registry();
  const live: Metrics['live'] = {};
  // prom-client's own names begin with `process_` and `nodejs_`: the prefix is the product's
  // alone (`portcullis_process_cpu_seconds_total`, not `portcullis_process_process_…`).
  collectDefaultMetrics({ register: registry, prefix: 'portcullis_' });
  return {
    registry,
    live,
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
    requests: new Counter({
      name: 'portcullis_requests_total',
      help: 'Client JSON-RPC requests, by server, tenant, method and decision (allow, deny, shadow-deny, refuse). Labels hold configured or known values only; anything else is "other".',
      labelNames: ['server', 'tenant', 'method', 'decision'],
      registers: [registry],
    }),
    gatewayDuration: new Histogram({
      name: 'portcullis_gateway_duration_seconds',
      help: "Time the gateway spent on a call, the upstream's time excluded.",
      labelNames: ['server', 'method'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    upstreamDuration: new Histogram({
      name: 'portcullis_upstream_duration_seconds',
      help: 'Time from a call sent upstream to the start of its answer.',
      labelNames: ['server', 'method'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    activeSessions: new Gauge({
      name: 'portcullis_active_sessions',
      help: 'Open legacy-era MCP sessions on this replica.',
      registers: [registry],
      collect() {
        this.set(live.sessions?.() ?? 0);
      },
    }),
    activeStreams: new Gauge({
      name: 'portcullis_active_streams',
      help: 'Open SSE streams to clients on this replica.',
      registers: [registry],
      collect() {
        this.set(live.streams?.() ?? 0);
      },
    }),
    storeOperations: new Counter({
      name: 'portcullis_store_operations_total',
      help: 'Commands this replica sent to the shared store (Redis), or ran on the in-process one.',
      registers: [registry],
      collect() {
        // The store counts; a scrape reads its count.
        this.reset();
        this.inc(live.storeOperations?.() ?? 0);
      },
    }),
    upstreamErrors: new Counter({
      name: 'portcullis_upstream_errors_total',
      help: 'Calls that failed on the upstream side, by server and gateway error code.',
      labelNames: ['server', 'code'],
      registers: [registry],
    }),
    auditRecords: new Counter({
      name: 'portcullis_audit_records_total',
      help: 'Audit records per sink, by outcome: written (delivered) or failed (a delivery attempt failed and is retried).',
      labelNames: ['sink', 'outcome'],
      registers: [registry],
    }),
    auditQueued: new Gauge({
      name: 'portcullis_audit_queue_depth',
      help: 'Audit records a sink holds and has not delivered yet (memory and spool).',
      labelNames: ['sink'],
      registers: [registry],
    }),
    auditSpoolBytes: new Gauge({
      name: 'portcullis_audit_spool_bytes',
      help: "Bytes in a sink's on-disk spool.",
      labelNames: ['sink'],
      registers: [registry],
    }),
    storeErrors: new Counter({
      name: 'portcullis_store_errors_total',
      help: 'Shared-store operations that failed, by the component that asked.',
      labelNames: ['component'],
      registers: [registry],
    }),
  };
}
