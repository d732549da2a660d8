/**
 * The `redis-stream` and `postgres` audit sinks and their readers, against a
 * real Redis and a real PostgreSQL (either missing fails the test): records
 * arrive in order with their bytes unchanged, `open` finds the last one,
 * retention trims and drops, the table is append-only, and outages — a
 * redis-server killed or frozen, a PostgreSQL link cut — lose nothing and
 * write nothing twice.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import {
  parseAuditUrl,
  queryPostgres,
  readPostgres,
  readRedisStream,
} from '../src/audit/readers.js';
import { PostgresSink, type PostgresSinkOptions } from '../src/audit/sinks/postgres.js';
import { RedisStreamSink, type RedisStreamSinkOptions } from '../src/audit/sinks/redis-stream.js';
import type { AuditRecord, AuditSink } from '../src/audit/types.js';
import {
  SHARED_REDIS,
  cuttableLink,
  freePort,
  isolatedPrefix,
  startRedisServer,
} from './helpers/redis.js';

const PG_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const DAY_MS = 86_400_000;
const FLUSH_MS = 8_000;

interface Entry {
  readonly record: AuditRecord;
  readonly line: string;
}

/**
 * `count` chained records: each hash is the SHA-256 of the record's JSON
 * without `hash` (the tests only need the shape; src/audit/record.ts seals
 * the real ones).
 */
function chain(
  id: string,
  count: number,
  fields: (i: number) => Partial<AuditRecord> = () => ({}),
  from: { seq: number; prevHash: string } = { seq: 0, prevHash: '0'.repeat(64) },
): Entry[] {
  const out: Entry[] = [];
  let prevHash = from.prevHash;
  for (let i = 0; i < count; i++) {
    const body = {
      v: 1,
      kind: 'message' as const,
      chain: id,
      seq: from.seq + i,
      prevHash,
      time: new Date().toISOString(),
      ...fields(i),
    };
    const hash = createHash('sha256').update(JSON.stringify(body)).digest('hex');
    const record: AuditRecord = { ...body, hash };
    out.push({ record, line: JSON.stringify(record) });
    prevHash = hash;
  }
  return out;
}

/** Arguments a hostile tool call might carry: every escape jsonb refuses, and bytes that must not change. */
const AWKWARD_ARGS = {
  text: 'NUL \u0000, lone \ud800 and \udc00, a pair \ud83d\ude00, "quotes", \\u0000 and é',
  ['key \u0000']: [1, 2.5, null, true],
};

