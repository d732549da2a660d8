/**
 * The Redis limiters: one Lua script per operation, so each is atomic across
 * replicas and costs one round trip (ioredis `defineCommand`: EVALSHA, and
 * EVAL when the server does not know the script yet). Time is the Redis
 * server's (`TIME`), never a replica's, so replicas with skewed clocks agree;
 * it is in whole µs, so scores and timestamps stay exact in a double.
 *
 * Layout under the store's key prefix:
 *  - `rate:<key>`: a hash, `t` tokens and `at` µs of the last charge, with a
 *    PEXPIRE of its time to full plus `BUCKET_TTL_MARGIN_MS`: an idle bucket
 *    vanishes once it is full again, which is what a missing one means;
 *  - `leases:<key>`: a sorted set of lease ids scored by expiry µs, with a
 *    PEXPIRE of its last lease's expiry plus `LEASE_TTL_MARGIN_MS`.
 *
 * Numbers written by the scripts go through `%.17g`: Redis turns a Lua number
 * into a string with `%.14g`, which would round µs timestamps and tokens.
 *
 * Redis Cluster is not supported, like the store (one `Redis` connection): a
 * takeAll's keys hash to different slots. Putting one hash tag in every key of
 * a call (`{tenant}…`) would make it work there; the caller's keys are used as
 * given. Needs Redis ≥ 5 (scripts replicate their effects, so TIME is allowed
 * before writes).
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DEFAULT_STORE_KEY_PREFIX, StoreUnavailableError } from '../store/index.js';
import {
  BUCKET_TTL_MARGIN_MS,
  LEASE_TTL_MARGIN_MS,
  RETRY_NEVER,
  checkAcquire,
  checkLeaseTtl,
  checkTakes,
  single,
  summarize,
  type AcquireResult,
  type Bucket,
  type BucketTake,
  type ConcurrencyLimiter,
  type Lease,
  type RateLimiter,
  type TakeAllResult,
  type TakeResult,
} from './index.js';

const RATE_KEY_SPACE = 'rate:';
const LEASE_KEY_SPACE = 'leases:';
/** The script's "never" (Lua has no JSON-safe Infinity); read back as `RETRY_NEVER`. */
const LUA_RETRY_NEVER = -1;

const NOW_FROM_SERVER = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
`;
/** Tests only: the time, µs, as the last ARGV, so a fake clock drives the script. */
const NOW_FROM_ARGV = `
local now = tonumber(ARGV[#ARGV])
`;

/**
 * takeAll. KEYS: the buckets; ARGV: capacity, refillPerSecond, cost of each,
 * in order. Decides every bucket first (refilled, index.ts `refilled`), then
 * writes all of them or, when any refused, none. Reply: 1 or 0 (allowed),
 * then per bucket its tokens left (a `%.17g` string; what it holds when the
 * call was refused) and its retry ms (0: held its cost; -1: never can).
 */
const TAKE_ALL = `
local n = #KEYS
local have, left, retry = {}, {}, {}
local refused = false
for i = 1, n do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'at')
  local tokens = capacity
  if state[1] and state[2] then
    local at = tonumber(state[2])
    local elapsed = 0
    if now > at then elapsed = now - at end
    tokens = tonumber(state[1]) + (elapsed * rate) / 1000000
    if not (tokens < capacity) then tokens = capacity end
  end
  have[i] = tokens
  if tokens >= cost then
    left[i] = tokens - cost
    retry[i] = 0
  else
    refused = true
    if cost > capacity then
      retry[i] = ${LUA_RETRY_NEVER}
    else
      retry[i] = math.max(1, math.ceil(((cost - tokens) * 1000) / rate))
    end
  end
end
if not refused then
  for i = 1, n do
    local capacity = tonumber(ARGV[3 * i - 2])
    local rate = tonumber(ARGV[3 * i - 1])
    if left[i] < capacity then
      redis.call('HSET', KEYS[i], 't', string.format('%.17g', left[i]), 'at', string.format('%.17g', now))
      local ttl = math.ceil(((capacity - left[i]) * 1000) / rate) + ${BUCKET_TTL_MARGIN_MS}
      redis.call('PEXPIRE', KEYS[i], string.format('%.17g', ttl))
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
-- Refused, nothing was charged: every bucket answers what it holds.
local reply = { refused and 0 or 1 }
if refused then left = have end
for i = 1, n do
  reply[2 * i] = string.format('%.17g', left[i])
  reply[2 * i + 1] = retry[i]
end
return reply
`;

/** Keeps the set's key alive until its last lease expires. */
const EXPIRE_LEASES = `
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl = math.ceil((tonumber(last[2]) - now) / 1000) + ${LEASE_TTL_MARGIN_MS}
redis.call('PEXPIRE', KEYS[1], string.format('%.17g', ttl))
`;

/**
 * acquire. KEYS[1]: the lease set; ARGV: limit, lease ttl ms, lease id.
 * Drops expired leases, refuses at the limit with the ms until the earliest
 * lease expires, else adds the lease. Reply: {1, 0} or {0, retry ms}.
 */
const ACQUIRE =
  `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return { 0, math.max(1, math.ceil((tonumber(first[2]) - now) / 1000)) }
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[2]) * 1000), ARGV[3])
` +
  EXPIRE_LEASES +
  `
