/**
 * Nothing is held forever by a caller who leaves at the wrong moment: a
 * client that hangs up while its initialize is on its way, a legacy SSE
 * stream closed before its session was known, a burst of first stateless
 * calls. Each would leave a process (or a connection) running and its quota
 * share taken, locking the caller (and, summed, its tenant) out. Against real
 * sandboxed processes (the project's own hostile server, `slow-init`
 * answering initialize after a second) and server-everything over legacy SSE.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { startKeyedGateway, TEST_ADMIN_TOKEN, type KeyedGateway } from './helpers/auth-gateway.js';
import { startEverything } from './helpers/everything.js';
import { openSse } from './helpers/sse.js';
import {
  ACCEPT_BOTH,
  initializeBody,
  modernCall,
  modernHeaders,
  post,
} from './helpers/requests.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));
const slowInit = {
  transport: 'stdio',
  command: process.execPath,
  args: [HOSTILE, 'slow-init'],
  warmPool: 0,
};

let keyed: KeyedGateway;
let everything: Awaited<ReturnType<typeof startEverything>>;

before(async () => {
  // A legacy SSE upstream: opening its channel waits on the network, so a burst of first
  // calls arrives while the first channel is still being opened.
  everything = await startEverything(undefined, 'sse');
  keyed = await startKeyedGateway(
    { slow: slowInit, sse: { transport: 'sse', url: everything.url } },
    { admin: { token: TEST_ADMIN_TOKEN }, quotas: { perPrincipal: { stdioProcesses: 2 } } },
  );
});

after(async () => {
  await keyed.close();
  await everything.stop();
});

/** Open channels (processes) of a server, from the gateway's gauge. */
async function channels(server: string): Promise<number> {
  const res = await fetch(`${keyed.gw.adminUrl}/metrics`, {
    headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` },
  });
  const text = await res.text();
  const m = new RegExp(`^portcullis_upstream_channels\\{server="${server}"\\} (\\d+)`, 'm');
  return Number(m.exec(text)?.[1] ?? 0);
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Writes an initialize on a raw socket and hangs up before the answer can come. */
function initializeAndLeave(token: string): Promise<void> {
  const { hostname, port } = new URL(keyed.gw.url);
  const body = JSON.stringify(initializeBody());
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(
        `POST /mcp/slow HTTP/1.1\r\nhost: ${hostname}:${port}\r\nauthorization: Bearer ${token}\r\n` +
          `content-type: application/json\r\naccept: ${ACCEPT_BOTH}\r\n` +
          `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      setTimeout(() => socket.destroy(), 100);
    });
    socket.once('close', () => resolve());
  });
}

test('a client that hangs up before its initialize is answered leaves no process and no quota share behind', async () => {
  const token = await keyed.token('leaky', 'lou');
  const before = await channels('slow');
  for (let i = 0; i < 3; i++) await initializeAndLeave(token);
  // Each started a process; each ends once its answer cannot be delivered.
  await until(async () => (await channels('slow')) === before, 'the abandoned processes to end');
  // Past the quota of 2 if any share had been kept.
  for (let i = 0; i < 2; i++) {
    const res = await post(keyed.gw.urlFor('slow'), initializeBody(), {
      authorization: `Bearer ${token}`,
    });
    assert.equal(res.status, 200, `initialize ${i + 1} after the abandoned ones`);
    await res.text();
  }
});

test('a legacy SSE stream closed while its initialize is on its way ends that session and its process', async () => {
  const token = await keyed.token('leaky', 'sue');
  const before = await channels('slow');
  const stream = await openSse(`${keyed.gw.urlFor('slow')}/sse`, token);
  const endpoint = await stream.next();
  const accepted = await post(new URL(endpoint.data, keyed.gw.url).href, initializeBody(), {
    authorization: `Bearer ${token}`,
  });
  assert.equal(accepted.status, 202);
  await accepted.text();
  await until(async () => (await channels('slow')) > before, 'the process to start');
  stream.close();
  await until(
    async () => (await channels('slow')) === before,
    'the session and its process to end',
  );
});

test('a burst of first stateless calls from one caller opens one upstream channel, not one each', async () => {
  const token = await keyed.token('leaky', 'bursty');
  const before = await channels('sse');
  const calls = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      post(keyed.gw.urlFor('sse'), modernCall('echo', { message: 'hi' }, i + 1), {
        ...modernHeaders('echo'),
        authorization: `Bearer ${token}`,
      }),
    ),
  );
  // Each is answered (whatever the legacy server makes of a stateless call); one channel serves all.
  for (const res of calls) await res.text();
  assert.equal((await channels('sse')) - before, 1);
});
