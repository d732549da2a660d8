/**
 * A stdio server behind the gateway: @modelcontextprotocol/server-everything
 * run by the bridge in its bubblewrap sandbox, one process per session, used
 * by the official SDK's Streamable HTTP client and its legacy SSE client.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { everythingFeaturesPerClient, connect, sessionOf } from './helpers/everything-features.js';
import { EVERYTHING_ENTRY, everythingStdio } from './helpers/everything.js';
import { SeenFrames, startTestGateway, type TestGateway } from './helpers/gateway.js';

let gateway: TestGateway;
const frames = new SeenFrames();

before(async () => {
  gateway = await startTestGateway(
    {
      // No warm pool: processes started here are the sessions' own, which the count below relies on.
      everything: everythingStdio({ sandbox: { mode: 'required' }, warmPool: 0 }),
      shared: everythingStdio({ sandbox: { mode: 'required' }, sharing: 'shared' }),
    },
    {},
    frames,
  );
});
after(async () => {
  await gateway?.close();
});

everythingFeaturesPerClient('server-everything over stdio', 'everything', (runFrames) =>
  startTestGateway(
    { everything: everythingStdio({ sandbox: { mode: 'required' } }) },
    {},
    runFrames,
  ),
);

/** server-everything stdio processes running now (sandboxed: the command line shows through bwrap's). */
function everythingProcesses(): Set<string> {
  const found = new Set<string>();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      // The server itself, not the prlimit or bwrap around it.
      if (argv[0] === process.execPath && argv[1] === EVERYTHING_ENTRY && argv[2] === 'stdio')
        found.add(pid);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

test("two sessions at once get two processes and never see each other's answers", async (t) => {
  const target = {
    gateway: () => gateway,
    server: 'everything',
    client: 'streamable-http' as const,
    frames,
  };
  const before = everythingProcesses();
  const a = await connect(target);
  const b = await connect(target);
  t.after(async () => {
    await a.http?.terminateSession();
    await b.http?.terminateSession();
    await Promise.all([a.client.close(), b.client.close()]);
  });
  // Processes of earlier sessions may still be ending; only new ones count.
  const started = [...everythingProcesses()].filter((pid) => !before.has(pid));
  assert.equal(started.length, 2, 'one process per session');
  // The same request ids in both sessions, at the same time: each answer reaches its own caller.
  const calls = Array.from({ length: 20 }, (_, i) =>
    Promise.all([
      a.client.callTool({ name: 'echo', arguments: { message: `a-${i}` } }),
      b.client.callTool({ name: 'echo', arguments: { message: `b-${i}` } }),
    ]),
  );
  for (const [i, [ra, rb]] of (await Promise.all(calls)).entries()) {
    assert.equal(
      JSON.stringify(ra.content),
      JSON.stringify([{ type: 'text', text: `Echo: a-${i}` }]),
    );
    assert.equal(
      JSON.stringify(rb.content),
      JSON.stringify([{ type: 'text', text: `Echo: b-${i}` }]),
    );
  }
  const sa = sessionOf(target, 'a-0');
  const sb = sessionOf(target, 'b-0');
  assert.ok(sa && sb && sa !== sb, 'two gateway sessions');
});

test('sharing: shared — one process for every session, ids and progress tokens kept apart', async (t) => {
  const target = {
    gateway: () => gateway,
    server: 'shared',
    client: 'streamable-http' as const,
    frames,
  };
  const before = everythingProcesses();
  const a = await connect(target);
  const b = await connect(target);
  t.after(() => Promise.all([a.client.close(), b.client.close()]));
  const started = [...everythingProcesses()].filter((pid) => !before.has(pid));
  assert.equal(started.length, 1, 'one process serves both sessions');
  // Both clients number their requests alike, and the SDK uses the request id as
  // progress token: without rewriting, answers and progress would cross.
  const progress = { a: [] as number[], b: [] as number[] };
  const [ra, rb] = await Promise.all(
    (['a', 'b'] as const).map((who) =>
      (who === 'a' ? a : b).client.callTool(
        { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
        undefined,
        { onprogress: (p) => progress[who].push(p.progress) },
      ),
    ),
  );
  assert.deepEqual(progress, { a: [1, 2, 3], b: [1, 2, 3] });
  assert.match(JSON.stringify(ra?.content), /completed/);
  assert.match(JSON.stringify(rb?.content), /completed/);
  const echoes = await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      Promise.all([
        a.client.callTool({ name: 'echo', arguments: { message: `a-${i}` } }),
        b.client.callTool({ name: 'echo', arguments: { message: `b-${i}` } }),
      ]),
    ),
  );
  for (const [i, [ea, eb]] of echoes.entries()) {
    assert.equal(
      JSON.stringify(ea.content),
      JSON.stringify([{ type: 'text', text: `Echo: a-${i}` }]),
    );
    assert.equal(
      JSON.stringify(eb.content),
      JSON.stringify([{ type: 'text', text: `Echo: b-${i}` }]),
    );
  }
});