return { 1, 0 }
`;

/**
 * renew. KEYS[1]: the lease set; ARGV: lease id, lease ttl ms. A lease that
 * is gone or expired stays gone (reply 0): its slot may be someone else's.
 * Else its expiry moves to ttl from now (reply 1).
 */
const RENEW =
  `
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[2]) * 1000), ARGV[1])
` +
  EXPIRE_LEASES +
  `
return 1
`;

const SCRIPTS = {
  portcullisRateTakeAll: NOW_FROM_SERVER + TAKE_ALL,
  portcullisRateTakeAllAt: NOW_FROM_ARGV + TAKE_ALL,
  portcullisLeaseAcquire: NOW_FROM_SERVER + ACQUIRE,
  portcullisLeaseRenew: NOW_FROM_SERVER + RENEW,
} as const;

type ScriptName = keyof typeof SCRIPTS;
/** A defined command: number of keys, the keys, then ARGV. */
type ScriptCall = (...args: Array<string | number>) => Promise<unknown>;

export interface RedisLimiterInit {
  /**
   * A connection whose commands time out (`commandTimeout`), such as the
   * store's own (`RedisStore.connection`): the failure contract rests on it.
   */
  readonly client: Redis;
  /** The store's key prefix; `DEFAULT_STORE_KEY_PREFIX` unless said. */
  readonly keyPrefix?: string;
  /**
   * Tests only: take the time (ms) from this clock instead of Redis's TIME,
   * to compare with the memory limiter step by step. Replicas must not set it.
   */
  readonly unsafeClockForTests?: () => number;
}

/** A `RateLimiter` shared by every replica on the same Redis and key prefix. */
export class RedisRateLimiter implements RateLimiter {
  readonly kind = 'redis' as const;
  private readonly prefix: string;
  private readonly takeAllScript: ScriptCall;
  private readonly clock: (() => number) | undefined;

  constructor(init: RedisLimiterInit) {
    checkClient(init.client);
    this.prefix = (init.keyPrefix ?? DEFAULT_STORE_KEY_PREFIX) + RATE_KEY_SPACE;
    this.clock = init.unsafeClockForTests;
    this.takeAllScript = script(
      init.client,
      this.clock ? 'portcullisRateTakeAllAt' : 'portcullisRateTakeAll',
    );
  }

  async take(key: string, bucket: Bucket, cost = 1): Promise<TakeResult> {
    const { capacity, refillPerSecond } = bucket; // not a spread: a BucketTake's own key must not win
    return single(await this.takeAll([{ key, capacity, refillPerSecond, cost }]));
  }

  async takeAll(takes: readonly BucketTake[]): Promise<TakeAllResult> {
    checkTakes(takes);
    const args: Array<string | number> = [takes.length];
    for (const t of takes) args.push(this.prefix + t.key);
    // String(n) is the shortest form that reads back as the same double (Lua's tonumber).
    for (const t of takes)
      args.push(String(t.capacity), String(t.refillPerSecond), String(t.cost ?? 1));
    if (this.clock) args.push(String(Math.floor(this.clock() * 1000)));
    const reply = await run('rate-limit script', () => this.takeAllScript(...args));
    if (!Array.isArray(reply) || reply.length !== 1 + 2 * takes.length) {
      throw new StoreUnavailableError('redis rate-limit script answered malformed');
    }
    const remaining: number[] = [];
    const retry: number[] = [];
    for (let i = 0; i < takes.length; i++) {
      remaining.push(Number(reply[1 + 2 * i]));
      const r = Number(reply[2 + 2 * i]);
      retry.push(r === LUA_RETRY_NEVER ? RETRY_NEVER : r);
    }
    return summarize(takes, remaining, retry);
  }
}

/** A `ConcurrencyLimiter` shared by every replica on the same Redis and key prefix. */
export class RedisConcurrencyLimiter implements ConcurrencyLimiter {
  readonly kind = 'redis' as const;
  private readonly prefix: string;
  private readonly client: Redis;
  private readonly acquireScript: ScriptCall;
  private readonly renewScript: ScriptCall;
  /** Unique across replicas, so ids never collide in a shared set. */
  private readonly idPrefix = randomBytes(8).toString('hex');
  private issued = 0;

  constructor(init: Omit<RedisLimiterInit, 'unsafeClockForTests'>) {
    checkClient(init.client);
    this.client = init.client;
    this.prefix = (init.keyPrefix ?? DEFAULT_STORE_KEY_PREFIX) + LEASE_KEY_SPACE;
    this.acquireScript = script(init.client, 'portcullisLeaseAcquire');
    this.renewScript = script(init.client, 'portcullisLeaseRenew');
  }

  async acquire(key: string, limit: number, leaseTtlMs: number): Promise<AcquireResult> {
    const ttlMs = checkAcquire(limit, leaseTtlMs);
    const redisKey = this.prefix + key;
    const id = `${this.idPrefix}:${++this.issued}`;
    const reply = await run('lease script', () =>
      this.acquireScript(1, redisKey, String(limit), String(ttlMs), id),
    );
    if (!Array.isArray(reply) || typeof reply[0] !== 'number' || typeof reply[1] !== 'number') {
      throw new StoreUnavailableError('redis lease script answered malformed');
    }
    if (reply[0] !== 1) return { allowed: false, retryAfterMs: reply[1] };
    return { allowed: true, lease: new RedisLease(this, redisKey, id, ttlMs), retryAfterMs: 0 };
  }

  /** Removes lease `id` from the set at `redisKey` (RedisLease's). */
  async drop(redisKey: string, id: string): Promise<void> {
    await run('ZREM', () => this.client.zrem(redisKey, id));
  }

  /** Moves lease `id`'s expiry to `ttlMs` from now; false when it was gone (RedisLease's). */
  async extend(redisKey: string, id: string, ttlMs: number): Promise<boolean> {
    const reply = await run('lease script', () => this.renewScript(1, redisKey, id, String(ttlMs)));
    return reply === 1;
  }
}

class RedisLease implements Lease {
  private released = false;
  constructor(
    private readonly limiter: RedisConcurrencyLimiter,
    private readonly redisKey: string,
    readonly id: string,
    private readonly ttlMs: number,
  ) {}

  async release(): Promise<void> {
    // Set first: a second call sends nothing, even while the first is in flight.
    if (this.released) return;
    this.released = true;
    await this.limiter.drop(this.redisKey, this.id);
  }

  async renew(leaseTtlMs?: number): Promise<boolean> {
    const ttlMs = leaseTtlMs === undefined ? this.ttlMs : checkLeaseTtl(leaseTtlMs);
    if (this.released) return false;
    return this.limiter.extend(this.redisKey, this.id, ttlMs);
  }
}

/** The command `name` on `client`, defined on first use (a store's connection serves many limiters). */
function script(client: Redis, name: ScriptName): ScriptCall {
  const commands = client as unknown as Record<string, ScriptCall | undefined>;
  if (typeof commands[name] !== 'function') client.defineCommand(name, { lua: SCRIPTS[name] });
  const call = commands[name];
  if (typeof call !== 'function') throw new TypeError(`ioredis did not define ${name}`);
  return call.bind(client);
}

function checkClient(client: Redis): void {
  if (typeof client.options.commandTimeout !== 'number') {
    throw new TypeError(
      'a Redis limiter needs a client with a commandTimeout: without one a call can hang',
    );
  }
}

async function run<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    throw new StoreUnavailableError(`redis ${what} failed: ${detail}`, { cause: err });
  }
}
