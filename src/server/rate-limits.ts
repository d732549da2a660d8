/**
 * Rate limits and concurrency per tenant, subject and tool
 * (`rateLimits`, `tenants.<t>.rateLimits`), on the limiters of src/limits:
 * token buckets and leases in the shared store, so a limit holds across
 * every replica (Redis), or in this process (the memory store).
 *
 * What one POST is charged, in one atomic take (all or nothing: a call
 * refused by its tool's bucket leaves the tenant's untouched):
 * - the tenant's bucket and the subject's (tenant and `sub` together), one
 *   token per request in the body (notifications and answers are free);
 * - the bucket of each configured tool (`<server>/<tool>`, by the name the
 *   agent calls), one token per call of it.
 * Then, with `concurrency`, a lease on the tenant's in-flight count, held
 * until the response is over (a stream holds it while it is open).
 *
 * Charged before the policy decides, so refused calls count too: a client
 * hammering a denied tool is limited like any other. A refusal is 429 with
 * `Retry-After` (seconds, rounded up) and `PORTCULLIS_ERR_RATE_LIMITED`
 * naming the limit. When the store cannot answer, `onStoreDown` says: `allow`
 * (the default: an outage of the shared store must not take every tenant
 * down) or `refuse` (503, `PORTCULLIS_ERR_RATE_LIMIT_UNAVAILABLE`).
 *
 * A tenant's settings replace the top-level ones key by key (`tenant`,
 * `subject`, `concurrency`); its `tools` are merged with the top-level
 * ones, its own winning. Nothing configured, nothing is asked of the store.
 */
import type { Principal } from '../auth/principal.js';
import type { Config, RateLimitSettings } from '../config/schema.js';
import { GatewayError } from '../errors/index.js';
import type { Frame } from '../mcp/frame.js';
import {
  MAX_TAKE_ALL_KEYS,
  RETRY_NEVER,
  type BucketTake,
  type ConcurrencyLimiter,
  type Lease,
  type RateLimiter,
} from '../limits/index.js';
import { StoreUnavailableError } from '../store/index.js';

/** What the gateway does with a request when the store holding the limits cannot answer. */
export type OnStoreDown = 'allow' | 'refuse';

interface Effective {
  readonly tenant?: { capacity: number; refillPerSecond: number };
  readonly subject?: { capacity: number; refillPerSecond: number };
  readonly tools: ReadonlyMap<string, { capacity: number; refillPerSecond: number }>;
  readonly concurrency?: number;
}

/** What a request holds once admitted: the lease to give back when its response ends. */
export interface Admission {
  release(): void;
}

const NOTHING_HELD: Admission = Object.freeze({ release: () => undefined });

export interface RateLimits {
  /** False when nothing is configured: `admit` need not be called. */
  readonly enabled: boolean;
  /** Charges the request; the refusal to answer it with, or what it holds. */
  admit(
    principal: Principal,
    server: string,
    frames: readonly Frame[],
  ): Promise<{ refused: GatewayError } | { admitted: Admission }>;
}

export interface RateLimitDeps {
  readonly rate: RateLimiter;
  readonly concurrency: ConcurrencyLimiter;
  /** Told of every refusal and every store failure, for the log and the metrics. */
  readonly onEvent?: (event: RateLimitEvent) => void;
}

export type RateLimitEvent =
  | { kind: 'refused'; limit: string; tenant: string }
  | { kind: 'store-down'; tenant: string; admitted: boolean; err: unknown };

const enc = encodeURIComponent;

function effective(
  top: RateLimitSettings | undefined,
  own: RateLimitSettings | undefined,
): Effective {
  const tools = new Map(Object.entries({ ...(top?.tools ?? {}), ...(own?.tools ?? {}) }));
  const tenant = own?.tenant ?? top?.tenant;
  const subject = own?.subject ?? top?.subject;
  const concurrency = own?.concurrency ?? top?.concurrency;
  return {
    tools,
    ...(tenant ? { tenant } : {}),
    ...(subject ? { subject } : {}),
    ...(concurrency !== undefined ? { concurrency } : {}),
  };
}

const isEmpty = (e: Effective): boolean =>
  !e.tenant && !e.subject && e.tools.size === 0 && e.concurrency === undefined;

const retrySeconds = (ms: number): number => Math.max(1, Math.ceil(ms / 1000));

