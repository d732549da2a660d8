/**
 * The shared session store under the races and the tampering a cluster can
 * meet, over a real Redis: two stores on one key prefix are two replicas.
 * A session that ended stays ended whatever a replica shares late; a record
 * in the store is only a session if it has the shape one writes, and a home
 * only if the cluster sealed it; a callback that throws is reported, never a
 * crash of the sweep.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import {
  SESSION_ENDED_KEY,
  SESSION_KEY,
  SharedSessionStore,
  type SharedSessionOptions,
} from '../src/mcp/sessions.js';
import { recordSeal } from '../src/server/replicas.js';
import { openStore, type Store } from '../src/store/index.js';
import { isolatedPrefix, SHARED_REDIS } from './helpers/redis.js';

const OWNER = JSON.stringify(['acme', 'alice']);
const HOME = 'http://10.0.0.7:9091#AAAAAAAAAAAAAAAA';
const SEAL = recordSeal('a-test-cluster-secret-of-32-chars!');

interface Replica {
  readonly sessions: SharedSessionStore;
  readonly store: Store;
}

/** A replica's session store over the shared Redis, under `prefix`; closed after the test. */
async function replica(
  t: TestContext,
  prefix: string,
  options: Partial<SharedSessionOptions> = {},
): Promise<Replica> {
  const store = await openStore({ kind: 'redis', url: SHARED_REDIS, keyPrefix: prefix });
  t.after(() => store.close());
  const sessions = new SharedSessionStore(store, {
    idleTimeoutMs: 60_000,
    max: 100,
    sweepIntervalMs: 1_000,
    seal: SEAL,
    ...options,
  });
  return { sessions, store };
}

/** A direct connection to the shared Redis, for what another replica (or an intruder) writes. */
function raw(t: TestContext): Redis {
  const redis = new Redis(SHARED_REDIS);
  t.after(() => redis.quit());
  return redis;
}

