/**
 * `npm start`: the embedded default. The built CLI with --demo starts
 * server-everything on loopback, trusts a dev signing key it creates, prints
 * a ready token and how to connect, serves a real client holding that token
 * (and refuses one without), and stops the demo upstream with itself, however
 * it is stopped.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

/** Generous for a cold start of Node, the gateway and server-everything on a busy machine. */
const DEMO_START_TIMEOUT_MS = 30_000;
/** How long a stopped demo may take to be gone, processes included. */
const DEMO_STOP_TIMEOUT_MS = 10_000;

interface RunningDemo {
  readonly child: ChildProcess;
  /** Everything written so far. */
  output(): { stdout: string; stderr: string };
  readonly gatewayPid: number;
  readonly demoPid: number;
}

/** Starts `command args`, a demo gateway, and resolves once its banner is out. */
async function startDemo(
  t: TestContext,
  command: string,
  args: string[],
  options: { detached?: boolean } = {},
): Promise<RunningDemo> {
  // Detached: a process group of its own, as a shell gives a command it runs.
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no banner within ${DEMO_START_TIMEOUT_MS} ms:\n${stderr}`)),
      DEMO_START_TIMEOUT_MS,
    );
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before its banner:\n${stderr}`));
    });
    child.stderr?.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
      if (stderr.includes('Ctrl-C')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const record = (msg: string) =>
    JSON.parse(stdout.split('\n').find((l) => l.includes(`"msg":"${msg}"`)) ?? '{}') as {
      pid?: number;
    };
  const demoPid = record('demo upstream running').pid;
  const gatewayPid = record('gateway listening').pid;
  assert.ok(demoPid && gatewayPid, `the gateway and demo upstream pids are logged:\n${stdout}`);
  // Whatever the test does to the gateway, neither process outlives it.
  t.after(() => {
    for (const pid of [gatewayPid, demoPid]) if (running(pid)) process.kill(pid, 'SIGKILL');
  });
  return { child, output: () => ({ stdout, stderr }), gatewayPid, demoPid };
}

/** A process that exists and is not a zombie. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * Resolves once none of `pids` runs. They are not children of the test, so
 * nothing signals their end: /proc is asked, within a bound.
 */
async function allGone(pids: number[]): Promise<number[]> {
  const deadline = Date.now() + DEMO_STOP_TIMEOUT_MS;
  while (pids.some(running) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  return pids.filter(running);
}

const DEMO_ARGS = ['dist/cli/main.js', 'start', '--demo', '--port', '0', '--admin-port', '0'];

test(
  'start --demo serves server-everything and prints the client settings',
  { timeout: 60_000 },
  async (t) => {
    const { child, output, demoPid } = await startDemo(t, process.execPath, DEMO_ARGS);
    const { stderr } = output();
    const url = /(http:\/\/127\.0\.0\.1:\d+\/mcp\/everything)/.exec(stderr)?.[1];
    assert.ok(url, `banner names the endpoint:\n${stderr}`);
    assert.match(stderr, /"mcpServers"/, 'banner shows a client config');
    assert.match(stderr, /Authentication: jwt/);
    const token = /"Authorization": "Bearer ([\w.-]+)"/.exec(stderr)?.[1];
    assert.ok(token, 'banner prints a ready token in the client config');
    assert.match(stderr, new RegExp(`--header "Authorization: Bearer ${token}"`));
    // The hint for a new token names the listener as audience: the default one would be refused.
    const origin = new URL(url).origin;
    assert.ok(
      stderr.includes(`A new one: npx portcullis token mint --aud ${origin}\n`),
      `the new-token hint carries --aud ${origin}:\n${stderr}`,
    );

    // Real authentication: without the token the gateway refuses.
    const anonymous = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: '{"jsonrpc":"2.0","id":1,"method":"ping"}',
    });
    assert.equal(anonymous.status, 401);

    const client = new Client({ name: 'demo-test', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(url), {
        requestInit: { headers: { authorization: `Bearer ${token}` } },
      }),
    );
    const result = await client.callTool({ name: 'echo', arguments: { message: 'hello demo' } });
    assert.match(JSON.stringify(result.content), /hello demo/);
    await client.close();

    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0);
    assert.throws(() => process.kill(demoPid, 0), 'the demo upstream stopped with the gateway');
  },
);

test(
  'a demo gateway killed with SIGKILL takes its demo upstream with it (no orphan)',
  { timeout: 60_000 },
  async (t) => {
    const { child, gatewayPid, demoPid } = await startDemo(t, process.execPath, DEMO_ARGS);
    assert.equal(child.pid, gatewayPid);
    child.kill('SIGKILL');
    await once(child, 'exit');
    assert.deepEqual(await allGone([demoPid]), [], 'the demo upstream ended with the gateway');
  },
);

for (const [how, stop] of [
  ['SIGTERM to npm', (npm: ChildProcess) => npm.kill('SIGTERM')],
  // What a terminal's Ctrl-C does: SIGINT to every process of the foreground group.
  [
    'Ctrl-C (SIGINT to its process group)',
    (npm: ChildProcess) => process.kill(-npm.pid!, 'SIGINT'),
  ],
] as const) {
  test(
    `stopping npm start with ${how} stops the gateway and the demo upstream (no orphans)`,
    { timeout: 60_000 },
    async (t) => {
      const { child, gatewayPid, demoPid } = await startDemo(
        t,
        'npm',
        ['start', '--silent', '--', '--port', '0', '--admin-port', '0'],
        { detached: true },
      );
      assert.notEqual(child.pid, gatewayPid, 'npm runs the gateway under a shell');
      stop(child);
      await once(child, 'exit');
      assert.deepEqual(await allGone([gatewayPid, demoPid]), [], 'nothing npm started survives');
    },
  );
}
