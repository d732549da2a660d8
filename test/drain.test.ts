/**
 * A rolling update loses no call: two gateway processes share a real Redis
 * behind a real nginx (round-robin, no affinity); clients call tools in a
 * loop while one replica gets SIGTERM. It leaves rotation first (/readyz 503,
 * every answer closing its connection, idle streams ended, still serving);
 * nginx, told the replica is not ready, reloads without it, as an ingress
 * controller does; then the replica stops accepting and drains. Every call of
 * every client succeeds, in the same session, and the stopped replica exits 0.
 * And a replica that is killed outright (SIGKILL): sessions of an HTTP
 * upstream go on through the other replica; a stdio session whose process
 * died with it ends with 404, and the client starts a new one.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { stringify } from 'yaml';
import { startChildGateway } from './helpers/child-gateway.js';
import { everythingStdio, startEverything } from './helpers/everything.js';
import { LEAVE_ROTATION_MS, startBalancer } from './helpers/nginx.js';
import { freePort, isolatedPrefix, SHARED_REDIS } from './helpers/redis.js';

/**
 * The upstream and a configuration file for replicas sharing the real Redis
 * under a prefix of the test's own; `extra` is merged into the configuration.
 */
async function replicaSetup(
  t: TestContext,
  servers: (upstreamUrl: string) => Record<string, unknown>,
  extra: Record<string, unknown>,
): Promise<string> {
  const upstream = await startEverything();
  t.after(() => upstream.stop());
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-replicas-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const config = join(dir, 'portcullis.yaml');
  await writeFile(
    config,
    stringify({
      listen: { host: '127.0.0.1' },
      auth: { mode: 'none' },
      store: { kind: 'redis', url: SHARED_REDIS, keyPrefix: isolatedPrefix(t) },
      servers: servers(upstream.url),
      log: { level: 'info' },
      ...extra,
    }),
  );
  return config;
}

const CLIENTS = 3;
/** Calls each client makes before the SIGTERM, and after the replica is gone. */
const CALLS_AROUND = 15;

test('a client calling in a loop loses no request while one of two replicas drains on SIGTERM', async (t) => {
  const config = await replicaSetup(t, (url) => ({ everything: { url } }), {
    shutdown: { leaveRotationMs: LEAVE_ROTATION_MS, drainTimeoutMs: 5_000 },
  });
  const adminA = await freePort();
  const a = await startChildGateway(t, config, ['--port', '0', '--admin-port', String(adminA)]);
  const b = await startChildGateway(t, config, ['--port', '0', '--admin-port', '0']);
  const lb = await startBalancer([Number(new URL(a.url).port), Number(new URL(b.url).port)]);
  t.after(() => lb.stop());

  const clients = await Promise.all(
    Array.from({ length: CLIENTS }, async (_, i) => {
      const client = new Client({ name: `looper-${i}`, version: '1.0.0' });
      const transport = new StreamableHTTPClientTransport(new URL(`${lb.url}/mcp/everything`));
      await client.connect(transport);
      t.after(() => client.close());
      return { client, transport, session: transport.sessionId };
    }),
  );
  const failures: string[] = [];
  let calls = 0;
  let stopped = false;
  const loop = async (client: Client, i: number): Promise<void> => {
    let after = 0;
    for (let n = 0; after < CALLS_AROUND; n++) {
      const message = `client ${i} call ${n}`;
      try {
        const res = await client.callTool({ name: 'echo', arguments: { message } });
        if (!JSON.stringify(res.content).includes(message))
          failures.push(`${message}: wrong answer`);
      } catch (err) {
        failures.push(`${message}: ${(err as Error).message}`);
      }
      calls++;
      if (stopped) after++;
    }
  };
  const loops = clients.map((c, i) => loop(c.client, i));

  while (calls < CLIENTS * CALLS_AROUND) await new Promise((r) => setTimeout(r, 10));
  a.signal();
  // Out of rotation at once, while still serving.
  let ready = 0;
  for (let i = 0; i < 50 && ready !== 503; i++) {
    ready = (await fetch(`http://127.0.0.1:${adminA}/readyz`).catch(() => undefined))?.status ?? 0;
    if (ready !== 503) await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(ready, 503, '/readyz of the stopped replica turned 503');
  // What a load balancer that watches readiness does (an ingress controller, a
  // cloud load balancer): the replica leaves its rotation, while it still serves.
  lb.setReplicas([Number(new URL(b.url).port)]);
  const code = await a.exited;
  stopped = true;
  await Promise.all(loops);

  assert.deepEqual(failures, [], 'every call succeeded');
  assert.equal(code, 0, `the stopped replica drained and exited 0: ${a.stderr()}`);
  assert.ok(
    a.logs.some((l) => l.event === 'shutdown.leaving_rotation'),
    'it left rotation before it stopped accepting',
  );
  for (const c of clients)
    assert.equal(c.transport.sessionId, c.session, 'each client kept its session throughout');
});

test('a replica killed with SIGKILL: HTTP sessions go on through the other; its stdio sessions end with 404 and the client starts again', async (t) => {
  const config = await replicaSetup(
    t,
    (url) => ({
      remote: { url },
      local: everythingStdio({ sandbox: { mode: 'required' }, warmPool: 0 }),
    }),
    { cluster: { host: '127.0.0.1', port: 0, secret: 'k'.repeat(48) } },
  );
  const a = await startChildGateway(t, config);
  const b = await startChildGateway(t, config);
  const portOf = (g: { url: string }) => Number(new URL(g.url).port);
  const lb = await startBalancer([portOf(a), portOf(b)]);
  t.after(() => lb.stop());

  // Both sessions open on A (their initialize goes there); later calls go round-robin.
  const connect = async (server: string) => {
    const client = new Client({ name: `survivor-${server}`, version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`${a.url}/mcp/${server}`));
    await client.connect(transport);
    t.after(() => client.close());
    return { client, transport };
  };
  const echo = async (client: Client, message: string) => {
    const res = await client.callTool({ name: 'echo', arguments: { message } });
    assert.match(JSON.stringify(res.content), new RegExp(message));
  };
  const remote = await connect('remote');
  const local = await connect('local');
  await echo(remote.client, 'before');
  await echo(local.client, 'before');
  const remoteSession = remote.transport.sessionId as string;
  const localSession = local.transport.sessionId as string;

  await a.kill();
  lb.setReplicas([portOf(b)]);

  // The HTTP session: B has it from the store; the upstream never knew A.
  const onB = (session: string, server: string, id: number) =>
    fetch(`${b.url}/mcp/${server}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-session-id': session,
        'mcp-protocol-version': '2025-11-25',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id,
        method: 'tools/call',
        params: { name: 'echo', arguments: { message: `after ${server}` } },
      }),
    });
  const goesOn = await onB(remoteSession, 'remote', 7);
  assert.equal(goesOn.status, 200);
  assert.match(await goesOn.text(), /after remote/);
  // The stdio session: its process died with A.
  const ended = await onB(localSession, 'local', 8);
  assert.equal(ended.status, 404);
  const body = (await ended.json()) as { id: number; error: { data: { code: string } } };
  assert.equal(body.id, 8);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  // And again: the session is gone for good, not retried against a dead home.
  assert.equal((await onB(localSession, 'local', 9)).status, 404);
  // The client starts a new session, through the balancer, and it works.
  const again = new Client({ name: 'again', version: '1.0.0' });
  await again.connect(new StreamableHTTPClientTransport(new URL(`${lb.url}/mcp/local`)));
  t.after(() => again.close());
  await echo(again, 'new session');
});