function writeAll(sink: AuditSink, entries: readonly Entry[]): void {
  for (const e of entries) sink.write(e.record, e.line);
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function closeAfter<S extends AuditSink>(t: TestContext, sink: S): S {
  t.after(() => sink.close(Date.now() + 2_000));
  return sink;
}

// ---------------------------------------------------------------- Redis

function redisSink(t: TestContext, options: Partial<RedisStreamSinkOptions> & { key: string }) {
  return closeAfter(
    t,
    new RedisStreamSink({ name: 'redis', url: SHARED_REDIS, flushIntervalMs: 10, ...options }),
  );
}

async function withRedis<T>(url: string, work: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis(url, { lazyConnect: true });
  await redis.connect();
  try {
    return await work(redis);
  } finally {
    await redis.quit();
  }
}

test('redis-stream: records arrive in order, bytes unchanged, and read back through the reader', async (t) => {
  const key = `${isolatedPrefix(t)}audit`;
  const sink = redisSink(t, { key, batchMaxRecords: 7 });
  assert.equal(await sink.open(), undefined);

  const entries = chain('c1', 30, (i) => ({ tool: 'echo', args: { i, ...AWKWARD_ARGS } }));
  writeAll(sink, entries);
  await sink.flush(Date.now() + FLUSH_MS);
  assert.deepEqual(sink.stats(), { written: 30, failed: 0, queued: 0, spoolBytes: 0 });

  const read = await collect(readRedisStream(`${SHARED_REDIS}/0?key=${encodeURIComponent(key)}`));
  assert.deepEqual(
    read.map((r) => r.line),
    entries.map((e) => e.line),
  );
  for (const r of read) assert.match(r.where, new RegExp(`^redis stream ${key} id \\d+-\\d+$`));

  const [first] = await withRedis(SHARED_REDIS, (redis) => redis.xrange(key, '-', '+', 'COUNT', 1));
  assert.deepEqual(first?.[1], ['r', entries[0]?.line, 'c', 'c1', 's', '0']);

  const reopened = redisSink(t, { key });
  assert.deepEqual(await reopened.open(), entries.at(-1)?.record);
});

test('redis-stream: open trims entries older than the retention, by stream id', async (t) => {
  const key = `${isolatedPrefix(t)}audit`;
  const old = chain('old', 250);
  const hourAgo = Date.now() - 3_600_000;
  await withRedis(SHARED_REDIS, async (redis) => {
    const pipeline = redis.pipeline();
    old.forEach((e, i) => pipeline.xadd(key, `${hourAgo + i}-0`, 'r', e.line, 'c', 'old', 's', i));
    await pipeline.exec();
  });

  const sink = redisSink(t, { key, retentionMs: 60_000 });
  // The head is still the last record, even once trimmed: the chain goes on from it.
  assert.deepEqual(await sink.open(), old.at(-1)?.record);
  const fresh = chain('new', 3);
  writeAll(sink, fresh);
  await sink.flush(Date.now() + FLUSH_MS);

  const lines = (await collect(readRedisStream(SHARED_REDIS, key))).map((r) => r.line);
  const oldLeft = lines.filter((l) => l.includes('"chain":"old"')).length;
  // `~` trims whole stream nodes (100 entries): at most one node outlives the retention.
  assert.ok(oldLeft <= 100, `${oldLeft} old entries left`);
  assert.deepEqual(
    lines.slice(oldLeft),
    fresh.map((e) => e.line),
  );
});

test('redis-stream: while Redis is down the backlog waits and reports full; once back, it all arrives in order', async (t) => {
  const port = await freePort();
  const first = await startRedisServer(port);
  t.after(() => first.kill());
  const key = 'portcullis:audit';
  const sink = redisSink(t, { key, url: first.url, queueMax: 5 });
  await sink.open();
  writeAll(sink, chain('c', 3));
  await sink.flush(Date.now() + FLUSH_MS);
  assert.equal(sink.stats().written, 3);

  await first.kill();
  const backlog = chain('c', 10, () => ({}), { seq: 3, prevHash: 'f'.repeat(64) });
  writeAll(sink, backlog);
  await until(() => sink.stats().failed >= 2, 'failed deliveries');
  assert.equal(sink.full, true);
  assert.equal(sink.stats().queued, 10);

  // A new server on the same port, empty (no persistence): what it holds is what was delivered after.
  const second = await startRedisServer(port);
  t.after(() => second.kill());
  await sink.flush(Date.now() + FLUSH_MS);
  assert.equal(sink.full, false);
  assert.deepEqual(
    { written: sink.stats().written, queued: sink.stats().queued },
    { written: 13, queued: 0 },
  );
  const lines = (await collect(readRedisStream(second.url, key))).map((r) => r.line);
  assert.deepEqual(
    lines,
    backlog.map((e) => e.line),
  );
});

test('redis-stream: a batch whose reply was lost (Redis frozen past the command timeout) is not written twice', async (t) => {
  const server = await startRedisServer(await freePort());
  t.after(() => {
    server.thaw();
    return server.kill();
  });
  const key = 'portcullis:audit';
  const sink = redisSink(t, { key, url: server.url, commandTimeoutMs: 300 });
  await sink.open();
  const entries = chain('c', 6);
  writeAll(sink, entries.slice(0, 1));
  await sink.flush(Date.now() + FLUSH_MS);

  // The transaction reaches the frozen server's socket and times out here; thawed, Redis runs it.
  server.freeze();
  writeAll(sink, entries.slice(1));
  await until(() => sink.stats().failed >= 1, 'a timed-out batch');
  server.thaw();
  await sink.flush(Date.now() + FLUSH_MS);

  assert.equal(sink.stats().queued, 0);
  const lines = (await collect(readRedisStream(server.url, key))).map((r) => r.line);
  assert.deepEqual(
    lines,
    entries.map((e) => e.line),
  );
});

// ---------------------------------------------------------------- PostgreSQL

async function withPostgres<T>(work: (client: pg.Client) => Promise<T>, url = PG_URL): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** A schema of the test's own, dropped with everything in it afterwards. */
function isolatedSchema(t: TestContext): string {
  const schema = `portcullis_test_${randomBytes(6).toString('hex')}`;
  t.after(() => withPostgres((c) => c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)));
  return schema;
}

