/**
 * The memory limiters on a fake clock: refill arithmetic down to fractional
 * tokens, all-or-nothing takeAll, what a cost above the capacity answers,
 * bounded tables that never refill a bucket by evicting it, and leases that
 * expire, renew and release. Redis is held to the same answers in
 * test/rate-limit-redis.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  MAX_BUCKET_FILL_SECONDS,
  MAX_LEASE_TTL_MS,
  MAX_TAKE_ALL_KEYS,
  RETRY_NEVER,
  refilled,
  type Bucket,
} from '../src/limits/index.js';
import { MemoryConcurrencyLimiter, MemoryRateLimiter } from '../src/limits/memory.js';

/** A clock that moves only when told, in ms. */
function fakeClock(startMs = 1_000): { now: () => number; advance: (ms: number) => void } {
  let ms = startMs;
  return { now: () => ms, advance: (by) => void (ms += by) };
}

const TWO_PER_SECOND: Bucket = { capacity: 10, refillPerSecond: 2 };

test('a bucket starts full, refills at its rate, and never holds more than its capacity', async () => {
  const clock = fakeClock();
  const rate = new MemoryRateLimiter({ now: clock.now });
  for (let i = 9; i >= 0; i--) {
    assert.deepEqual(await rate.take('k', TWO_PER_SECOND), {
      allowed: true,
      remaining: i,
      retryAfterMs: 0,
    });
  }
  assert.deepEqual(await rate.take('k', TWO_PER_SECOND), {
    allowed: false,
    remaining: 0,
    retryAfterMs: 500,
  });

  clock.advance(250);
  assert.deepEqual(
    await rate.take('k', TWO_PER_SECOND),
    { allowed: false, remaining: 0.5, retryAfterMs: 250 },
    'half a token after a quarter second',
  );
  assert.deepEqual(
    await rate.take('k', TWO_PER_SECOND, 0.5),
    { allowed: true, remaining: 0, retryAfterMs: 0 },
    'fractional costs take fractional tokens',
  );

  clock.advance(500);
  assert.deepEqual(await rate.take('k', TWO_PER_SECOND), {
    allowed: true,
    remaining: 0,
    retryAfterMs: 0,
  });
  clock.advance(3_600_000);
  assert.equal((await rate.take('k', TWO_PER_SECOND)).remaining, 9, 'capped at capacity');
});

test('retrying after retryAfterMs succeeds; a microsecond sooner does not', async () => {
  const clock = fakeClock();
  const rate = new MemoryRateLimiter({ now: clock.now });
  const bucket = { capacity: 3, refillPerSecond: 0.3 };
  await rate.take('k', bucket, 3);
  const refused = await rate.take('k', bucket, 2);
  assert.equal(refused.retryAfterMs, Math.ceil(2000 / 0.3));
  clock.advance(refused.retryAfterMs - 1);
  assert.equal((await rate.take('k', bucket, 2)).allowed, false);
  clock.advance(1);
  assert.equal((await rate.take('k', bucket, 2)).allowed, true);
});

test('a cost above the capacity is never allowed: retryAfterMs is RETRY_NEVER and nothing is charged', async () => {
  const rate = new MemoryRateLimiter({ now: fakeClock().now });
  const result = await rate.take('k', { capacity: 5, refillPerSecond: 1 }, 6);
  assert.deepEqual(result, { allowed: false, remaining: 5, retryAfterMs: RETRY_NEVER });
  assert.equal(RETRY_NEVER, Number.POSITIVE_INFINITY);
  assert.equal((await rate.take('k', { capacity: 5, refillPerSecond: 1 }, 5)).allowed, true);
});

test('takeAll charges every bucket or none, and names the ones that refused', async () => {
  const rate = new MemoryRateLimiter({ now: fakeClock().now });
  const tenant = { key: 'tenant:t', capacity: 10, refillPerSecond: 1 };
  const tool = { key: 'tool:t/s/x', capacity: 1, refillPerSecond: 0.5 };
  const subject = { key: 'subject:t/alice', capacity: 2, refillPerSecond: 0.25 };

  assert.deepEqual(await rate.takeAll([tenant, subject, tool]), {
    allowed: true,
    refusedBy: [],
    retryAfterMs: 0,
    remaining: [9, 1, 0],
  });
  assert.deepEqual(
    await rate.takeAll([tenant, subject, tool]),
    { allowed: false, refusedBy: ['tool:t/s/x'], retryAfterMs: 2_000, remaining: [9, 1, 0] },
    'the tool refused: tenant and subject keep their tokens',
  );
  assert.deepEqual(await rate.takeAll([tenant, { ...subject, cost: 1 }]), {
    allowed: true,
    refusedBy: [],
    retryAfterMs: 0,
    remaining: [8, 0],
  });
  assert.deepEqual(
    await rate.takeAll([tenant, subject, tool]),
    {
      allowed: false,
      refusedBy: ['subject:t/alice', 'tool:t/s/x'],
      retryAfterMs: 4_000,
      remaining: [8, 0, 0],
    },
    'the largest wait among the refusing buckets',
  );
});

