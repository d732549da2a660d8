/**
 * The crash-loop breaker of the bridge, on its own, with a real process that
 * dies at start (test/fixtures/hostile-stdio.mjs `exit-at-start`) and a short
 * crash window, so that a backoff and a healthy period fit in a test.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { ChannelUpstream } from '../src/upstream/bridge.js';
import { StdioChannel } from '../src/upstream/stdio.js';
import { initializeBody } from './helpers/requests.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));
const WINDOW_MS = 1_500;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the crash-loop backoff doubles while the loop goes on, and starts over after a healthy period', async (t) => {
  const records: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'error' },
    { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const upstream = new ChannelUpstream({
    name: 'loop',
    maxResponseBytes: 1 << 20,
    sharing: 'session',
    idleTimeoutMs: 60_000,
    headersTimeoutMs: 5_000,
    crashWindowMs: WINDOW_MS,
    log,
    open: async () =>
      new StdioChannel({
        server: 'loop',
        plan: {
          command: process.execPath,
          args: [HOSTILE, 'exit-at-start'],
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
          cwd: undefined,
          uid: undefined,
          gid: undefined,
          sandboxed: false,
        },
        maxLineBytes: 1 << 20,
        shutdownStepMs: 500,
        log,
      }),
  });
  t.after(() => upstream.close());
  const start = () =>
    upstream.request({ method: 'POST', headers: {}, body: JSON.stringify(initializeBody(1)) })
      .response;
  /** Three starts that die: the breaker trips; the backoff it chose. */
  const loop = async (): Promise<number> => {
    const from = records.length;
    for (let i = 0; i < 3; i++) await assert.rejects(start(), /exited \(code 7\)/);
    await assert.rejects(start(), /keeps crashing/);
    const tripped = records.slice(from).find((r) => String(r.msg).includes('crash-looping'));
    return Number(tripped?.backoffMs);
  };

  assert.equal(await loop(), 1_000, 'the first loop backs off 1 s');
  await sleep(1_000);
  assert.equal(await loop(), 2_000, 'a loop right after its backoff doubles it');
  // The backoff, then a whole window without a crash: a healthy period.
  await sleep(2_000 + WINDOW_MS);
  assert.equal(await loop(), 1_000, 'after a healthy period the backoff starts over');
});