function postgresSink(t: TestContext, options: Partial<PostgresSinkOptions> & { schema: string }) {
  return closeAfter(
    t,
    new PostgresSink({ name: 'postgres', url: PG_URL, flushIntervalMs: 10, ...options }),
  );
}

async function partitions(schema: string): Promise<string[]> {
  return withPostgres(async (c) => {
    const { rows } = await c.query<{ relname: string }>(
      `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = to_regclass($1) ORDER BY 1`,
      [`${schema}.portcullis_audit`],
    );
    return rows.map((r) => r.relname);
  });
}

function partitionOf(day: number): string {
  return `portcullis_audit_p${new Date(day).toISOString().slice(0, 10).replace(/-/g, '')}`;
}

function today(): number {
  return Math.floor(Date.now() / DAY_MS) * DAY_MS;
}

test('postgres: records arrive with their bytes unchanged and read back by chain, then seq', async (t) => {
  const schema = isolatedSchema(t);
  const sink = postgresSink(t, { schema, batchMaxRecords: 7 });
  assert.equal(await sink.open(), undefined);

  // Chain b's records and chain a's alternate in time, a last.
  const base = Date.now() - 60_000;
  const at = (ms: number): string => new Date(base + ms).toISOString();
  const b = chain('b', 10, (i) => ({
    tenant: 'acme',
    tool: 'echo',
    status: 200,
    rpcId: i,
    time: at(2 * i),
  }));
  const a = chain('a', 10, (i) => ({
    isError: i % 2 === 0,
    rpcId: `r${i}`,
    args: AWKWARD_ARGS,
    time: at(2 * i + 1),
  }));
  const interleaved = b.flatMap((e, i) => [e, a[i] as Entry]);
  writeAll(sink, interleaved);
  await sink.flush(Date.now() + FLUSH_MS);
  assert.deepEqual(sink.stats(), { written: 20, failed: 0, queued: 0, spoolBytes: 0 });

  const read = await collect(readPostgres(`${PG_URL}?table=${schema}.portcullis_audit`));
  assert.deepEqual(
    read.map((r) => r.line),
    [...a, ...b].map((e) => e.line),
  );
  assert.equal(read[0]?.where, `postgres table ${schema}.portcullis_audit chain a seq 0`);

  const columns = await withPostgres((c) =>
    c.query(
      `SELECT tenant, tool, status, is_error, rpc_id, record->'args'->>'text' AS text
       FROM ${schema}.portcullis_audit WHERE (chain, seq) IN (('b', 3), ('a', 2)) ORDER BY chain`,
    ),
  );
  assert.deepEqual(columns.rows, [
    {
      tenant: null,
      tool: null,
      status: null,
      is_error: true,
      rpc_id: 'r2',
      // The jsonb copy cannot hold NUL or a lone surrogate; the line keeps them.
      text: 'NUL \uFFFD, lone \uFFFD and \uFFFD, a pair \ud83d\ude00, "quotes", \\u0000 and é',
    },
    { tenant: 'acme', tool: 'echo', status: 200, is_error: null, rpc_id: '3', text: null },
  ]);

  // The newest by time, whichever chain it is in.
  const reopened = postgresSink(t, { schema });
  assert.deepEqual(await reopened.open(), interleaved.at(-1)?.record);

  // A batch sent again (its COMMIT reply lost) adds nothing.
  writeAll(reopened, interleaved.slice(0, 5));
  await reopened.flush(Date.now() + FLUSH_MS);
  assert.deepEqual(reopened.stats(), { written: 5, failed: 0, queued: 0, spoolBytes: 0 });
  const count = await withPostgres((c) =>
    c.query(`SELECT count(*)::int AS n FROM ${schema}.portcullis_audit`),
  );
  assert.equal(count.rows[0]?.n, 20);
});