test('takes that make no sense are refused with a RangeError before anything is charged', async () => {
  const rate = new MemoryRateLimiter({ now: fakeClock().now });
  const ok = { key: 'a', capacity: 1, refillPerSecond: 1 };
  const bad = [
    [],
    Array.from({ length: MAX_TAKE_ALL_KEYS + 1 }, (_, i) => ({ ...ok, key: `k${i}` })),
    [ok, { ...ok }],
    [{ ...ok, capacity: 0 }],
    [{ ...ok, refillPerSecond: 0 }],
    [{ ...ok, refillPerSecond: Number.NaN }],
    [{ ...ok, capacity: Number.POSITIVE_INFINITY }],
    [{ ...ok, cost: -1 }],
    [{ ...ok, capacity: MAX_BUCKET_FILL_SECONDS + 1 }],
  ];
  for (const takes of bad) await assert.rejects(rate.takeAll(takes), RangeError);
  assert.equal(rate.size, 0);
});

test('a full bucket is not kept: a cost of 0 peeks, a refill to full forgets the key', async () => {
  const clock = fakeClock();
  const rate = new MemoryRateLimiter({ now: clock.now });
  assert.deepEqual(await rate.take('peek', TWO_PER_SECOND, 0), {
    allowed: true,
    remaining: 10,
    retryAfterMs: 0,
  });
  assert.equal(rate.size, 0);
  await rate.take('k', TWO_PER_SECOND);
  assert.equal(rate.size, 1);
  clock.advance(500);
  await rate.take('k', TWO_PER_SECOND, 0);
  assert.equal(rate.size, 0, 'full again, and dropped');
});

test('time that runs backwards refills nothing', () => {
  assert.equal(refilled(1, 5_000_000, 4_000_000, 10, 1), 1);
  assert.equal(refilled(1, 5_000_000, 6_000_000, 10, 1), 2);
});

test('at the cap the table drops full buckets only, and refuses new keys rather than refill a drained one', async () => {
  const clock = fakeClock();
  const rate = new MemoryRateLimiter({ now: clock.now, maxEntries: 3 });
  const slow = { capacity: 1, refillPerSecond: 0.001 }; // full again after 1000 s
  const fast = { capacity: 1, refillPerSecond: 1 }; // full again after 1 s
  await rate.take('drained', slow);
  await rate.take('b', fast);
  await rate.take('c', fast);
  assert.equal(rate.size, 3);

  assert.deepEqual(
    await rate.take('new', fast),
    { allowed: false, remaining: 1, retryAfterMs: 1_000 },
    'no full bucket to drop: the new key waits for the soonest to be full',
  );
  assert.equal(rate.overflowRefusals, 1);
  assert.equal((await rate.take('drained', slow)).allowed, false, 'still drained');
  assert.equal((await rate.take('peek', fast, 0)).allowed, true, 'a peek stores nothing');
  const both = await rate.takeAll([
    { key: 'b', ...fast, cost: 0 },
    { key: 'new', ...fast },
  ]);
  assert.deepEqual(both.refusedBy, ['new']);

  clock.advance(1_000);
  assert.equal((await rate.take('new', fast)).allowed, true, 'b and c were full: dropped');
  assert.equal(rate.size, 2);
  assert.deepEqual(await rate.take('drained', slow), {
    allowed: false,
    remaining: 0.001,
    retryAfterMs: 999_000,
  });
});

