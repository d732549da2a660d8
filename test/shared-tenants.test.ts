/**
 * `sharing: shared` with two tenants: the project's hostile stdio server
 * (test/fixtures/hostile-stdio.mjs) configured shared, sandboxed, behind a
 * gateway with JWT authentication; tenant A has two principals (alice,
 * carol), tenant B one (bob). Nothing one tenant's process says reaches the
 * other tenant, and a server request is answered only by the session it
 * reached.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { initializeBody, LEGACY, post } from './helpers/requests.js';
import { openSse } from './helpers/sse.js';
import { mint, newKey, writeJwks } from './helpers/tokens.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));

let dir: string;
let gw: AuthGateway;
let tokens: { alice: string; carol: string; bob: string };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-shared-'));
  const key = await newKey('ES256');
  gw = await startAuthGateway(
    {
      shared: {
        transport: 'stdio',
        command: process.execPath,
        args: [HOSTILE],
        sharing: 'shared',
        sandbox: { mode: 'required' },
      },
      'shared-idle': {
        transport: 'stdio',
        command: process.execPath,
        args: [HOSTILE, 'linger'],
        sharing: 'shared',
        sandbox: { mode: 'required' },
        idleTimeoutMs: 1_000,
        shutdownTimeoutMs: 500,
      },
    },
    { jwt: { jwksFile: await writeJwks(dir, key) } },
  );
  const as = (tenant: string, sub: string) =>
    mint(key, gw.url, { claims: { tenant, sub }, ttlS: 600 });
  tokens = {
    alice: await as('tenant-a', 'alice'),
    carol: await as('tenant-a', 'carol'),
    bob: await as('tenant-b', 'bob'),
  };
});

after(async () => {
  await gw?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Host pids of the hostile server's processes (those started with `mode`, if given). */
