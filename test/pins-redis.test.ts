/**
 * Trust on first use across replicas: two gateways share a real Redis in
 * front of one server that changes its tools (test/fixtures/rug-pull-server.ts).
 * What one replica trusted first, the other enforces; `pins reset` (admin API
 * and CLI) approves a changed tool on both; a store that goes away breaks no
 * serving, and what was trusted meanwhile reaches it when it is back; a reset
 * made while a replica was cut off reaches it too, and a store that lost its
 * data loosens no pin.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { Redis } from 'ioredis';
import pino from 'pino';
import { startGateway, type Gateway } from '../src/server/gateway.js';
import { PIN_TTL_MS, StorePinBook, type PinEntry } from '../src/server/pins.js';
import { MemoryStore } from '../src/store/memory.js';
import { MAX_PINS_PER_SERVER } from '../src/policy/tools.js';
import {
  ADD_DESCRIPTION,
  startRugPullServer,
  type RugPullServer,
} from './fixtures/rug-pull-server.js';
import { TEST_ADMIN_TOKEN } from './helpers/auth-gateway.js';
import { testConfig } from './helpers/gateway.js';
import {
  cuttableLink,
  freePort,
  isolatedPrefix,
  SHARED_REDIS,
  startRedisServer,
} from './helpers/redis.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const CHANGED = `${ADD_DESCRIPTION} Now also multiplies.`;
const ADMIN = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

before(() => {
  // `npm test` builds first; run alone, this file builds when dist/ predates `pins`.
  if (!existsSync(CLI) || !readFileSync(CLI, 'utf8').includes("'pins reset'")) {
    execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  }
});

interface Replica extends Gateway {
  readonly logs: Array<Record<string, unknown>>;
}

async function replica(
  t: TestContext,
  up: RugPullServer,
  url: string,
  prefix: string,
): Promise<Replica> {
  const config = testConfig(
    { rug: up.url },
    { mode: 'none' },
    {
      store: {
        kind: 'redis',
        url,
        keyPrefix: prefix,
        commandTimeoutMs: 300,
        connectTimeoutMs: 500,
      },
      admin: { token: TEST_ADMIN_TOKEN },
    },
  );
  const logs: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const gw = await startGateway(config, { log });
  t.after(() => gw.close());
  return Object.assign(gw, { logs });
}

async function connect(t: TestContext, gw: Gateway): Promise<Client> {
  const client = new Client({ name: 'pins-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.urlFor('rug'))));
  t.after(() => client.close());
  return client;
}

const toolNames = async (client: Client) =>
  (await client.listTools()).tools.map((tool) => tool.name).sort();

async function refusal(promise: Promise<unknown>): Promise<McpError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof McpError, String(err));
    return err;
  }
  assert.fail('expected a refusal');
}

async function pinsOf(gw: Gateway, server = 'rug'): Promise<Map<string, string>> {
  const res = await fetch(`${gw.adminUrl}/admin/pins?server=${server}`, { headers: ADMIN });
  assert.equal(res.status, 200);
  const { pins } = (await res.json()) as { pins: PinEntry[] };
  return new Map(pins.map((p) => [p.tool, p.pin]));
}

function resetPin(gw: Gateway, server: string, tool: string, headers = ADMIN): Promise<Response> {
  return fetch(
    `${gw.adminUrl}/admin/pins/${encodeURIComponent(server)}/${encodeURIComponent(tool)}`,
    { method: 'DELETE', headers },
  );
}

async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

/** Two replicas in front of one changing server; `a` has trusted its tools, `b` knows them. */
async function trustedThroughA(t: TestContext) {
  const up = await startRugPullServer();
  t.after(() => up.close());
  const prefix = isolatedPrefix(t);
  const a = await replica(t, up, SHARED_REDIS, prefix);
  const b = await replica(t, up, SHARED_REDIS, prefix);
  const ca = await connect(t, a);
  assert.deepEqual(await toolNames(ca), ['add', 'echo']);
  await eventually(async () => (await pinsOf(b)).size === 2, 'b learns the pins a trusted');
  const first = await pinsOf(a);
  assert.deepEqual(await pinsOf(b), first);
  return { up, prefix, a, b, ca, first };
}

