/**
 * The shared store: the memory and the Redis implementation held to one
 * contract, then Redis outages under a real redis-server that the tests kill,
 * freeze and start again (the store must fail fast and come back by itself).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
  openStore,
  StoreUnavailableError,
  type Store,
  type StoreEvent,
  type StoreOptions,
} from '../src/store/index.js';
import { freePort, startRedisServer, type RedisServer } from './helpers/redis.js';

const REDIS_URL = 'redis://127.0.0.1:6379';
/** Bound on "fails fast", generous for a loaded 2-core machine; the store aims at the command timeout. */
const FAIL_FAST_MS = 2_000;
/** Reconnect backoff tops out at 2 s; this leaves room for a slow machine. */
const RECOVERY_TIMEOUT_MS = 15_000;

function uniquePrefix(): string {
  return `portcullis-test:${randomBytes(6).toString('hex')}:`;
}

interface Opened {
  readonly store: Store;
  readonly events: Array<{ event: StoreEvent; at: number; detail?: Record<string, unknown> }>;
}

/** Opens a store closed after the test; a Redis store first deletes the keys it can still reach. */
async function open(t: TestContext, options: StoreOptions): Promise<Opened> {
  const events: Opened['events'] = [];
  const store = await openStore(options, (event, detail) =>
    events.push({ event, at: performance.now(), ...(detail ? { detail } : {}) }),
  );
  t.after(async () => {
    try {
      if (store.kind === 'redis' && store.healthy) {
        for (const e of await store.entries('')) await store.delete(e.key);
      }
    } catch {
      // Redis went away during the test (on purpose): its keys went with it.
    } finally {
      await store.close();
    }
  });
  return { store, events };
}

const kinds = {
  memory: async (t: TestContext) => (await open(t, { kind: 'memory' })).store,
  redis: async (t: TestContext, keyPrefix = uniquePrefix()) =>
    (await open(t, { kind: 'redis', url: REDIS_URL, keyPrefix })).store,
} satisfies Record<Store['kind'], (t: TestContext) => Promise<Store>>;

/** Polls `condition`; resolves with the ms it took, rejects after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<number> {
  const start = performance.now();
  while (!condition()) {
    if (performance.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
  return performance.now() - start;
}

function inbox(store: Store, channel: string): string[] {
  const messages: string[] = [];
  store.subscribe(channel, (m) => messages.push(m));
  return messages;
}

/** Resolves with how long `operation` took to reject with `StoreUnavailableError`. */
async function failsWithUnavailable(operation: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await assert.rejects(operation(), StoreUnavailableError);
  return performance.now() - start;
}

function byKey(a: { key: string }, b: { key: string }): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

for (const kind of ['memory', 'redis'] as const) {
  const openKind = kinds[kind];

  test(`${kind}: setIfAbsent sets a key once, also under concurrent callers`, async (t) => {
    const store = await openKind(t);
    assert.equal(await store.setIfAbsent('nonce:a', 'first', 10_000), true);
    assert.equal(await store.setIfAbsent('nonce:a', 'second', 10_000), false);
    assert.equal(await store.get('nonce:a'), 'first');
    await store.set('nonce:a', 'third', 10_000);
    assert.equal(await store.get('nonce:a'), 'third');
    assert.equal(await store.get('nonce:missing'), undefined);

    const wins = await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.setIfAbsent('nonce:race', String(i), 10_000)),
    );
    assert.equal(wins.filter(Boolean).length, 1);
  });

  test(`${kind}: a key expires after its ttl`, async (t) => {
    const store = await openKind(t);
    await store.set('short:a', 'x', 150);
    assert.equal(await store.setIfAbsent('short:b', 'y', 150), true);
    assert.equal(await store.get('short:a'), 'x');
    await sleep(400);
    assert.equal(await store.get('short:a'), undefined);
    assert.deepEqual(await store.entries('short:'), []);
    assert.equal(
      await store.setIfAbsent('short:b', 'again', 150),
      true,
      'an expired key is absent',
    );
  });

  test(`${kind}: entries lists the live keys under a prefix with their remaining ttl`, async (t) => {
    const store = await openKind(t);
    await store.set('rev:jti:1', 'one', 10_000);
    await store.set('rev:sub:2', 'two', 20_000);
    await store.set('other:1', 'three', 10_000);
    // Glob metacharacters in a prefix are literal: unescaped, `g*[x]?` would match `gA[x]b:3`.
    await store.set('g*[x]?:1', 'a', 10_000);
    await store.set('gA[x]b:3', 'b', 10_000);

    const entries = (await store.entries('rev:')).sort(byKey);
    assert.deepEqual(
      entries.map(({ key, value }) => ({ key, value })),
      [
        { key: 'rev:jti:1', value: 'one' },
        { key: 'rev:sub:2', value: 'two' },
      ],
    );
    const [jti, sub] = entries;
    assert.ok(jti && jti.ttlMs > 0 && jti.ttlMs <= 10_000, `ttl ${jti?.ttlMs}`);
    assert.ok(sub && sub.ttlMs > 10_000 && sub.ttlMs <= 20_000, `ttl ${sub?.ttlMs}`);

    assert.deepEqual(
      (await store.entries('g*[x]?')).map((e) => e.key),
      ['g*[x]?:1'],
    );
    assert.deepEqual(await store.entries('none:'), []);
    assert.equal((await store.entries('')).length, 5);
  });

  test(`${kind}: replace sets a key that exists and never brings back one that does not`, async (t) => {
    const store = await openKind(t);
    assert.equal(await store.replace('absent', 'x', 10_000), false);
    assert.equal(await store.get('absent'), undefined, 'replace did not create it');
    await store.set('present', 'old', 10_000);
    assert.equal(await store.replace('present', 'new', 10_000), true);
    assert.equal(await store.get('present'), 'new');
    await store.delete('present');
    assert.equal(await store.replace('present', 'again', 10_000), false);
    assert.equal(await store.get('present'), undefined);
  });

  test(`${kind}: delete removes a key, and a missing key is no error`, async (t) => {
    const store = await openKind(t);
    await store.set('gone', 'x', 10_000);
    await store.delete('gone');
    assert.equal(await store.get('gone'), undefined);
    assert.equal(await store.setIfAbsent('gone', 'y', 10_000), true);
    await store.delete('never-there');
  });

  test(`${kind}: publish reaches every subscriber of the channel, never inside publish`, async (t) => {
    const store = await openKind(t);
    const first = inbox(store, 'revocations');
    const second = inbox(store, 'revocations');
    const other = inbox(store, 'sessions');
    await until(() => store.healthy, 'the subscriptions');

    const published = store.publish('revocations', 'r1');
    assert.deepEqual(first, [], 'publish does not call subscribers before it returns');
    await published;
    await store.publish('sessions', 's1');
    // One connection delivers in order: once s1 is in, r1 has been delivered too.
    await until(() => other.length === 1, 'the second message');
    assert.deepEqual(first, ['r1']);
    assert.deepEqual(second, ['r1']);
    assert.deepEqual(other, ['s1']);
  });
}

