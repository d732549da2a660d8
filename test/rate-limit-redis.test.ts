/**
 * The Redis limiters against a real Redis (127.0.0.1:6379, required: a
 * missing one fails these tests): the same answers as the memory limiters
 * step by step on a fake clock and in bursts on the server's, atomic across
 * two replicas' connections, all-or-nothing, keys that expire once they mean
 * nothing, leases shared by replicas, and StoreUnavailableError within the
 * command timeout when Redis is gone or frozen.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import {
  BUCKET_TTL_MARGIN_MS,
  LEASE_TTL_MARGIN_MS,
  limitersFor,
  type Bucket,
  type BucketTake,
  type RateLimiter,
} from '../src/limits/index.js';
import { MemoryRateLimiter } from '../src/limits/memory.js';
import { RedisConcurrencyLimiter, RedisRateLimiter } from '../src/limits/redis.js';
import { StoreUnavailableError } from '../src/store/index.js';
import { openRedisStore, type RedisStore } from '../src/store/redis.js';
import { prng } from './helpers/prng.js';
import { freePort, isolatedPrefix, SHARED_REDIS, startRedisServer } from './helpers/redis.js';

const COMMAND_TIMEOUT_MS = 300;
/** Bound on "fails fast", generous for a loaded 2-core machine; the limiter aims at the command timeout. */
const FAIL_FAST_MS = 2_000;
/** A bucket that refills so slowly that a test's duration adds nothing it could spend. */
const NO_REFILL: Bucket = { capacity: 100, refillPerSecond: 0.001 };

/** A prefix for a Redis of the test's own, which dies with its keys. */
const ownPrefix = (): string => `portcullis-test:${randomUUID()}:`;

/** One replica's store, closed after the test; a Redis that is not there fails the test. */
async function replica(
  t: TestContext,
  prefix: string,
  url = SHARED_REDIS,
  expectHealthy = true,
): Promise<RedisStore> {
  const store = await openRedisStore({
    kind: 'redis',
    url,
    keyPrefix: prefix,
    commandTimeoutMs: COMMAND_TIMEOUT_MS,
    connectTimeoutMs: 500,
  });
  t.after(() => store.close());
  if (expectHealthy) assert.ok(store.healthy, `Redis at ${url} is required for this test`);
  return store;
}

/** A plain connection to look at what the limiters wrote. */
async function inspector(t: TestContext, url = SHARED_REDIS): Promise<Redis> {
  const redis = new Redis(url, { lazyConnect: true });
  await redis.connect();
  t.after(() => redis.quit());
  return redis;
}

async function failsWithUnavailable(operation: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await assert.rejects(operation(), StoreUnavailableError);
  return performance.now() - start;
}

test('step by step on one fake clock, the Lua script and the memory limiter answer alike', async (t) => {
  const prefix = isolatedPrefix(t);
  const store = await replica(t, prefix);
  let ms = 1_000_000;
  const now = (): number => ms;
  const memory = new MemoryRateLimiter({ now });
  const redis = new RedisRateLimiter({ ...store.connection, unsafeClockForTests: now });

  // Awkward sizes on purpose: rates that are no binary fraction, costs above
  // capacity, zero and fractional costs, and times down to the microsecond.
  const buckets: BucketTake[] = [
    { key: 'tenant:t', capacity: 5, refillPerSecond: 0.3 },
    { key: 'subject:t/alice', capacity: 2.5, refillPerSecond: 7 },
    { key: 'tool:t/s/x', capacity: 1, refillPerSecond: 1 / 3 },
  ];
  const costs = [0, 0.5, 1, 1, 1, 2, 3, 6];
  const random = prng(20_240_611);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
  let allowed = 0;
  for (let step = 0; step < 400; step++) {
    ms += pick([0, 0, 0.001, 1, 37.5, 333, 1_000, 4_000]);
    const takes = buckets.filter(() => random() < 0.6).map((b) => ({ ...b, cost: pick(costs) }));
    if (takes.length === 0) continue;
    const expected = await memory.takeAll(takes);
    assert.deepEqual(await redis.takeAll(takes), expected, `step ${step}`);
    if (expected.allowed) allowed += 1;
  }
  assert.ok(allowed > 50 && allowed < 350, `a mix of answers, ${allowed} allowed`);
});