export function compileRateLimits(
  config: Pick<Config, 'rateLimits' | 'tenants'>,
  deps: RateLimitDeps,
): RateLimits {
  const top = config.rateLimits;
  const onStoreDown: OnStoreDown = top?.onStoreDown ?? 'allow';
  const leaseMs = top?.concurrencyLeaseMs ?? 300_000;
  const fallback = effective(top, undefined);
  const perTenant = new Map(
    Object.entries(config.tenants ?? {}).map(([name, t]) => [name, effective(top, t.rateLimits)]),
  );
  const enabled = !isEmpty(fallback) || [...perTenant.values()].some((e) => !isEmpty(e));

  const storeDown = (principal: Principal, err: unknown) => {
    const admitted = onStoreDown === 'allow';
    deps.onEvent?.({ kind: 'store-down', tenant: principal.tenant, admitted, err });
    return admitted
      ? { admitted: NOTHING_HELD }
      : {
          refused: new GatewayError('PORTCULLIS_ERR_RATE_LIMIT_UNAVAILABLE', undefined, {
            retryAfterSeconds: 1,
          }),
        };
  };

  return {
    enabled,
    async admit(principal, server, frames) {
      const limits = perTenant.get(principal.tenant) ?? fallback;
      const t = enc(principal.tenant);
      const takes: BucketTake[] = [];
      const limitOf = new Map<string, string>();
      let requests = 0;
      const toolCalls = new Map<string, number>();
      for (const f of frames) {
        if (f.kind !== 'request') continue;
        requests++;
        if (f.method === 'tools/call' && f.target !== undefined) {
          const name = `${server}/${f.target}`;
          if (limits.tools.has(name)) toolCalls.set(name, (toolCalls.get(name) ?? 0) + 1);
        }
      }
      if (requests > 0 && limits.tenant) {
        const key = `tenant:${t}`;
        takes.push({ key, ...limits.tenant, cost: requests, group: principal.tenant });
        limitOf.set(key, 'tenant');
      }
      if (requests > 0 && limits.subject) {
        const key = `subject:${t}:${enc(principal.subject)}`;
        takes.push({ key, ...limits.subject, cost: requests, group: principal.tenant });
        limitOf.set(key, 'subject');
      }
      for (const [name, cost] of toolCalls) {
        const key = `tool:${t}:${enc(name)}`;
        takes.push({
          key,
          ...(limits.tools.get(name) as { capacity: number; refillPerSecond: number }),
          cost,
          group: principal.tenant,
        });
        limitOf.set(key, `tools.${name}`);
      }
      try {
        // More distinct buckets than one take holds (a batch calling many limited tools):
        // taken in turns, each all or nothing.
        for (let i = 0; i < takes.length; i += MAX_TAKE_ALL_KEYS) {
          const result = await deps.rate.takeAll(takes.slice(i, i + MAX_TAKE_ALL_KEYS));
          if (result.allowed) continue;
          const limit = limitOf.get(result.refusedBy[0] ?? '') ?? 'tenant';
          deps.onEvent?.({ kind: 'refused', limit, tenant: principal.tenant });
          const never = result.retryAfterMs === RETRY_NEVER;
          return {
            refused: new GatewayError(
              'PORTCULLIS_ERR_RATE_LIMITED',
              never
                ? `the ${limit} limit can never admit this request (it costs more than the bucket holds)`
                : `the ${limit} limit is used up`,
              { limit, ...(never ? {} : { retryAfterSeconds: retrySeconds(result.retryAfterMs) }) },
            ),
          };
        }
        if (limits.concurrency === undefined) return { admitted: NOTHING_HELD };
        const got = await deps.concurrency.acquire(`conc:${t}`, limits.concurrency, leaseMs);
        if (!got.allowed) {
          deps.onEvent?.({ kind: 'refused', limit: 'concurrency', tenant: principal.tenant });
          return {
            refused: new GatewayError(
              'PORTCULLIS_ERR_RATE_LIMITED',
              `the concurrency limit (${limits.concurrency} requests in flight) is reached`,
              {
                limit: 'concurrency',
                retryAfterSeconds: retrySeconds(Math.min(got.retryAfterMs, 5_000)),
              },
            ),
          };
        }
        const lease: Lease = got.lease;
        let released = false;
        return {
          admitted: {
            release() {
              if (released) return;
              released = true;
              // A release that fails frees the slot when the lease expires.
              lease.release().catch(() => undefined);
            },
          },
        };
      } catch (err) {
        if (err instanceof StoreUnavailableError) return storeDown(principal, err);
        throw err;
      }
    },
  };
}