for (const kind of ['memory', 'redis'] as const) {
  test(`${kind}: a subscriber that throws is reported and the others still hear`, async (t) => {
    const options: StoreOptions =
      kind === 'memory' ? { kind } : { kind, url: REDIS_URL, keyPrefix: uniquePrefix() };
    const { store, events } = await open(t, options);
    store.subscribe('revocations', () => {
      throw new Error('subscriber bug');
    });
    const received = inbox(store, 'revocations');
    await until(() => store.healthy, 'the subscription');
    await store.publish('revocations', 'r1');
    await until(() => received.length === 1, 'the message at the second subscriber');
    const reported = events.find((e) => e.event === 'error');
    assert.equal(reported?.detail?.source, 'subscriber');
    assert.equal(reported?.detail?.channel, 'revocations');
    assert.match(String(reported?.detail?.error), /subscriber bug/);
  });
}

test('redis: two replicas share keys and broadcasts; another key prefix sees neither', async (t) => {
  const prefix = uniquePrefix();
  const a = await kinds.redis(t, prefix);
  const b = await kinds.redis(t, prefix);
  const stranger = await kinds.redis(t);
  const atA = inbox(a, 'revocations');
  const atB = inbox(b, 'revocations');
  const atStranger = inbox(stranger, 'revocations');
  await until(() => a.healthy && b.healthy && stranger.healthy, 'the subscriptions');

  assert.equal(await a.setIfAbsent('dpop:jti', 'seen', 10_000), true);
  assert.equal(await b.setIfAbsent('dpop:jti', 'seen', 10_000), false, 'atomic across replicas');
  assert.equal(await b.get('dpop:jti'), 'seen');
  assert.equal(await stranger.get('dpop:jti'), undefined);
  assert.deepEqual(
    (await b.entries('dpop:')).map((e) => e.key),
    ['dpop:jti'],
    'keys come back without the store prefix',
  );

  await stranger.publish('revocations', 'elsewhere');
  await a.publish('revocations', 'r1');
  await until(() => atA.length === 1 && atB.length === 1, 'r1 at both replicas');
  await until(() => atStranger.length === 1, 'the stranger its own message');
  assert.deepEqual(atA, ['r1']);
  assert.deepEqual(atB, ['r1']);
  assert.deepEqual(atStranger, ['elsewhere']);
});

/** A redis-server of the test's own, killed after the test if still running. */
async function ownServer(t: TestContext, port?: number): Promise<RedisServer> {
  const server = await startRedisServer(port ?? (await freePort()));
  t.after(() => server.kill());
  return server;
}

