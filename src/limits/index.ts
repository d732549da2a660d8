/**
 * Rate limits: token buckets keyed by arbitrary strings, and concurrency
 * leases, in memory for one gateway and on Redis for many replicas. The
 * engine knows nothing of tenants, tools or HTTP: callers name the keys,
 * size the buckets and turn a refusal into a status. A missing bucket is a
 * full one, which is why idle buckets may vanish (expire, be swept) at the
 * moment they are full and never earlier.
 *
 * A take, in order (both implementations, one arithmetic, below):
 *  1. refill: tokens + elapsed µs × refillPerSecond / 1e6, at most capacity;
 *     time never runs backwards for a bucket (a negative elapsed counts 0);
 *  2. decide every bucket of the call: it refuses when it holds fewer tokens
 *     than its cost;
 *  3. all or nothing: when any bucket refuses, none is charged or written;
 *     otherwise each is charged its cost and stored with the time of the take,
 *     unless it is full again (cost 0), which is the same as not stored.
 *
 * Failure contract (Redis): a call that gets no answer within the store's
 * command timeout rejects with `StoreUnavailableError`. Whether that admits
 * or refuses the request is the caller's policy, not this module's.
 */
import type { Store } from '../store/index.js';

/** How many buckets one `takeAll` may check at once (the Redis script takes them as KEYS). */
export const MAX_TAKE_ALL_KEYS = 8;
/** Added to a bucket's time-to-full for its Redis TTL, so the key never vanishes a moment early. */
export const BUCKET_TTL_MARGIN_MS = 1_000;
/** Added to a lease set's last expiry for its Redis TTL, for the same reason. */
export const LEASE_TTL_MARGIN_MS = 1_000;
/** Buckets the memory limiter holds at most; at the cap it drops full ones, never others. */
export const DEFAULT_MEMORY_MAX_BUCKETS = 100_000;
/**
 * Buckets one group (a tenant) may hold in the memory limiter: a tenth of the
 * table, so one tenant minting subjects fills its own share and not the rest.
 */
export const DEFAULT_MEMORY_MAX_BUCKETS_PER_GROUP = 10_000;
/** Leases the memory limiter holds at most; at the cap it drops expired ones, never live ones. */
export const DEFAULT_MEMORY_MAX_LEASES = 100_000;
/** A bucket must refill from empty within this (capacity / refillPerSecond); longer is a typo. */
export const MAX_BUCKET_FILL_SECONDS = 10 * 365 * 86_400;
/** The longest lease `acquire` or `renew` grants; work that runs longer renews. */
export const MAX_LEASE_TTL_MS = 86_400_000;
/** `retryAfterMs` of a bucket that can never hold the cost (cost > capacity): waiting won't help. */
export const RETRY_NEVER = Number.POSITIVE_INFINITY;

/** Size of one bucket: `capacity` tokens at most (the burst), refilled at `refillPerSecond`. */
export interface Bucket {
  readonly capacity: number;
  readonly refillPerSecond: number;
}

/** One bucket of a `takeAll`: its key, its size, and what this call costs (1 unless said). */
export interface BucketTake extends Bucket {
  readonly key: string;
  readonly cost?: number;
  /**
   * Whose share of a bounded table the bucket counts against (the tenant).
   * Only the memory limiter reads it; Redis bounds keys by memory and TTL.
   */
  readonly group?: string;
}

export interface TakeResult {
  readonly allowed: boolean;
  /** Tokens left: after the charge when allowed, untouched when refused. May be fractional. */
  readonly remaining: number;
  /** 0 when allowed; else ms until the bucket holds the cost, rounded up; `RETRY_NEVER` if it never can. */
  readonly retryAfterMs: number;
}

