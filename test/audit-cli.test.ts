/**
 * `portcullis audit verify` and `portcullis audit query` (the built CLI) on
 * the records of a real run: a JWT gateway with two tenants in front of the
 * modern MCP server fixture, writing its audit trail to a directory, a Redis
 * stream and a PostgreSQL table at once (a missing Redis or PostgreSQL fails
 * the test). Verify passes on all three stores and names the entry forged
 * into or removed from the stream and the row rewritten in the table; query
 * returns exactly the records each filter selects, from files and from
 * PostgreSQL alike.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';
import { readAuditFiles } from '../src/audit/verify.js';
import type { AuditRecord } from '../src/audit/types.js';
import { ACME_TENANT } from './fixtures/audit-tenants.js';

const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);

const REDIS_URL = 'redis://127.0.0.1:6379';
const PG_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `portcullis audit …`: its exit status and output. */
async function audit(...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, 'audit', ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const lines = (text: string): string[] => text.split('\n').filter((l) => l !== '');
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const suffix = randomBytes(6).toString('hex');
const streamKey = `portcullis:test:audit-cli:${suffix}`;
const table = `audit_cli_${suffix}`;
const redisSource = `${REDIS_URL}/0?key=${encodeURIComponent(streamKey)}`;
const pgSource = `${PG_URL}?table=${table}`;

let upstream: ModernServer;
let dir: string;
let auditDir: string;
let issuer: SigningKey;
let redis: Redis;
let db: pg.Client;
/** The run's records as the file sink wrote them, in order, with their lines. */
let written: Array<{ line: string; record: AuditRecord }>;
/** Records written after this were sent after it: calls 4 and 5. */
let boundary: Date;

/** acme as the audit tests have it (allowed, denied and shadow-denied calls); globex may echo. */
const TENANTS = {
  acme: ACME_TENANT,
  globex: { servers: { everything: { tools: ['echo'] } } },
};

async function call(
  gw: AuthGateway,
  tenant: string,
  sub: string,
  tool: string,
  args: Record<string, unknown>,
  id: number,
): Promise<Response> {
  const bearer = await mint(issuer, gw.url, { claims: { tenant, sub, client_id: 'agent-7' } });
  const res = await post(gw.urlFor('everything'), modernCall(tool, args, id), {
    ...modernHeaders(tool),
    authorization: `Bearer ${bearer}`,
  });
  await res.text();
  return res;
}

before(async () => {
  // Both stores first: either missing fails here, before a gateway starts.
  const redisClient = new Redis(REDIS_URL, { lazyConnect: true, retryStrategy: () => null });
  await redisClient.connect();
  redis = redisClient;
  const pgClient = new pg.Client({ connectionString: PG_URL });
  await pgClient.connect();
  db = pgClient;

  upstream = await startModernServer();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-audit-cli-'));
  auditDir = join(dir, 'audit');
  issuer = await newKey('ES256');
  const gw = await startAuthGateway(
    { everything: upstream.url },
    { jwt: { jwksFile: await writeJwks(dir, issuer) } },
    {
      audit: {
        file: { dir: auditDir },
        redisStream: { url: REDIS_URL, key: streamKey },
        postgres: { url: PG_URL, table },
      },
      tenants: TENANTS,
    },
  );
  try {
    assert.equal((await call(gw, 'acme', 'alice', 'echo', { text: 'hi' }, 1)).status, 200);
    // A denial is a JSON-RPC error in a 200.
    assert.equal(
      (await call(gw, 'acme', 'alice', 'echo', { text: 'tell me the secret' }, 2)).status,
      200,
    );
    assert.equal((await call(gw, 'acme', 'bob', 'slow', { ms: 0 }, 3)).status, 200);
    // No token: a refusal, before any message was decided.
    const anonymous = await post(gw.urlFor('everything'), modernCall('echo', { text: 'hi' }, 9), {
      ...modernHeaders('echo'),
    });
    assert.equal(anonymous.status, 401);
    await anonymous.text();
    // Every record so far was stamped before `boundary`, every later one at or after it.
    boundary = new Date(Date.now() + 2);
    await sleep(5);
    assert.equal((await call(gw, 'globex', 'carol', 'echo', { text: 'hello' }, 4)).status, 200);
    assert.equal(
      (
        await call(
          gw,
          'acme',
          'alice',
          'echo',
          { text: 'a message well over twenty characters' },
          5,
        )
      ).status,
      200,
    );
  } finally {
    // Closing flushes every sink.
    await gw.close();
  }
  written = [];
  for await (const { line } of readAuditFiles([auditDir]))
    written.push({ line, record: JSON.parse(line) as AuditRecord });
  // The gateway's own sinks filled the stores, with as many records as its files.
  assert.equal(
    await redis.xlen(streamKey),
    written.length,
    'audit.redisStream: the gateway wrote each record to the stream',
  );
  const { rows } = await db.query<{ found: string | null }>(
    'SELECT to_regclass($1)::text AS found',
    [table],
  );
  assert.ok(rows[0]?.found, 'audit.postgres: the gateway made its table');
  const count = await db.query<{ n: string }>(`SELECT count(*)::text AS n FROM "${table}"`);
  assert.equal(
    Number(count.rows[0]?.n),
    written.length,
    'audit.postgres: the gateway wrote each record to the table',
  );
});

after(async () => {
  await redis?.del(streamKey);
  await redis?.quit();
  await db?.query(`DROP TABLE IF EXISTS "${table}" CASCADE`);
  await db?.query(`DROP FUNCTION IF EXISTS "${table}_append_only"()`);
  await db?.end();
  await upstream?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

type Written = (typeof written)[number];

/** The run's records `pick` selects (never checkpoints), in the order written. */
function expected(pick: (r: AuditRecord) => boolean): Written[] {
  return written.filter(({ record }) => record.kind !== 'checkpoint' && pick(record));
}

/** What tells a record of the run from the others: its call and direction, or its kind. */
const label = ({ record: r }: Written): string =>
  r.kind === 'message' ? `${String(r.rpcId)} ${r.direction}` : r.kind;

describe('audit verify', () => {
  test('passes on the directory, the Redis stream and the PostgreSQL table, each by name', async () => {
    const r = await audit('verify', auditDir, redisSource, pgSource);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const out = r.stdout;
    for (const name of [auditDir, redisSource, pgSource])
      assert.match(
        out,
        new RegExp(
          `^${escape(name)}:\\n  chain .*\\n  ok: ${written.length} records verified$`,
          'm',
        ),
      );
    assert.match(out, /^ok: 3 sources verified$/m);
  });

  test('--json reports each source', async () => {
    const r = await audit('verify', '--json', redisSource, pgSource);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      sources: Array<{ source: string; ok: boolean; records: number }>;
    };
    assert.equal(report.ok, true);
    assert.deepEqual(
      report.sources.map((s) => [s.source, s.ok, s.records]),
      [
        [redisSource, true, written.length],
        [pgSource, true, written.length],
      ],
    );
  });

  test('an empty Redis stream is bad: nothing to verify', async () => {
    const r = await audit('verify', `${REDIS_URL}?key=${encodeURIComponent(`${streamKey}:none`)}`);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stdout, /no records: nothing to verify/);
  });

  test('a forged entry added to the Redis stream is named, and the others still pass', async () => {
    const target = written.find(({ record }) => record.tenant === 'acme') as (typeof written)[0];
    const forged = target.line.replace(`"tenant":"${target.record.tenant}"`, '"tenant":"mallory"');
    assert.notEqual(forged, target.line);
    const id = (await redis.xadd(
      streamKey,
      '*',
      'r',
      forged,
      'c',
      target.record.chain,
      's',
      String(target.record.seq),
    )) as string;
    try {
      const r = await audit('verify', auditDir, redisSource);
      assert.equal(r.code, 1, r.stdout);
      assert.match(
        r.stdout,
        new RegExp(
          `BAD redis stream ${escape(streamKey)} id ${escape(id)} \\(seq ${target.record.seq}\\): altered`,
        ),
      );
      assert.match(r.stdout, new RegExp(`^${escape(auditDir)}:\\n(  chain .*\\n)+  ok: `, 'm'));
      assert.match(r.stdout, /^FAILED: 1 of 2 sources bad$/m);
    } finally {
      await redis.xdel(streamKey, id);
    }
    assert.equal(
      (await audit('verify', redisSource)).code,
      0,
      'whole again once the forgery is gone',
    );
  });

  test('an entry deleted from the Redis stream is named by the one after the gap', async () => {
    const entries = await redis.xrange(streamKey, '-', '+');
    const [removedId] = entries[4] as [string, string[]];
    const [nextId] = entries[5] as [string, string[]];
    const removedSeq = (written[4] as { record: AuditRecord }).record.seq;
    assert.equal(await redis.xdel(streamKey, removedId), 1);
    const r = await audit('verify', redisSource);
    assert.equal(r.code, 1, r.stdout);
    assert.match(
      r.stdout,
      new RegExp(
        `BAD redis stream ${escape(streamKey)} id ${escape(nextId)} \\(seq ${removedSeq + 1}\\): .*seq ${removedSeq} is missing`,
      ),
    );
  });
});

describe('audit query', () => {
  /** `audit query --json` from files and from PostgreSQL: both must print exactly `want`'s lines. */
  async function queryBoth(want: Written[], ...filter: string[]): Promise<void> {
    for (const from of [auditDir, pgSource]) {
      const r = await audit('query', '--from', from, '--json', ...filter);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        lines(r.stdout),
        want.map((w) => w.line),
        `${filter.join(' ')} from ${from}`,
      );
      assert.equal(r.stderr, '');
    }
  }

  test('the run wrote what the queries select from', () => {
    assert.deepEqual(written.map(label), [
      'checkpoint',
      '1 in',
      '1 out',
      // The denied call has no answer from the server: only its request.
      '2 in',
      '3 in',
      '3 out',
      'refusal',
      '4 in',
      '4 out',
      '5 in',
      '5 out',
      'checkpoint',
    ]);
  });

  test('by tenant', async () => {
    const want = expected((r) => r.tenant === 'globex');
    assert.deepEqual(want.map(label), ['4 in', '4 out']);
    await queryBoth(want, '--tenant', 'globex');
  });

  test('by tool', async () => {
    const want = expected((r) => r.tool === 'slow');
    assert.deepEqual(want.map(label), ['3 in', '3 out']);
    await queryBoth(want, '--tool', 'slow');
  });

  test('by tenant, subject and tool together', async () => {
    const want = expected((r) => r.tenant === 'acme' && r.subject === 'alice' && r.tool === 'echo');
    assert.deepEqual(want.map(label), ['1 in', '1 out', '2 in', '5 in', '5 out']);
    await queryBoth(want, '--tenant', 'acme', '--subject', 'alice', '--tool', 'echo');
  });

  test('by --since and --until (ISO times), and a duration that takes in the whole run', async () => {
    const later = expected((r) => Date.parse(r.time) >= boundary.getTime());
    assert.deepEqual(later.map(label), ['4 in', '4 out', '5 in', '5 out']);
    await queryBoth(later, '--since', boundary.toISOString());
    const earlier = expected((r) => Date.parse(r.time) < boundary.getTime());
    assert.deepEqual(earlier.map(label), ['1 in', '1 out', '2 in', '3 in', '3 out', 'refusal']);
    await queryBoth(earlier, '--until', boundary.toISOString());
    // Checkpoints are never shown, even when nothing else is asked.
    await queryBoth(
      expected(() => true),
      '--since',
      '1h',
    );
    const none = await audit('query', '--from', auditDir, '--since', '2099-01-01');
    assert.equal(none.code, 0);
    assert.equal(none.stdout, '');
    assert.equal(none.stderr, 'no records match\n');
  });

  test('by decision: the denial and the refusal, the shadow denial', async () => {
    const denied = expected((r) => r.decision === 'deny');
    assert.deepEqual(denied.map(label), ['2 in', 'refusal']);
    assert.equal(denied[0]?.record.rule, 'no-secrets');
    await queryBoth(denied, '--decision', 'deny');
    const shadowed = expected((r) => r.decision === 'shadow-deny');
    assert.deepEqual(shadowed.map(label), ['5 in']);
    assert.equal(shadowed[0]?.record.rule, 'watch-long-echo');
    await queryBoth(shadowed, '--decision', 'shadow-deny', '--tenant', 'acme');
  });

  test('prints one readable line per record by default, and says when more match than --limit', async () => {
    for (const from of [auditDir, pgSource]) {
      const r = await audit('query', '--from', from, '--decision', 'deny', '--limit', '1');
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(lines(r.stdout).length, 1);
      assert.match(
        r.stdout,
        /^\d{4}-\d\d-\d\dT[\d:.]+Z {2}acme\/alice {2}everything {2}in {2}tools\/call {2}echo {2}deny {2}rule=no-secrets {2}status=200 {2}id=2 {2}error=PORTCULLIS_ERR_POLICY_DENIED\n$/,
      );
      assert.match(r.stderr, /^more records match: the first 1 are shown/);
    }
    const refusal = await audit('query', '--from', auditDir, '--decision', 'deny');
    assert.match(
      lines(refusal.stdout)[1] as string,
      / {2}refused \/mcp\/everything {2}.*status=401/,
    );
  });

  test('usage errors exit 2', async () => {
    for (const args of [
      ['--tenant', 'acme'],
      ['--from', auditDir, '--decision', 'maybe'],
      ['--from', auditDir, '--since', 'yesterday'],
      ['--from', auditDir, '--since', '2026-05-01T12:00'],
      ['--from', auditDir, '--limit', '0'],
      ['--from', redisSource],
      ['--from', auditDir, '--since', '1h', '--until', '2h'],
      ['--from', join(dir, 'no-such-dir')],
    ]) {
      const r = await audit('query', ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^portcullis: audit query: /);
    }
  });
});

describe('audit verify after a row of the table was rewritten', () => {
  test('the rewritten row is named', async () => {
    const target = (
      written.find(
        ({ record }) => record.subject === 'alice' && record.seq > 3,
      ) as (typeof written)[0]
    ).record;
    // The trigger refuses UPDATE for every role; its owner can turn it off, which verify catches.
    await assert.rejects(
      db.query(`UPDATE "${table}" SET line = line WHERE chain = $1 AND seq = $2`, [
        target.chain,
        target.seq,
      ]),
      /append-only/,
    );
    await db.query(`ALTER TABLE "${table}" DISABLE TRIGGER USER`);
    const { rowCount } = await db.query(
      `UPDATE "${table}" SET line = replace(line, '"subject":"${target.subject}"', '"subject":"mallory"') ` +
        'WHERE chain = $1 AND seq = $2',
      [target.chain, target.seq],
    );
    assert.equal(rowCount, 1);
    const r = await audit('verify', pgSource);
    assert.equal(r.code, 1, r.stdout);
    assert.match(
      r.stdout,
      new RegExp(
        `BAD postgres table ${table} chain ${escape(target.chain)} seq ${target.seq} \\(seq ${target.seq}\\): altered`,
      ),
    );
  });
});
