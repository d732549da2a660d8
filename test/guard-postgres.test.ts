/**
 * The SQL guard end to end, against the published bypass: the official
 * Postgres MCP server (`@modelcontextprotocol/server-postgres` 0.6.2, archived,
 * unfixed) run by the gateway over stdio in its bubblewrap sandbox, on the
 * machine's real PostgreSQL (through its socket directory: the sandbox has no
 * network), driven by the SDK 1.x client.
 *
 * First the attack is shown to work without the guard (`COMMIT; DROP TABLE`
 * escapes the server's read-only transaction); then, with
 * `{ kind: sql, readOnly: true }`, the attack corpus is refused with -32602
 * naming the guard, the database is unchanged afterwards, and benign queries
 * (joins, aggregates, `LIKE '%drop table%'`, a literal holding
 * `COMMIT; DROP TABLE`) are answered exactly as psql answers them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

import { startTestGateway, type SeenFrame } from './helpers/gateway.js';
import { POSTGRES_ENTRY } from './helpers/reference-servers.js';
import { POSTGRES_ATTACKS, POSTGRES_BENIGN } from './fixtures/attack-corpus.js';

const SOCKET_DIR = '/var/run/postgresql';

function psql(database: string, sql: string): string {
  return execFileSync(
    'psql',
    ['-h', '127.0.0.1', '-U', 'postgres', '-d', database, '-v', 'ON_ERROR_STOP=1', '-Atqc', sql],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  ).trim();
}

/** A database of its own for the test, with users and orders, dropped afterwards. */
function database(t: TestContext, name: string): string {
  const db = `portcullis_${name}_${process.pid}`;
  psql('postgres', `DROP DATABASE IF EXISTS ${db}`);
  psql('postgres', `CREATE DATABASE ${db}`);
  t.after(() => psql('postgres', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`));
  psql(
    db,
    `CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text);
     CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric);
     INSERT INTO users VALUES (1, 'ada', 'ada@example.com'), (2, 'bob', NULL), (3, 'drop table eve', 'eve@example.com');
     INSERT INTO orders VALUES (10, 1, 12.5), (11, 1, 7.5), (12, 2, 100);`,
  );
  return db;
}

/** What the database holds, as text: every relation and every row, for a before/after comparison. */
function snapshot(db: string): string {
  return [
    psql(
      db,
      `SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class
       WHERE relnamespace = 'public'::regnamespace`,
    ),
    psql(db, "SELECT string_agg(u::text, ';' ORDER BY id) FROM users u"),
    psql(db, "SELECT string_agg(o::text, ';' ORDER BY id) FROM orders o"),
    psql(db, 'SELECT count(*) FROM pg_roles'),
  ].join('\n');
}

/** The text of a tool result's first content item, parsed as server-postgres's JSON rows. */
const rowsOf = (result: object): unknown => {
  const r = result as { content?: Array<{ text: string }>; isError?: unknown };
  assert.equal(r.isError, false, r.content?.[0]?.text);
  return JSON.parse(r.content?.[0]?.text ?? 'null');
};

async function gatewayFor(
  t: TestContext,
  db: string,
  tools: Record<string, unknown> | undefined,
  frames?: SeenFrame[],
  extra: Record<string, unknown> = {},
) {
  const gateway = await startTestGateway(
    {
      db: {
        transport: 'stdio',
        command: process.execPath,
        args: [POSTGRES_ENTRY, `postgresql://postgres@localhost/${db}?host=${SOCKET_DIR}`],
        sandbox: { mode: 'required' },
        warmPool: 0,
        ...(tools ? { tools } : {}),
        ...extra,
      },
    },
    {},
    frames,
  );
  t.after(() => gateway.close());
  const client = new Client({ name: 'guard-postgres-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(gateway.urlFor('db'))));
  t.after(() => client.close());
  const query = async (sql: string): Promise<unknown> => {
    return rowsOf(await client.callTool({ name: 'query', arguments: { sql } }));
  };
  return { client, query };
}

const GUARDS = { query: { guards: [{ kind: 'sql', argument: 'sql', readOnly: true }] } };

test('the PostgreSQL socket directory is there for the sandboxed server', () => {
  assert.ok(existsSync(SOCKET_DIR), `${SOCKET_DIR} (PostgreSQL's socket directory) is missing`);
});

test("without the guard, COMMIT; DROP TABLE escapes server-postgres's read-only transaction", async (t) => {
  const db = database(t, 'unguarded');
  const { client } = await gatewayFor(t, db, undefined);
  // The server runs the text inside BEGIN TRANSACTION READ ONLY; the COMMIT ends it.
  await client
    .callTool({ name: 'query', arguments: { sql: 'COMMIT; DROP TABLE orders CASCADE;' } })
    .catch(() => undefined);
  assert.equal(psql(db, "SELECT to_regclass('public.orders') IS NULL"), 't', 'the table is gone');
});

test('with the sql guard, the attack corpus is refused before the server, and the database is unchanged', async (t) => {
  const db = database(t, 'guarded');
  const before = snapshot(db);
  const frames: SeenFrame[] = [];
  const { client } = await gatewayFor(t, db, GUARDS, frames);
  assert.ok(POSTGRES_ATTACKS.length >= 20);
  for (const sql of POSTGRES_ATTACKS) {
    const err = await client
      .callTool({ name: 'query', arguments: { sql } })
      .then((r) => assert.fail(`${JSON.stringify(sql)} was answered: ${JSON.stringify(r)}`))
      .catch((e: unknown) => e);
    assert.ok(err instanceof McpError, `${JSON.stringify(sql)}: ${String(err)}`);
    assert.equal(err.code, -32602, sql);
    const data = err.data as Record<string, unknown>;
    assert.equal(data.code, 'PORTCULLIS_ERR_POLICY_GUARD', sql);
    assert.equal(data.rule, 'servers.db.tools.query.guards.0', sql);
    assert.equal(data.path, '/sql', sql);
  }
  // The gateway decided every one of them deny at its door: none went upstream.
  const calls = frames.filter(
    (f) => f.direction === 'client-to-server' && f.method === 'tools/call',
  );
  assert.equal(calls.length, POSTGRES_ATTACKS.length);
  assert.deepEqual(
    calls.filter((f) => f.outcome !== 'deny').map((f) => JSON.stringify(f.message)),
    [],
  );
  assert.equal(snapshot(db), before, 'the database is as it was');
});

test('with the sql guard, benign queries are answered exactly as psql answers them', async (t) => {
  const db = database(t, 'benign');
  const { query } = await gatewayFor(t, db, GUARDS);
  // psql's rows with every value as PostgreSQL prints it (node-postgres hands the
  // server numerics and bigints as text, ints as numbers: compared as text).
  const fromPsql = (sql: string): unknown =>
    JSON.parse(
      psql(
        db,
        `SELECT coalesce(json_agg((SELECT json_object_agg(key, value) FROM json_each_text(row_to_json(q)))), '[]')
         FROM (${sql}\n) q`,
      ),
    );
  const asText = (rows: unknown): unknown =>
    (rows as Array<Record<string, unknown>>).map((row) =>
      Object.fromEntries(Object.entries(row).map(([k, v]) => [k, v === null ? null : String(v)])),
    );
  for (const sql of POSTGRES_BENIGN) assert.deepEqual(asText(await query(sql)), fromPsql(sql), sql);
  assert.deepEqual(
    await query('SELECT 1 AS one;'),
    [{ one: 1 }],
    'a trailing semicolon is one statement',
  );
});

test("a typed virtual tool on server-postgres: the real query tool is hidden, and '; DROP TABLE … in a parameter is data", async (t) => {
  const db = database(t, 'virtual');
  psql(
    db,
    "INSERT INTO users VALUES (4, 'O''Brien', NULL), (5, $$'; DROP TABLE users; --$$, NULL)",
  );
  const before = snapshot(db);
  const { client } = await gatewayFor(t, db, GUARDS, undefined, {
    virtualTools: {
      find_user: {
        tool: 'query',
        title: 'Find a user',
        description: 'The users with exactly this name.',
        inputSchema: {
          type: 'object',
          properties: { name: { type: 'string', maxLength: 200 } },
          required: ['name'],
          additionalProperties: false,
        },
        arguments: { sql: 'SELECT id, name FROM users WHERE name = {{name:literal}} ORDER BY id' },
      },
      count_rows: {
        tool: 'query',
        description: 'How many rows a table has.',
        inputSchema: {
          type: 'object',
          properties: { table: { type: 'string', enum: ['users', 'orders'] } },
          required: ['table'],
        },
        arguments: { sql: 'SELECT count(*)::int AS n FROM {{table:ident}}' },
      },
    },
  });
  const listed = (await client.listTools()).tools;
  assert.deepEqual(
    listed.map((tool) => tool.name),
    ['find_user', 'count_rows'],
    'the agent sees the virtual tools only',
  );
  assert.equal(listed[0]?.description, 'The users with exactly this name.');

  const find = async (name: string) =>
    rowsOf(await client.callTool({ name: 'find_user', arguments: { name } }));
  assert.deepEqual(await find('ada'), [{ id: 1, name: 'ada' }]);
  assert.deepEqual(await find("O'Brien"), [{ id: 4, name: "O'Brien" }]);
  // The injection is a name like any other: it finds the row that holds it, and drops nothing.
  assert.deepEqual(await find("'; DROP TABLE users; --"), [
    { id: 5, name: "'; DROP TABLE users; --" },
  ]);
  assert.deepEqual(await find("x' OR '1'='1"), []);
  assert.deepEqual(await find("\\'; DROP TABLE users; --"), []);
  assert.deepEqual(
    rowsOf(await client.callTool({ name: 'count_rows', arguments: { table: 'orders' } })),
    [{ n: 3 }],
  );
  // Outside the schema: refused at the gateway.
  const refused = await client
    .callTool({ name: 'count_rows', arguments: { table: 'pg_authid' } })
    .catch((e: unknown) => e);
  assert.ok(refused instanceof McpError);
  assert.equal(refused.code, -32602);
  // The real tool cannot be called past the virtual ones.
  const hidden = await client
    .callTool({ name: 'query', arguments: { sql: 'SELECT 1' } })
    .catch((e: unknown) => e);
  assert.ok(hidden instanceof McpError, String(hidden));
  assert.equal((hidden.data as { code: string }).code, 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND');
  assert.equal(snapshot(db), before, 'the database is as it was');
});