export interface TakeAllResult {
  /** True when every bucket held its cost and all were charged; false when none was. */
  readonly allowed: boolean;
  /** Keys of the buckets that refused, in the order asked; empty when allowed. */
  readonly refusedBy: readonly string[];
  /** 0 when allowed; else the largest `retryAfterMs` among the refusing buckets. */
  readonly retryAfterMs: number;
  /** Tokens left per bucket, in the order asked (see `TakeResult.remaining`). */
  readonly remaining: readonly number[];
}

export interface RateLimiter {
  readonly kind: 'memory' | 'redis';
  /** Takes `cost` tokens (default 1) from the bucket at `key`, if it holds them. */
  take(key: string, bucket: Bucket, cost?: number): Promise<TakeResult>;
  /**
   * Takes from up to `MAX_TAKE_ALL_KEYS` distinct buckets atomically: all are
   * charged or none is, so a refusal by one leaves the others untouched.
   */
  takeAll(takes: readonly BucketTake[]): Promise<TakeAllResult>;
}

/** A held slot of a concurrency limit. */
export interface Lease {
  readonly id: string;
  /** Frees the slot; idempotent. If it rejects (store down) the slot frees when the lease expires. */
  release(): Promise<void>;
  /**
   * Extends the lease to `leaseTtlMs` from now (default: the ttl it was
   * acquired with). Resolves false, and holds nothing, when the lease had
   * already expired or been released: its slot may be someone else's now.
   */
  renew(leaseTtlMs?: number): Promise<boolean>;
}

export type AcquireResult =
  | { readonly allowed: true; readonly lease: Lease; readonly retryAfterMs: 0 }
  | {
      readonly allowed: false;
      readonly lease?: undefined;
      /** ms until the earliest lease at this key expires: an upper bound, releases come sooner. */
      readonly retryAfterMs: number;
    };

export interface ConcurrencyLimiter {
  readonly kind: 'memory' | 'redis';
  /**
   * Takes one of `limit` slots at `key` for `leaseTtlMs`. A lease that is
   * neither released nor renewed frees its slot when it expires (a crashed
   * replica's too), so `leaseTtlMs` must outlast the work or be renewed.
   */
  acquire(key: string, limit: number, leaseTtlMs: number): Promise<AcquireResult>;
}

export interface Limiters {
  readonly rate: RateLimiter;
  readonly concurrency: ConcurrencyLimiter;
}

/**
 * The limiters that match `store`: in memory for a memory store, on the
 * store's own Redis connection (prefix, timeouts and all) for a Redis store.
 */
export async function limitersFor(store: Store): Promise<Limiters> {
  // Loaded on demand, like the stores: the implementations import this module.
  switch (store.kind) {
    case 'memory': {
      const { MemoryRateLimiter, MemoryConcurrencyLimiter } = await import('./memory.js');
      return { rate: new MemoryRateLimiter(), concurrency: new MemoryConcurrencyLimiter() };
    }
    case 'redis': {
      const [{ RedisStore }, { RedisRateLimiter, RedisConcurrencyLimiter }] = await Promise.all([
        import('../store/redis.js'),
        import('./redis.js'),
      ]);
      if (!(store instanceof RedisStore))
        throw new TypeError('a redis store that is no RedisStore');
      return {
        rate: new RedisRateLimiter(store.connection),
        concurrency: new RedisConcurrencyLimiter(store.connection),
      };
    }
  }
}

// The arithmetic. The Lua scripts in ./redis.ts repeat it operation for
// operation (IEEE doubles in both, same order, same rounding), so the two
// implementations answer alike; test/rate-limit-redis.test.ts compares them.

/** Tokens in a bucket at `nowUs` that held `tokens` at `atUs`. */
export function refilled(
  tokens: number,
  atUs: number,
  nowUs: number,
  capacity: number,
  refillPerSecond: number,
): number {
  const elapsedUs = nowUs > atUs ? nowUs - atUs : 0;
  const t = tokens + (elapsedUs * refillPerSecond) / 1e6;
  return t < capacity ? t : capacity;
}