function hostileProcesses(mode?: string): Set<string> {
  const found = new Set<string>();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (
        argv[0] === process.execPath &&
        argv[1] === HOSTILE &&
        (mode === undefined || argv[2] === mode)
      )
        found.add(pid);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function eventually(check: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  assert.ok(check(), 'in time');
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<T>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A session of raw requests, its GET stream read event by event. */
async function rawSession(token: string) {
  const url = gw.urlFor('shared');
  const auth = { authorization: `Bearer ${token}` };
  const init = await post(url, initializeBody(1), auth);
  assert.equal(init.status, 200);
  await init.text();
  const headers = {
    ...auth,
    'mcp-session-id': init.headers.get('mcp-session-id') as string,
    'mcp-protocol-version': LEGACY,
  };
  const send = async (body: unknown) => {
    const res = await post(url, body, headers);
    return res.status === 202 ? undefined : await res.text();
  };
  await send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  // The GET stream is the session's once its head arrives.
  const stream = await openSse(url, token, { 'mcp-session-id': headers['mcp-session-id'] });
  let nextId = 100;
  /** A tool call's raw answer. */
  const call = (name: string, args: Record<string, unknown> = {}) =>
    send({ jsonrpc: '2.0', id: nextId++, method: 'tools/call', params: { name, arguments: args } });
  /** Messages on the GET stream until one whose text includes `marker`; all of them. */
  const readUntil = async (marker: string) => {
    const seen: string[] = [];
    while (!seen.at(-1)?.includes(marker)) seen.push((await stream.next()).data);
    return seen;
  };
  return { send, call, readUntil, close: stream.close };
}

/** An SDK client with elicitation, as a principal. */
async function sdkClient(token: string) {
  const client = new Client(
    { name: 'shared-test', version: '1.0.0' },
    { capabilities: { elicitation: {} } },
  );
  const transport = new StreamableHTTPClientTransport(new URL(gw.urlFor('shared')), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return client;
}

/** alice (an SDK client) and carol of tenant A, bob of tenant B, each a session; closed after the test. */
async function threeSessions(t: { after(fn: () => unknown): void }) {
  const alice = await sdkClient(tokens.alice);
  t.after(() => alice.close());
  const carol = await rawSession(tokens.carol);
  t.after(carol.close);
  const bob = await rawSession(tokens.bob);
  t.after(bob.close);
  return { alice, carol, bob };
}

const toolText = (result: unknown): Record<string, unknown> =>
  JSON.parse((result as { content: Array<{ text: string }> }).content[0]?.text as string) as Record<
    string,
    unknown
  >;

test("sharing: shared — one process per tenant; tenant B never sees tenant A's notifications/message", async (t) => {
  const before = hostileProcesses();
  const { alice, carol, bob } = await threeSessions(t);
  const started = [...hostileProcesses()].filter((pid) => !before.has(pid));
  assert.equal(started.length, 2, 'tenant A shares one process, tenant B has its own');

  assert.deepEqual(toolText(await alice.callTool({ name: 'log', arguments: { text: 'from-A' } })), {
    logged: 'from-A',
  });
  // Tied to no request: it goes to every session of A's process, carol's among them.
  assert.ok((await carol.readUntil('from-A')).length >= 1);
  // bob's own message comes after anything that could have leaked to him.
  await bob.call('log', { text: 'from-B' });
  const bobSaw = await bob.readUntil('from-B');
  assert.ok(
    bobSaw.every((m) => !m.includes('from-A')),
    `tenant B saw only its own: ${bobSaw.join(' | ')}`,
  );
});

test("an elicitation for A's session reaches A only; answers to it from B, or from another session of A, are dropped", async (t) => {
  const { alice, carol, bob } = await threeSessions(t);
  const asked: unknown[] = [];
  alice.setRequestHandler(ElicitRequestSchema, async (_req, extra) => {
    asked.push(extra.requestId);
    // Others answer first, with the id alice got and with the server's own.
    for (const other of [bob, carol]) {
      for (const id of [extra.requestId, 'srv-1', 'srv-2']) {
        await other.send({
          jsonrpc: '2.0',
          id,
          result: { action: 'accept', content: { who: 'intruder' } },
        });
      }
    }
    return { action: 'accept', content: { who: 'alice' } };
  });

  const from = gw.logs.length;
  const elicit = alice.callTool({ name: 'elicit', arguments: {} });
  await eventually(() => gw.logs.slice(from).some((l) => l.stderr === 'elicit held'));
  // Once one process served all: bob's request, newer than alice's, drew her question to him.
  const bobRelease = JSON.parse((await bob.call('release')) as string) as { result: unknown };
  assert.deepEqual(toolText(bobRelease.result), { released: 0 }, "bob's process holds none of A's");
  const aliceRelease = alice.callTool({ name: 'release', arguments: {} });
  const result = await within(elicit, 10_000, "alice's elicitation answered");
  assert.deepEqual(toolText(await aliceRelease), { released: 1 });
  assert.deepEqual(toolText(result), {
    answer: { action: 'accept', content: { who: 'alice' } },
  });
  assert.equal(asked.length, 1, 'alice was asked once');
  assert.match(String(asked[0]), /^pc-s/, 'under an id the gateway made');
  await bob.call('log', { text: 'bob-marker' });
  const bobSaw = await bob.readUntil('bob-marker');
  assert.ok(
    bobSaw.every((m) => !m.includes('elicitation/create')),
    `the question never reached tenant B: ${bobSaw.join(' | ')}`,
  );
  assert.ok(
    gw.logs.some(
      (l) => l.msg === 'dropped an answer to a server request this session never received',
    ),
    'the intruding answers were dropped and logged',
  );
});

test("a tenant's shared process ends once no session has used it for idleTimeoutMs", async () => {
  const url = gw.urlFor('shared-idle');
  const before = hostileProcesses('linger');
  const auth = { authorization: `Bearer ${tokens.bob}` };
  const init = await post(url, initializeBody(1), auth);
  assert.equal(init.status, 200);
  await init.text();
  const started = [...hostileProcesses('linger')].filter((pid) => !before.has(pid));
  assert.equal(started.length, 1);
  const del = await fetch(url, {
    method: 'DELETE',
    headers: { ...auth, 'mcp-session-id': init.headers.get('mcp-session-id') as string },
  });
  assert.equal(del.status, 200);
  assert.ok(
    hostileProcesses('linger').has(started[0] as string),
    'shared: it outlives the session',
  );
  await eventually(() => !hostileProcesses('linger').has(started[0] as string), 8_000);
});