test('each tenant holds its own share of the memory table: one minting subjects cannot crowd out another', async () => {
  const clock = fakeClock();
  const rate = new MemoryRateLimiter({ now: clock.now, maxEntries: 10, maxEntriesPerGroup: 4 });
  const slow = { capacity: 2, refillPerSecond: 0.001 };
  for (let i = 0; i < 4; i++) {
    const r = await rate.takeAll([{ key: `subject:noisy/${i}`, ...slow, group: 'noisy' }]);
    assert.equal(r.allowed, true);
  }
  assert.equal(rate.heldBy('noisy'), 4);
  const fifth = await rate.takeAll([{ key: 'subject:noisy/4', ...slow, group: 'noisy' }]);
  assert.equal(fifth.allowed, false, 'the noisy tenant is at its share');
  assert.deepEqual(fifth.refusedBy, ['subject:noisy/4']);
  assert.equal(
    (await rate.takeAll([{ key: 'subject:noisy/0', ...slow, group: 'noisy' }])).allowed,
    true,
    'its buckets already held go on',
  );
  for (let i = 0; i < 4; i++) {
    const r = await rate.takeAll([{ key: `subject:quiet/${i}`, ...slow, group: 'quiet' }]);
    assert.equal(r.allowed, true, `the other tenant's new agent ${i} is admitted`);
  }
  assert.equal(rate.heldBy('quiet'), 4);
  assert.equal(rate.size, 8);
  clock.advance(2_000_000);
  assert.equal(
    (await rate.takeAll([{ key: 'subject:noisy/9', ...slow, group: 'noisy' }])).allowed,
    true,
    'once its buckets refill, the sweep frees its share',
  );
  assert.equal(rate.heldBy('noisy'), 1);
});

test('leases: a limit per key, released slots free at once, unreleased ones when they expire', async () => {
  const clock = fakeClock();
  const leases = new MemoryConcurrencyLimiter({ now: clock.now });
  const a = await leases.acquire('tenant:t', 2, 1_000);
  clock.advance(100);
  const b = await leases.acquire('tenant:t', 2, 1_000);
  assert.ok(a.allowed && b.allowed);
  assert.notEqual(a.lease.id, b.lease.id);
  assert.deepEqual(await leases.acquire('tenant:t', 2, 1_000), {
    allowed: false,
    retryAfterMs: 900,
  });
  assert.equal((await leases.acquire('tenant:other', 2, 1_000)).allowed, true, 'per key');

  await b.lease.release();
  await b.lease.release();
  const c = await leases.acquire('tenant:t', 2, 1_000);
  assert.ok(c.allowed, 'a release frees a slot');
  assert.equal((await leases.acquire('tenant:t', 2, 1_000)).allowed, false);

  clock.advance(900);
  assert.equal((await leases.acquire('tenant:t', 2, 1_000)).allowed, true, 'a expired');
  assert.equal(await a.lease.renew(), false, 'an expired lease cannot come back');
  assert.equal(await b.lease.renew(), false, 'nor a released one');
});

test('leases: renew keeps a long stream in its slot past the first ttl', async () => {
  const clock = fakeClock();
  const leases = new MemoryConcurrencyLimiter({ now: clock.now });
  const stream = await leases.acquire('k', 1, 1_000);
  assert.ok(stream.allowed);
  for (let i = 0; i < 5; i++) {
    clock.advance(800);
    assert.equal(await stream.lease.renew(), true);
  }
  assert.equal((await leases.acquire('k', 1, 1_000)).allowed, false);
  assert.equal(await stream.lease.renew(5_000), true);
  clock.advance(4_999);
  assert.equal((await leases.acquire('k', 1, 1_000)).allowed, false);
  clock.advance(1);
  assert.equal((await leases.acquire('k', 1, 1_000)).allowed, true);
  await assert.rejects(stream.lease.renew(MAX_LEASE_TTL_MS + 1), RangeError);
  await assert.rejects(leases.acquire('k', 0, 1_000), RangeError);
  await assert.rejects(leases.acquire('k', 1.5, 1_000), RangeError);
  await assert.rejects(leases.acquire('k', 1, 0), RangeError);
});

test('leases: at the cap expired leases are dropped, live ones never', async () => {
  const clock = fakeClock();
  const leases = new MemoryConcurrencyLimiter({ now: clock.now, maxEntries: 2 });
  assert.equal((await leases.acquire('a', 5, 1_000)).allowed, true);
  clock.advance(500);
  assert.equal((await leases.acquire('b', 5, 1_000)).allowed, true);
  assert.deepEqual(await leases.acquire('c', 5, 1_000), { allowed: false, retryAfterMs: 500 });
  assert.equal(leases.overflowRefusals, 1);
  clock.advance(500);
  assert.equal((await leases.acquire('c', 5, 1_000)).allowed, true, 'a expired: its room is free');
  assert.equal(leases.size, 2);
});