test('redis: when Redis dies the store turns unhealthy at once and every operation fails fast', async (t) => {
  const server = await ownServer(t);
  const { store, events } = await open(t, {
    kind: 'redis',
    url: server.url,
    keyPrefix: uniquePrefix(),
  });
  inbox(store, 'revocations');
  await until(() => store.healthy, 'the subscription');
  const health: boolean[] = [];
  store.onHealth((h) => health.push(h));

  const killedAt = performance.now();
  await server.kill();
  await until(() => !store.healthy, 'unhealthy', FAIL_FAST_MS);
  assert.ok(performance.now() - killedAt < FAIL_FAST_MS);
  assert.deepEqual(health, [false]);
  assert.ok(events.some((e) => e.event === 'disconnected'));

  for (const operation of [
    () => store.setIfAbsent('k', 'v', 10_000),
    () => store.set('k', 'v', 10_000),
    () => store.get('k'),
    () => store.delete('k'),
    () => store.entries(''),
    () => store.publish('revocations', 'lost'),
  ]) {
    const ms = await failsWithUnavailable(operation);
    assert.ok(ms < FAIL_FAST_MS, `rejected after ${ms} ms`);
  }

  // Reconnect attempts keep failing meanwhile; the log hears of it at most once a second.
  await sleep(1_500);
  const errors = events.filter((e) => e.event === 'error');
  for (let i = 1; i < errors.length; i++) {
    const gap = (errors[i]?.at ?? 0) - (errors[i - 1]?.at ?? 0);
    assert.ok(gap >= 990, `error events ${gap} ms apart`);
  }

  const closing = performance.now();
  await store.close();
  assert.ok(performance.now() - closing < FAIL_FAST_MS, 'close does not wait for Redis');
});

test('redis: when Redis comes back the store turns healthy and broadcasts reach old subscribers', async (t) => {
  const first = await ownServer(t);
  const prefix = uniquePrefix();
  const { store } = await open(t, { kind: 'redis', url: first.url, keyPrefix: prefix });
  const received = inbox(store, 'revocations');
  await until(() => store.healthy, 'the subscription');
  const health: boolean[] = [];
  store.onHealth((h) => health.push(h));

  await first.kill();
  await until(() => !store.healthy, 'unhealthy', FAIL_FAST_MS);
  await failsWithUnavailable(() => store.setIfAbsent('k', 'during', 10_000));

  await ownServer(t, first.port);
  await until(() => store.healthy, 'healthy again', RECOVERY_TIMEOUT_MS);
  assert.deepEqual(health, [false, true]);

  const { store: other } = await open(t, { kind: 'redis', url: first.url, keyPrefix: prefix });
  assert.equal(other.healthy, true);
  await other.publish('revocations', 'after recovery');
  await until(() => received.length === 1, 'the message at the old subscriber');
  assert.deepEqual(received, ['after recovery']);
  assert.equal(await store.setIfAbsent('k', 'after', 10_000), true);
});

test('redis: a frozen Redis (socket open, no answers) times commands out and turns unhealthy', async (t) => {
  const server = await ownServer(t);
  const { store } = await open(t, { kind: 'redis', url: server.url, keyPrefix: uniquePrefix() });
  const received = inbox(store, 'revocations');
  await until(() => store.healthy, 'the subscription');
  const health: boolean[] = [];
  store.onHealth((h) => health.push(h));

  server.freeze();
  const ms = await failsWithUnavailable(() => store.get('k'));
  assert.ok(ms < FAIL_FAST_MS, `rejected after ${ms} ms`);
  // Found by the heartbeat, not by a socket event: ping, its timeout, then the disconnect grace.
  await until(() => !store.healthy, 'unhealthy', 2 * FAIL_FAST_MS);

  server.thaw();
  await until(() => store.healthy, 'healthy again', RECOVERY_TIMEOUT_MS);
  assert.deepEqual(health, [false, true]);
  await store.publish('revocations', 'thawed');
  await until(() => received.includes('thawed'), 'the message after thawing');
});

test('redis: openStore with no Redis resolves unhealthy, then connects when Redis appears', async (t) => {
  const port = await freePort();
  const started = performance.now();
  const { store } = await open(t, {
    kind: 'redis',
    url: `redis://127.0.0.1:${port}`,
    keyPrefix: uniquePrefix(),
  });
  assert.ok(performance.now() - started < DEFAULT_REDIS_CONNECT_TIMEOUT_MS);
  assert.equal(store.healthy, false);
  const health: boolean[] = [];
  store.onHealth((h) => health.push(h));
  await failsWithUnavailable(() => store.setIfAbsent('k', 'v', 10_000));
  const received = inbox(store, 'revocations');

  await ownServer(t, port);
  await until(() => store.healthy, 'healthy', RECOVERY_TIMEOUT_MS);
  assert.deepEqual(health, [true]);
  assert.equal(await store.setIfAbsent('k', 'v', 10_000), true);
  await store.publish('revocations', 'hello');
  await until(() => received.length === 1, 'a subscription made while Redis was down');
  assert.deepEqual(received, ['hello']);
});

test('the stores refuse a ttl that is not a positive number', async (t) => {
  for (const store of [await kinds.memory(t), await kinds.redis(t)]) {
    for (const ttl of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await assert.rejects(store.set('k', 'v', ttl), RangeError);
      await assert.rejects(store.setIfAbsent('k', 'v', ttl), RangeError);
    }
  }
});