async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
  const start = performance.now();
  while (!(await condition())) {
    if (performance.now() - start > 5_000) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test('a change shared after the session ended elsewhere does not bring it back', async (t) => {
  const prefix = isolatedPrefix(t);
  const a = await replica(t, prefix);
  const b = await replica(t, prefix);
  const redis = raw(t);
  const opened = await a.sessions.create('everything', OWNER, 'up-1');
  assert.ok(opened);
  const onB = await b.sessions.get(opened.id, 'everything', OWNER);
  assert.ok(onB, 'B serves the session A opened');
  // A ends it; B has not heard yet (the end is recorded and the record gone,
  // the broadcast still on its way) and shares a change it made meanwhile.
  await redis.set(`${prefix}${SESSION_ENDED_KEY}${opened.id}`, '1', 'PX', 60_000);
  await redis.del(`${prefix}${SESSION_KEY}${opened.id}`);
  onB.protocolVersion = '2025-06-18';
  onB.save?.();
  await until(async () => b.sessions.peek(opened.id) === undefined, 'B to drop the session');
  assert.equal(
    await redis.get(`${prefix}${SESSION_KEY}${opened.id}`),
    null,
    'the late change did not write the record back',
  );
  assert.equal(await a.sessions.get(opened.id, 'everything', OWNER, true), undefined);
});

test('a record that came back after its session ended is no session on any replica', async (t) => {
  const prefix = isolatedPrefix(t);
  const a = await replica(t, prefix);
  const redis = raw(t);
  const opened = await a.sessions.create('everything', OWNER, 'up-1');
  assert.ok(opened);
  const record = (await redis.get(`${prefix}${SESSION_KEY}${opened.id}`)) as string;
  a.sessions.delete(opened.id);
  await until(
    async () => (await redis.get(`${prefix}${SESSION_KEY}${opened.id}`)) === null,
    'the end to reach the store',
  );
  // The record is written back, as a replica racing the end could.
  await redis.set(`${prefix}${SESSION_KEY}${opened.id}`, record, 'PX', 60_000);
  const fresh = await replica(t, prefix);
  assert.equal(await fresh.sessions.get(opened.id, 'everything', OWNER), undefined);
});

test('a record is a session only as the cluster sealed it: its owner, upstream session and home', async (t) => {
  const prefix = isolatedPrefix(t);
  const a = await replica(t, prefix);
  const redis = raw(t);
  const opened = await a.sessions.create('everything', OWNER, 'up-1', undefined, HOME);
  assert.ok(opened);
  const key = `${prefix}${SESSION_KEY}${opened.id}`;
  const record = JSON.parse((await redis.get(key)) as string) as Record<string, unknown>;
  assert.equal(record.home, HOME);
  assert.equal(typeof record.seal, 'string');

  const b = await replica(t, prefix);
  const served = await b.sessions.get(opened.id, 'everything', OWNER);
  assert.equal(served?.home, HOME, 'the sealed home is the session’s');

  // Someone with write access to the store points the session elsewhere.
  await redis.set(
    key,
    JSON.stringify({ ...record, home: 'http://evil.example:80#BBBBBBBBBBBBBBBB' }),
  );
  const c = await replica(t, prefix);
  assert.equal(await c.sessions.get(opened.id, 'everything', OWNER), undefined);
  // Or another owner, to take the session over, or another upstream session.
  await redis.set(key, JSON.stringify({ ...record, owner: JSON.stringify(['acme', 'mallory']) }));
  assert.equal(
    await c.sessions.get(opened.id, 'everything', JSON.stringify(['acme', 'mallory'])),
    undefined,
  );
  await redis.set(key, JSON.stringify({ ...record, upstreamId: 'up-2' }));
  assert.equal(await c.sessions.get(opened.id, 'everything', OWNER), undefined);
  // Or a record with no seal, or a home that is not a home at all.
  await redis.set(key, JSON.stringify({ ...record, seal: undefined }));
  assert.equal(await c.sessions.get(opened.id, 'everything', OWNER), undefined);
  await redis.set(key, JSON.stringify({ ...record, home: 'not a url' }));
  assert.equal(await c.sessions.get(opened.id, 'everything', OWNER), undefined);
  // A replica with no cluster follows no home.
  await redis.set(key, JSON.stringify(record));
  const alone = await replica(t, prefix, { seal: undefined });
  assert.equal(await alone.sessions.get(opened.id, 'everything', OWNER), undefined);
  assert.ok(await c.sessions.get(opened.id, 'everything', OWNER), 'the untouched record is one');
});

test('resumable ids in a record are bounded in length and count', async (t) => {
  const prefix = isolatedPrefix(t);
  const a = await replica(t, prefix);
  const redis = raw(t);
  const opened = await a.sessions.create('everything', OWNER, 'up-1');
  assert.ok(opened);
  const key = `${prefix}${SESSION_KEY}${opened.id}`;
  const record = JSON.parse((await redis.get(key)) as string) as Record<string, unknown>;
  const b = await replica(t, prefix);
  await redis.set(key, JSON.stringify({ ...record, resumable: ['x'.repeat(257)] }));
  assert.equal(await b.sessions.get(opened.id, 'everything', OWNER), undefined);
  await redis.set(key, JSON.stringify({ ...record, resumable: ['x'.repeat(256), 7] }));
  const served = await b.sessions.get(opened.id, 'everything', OWNER);
  assert.deepEqual([...(served?.resumable ?? [])], ['x'.repeat(256), 7]);
  // Merged into what a replica holds, the set never grows past the bound.
  const ids = Array.from({ length: 1_024 }, (_, i) => `r${i}`);
  await redis.set(key, JSON.stringify({ ...record, resumable: ids }));
  const again = await b.sessions.get(opened.id, 'everything', OWNER, true);
  assert.equal(again?.resumable?.size, 1_024);
});

test('a callback that throws as a session expires is reported; the sweep goes on', async (t) => {
  const prefix = isolatedPrefix(t);
  const reported: string[] = [];
  const a = await replica(t, prefix, {
    idleTimeoutMs: 1_000,
    onExpire: () => {
      throw new Error('the upstream side could not be ended');
    },
    onCallbackError: (what) => reported.push(what),
  });
  const first = await a.sessions.create('everything', OWNER, 'up-1');
  const second = await a.sessions.create('everything', OWNER, 'up-2');
  assert.ok(first && second);
  const later = Date.now() + 10 * 60_000;
  // Both are idle everywhere: each expires, and each expiry's callback throws.
  await assert.doesNotReject(a.sessions.sweep(later));
  assert.equal(a.sessions.peek(first.id), undefined);
  assert.equal(a.sessions.peek(second.id), undefined);
  assert.deepEqual(reported, [
    'end an expired session upstream',
    'end an expired session upstream',
  ]);
});