test('a tool trusted through one replica and changed is blocked through the other, until its pin is reset', async (t) => {
  const { up, prefix, a, b, ca, first } = await trustedThroughA(t);
  const redis = new Redis(SHARED_REDIS);
  t.after(() => redis.quit());
  const key = `${prefix}pins:${JSON.stringify(['rug', 'add'])}`;
  assert.equal(await redis.get(key), first.get('add'));
  assert.ok((await redis.pttl(key)) > PIN_TTL_MS - 60_000, 'a pin lives as long as PIN_TTL_MS');

  up.change('add', { description: CHANGED });
  // b never saw the old definition: the shared pin blocks the new one there too.
  const cb = await connect(t, b);
  assert.deepEqual(await toolNames(cb), ['echo']);
  const err = await refusal(cb.callTool({ name: 'add', arguments: { a: 1, b: 2 } }));
  assert.equal((err.data as { code: string }).code, 'PORTCULLIS_ERR_POLICY_TOOL_CHANGED');
  assert.match(err.message, /portcullis pins reset --server rug --tool add/);
  assert.deepEqual(await toolNames(ca), ['echo']);
  assert.equal(up.calls.get('add'), undefined, 'no blocked call reached the server');

  // The admin API wants its credential, and names what it does not know.
  assert.equal((await resetPin(a, 'rug', 'add', {} as typeof ADMIN)).status, 401);
  assert.equal((await resetPin(a, 'rug', 'nope')).status, 404);

  const reset = await resetPin(a, 'rug', 'add');
  assert.equal(reset.status, 200);
  assert.deepEqual(await reset.json(), { forgotten: { server: 'rug', tool: 'add' } });
  await eventually(async () => !(await pinsOf(b)).has('add'), 'b forgets the pin');
  // The refusal b remembered is gone with the pin: callable before the agent lists again.
  await cb.callTool({ name: 'add', arguments: { a: 1, b: 2 } });
  assert.deepEqual(await toolNames(cb), ['add', 'echo']);
  assert.deepEqual(await toolNames(ca), ['add', 'echo']);
  await ca.callTool({ name: 'add', arguments: { a: 2, b: 2 } });
  assert.equal(up.calls.get('add'), 2);
  await eventually(
    async () => (await pinsOf(a)).get('add') === (await pinsOf(b)).get('add'),
    'both replicas trust the same new pin',
  );
  const now = (await pinsOf(a)).get('add');
  assert.ok(now !== undefined && now !== first.get('add'));
  assert.equal(await redis.get(key), now);
  assert.ok(a.logs.some((l) => l.event === 'pins.reset'));
});

test('portcullis pins reset, from the command line, approves a changed tool on every replica', async (t) => {
  const { up, a, b, ca } = await trustedThroughA(t);
  up.change('add', { description: CHANGED });
  const cb = await connect(t, b);
  assert.deepEqual(await toolNames(cb), ['echo']);
  const run = promisify(execFile);
  const env: NodeJS.ProcessEnv = { ...process.env, PORTCULLIS_ADMIN_TOKEN: TEST_ADMIN_TOKEN };
  delete env.NODE_OPTIONS;
  const listed = await run(
    process.execPath,
    [CLI, 'pins', 'list', '--admin-url', b.adminUrl as string, '--server', 'rug'],
    { env },
  );
  const names = (JSON.parse(listed.stdout) as { pins: PinEntry[] }).pins.map((p) => p.tool);
  assert.deepEqual(names, ['add', 'echo']);

  const out = await run(
    process.execPath,
    [CLI, 'pins', 'reset', '--admin-url', b.adminUrl as string, '--server', 'rug', '--tool', 'add'],
    { env },
  );
  assert.deepEqual(JSON.parse(out.stdout), { forgotten: { server: 'rug', tool: 'add' } });
  await eventually(async () => !(await pinsOf(a)).has('add'), 'a forgets the pin');
  assert.deepEqual(await toolNames(ca), ['add', 'echo']);
  assert.deepEqual(await toolNames(cb), ['add', 'echo']);
  await cb.callTool({ name: 'add', arguments: { a: 1, b: 1 } });

  // A tool with no pin is an error, exit status 1.
  await assert.rejects(
    run(
      process.execPath,
      [CLI, 'pins', 'reset', '--admin-url', b.adminUrl as string, '--server', 'rug', '--tool', 'x'],
      { env },
    ),
    (err: { code?: number; stderr?: string }) =>
      err.code === 1 &&
      /404/.test(err.stderr ?? '') &&
      /no pin for tool 'x'/.test(err.stderr ?? ''),
  );
});