test('postgres: the table refuses UPDATE, DELETE and TRUNCATE, also on a partition addressed directly', async (t) => {
  const schema = isolatedSchema(t);
  const sink = postgresSink(t, { schema });
  await sink.open();
  writeAll(sink, chain('c', 2));
  await sink.flush(Date.now() + FLUSH_MS);

  const refused = /append-only/;
  const table = `${schema}.portcullis_audit`;
  const partition = `${schema}.${partitionOf(today())}`;
  await withPostgres(async (c) => {
    await assert.rejects(c.query(`UPDATE ${table} SET tool = 'x'`), refused);
    await assert.rejects(c.query(`DELETE FROM ${table} WHERE seq = 0`), refused);
    await assert.rejects(c.query(`TRUNCATE ${table}`), refused);
    await assert.rejects(c.query(`UPDATE ${partition} SET tool = 'x'`), refused);
    await assert.rejects(c.query(`DELETE FROM ${partition}`), refused);
    const { rows } = await c.query(`SELECT count(*)::int AS n FROM ${table} WHERE tool IS NULL`);
    assert.equal(rows[0]?.n, 2);
  });
});

test('postgres: a partition per day, made ahead and on demand; partitions past retention are dropped', async (t) => {
  const schema = isolatedSchema(t);
  const day = today();
  const sink = postgresSink(t, { schema, retentionDays: 30 });
  await sink.open();
  assert.deepEqual(await partitions(schema), [partitionOf(day), partitionOf(day + DAY_MS)]);

  const at = (d: number): Partial<AuditRecord> => ({ time: new Date(d + 3_600_000).toISOString() });
  const entries = [
    ...chain('c', 1, () => at(day - 10 * DAY_MS)),
    ...chain('d', 1, () => at(day + 5 * DAY_MS)),
  ];
  writeAll(sink, entries);
  await sink.flush(Date.now() + FLUSH_MS);
  assert.equal(sink.stats().written, 2);
  assert.deepEqual(
    await partitions(schema),
    [day - 10 * DAY_MS, day, day + DAY_MS, day + 5 * DAY_MS].map(partitionOf),
  );
  await sink.close(Date.now() + 2_000);

  const shorter = postgresSink(t, { schema, retentionDays: 5 });
  await shorter.open();
  assert.deepEqual(
    await partitions(schema),
    [day, day + DAY_MS, day + 5 * DAY_MS].map(partitionOf),
  );
  const lines = await collect(readPostgres(PG_URL, `${schema}.portcullis_audit`));
  assert.deepEqual(
    lines.map((l) => l.line),
    [entries[1]?.line],
  );
});

test('postgres: queryPostgres filters by tenant, tool, session, since and until', async (t) => {
  const schema = isolatedSchema(t);
  const sink = postgresSink(t, { schema });
  await sink.open();
  const base = Date.now() - 60_000;
  const entries = chain('c', 12, (i) => ({
    tenant: i % 2 === 0 ? 'acme' : 'globex',
    tool: i % 3 === 0 ? 'shell' : 'echo',
    session: `s${i % 4}`,
    time: new Date(base + i * 1_000).toISOString(),
  }));
  writeAll(sink, entries);
  await sink.flush(Date.now() + FLUSH_MS);

  const url = `${PG_URL}?table=${schema}.portcullis_audit`;
  const lines = (pick: (i: number) => boolean): string[] =>
    entries.filter((_e, i) => pick(i)).map((e) => e.line);
  assert.deepEqual(
    await queryPostgres(url, undefined, { tenant: 'acme' }),
    lines((i) => i % 2 === 0),
  );
  assert.deepEqual(
    await queryPostgres(url, undefined, { tenant: 'acme', tool: 'shell' }),
    lines((i) => i % 6 === 0),
  );
  assert.deepEqual(
    await queryPostgres(url, undefined, { session: 's1' }),
    lines((i) => i % 4 === 1),
  );
  assert.deepEqual(
    await queryPostgres(url, undefined, { since: new Date(base + 9_000) }),
    lines((i) => i >= 9),
  );
  assert.deepEqual(
    await queryPostgres(url, undefined, {
      since: new Date(base + 2_000),
      until: new Date(base + 5_000),
      limit: 2,
    }),
    lines((i) => i === 2 || i === 3),
  );
  // A value is a parameter, never SQL.
  assert.deepEqual(await queryPostgres(url, undefined, { tenant: "acme' OR '1'='1" }), []);
});