test('a burst on the server clock: memory and Redis allow exactly the capacity', async (t) => {
  const prefix = isolatedPrefix(t);
  const redis = new RedisRateLimiter((await replica(t, prefix)).connection);
  const memory = new MemoryRateLimiter({ now: () => 0 });
  const bucket = { capacity: 10, refillPerSecond: 0.001 };
  const costs = [1, 1, 3, 1, 20, 1, 1, 1, 1, 1, 1, 1, 0, 1];
  const pattern = async (limiter: RateLimiter): Promise<boolean[]> => {
    const out: boolean[] = [];
    for (const cost of costs) out.push((await limiter.take('burst', bucket, cost)).allowed);
    return out;
  };
  // Ten tokens: 1+1+3+1, never 20, then 1+1+1+1 and nothing more; a cost of 0 always passes.
  const expected = [true, true, true, true, false, true, true, true, true];
  expected.push(false, false, false, true, false);
  assert.deepEqual(await pattern(memory), expected);
  assert.deepEqual(await pattern(redis), expected);
  const refused = await redis.take('burst', bucket);
  // 10 - 1 - 1 - 3 - 1 - 1 - 1 - 1 - 1 = 0 tokens: one token takes 1000 s at this rate.
  assert.equal(refused.allowed, false);
  assert.ok(
    refused.retryAfterMs > 999_000 && refused.retryAfterMs <= 1_000_000,
    `retry ${refused.retryAfterMs}`,
  );
});

test('two replicas hammering one bucket at once get exactly its capacity between them', async (t) => {
  const prefix = isolatedPrefix(t);
  const [a, b] = await Promise.all([replica(t, prefix), replica(t, prefix)]);
  const limiters = [new RedisRateLimiter(a.connection), new RedisRateLimiter(b.connection)];
  const results = await Promise.all(
    Array.from({ length: 400 }, (_, i) => limiters[i % 2]?.take('tenant:t', NO_REFILL)),
  );
  assert.equal(results.filter((r) => r?.allowed).length, 100);
  const byReplica = [0, 1].map((r) => results.filter((x, i) => i % 2 === r && x?.allowed).length);
  assert.ok(
    byReplica.every((n) => n > 0),
    `both replicas took some: ${byReplica}`,
  );
});

test('takeAll on Redis: a bucket that refuses leaves the others uncharged', async (t) => {
  const prefix = isolatedPrefix(t);
  const rate = new RedisRateLimiter((await replica(t, prefix)).connection);
  const redis = await inspector(t);
  const tenant = { key: 'tenant:t', capacity: 10, refillPerSecond: 0.001 };
  const tool = { key: 'tool:t/s/x', capacity: 1, refillPerSecond: 0.001 };
  const subject = { key: 'subject:t/alice', capacity: 1, refillPerSecond: 0.002 };

  assert.equal((await rate.takeAll([tenant, tool])).allowed, true);
  const refused = await rate.takeAll([tenant, tool]);
  assert.equal(refused.allowed, false);
  assert.deepEqual(refused.refusedBy, ['tool:t/s/x']);
  // The server's clock runs meanwhile: at 0.001/s a few ms refill a few millionths of a token.
  assert.equal(Math.floor(refused.remaining[0] ?? 0), 9, 'tenant not charged');
  assert.equal(Math.floor(Number(await redis.hget(`${prefix}rate:tenant:t`, 't'))), 9);

  assert.equal((await rate.takeAll([subject, tenant])).allowed, true);
  const both = await rate.takeAll([tool, subject, tenant]);
  assert.deepEqual(both.refusedBy, ['tool:t/s/x', 'subject:t/alice']);
  // The tool waits 1000 s for its token, the subject 500 s: the answer is the longer wait.
  assert.ok(both.retryAfterMs > 990_000 && both.retryAfterMs <= 1_000_000, `${both.retryAfterMs}`);
  assert.equal(Math.floor(Number(await redis.hget(`${prefix}rate:tenant:t`, 't'))), 8);
});

test('bucket keys live until the bucket is full again; retryAfterMs matches the refill rate', async (t) => {
  const prefix = isolatedPrefix(t);
  const rate = new RedisRateLimiter((await replica(t, prefix)).connection);
  const redis = await inspector(t);
  const bucket = { capacity: 2, refillPerSecond: 10 };

  await rate.take('k', bucket);
  // One token short at 10/s: full in 100 ms, plus the margin.
  const ttl = await redis.pttl(`${prefix}rate:k`);
  assert.ok(ttl > BUCKET_TTL_MARGIN_MS && ttl <= 100 + BUCKET_TTL_MARGIN_MS, `pttl ${ttl}`);
  await rate.take('k', bucket);
  const refused = await rate.take('k', bucket);
  assert.equal(refused.allowed, false);
  assert.ok(refused.retryAfterMs > 50 && refused.retryAfterMs <= 100, `${refused.retryAfterMs}`);
  await sleep(refused.retryAfterMs);
  assert.equal((await rate.take('k', bucket)).allowed, true, 'allowed once the wait is over');

  await rate.take('peek', bucket, 0);
  assert.equal(await redis.exists(`${prefix}rate:peek`), 0, 'a full bucket writes no key');
});