test('the store going away breaks no serving; pins trusted meanwhile reach it when it is back, and none is loosened', async (t) => {
  const up = await startRugPullServer();
  t.after(() => up.close());
  const port = await freePort();
  let redis = await startRedisServer(port);
  t.after(() => redis.kill());
  const gw = await replica(t, up, redis.url, 'portcullis-pins-outage:');
  const client = await connect(t, gw);
  assert.deepEqual(await toolNames(client), ['add', 'echo']);
  const first = await pinsOf(gw);

  await redis.kill();
  await eventually(
    async () =>
      /portcullis_store_healthy 0/.test(
        await (await fetch(`${gw.adminUrl}/metrics`, { headers: ADMIN })).text(),
      ),
    'the store reported down',
  );
  // Serving goes on from the mirror: a new tool is trusted here, a changed one stays blocked.
  up.addTool('fresh', { description: 'Returns its name.' });
  up.addTool('another', { description: 'Returns its name too.' });
  up.change('add', { description: CHANGED });
  assert.deepEqual(await toolNames(client), ['another', 'echo', 'fresh']);
  await client.callTool({ name: 'fresh', arguments: {} });
  assert.deepEqual(await toolNames(client), ['another', 'echo', 'fresh']);
  // A reset needs the store: refused, and nothing forgotten.
  assert.equal((await resetPin(gw, 'rug', 'add')).status, 503);
  assert.equal((await pinsOf(gw)).get('add'), first.get('add'));
  assert.equal(
    gw.logs.filter((l) => l.event === 'pins.store_unavailable').length,
    1,
    'the outage is logged once',
  );

  // Back, but empty (no persistence): every pin this replica holds is offered again.
  redis = await startRedisServer(port);
  const direct = new Redis(redis.url);
  t.after(() => direct.quit());
  const stored = (tool: string) =>
    direct.get(`portcullis-pins-outage:pins:${JSON.stringify(['rug', tool])}`);
  await eventually(
    async () => (await stored('fresh')) !== null && (await stored('another')) !== null,
    'pins trusted during the outage reach the store',
    10_000,
  );
  await eventually(
    async () => (await stored('add')) === first.get('add'),
    'the old pin of add, which the store lost, is offered again',
  );
  assert.equal(await stored('echo'), first.get('echo'));
  assert.ok(gw.logs.some((l) => l.event === 'pins.store_lost'));
  assert.deepEqual(await toolNames(client), ['another', 'echo', 'fresh'], 'add is still blocked');
});

test('a reset made while a replica was cut off from the store reaches it when it is back', async (t) => {
  const up = await startRugPullServer();
  t.after(() => up.close());
  const link = await cuttableLink(6379);
  t.after(() => link.close());
  const prefix = isolatedPrefix(t);
  const cut = await replica(t, up, `redis://127.0.0.1:${link.port}`, prefix);
  const other = await replica(t, up, SHARED_REDIS, prefix);
  const cc = await connect(t, cut);
  assert.deepEqual(await toolNames(cc), ['add', 'echo']);
  await eventually(async () => (await pinsOf(other)).size === 2, 'the other replica learns them');
  up.change('add', { description: CHANGED });
  assert.deepEqual(await toolNames(cc), ['echo']);

  link.cut();
  await eventually(
    async () =>
      /portcullis_store_healthy 0/.test(
        await (await fetch(`${cut.adminUrl}/metrics`, { headers: ADMIN })).text(),
      ),
    'the cut-off replica reports the store down',
  );
  assert.equal((await resetPin(other, 'rug', 'add')).status, 200);
  assert.ok((await pinsOf(cut)).has('add'), 'the broadcast never reached it');
  link.restore();
  await eventually(
    async () => !(await pinsOf(cut)).has('add'),
    'the reset is learnt on reload, not undone',
    10_000,
  );
  assert.deepEqual(await toolNames(cc), ['add', 'echo']);
});

test('two replicas trusting different definitions at once agree on the one the store took first', async () => {
  const store = new MemoryStore();
  const log = pino({ level: 'silent' });
  const first = new StorePinBook(store, log);
  const second = new StorePinBook(store, log);
  await Promise.all([first.start(), second.start()]);
  first.trust('rug', 'add', 'sha256:aaaa');
  second.trust('rug', 'add', 'sha256:bbbb');
  await Promise.all([first.close(), second.close()]);
  assert.equal(first.trusted('rug', 'add'), 'sha256:aaaa');
  assert.equal(second.trusted('rug', 'add'), 'sha256:aaaa');
  assert.equal(await store.get(`pins:${JSON.stringify(['rug', 'add'])}`), 'sha256:aaaa');
  await store.close();
});

test('a server that keeps inventing tool names fills the store with no more than its cap of pins', async () => {
  const store = new MemoryStore();
  const book = new StorePinBook(store, pino({ level: 'silent' }));
  await book.start();
  for (let i = 0; i < MAX_PINS_PER_SERVER; i++)
    assert.equal(book.trust('rug', `t${i}`, 'sha256:aa'), true);
  assert.equal(book.trust('rug', 'one-more', 'sha256:aa'), false);
  assert.equal(book.trusted('rug', 'one-more'), undefined);
  assert.equal(book.trust('other', 'first', 'sha256:aa'), true, 'another server has its own cap');
  await book.close();
  assert.equal(await store.get(`pins:${JSON.stringify(['rug', 'one-more'])}`), undefined);
  assert.equal((await store.entries('pins:')).length, MAX_PINS_PER_SERVER + 1);
  await store.close();
});