test('postgres: a cut connection delays delivery and loses nothing', async (t) => {
  const link = await cuttableLink(5432);
  t.after(() => link.close());
  const schema = isolatedSchema(t);
  const sink = postgresSink(t, {
    schema,
    url: `postgres://postgres@127.0.0.1:${link.port}/postgres`,
  });
  await sink.open();
  const entries = chain('c', 8);
  writeAll(sink, entries.slice(0, 3));
  await sink.flush(Date.now() + FLUSH_MS);

  link.cut();
  writeAll(sink, entries.slice(3));
  await until(() => sink.stats().failed >= 2, 'failed deliveries');
  assert.equal(sink.stats().queued, 5);
  link.restore();
  await sink.flush(Date.now() + FLUSH_MS);

  assert.deepEqual(
    { written: sink.stats().written, queued: sink.stats().queued },
    { written: 8, queued: 0 },
  );
  const lines = await collect(readPostgres(PG_URL, `${schema}.portcullis_audit`));
  assert.deepEqual(
    lines.map((l) => l.line),
    entries.map((e) => e.line),
  );
});

test('the readers page through a log longer than one read, in order', async (t) => {
  const key = `${isolatedPrefix(t)}audit`;
  const schema = isolatedSchema(t);
  const redis = redisSink(t, { key });
  const postgres = postgresSink(t, { schema });
  await Promise.all([redis.open(), postgres.open()]);
  const entries = chain('c', 2_345);
  writeAll(redis, entries);
  writeAll(postgres, entries);
  await Promise.all([redis.flush(Date.now() + FLUSH_MS), postgres.flush(Date.now() + FLUSH_MS)]);

  const expected = entries.map((e) => e.line);
  const fromRedis = await collect(readRedisStream(SHARED_REDIS, key));
  assert.deepEqual(
    fromRedis.map((r) => r.line),
    expected,
  );
  const fromPostgres = await collect(readPostgres(PG_URL, `${schema}.portcullis_audit`));
  assert.deepEqual(
    fromPostgres.map((r) => r.line),
    expected,
  );
});

// ---------------------------------------------------------------- names and URLs

test('table and schema names from configuration are validated before any SQL', () => {
  const options = { name: 'p', url: PG_URL };
  for (const table of [
    'Audit',
    'audit-log',
    '1audit',
    'a"; DROP TABLE x; --',
    '',
    'a'.repeat(52),
  ]) {
    assert.throws(() => new PostgresSink({ ...options, table }), RangeError, table);
  }
  assert.throws(() => new PostgresSink({ ...options, schema: 'public; --' }), RangeError);
  assert.throws(() => parseAuditUrl(`${PG_URL}?table=a.b.c`), RangeError);
  assert.throws(() => parseAuditUrl(`${PG_URL}?table=Bad`), RangeError);
});

test('parseAuditUrl: the key or table comes from the query string, else the default', () => {
  assert.deepEqual(parseAuditUrl('redis://127.0.0.1:6379/2?key=team%3Aaudit'), {
    kind: 'redis',
    url: 'redis://127.0.0.1:6379/2',
    key: 'team:audit',
  });
  assert.deepEqual(parseAuditUrl('rediss://h:1/0'), {
    kind: 'redis',
    url: 'rediss://h:1/0',
    key: 'portcullis:audit',
  });
  assert.deepEqual(parseAuditUrl('postgres://u@h/db?sslmode=require&table=ops.audit'), {
    kind: 'postgres',
    url: 'postgres://u@h/db?sslmode=require',
    table: 'ops.audit',
  });
  assert.deepEqual(parseAuditUrl('postgresql://u@h/db'), {
    kind: 'postgres',
    url: 'postgresql://u@h/db',
    table: 'portcullis_audit',
  });
  assert.throws(() => parseAuditUrl('https://h/x'), RangeError);
  assert.throws(() => parseAuditUrl('not a url'), RangeError);
});