test('leases on Redis: one limit across two replicas, freed by release or by expiry, kept by renew', async (t) => {
  const prefix = isolatedPrefix(t);
  const [a, b] = await Promise.all([replica(t, prefix), replica(t, prefix)]);
  const atA = new RedisConcurrencyLimiter(a.connection);
  const atB = (await limitersFor(b)).concurrency;
  assert.equal(atB.kind, 'redis');
  const redis = await inspector(t);

  const held = [
    await atA.acquire('tenant:t', 3, 60_000),
    await atB.acquire('tenant:t', 3, 60_000),
    await atA.acquire('tenant:t', 3, 400),
  ];
  assert.ok(held.every((h) => h.allowed));
  const refused = await atB.acquire('tenant:t', 3, 60_000);
  assert.equal(refused.allowed, false);
  assert.ok(refused.retryAfterMs > 0 && refused.retryAfterMs <= 400, `${refused.retryAfterMs}`);
  const ttl = await redis.pttl(`${prefix}leases:tenant:t`);
  assert.ok(ttl > 59_000 && ttl <= 60_000 + LEASE_TTL_MARGIN_MS, `pttl ${ttl}`);

  const [first] = held;
  assert.ok(first?.allowed);
  await first.lease.release();
  const next = await atB.acquire('tenant:t', 3, 60_000);
  assert.ok(next.allowed, 'a release on one replica frees a slot for the other');
  assert.equal((await atA.acquire('tenant:t', 3, 60_000)).allowed, false);

  await sleep(500);
  assert.equal(
    (await atB.acquire('tenant:t', 3, 60_000)).allowed,
    true,
    'the 400 ms lease expired',
  );
  assert.equal(await held[2]?.lease?.renew(), false, 'and cannot come back');
  assert.equal(await first.lease.renew(), false, 'nor can a released one');

  const stream = await atA.acquire('stream', 1, 1_000);
  assert.ok(stream.allowed);
  for (let i = 0; i < 3; i++) {
    await sleep(400);
    assert.equal(await stream.lease.renew(), true);
  }
  assert.equal((await atB.acquire('stream', 1, 1_000)).allowed, false, 'renewed past its ttl');
  await stream.lease.release();
  assert.equal(await redis.exists(`${prefix}leases:stream`), 0, 'the last release removes the key');
});

test('no Redis: takes, acquisitions and releases reject with StoreUnavailableError at once', async (t) => {
  const url = `redis://127.0.0.1:${await freePort()}`;
  const store = await replica(t, ownPrefix(), url, false);
  assert.equal(store.healthy, false);
  const { rate, concurrency } = await limitersFor(store);
  for (const operation of [
    () => rate.take('k', NO_REFILL),
    () => rate.takeAll([{ key: 'a', ...NO_REFILL }]),
    () => concurrency.acquire('k', 1, 1_000),
  ]) {
    const ms = await failsWithUnavailable(operation);
    assert.ok(ms < FAIL_FAST_MS, `rejected after ${ms} ms`);
  }
});

test('a frozen Redis: a take rejects with StoreUnavailableError within the command timeout', async (t) => {
  const server = await startRedisServer(await freePort());
  t.after(() => server.kill());
  const prefix = ownPrefix();
  const store = await replica(t, prefix, server.url);
  const rate = new RedisRateLimiter(store.connection);
  const leases = new RedisConcurrencyLimiter(store.connection);
  const lease = await leases.acquire('k', 1, 60_000);
  assert.ok(lease.allowed);
  assert.equal((await rate.take('k', NO_REFILL)).allowed, true);

  server.freeze();
  t.after(() => server.thaw());
  for (const operation of [() => rate.take('k', NO_REFILL), () => lease.lease.release()]) {
    const ms = await failsWithUnavailable(operation);
    assert.ok(ms >= COMMAND_TIMEOUT_MS - 50 && ms < FAIL_FAST_MS, `rejected after ${ms} ms`);
  }
});

test('a Redis that forgot the script (SCRIPT FLUSH, a failover) is sent it again', async (t) => {
  const server = await startRedisServer(await freePort());
  t.after(() => server.kill());
  const store = await replica(t, ownPrefix(), server.url);
  const rate = new RedisRateLimiter(store.connection);
  const redis = await inspector(t, server.url);
  assert.equal(Math.floor((await rate.take('k', NO_REFILL)).remaining), 99);
  await redis.script('FLUSH');
  assert.equal(Math.floor((await rate.take('k', NO_REFILL)).remaining), 98);
});

test('a Redis limiter refuses a client whose commands could hang', () => {
  const client = new Redis(SHARED_REDIS, { lazyConnect: true });
  assert.throws(() => new RedisRateLimiter({ client }), TypeError);
  assert.throws(() => new RedisConcurrencyLimiter({ client }), TypeError);
  client.disconnect();
});