/** ms until a bucket holding `tokens` (< cost) holds `cost`; `RETRY_NEVER` when cost > capacity. */
export function retryAfterMs(
  tokens: number,
  cost: number,
  capacity: number,
  refillPerSecond: number,
): number {
  if (cost > capacity) return RETRY_NEVER;
  return Math.max(1, Math.ceil(((cost - tokens) * 1000) / refillPerSecond));
}

/** ms until a bucket holding `tokens` is full, rounded up. */
export function fullInMs(tokens: number, capacity: number, refillPerSecond: number): number {
  return Math.ceil(((capacity - tokens) * 1000) / refillPerSecond);
}

/** Checks a call before it reaches either implementation; throws RangeError naming the field. */
export function checkTakes(takes: readonly BucketTake[]): void {
  if (takes.length === 0 || takes.length > MAX_TAKE_ALL_KEYS) {
    throw new RangeError(
      `takeAll checks 1 to ${MAX_TAKE_ALL_KEYS} buckets, got ${takes.length} buckets`,
    );
  }
  const keys = new Set<string>();
  for (const t of takes) {
    // A key twice would be decided twice against one balance: refuse, don't guess a sum.
    if (keys.has(t.key)) throw new RangeError(`takeAll names bucket ${t.key} twice`);
    keys.add(t.key);
    positive('capacity', t.capacity);
    positive('refillPerSecond', t.refillPerSecond);
    // Keeps every time the scripts compute a whole number Redis can print (and so PEXPIRE).
    if (t.capacity / t.refillPerSecond > MAX_BUCKET_FILL_SECONDS) {
      throw new RangeError(
        `bucket ${t.key} takes over ${MAX_BUCKET_FILL_SECONDS} s to refill (capacity / refillPerSecond)`,
      );
    }
    const cost = t.cost ?? 1;
    if (!(cost >= 0 && Number.isFinite(cost))) {
      throw new RangeError(`bucket cost must be a finite number >= 0, got ${cost}`);
    }
  }
}

/** Checks `acquire`'s numbers; returns the ttl in whole ms (rounded up), as both sides store it. */
export function checkAcquire(limit: number, leaseTtlMs: number): number {
  if (!(Number.isSafeInteger(limit) && limit > 0)) {
    throw new RangeError(`concurrency limit must be a positive integer, got ${limit}`);
  }
  return checkLeaseTtl(leaseTtlMs);
}

/** Checks a lease ttl; returns it in whole ms, rounded up. */
export function checkLeaseTtl(leaseTtlMs: number): number {
  positive('leaseTtlMs', leaseTtlMs);
  if (leaseTtlMs > MAX_LEASE_TTL_MS) {
    throw new RangeError(`leaseTtlMs must be at most ${MAX_LEASE_TTL_MS}, got ${leaseTtlMs}`);
  }
  return Math.ceil(leaseTtlMs);
}

function positive(name: string, n: number): void {
  if (!(n > 0 && Number.isFinite(n))) {
    throw new RangeError(`${name} must be a positive finite number, got ${n}`);
  }
}

/** Folds per-bucket answers into one; `retry[i]` is 0 for a bucket that held its cost. */
export function summarize(
  takes: readonly BucketTake[],
  remaining: readonly number[],
  retry: readonly number[],
): TakeAllResult {
  const refusedBy: string[] = [];
  let wait = 0;
  takes.forEach((t, i) => {
    const r = retry[i] ?? 0;
    if (r === 0) return;
    refusedBy.push(t.key);
    if (r > wait) wait = r;
  });
  return { allowed: refusedBy.length === 0, refusedBy, retryAfterMs: wait, remaining };
}

/** A `take` answered from its one-bucket `takeAll`. */
export function single(result: TakeAllResult): TakeResult {
  return {
    allowed: result.allowed,
    remaining: result.remaining[0] ?? 0,
    retryAfterMs: result.retryAfterMs,
  };
}
