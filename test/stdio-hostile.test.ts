/**
 * A hostile stdio server (test/fixtures/hostile-stdio.mjs, the project's own)
 * behind the gateway, sandboxed: each thing it tries is contained, and each
 * containment is asserted here — against the real bubblewrap sandbox, real
 * processes and the gateway's real log.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { onJsonLines } from './helpers/child-gateway.js';
import { openSse } from './helpers/sse.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));
/** A secret in the gateway's own environment, from its start: no server may ever see it. */
const CANARY = `gateway-canary-${randomBytes(8).toString('hex')}`;
const STATIC_SECRET = `static-secret-${randomBytes(8).toString('hex')}`;
// Threads count too: node itself runs a dozen or so.
const MAX_PROCESSES = 40;
const MAX_LINE_BYTES = 64 * 1024;
const MEMORY_BYTES = 3 * 1024 ** 3;
const CPU_SECONDS = 600;
const OPEN_FILES = 256;
const WARM_POOL = 2;

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** The gateway runs as its own process, started by the CLI, so the canary is in its real environment. */
let child: ChildProcess;
let gateway: { url: string; adminUrl: string; urlFor(server: string): string };
const logs: Array<Record<string, unknown>> = [];
let base: string;
let inTmp: string;
let configPath: string;

/** Starts the gateway with the CLI, its log records collected into `logs`, the canary in its environment. */
async function startCli(
  configFile: string,
): Promise<{ child: ChildProcess; listening: { url: string; adminUrl: string } }> {
  const env: NodeJS.ProcessEnv = { ...process.env, PORTCULLIS_TEST_CANARY: CANARY };
  delete env.NODE_OPTIONS;
  const started = spawn(process.execPath, [CLI, 'start', '--config', configFile], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const listening = await new Promise<{ url: string; adminUrl: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start in 15 s')), 15_000);
    started.once('exit', (code) => reject(new Error(`the gateway exited (${code})`)));
    onJsonLines(started.stdout as NodeJS.ReadableStream, (record) => {
      logs.push(record);
      if (record.msg === 'gateway listening') {
        clearTimeout(timer);
        resolve(record as unknown as { url: string; adminUrl: string });
      }
    });
  });
  return { child: started, listening };
}
let outside: string;
let writable: string;
/** Directories only root may enter (0700, as `mktemp -d` makes them), one under /tmp and one not. */
let lockedInTmp: string;
let lockedElsewhere: string;
let listener: Server;
let connectionsSeen = 0;

before(async () => {
  // `npm test` builds first; when this file runs alone, build once if needed.
  if (!existsSync(CLI)) {
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  }
  // Directories anyone may write to: only the sandbox stands between the server and them.
  base = mkdtempSync(path.join(ROOT, '.hostile-'));
  outside = path.join(base, 'outside');
  writable = path.join(base, 'writable');
  mkdirSync(outside);
  mkdirSync(writable);
  for (const dir of [base, outside, writable]) chmodSync(dir, 0o777);

  listener = createServer((socket) => {
    connectionsSeen++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));

  const hostile = (args: string[]) => ({
    transport: 'stdio',
    command: process.execPath,
    args: [HOSTILE, ...args],
    credential: { mode: 'static', value: `Bearer ${STATIC_SECRET}` },
    // Processes start when a session needs one (so each test sees its own start), but for `warm`.
    warmPool: 0,
    sandbox: {
      mode: 'required',
      writablePaths: [writable],
      maxProcesses: MAX_PROCESSES,
      memoryBytes: MEMORY_BYTES,
      cpuSeconds: CPU_SECONDS,
      maxOpenFiles: OPEN_FILES,
    },
  });
  // A copy installed under /tmp, which the sandbox replaces with a private one.
  inTmp = mkdtempSync('/tmp/portcullis-hostile-');
  // Readable by the server's own user, as an installed program is.
  chmodSync(inTmp, 0o755);
  copyFileSync(HOSTILE, path.join(inTmp, 'server.mjs'));
  // A server installed where only root may walk (a clone in a `mktemp -d` directory or
  // under /root), with a writable directory of its own there.
  lockedInTmp = mkdtempSync('/tmp/portcullis-locked-');
  lockedElsewhere = path.join(base, 'locked');
  mkdirSync(lockedElsewhere, { mode: 0o700 });
  for (const locked of [lockedInTmp, lockedElsewhere]) {
    mkdirSync(path.join(locked, 'app', 'out'), { recursive: true });
    chmodSync(path.join(locked, 'app', 'out'), 0o777);
    copyFileSync(HOSTILE, path.join(locked, 'app', 'server.mjs'));
    writeFileSync(path.join(locked, 'beside'), 'not for the server\n');
  }
  const locked = (dir: string) => ({
    ...hostile([]),
    args: [path.join(dir, 'app', 'server.mjs')],
    sandbox: { mode: 'required', writablePaths: [path.join(dir, 'app', 'out')] },
  });
  // A writable path given through a symlinked directory, as /var/run/postgresql is (/var/run -> /run).
  symlinkSync(base, path.join(base, 'via-link'));
  const throughLink = path.join(base, 'via-link', 'writable');
  // Given as writable, but writable by nobody but root.
  const readOnly = path.join(base, 'read-only');
  mkdirSync(readOnly, { mode: 0o555 });
  const configFile = path.join(base, 'portcullis.yaml');
  // JSON is YAML.
  writeFileSync(
    configFile,
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      auth: { mode: 'none' },
      log: { level: 'debug' },
      // Small enough for a test to overflow.
      upstreamDefaults: { maxResponseBytes: MAX_LINE_BYTES },
      servers: {
        hostile: hostile([]),
        loop: hostile(['exit-at-start']),
        ondemand: { ...hostile([]), idleTimeoutMs: 1_000 },
        // `warm` is only a mark on its command line, for the test to find its processes.
        warm: { ...hostile(['warm']), warmPool: WARM_POOL },
        linger: { ...hostile(['linger']), shutdownTimeoutMs: 500 },
        intmp: { ...hostile([]), args: [path.join(inTmp, 'server.mjs')] },
        slow: { ...hostile([]), timeouts: { headersMs: 500 } },
        stubborn: { ...hostile(['stubborn']), shutdownTimeoutMs: 500 },
        throughlink: {
          ...hostile([]),
          sandbox: { mode: 'required', writablePaths: [throughLink] },
        },
        readonlypath: { ...hostile([]), sandbox: { mode: 'required', writablePaths: [readOnly] } },
        missing: { ...hostile([]), command: 'portcullis-no-such-server' },
        lockedtmp: locked(lockedInTmp),
        lockedelsewhere: locked(lockedElsewhere),
        // The sandbox's defaults, nothing configured.
        defaults: { ...hostile([]), sandbox: { mode: 'required' } },
      },
    }),
  );
  configPath = configFile;
  let listening: { url: string; adminUrl: string };
  ({ child, listening } = await startCli(configFile));
  gateway = { ...listening, urlFor: (server) => `${listening.url}/mcp/${server}` };
});

after(async () => {
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  listener?.close();
  rmSync(base, { recursive: true, force: true });
  rmSync(inTmp, { recursive: true, force: true });
  rmSync(lockedInTmp, { recursive: true, force: true });
});

async function eventually(check: () => boolean, ms = 3_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
}

async function connect(server = 'hostile') {
  const client = new Client({ name: 'hostile-test', version: '1.0.0' }, { capabilities: {} });
  const transport = new StreamableHTTPClientTransport(new URL(gateway.urlFor(server)));
  await client.connect(transport);
  return { client, transport };
}

async function call<T>(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<T> {
  const result = await client.callTool({ name, arguments: args });
  const content = result.content as Array<{ text: string }>;
  return JSON.parse(content[0]?.text as string) as T;
}

/** Processes on the host whose command line is `sleep 60` (the fork bomb's children). */
function sleepers(): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8') === 'sleep\u000060\u0000') n++;
    } catch {
      // gone meanwhile
    }
  }
  return n;
}

test("it cannot read the gateway's environment, or any secret, through /proc", async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const seen = await call<{
    pids: string[];
    seen: Record<string, string>;
    parent: string;
    own: string;
  }>(client, 'environ');
  const everything = JSON.stringify(seen);
  assert.ok(!everything.includes(CANARY), "the gateway's environment is out of reach");
  assert.ok(!everything.includes(STATIC_SECRET), 'the credential is not in any environment');
  assert.ok(!seen.pids.includes(String(child.pid)), "the gateway's pid is not even visible");
  assert.ok(seen.pids.length <= 3, `a private pid namespace: ${seen.pids.join(',')}`);
  const names = seen.own
    .split('\0')
    .filter(Boolean)
    .map((kv) => kv.slice(0, kv.indexOf('=')))
    .sort();
  // PWD is bwrap's, naming the sandbox's working directory.
  assert.deepEqual(
    names,
    ['HOME', 'LANG', 'MCP_CREDENTIAL_FILE', 'PATH', 'PWD'],
    'a clean environment',
  );
});

test('its credential arrives in a private file, not in its environment', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const got = await call<{ file: string; value: string }>(client, 'credential');
  assert.equal(got.file, '/tmp/.portcullis/credential');
  assert.equal(got.value, STATIC_SECRET);
});

test('it cannot open a network connection', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const port = (listener.address() as AddressInfo).port;
  const result = await call<{ connected: boolean; error?: string }>(client, 'connect', {
    host: '127.0.0.1',
    port,
  });
  assert.equal(result.connected, false);
  assert.ok(result.error, 'the attempt failed');
  assert.equal(connectionsSeen, 0, "nothing reached the host's loopback");
});

test('it runs under the configured limits: address space, CPU time, open files, processes', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const { limits } = await call<{ limits: string }>(client, 'limits');
  const soft = (name: string) => new RegExp(`^${name}\\s+(\\S+)`, 'm').exec(limits)?.[1];
  assert.equal(soft('Max address space'), String(MEMORY_BYTES));
  assert.equal(soft('Max cpu time'), String(CPU_SECONDS));
  assert.equal(soft('Max open files'), String(OPEN_FILES));
  assert.equal(soft('Max processes'), String(MAX_PROCESSES));
});

test('the default sandbox runs a Node server that calls fetch: no address-space limit kills WebAssembly', async (t) => {
  const { client } = await connect('defaults');
  t.after(() => client.close());
  const got = await call<{ fetched: string; http: string; wasm: string }>(client, 'fetch');
  assert.equal(got.fetched, 'fetched');
  assert.notEqual(got.http, 'connected', 'and still no network');
  assert.equal(got.wasm, 'instantiated');
  const { limits } = await call<{ limits: string }>(client, 'limits');
  assert.match(limits, /^Max address space\s+unlimited/m);
});

test('start-up says which stdio server cannot start, and which writable path its server cannot write', () => {
  const said = (server: string, pattern: RegExp) =>
    logs.find((l) => l.server === server && pattern.test(String(l.msg)));
  const missing = said('missing', /^stdio server cannot start: /);
  assert.ok(missing, 'the missing command is reported at start-up');
  assert.equal(missing.level, 50, 'as an error');
  assert.match(
    String(missing.msg),
    /command 'portcullis-no-such-server' is not found on the PATH searched \([^)]+\)/,
  );
  const readOnly = said('readonlypath', /is not writable by /);
  assert.ok(
    readOnly,
    'the read-only writable path is reported at start-up, not at the first write',
  );
  assert.equal(readOnly.key, 'sandbox.writablePaths[0]');
});

test('a writable path given through a symlink is resolved: bwrap binds it, and the server writes there', async (t) => {
  const { client } = await connect('throughlink');
  t.after(() => client.close());
  const got = await call<{ written: boolean }>(client, 'write', {
    path: path.join(base, 'via-link', 'writable', 'through-link'),
  });
  assert.equal(got.written, true);
  assert.ok(existsSync(path.join(writable, 'through-link')));
});

for (const [server, where] of [
  ['lockedtmp', 'in a 0700 directory under /tmp'],
  ['lockedelsewhere', 'in a 0700 directory outside /tmp'],
] as const) {
  test(`a server installed ${where} runs, as root too, and not as "keeps crashing"`, async (t) => {
    const { client } = await connect(server);
    t.after(() => client.close());
    const me = await call<{ uid: number }>(client, 'whoami');
    if (process.getuid?.() === 0) assert.ok(me.uid >= 200_000, 'as a user of its own');
    const dir = server === 'lockedtmp' ? lockedInTmp : lockedElsewhere;
    const out = await call<{ written: boolean }>(client, 'write', {
      path: path.join(dir, 'app', 'out', 'written'),
    });
    assert.equal(out.written, true, 'its writable directory there is writable');
    assert.ok(existsSync(path.join(dir, 'app', 'out', 'written')));
    const beside = await call<{ written: boolean; error?: string }>(client, 'write', {
      path: path.join(dir, 'beside'),
    });
    assert.equal(beside.written, false, 'the rest of the locked directory stays out of reach');
  });
}

test('it cannot write outside its directories; /tmp is its own; a configured path is writable', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const denied = await call<{ written: boolean; error?: string }>(client, 'write', {
    path: path.join(outside, 'planted'),
  });
  assert.equal(denied.written, false);
  assert.equal(denied.error, 'EROFS', 'the root file system is read-only');
  assert.ok(!existsSync(path.join(outside, 'planted')));

  const tmpName = `/tmp/hostile-${randomBytes(4).toString('hex')}`;
  const tmp = await call<{ written: boolean }>(client, 'write', { path: tmpName });
  assert.equal(tmp.written, true, 'its private /tmp is writable');
  assert.ok(!existsSync(tmpName), "and is not the host's /tmp");

  const allowed = await call<{ written: boolean }>(client, 'write', {
    path: path.join(writable, 'allowed'),
  });
  assert.equal(allowed.written, true);
  assert.ok(
    existsSync(path.join(writable, 'allowed')),
    'a configured writable path reaches the host',
  );
});

test('a server installed under /tmp runs: its directory is bound back, read-only', async (t) => {
  const { client } = await connect('intmp');
  t.after(() => client.close());
  const me = await call<{ env: string[] }>(client, 'whoami');
  assert.ok(me.env.includes('PATH'));
  const planted = await call<{ written: boolean; error?: string }>(client, 'write', {
    path: path.join(inTmp, 'planted'),
  });
  assert.equal(planted.error, 'EROFS');
  assert.ok(!existsSync(path.join(inTmp, 'planted')));
});

test('a fork bomb stops at the process limit, and its processes die with the session', async (t) => {
  const { client, transport } = await connect();
  t.after(() => client.close());
  const before = sleepers();
  const result = await call<{ started: number; alive: number; error?: string }>(client, 'fork', {
    max: 500,
  });
  assert.ok(result.started < MAX_PROCESSES, `started ${result.started}, limit ${MAX_PROCESSES}`);
  assert.ok(result.error, 'the next fork was refused');
  await transport.terminateSession();
  const deadline = Date.now() + 5_000;
  while (sleepers() > before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(sleepers(), before, 'every process it started is gone');
});

test('a stderr flood is rate-limited in the log, with secrets masked; the call still answers', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const from = logs.length;
  const started = Date.now();
  const result = await call<{ flooded: number }>(client, 'flood', { lines: 20_000 });
  assert.equal(result.flooded, 20_000);
  await new Promise((r) => setTimeout(r, 1_200));
  const seconds = Math.ceil((Date.now() - started) / 1000) + 1;
  const mine = logs.slice(from);
  const stderr = mine.filter((l) => l.msg === 'stdio server stderr');
  assert.ok(stderr.length > 0, 'stderr reaches the log');
  assert.ok(stderr.length <= 20 * seconds, `${stderr.length} lines logged in ${seconds} s`);
  assert.ok(
    mine.some((l) => String(l.msg).includes('suppressed') && Number(l.suppressed) > 0),
    'what was dropped is counted',
  );
  assert.ok(!JSON.stringify(mine).includes('hunter2'), 'token=… is masked');
});

test('garbage on stdout is logged and dropped, never forwarded', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const from = logs.length;
  const result = await call<{ garbage: string }>(client, 'garbage');
  assert.equal(result.garbage, 'printed');
  const dropped = () => logs.slice(from).filter((l) => String(l.msg).startsWith('dropped'));
  // The gateway's log arrives through its stdout: give it a moment.
  await eventually(() => dropped().length >= 4);
  assert.equal(
    dropped().filter((l) => String(l.msg).includes('from stdout')).length,
    3,
    'non-JSON, non-JSON-RPC and array lines were each dropped',
  );
  assert.ok(
    dropped().some((l) => l.msg === 'dropped a response nobody waits for'),
    'a response to no request is dropped',
  );
  // The session still works: nothing out of order reached the client.
  assert.equal((await call<{ garbage: string }>(client, 'garbage')).garbage, 'printed');
});

test('an oversized line on stdout is dropped and logged; the answer after it arrives', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const from = logs.length;
  const result = await call<{ oversized: number }>(client, 'oversized', {
    bytes: 4 * MAX_LINE_BYTES,
  });
  assert.equal(result.oversized, 4 * MAX_LINE_BYTES);
  const dropped = () =>
    logs.slice(from).some((l) => String(l.msg).startsWith('dropped an oversized line'));
  await eventually(dropped);
  assert.ok(dropped(), 'the oversized line was reported');
});

test('an answer nested 10,000 levels deep is refused with a JSON-RPC error; the gateway and the session go on', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  // Before the fix, JSON.stringify threw a RangeError and the gateway process died.
  await assert.rejects(
    client.callTool({ name: 'deep', arguments: {} }),
    /nested deeper than 128 levels/,
  );
  const me = await call<{ pid: number }>(client, 'whoami');
  assert.ok(me.pid > 0, 'the same session answers the next call');
  const other = await connect();
  t.after(() => other.client.close());
  assert.ok((await call<{ pid: number }>(other.client, 'whoami')).pid > 0, 'and so do others');
});

test('a request the server never answers: 504 after the headers timeout, and the server is told to cancel it', async () => {
  const init = await post(gateway.urlFor('slow'), initializeBody(1));
  assert.equal(init.status, 200);
  await init.text();
  const sid = init.headers.get('mcp-session-id') as string;
  const from = logs.length;
  const started = Date.now();
  const res = await post(
    gateway.urlFor('slow'),
    { jsonrpc: '2.0', id: 41, method: 'tools/call', params: { name: 'hang', arguments: {} } },
    { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-11-25' },
    // Without the bound, this would wait for ever: fail instead.
    AbortSignal.timeout(5_000),
  );
  assert.equal(res.status, 504);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 41);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_TIMEOUT');
  assert.ok(Date.now() - started < 3_000, 'bounded by the configured 500 ms');
  const cancelled = () => logs.slice(from).some((l) => l.stderr === 'cancelled 41');
  await eventually(cancelled);
  assert.ok(cancelled(), 'notifications/cancelled reached the server');
  await fetch(gateway.urlFor('slow'), { method: 'DELETE', headers: { 'mcp-session-id': sid } });
});

test('exiting mid-request: the call fails at once, the session ends (404), a new one works', async () => {
  const { client, transport } = await connect();
  const sid = transport.sessionId as string;
  const started = Date.now();
  // A JSON-RPC error naming what happened (PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED).
  await assert.rejects(
    call(client, 'crash'),
    /closed the stream before answering.*exited \(code 3\)/,
  );
  assert.ok(
    Date.now() - started < 5_000,
    'the in-flight request failed without waiting for a timeout',
  );
  await client.close();
  const res = await post(
    gateway.urlFor('hostile'),
    { jsonrpc: '2.0', id: 1, method: 'tools/list' },
    { 'mcp-session-id': sid },
  );
  assert.equal(res.status, 404, 'the client is told to re-initialize');
  assert.equal(((await res.json()) as RpcError).error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  const again = await connect();
  assert.equal((await call<{ garbage: string }>(again.client, 'garbage')).garbage, 'printed');
  await again.client.close();
});

test('a legacy SSE client: a crash fails its call on the stream, and the stream ends with the session', async (t) => {
  const stream = await openSse(`${gateway.urlFor('hostile')}/sse`);
  t.after(stream.close);
  const endpoint = await stream.next();
  assert.equal(endpoint.event, 'endpoint');
  const url = new URL(endpoint.data, gateway.url).href;
  const send = async (body: unknown) => {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 202);
  };
  const toolCall = (id: number, name: string) => ({
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: { name, arguments: {} },
  });
  await send(initializeBody(1, '2024-11-05'));
  assert.equal((JSON.parse((await stream.next()).data) as { id: number }).id, 1);
  await send({ jsonrpc: '2.0', method: 'notifications/initialized' });

  await send(toolCall(5, 'crash'));
  const failed = JSON.parse((await stream.next()).data) as RpcError;
  assert.equal(failed.id, 5);
  assert.equal(failed.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED');

  // The session died with the process: the next call is told so, then the stream ends.
  await send(toolCall(6, 'whoami'));
  const unknown = JSON.parse((await stream.next()).data) as RpcError;
  assert.equal(unknown.id, 6);
  assert.equal(unknown.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  await assert.rejects(stream.next(), /stream ended/);
});

test('a server that dies at start is detected as a crash loop: refused with a reason, counted', async () => {
  const initialize = () => post(gateway.urlFor('loop'), initializeBody(1));
  for (let i = 0; i < 3; i++) {
    const res = await initialize();
    const text = await res.text();
    assert.match(text, /"error"/, `start ${i + 1} fails with a JSON-RPC error`);
  }
  const refused = await initialize();
  assert.equal(refused.status, 502);
  const body = (await refused.json()) as { error: { message: string; data: { reason?: string } } };
  assert.equal(body.error.data.reason, 'crash_loop');
  assert.match(body.error.message, /keeps crashing/);
  const metrics = await (await fetch(`${gateway.adminUrl}/metrics`)).text();
  assert.match(metrics, /portcullis_upstream_crash_loops_total\{server="loop"\} 1/);
  await eventually(() => logs.some((l) => String(l.msg).includes('crash-looping')));
  assert.ok(
    logs.some((l) => String(l.msg).includes('crash-looping')),
    'the crash loop is logged',
  );
});

/** Host pids of the hostile server's processes (its command line shows through prlimit's and bwrap's). */
function hostileProcesses(): string[] {
  return readdirSync('/proc').filter((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return argv[0] === process.execPath && argv[1] === HOSTILE;
    } catch {
      return false;
    }
  });
}

test('a 2026-07-28 caller: its process starts on demand, serves its next calls, and ends when idle', async () => {
  const before = new Set(hostileProcesses());
  const callWhoami = async (id: number) => {
    const res = await post(
      gateway.urlFor('ondemand'),
      modernCall('whoami', {}, id),
      modernHeaders('whoami'),
    );
    assert.equal(res.status, 200);
    const body = (await res.json()) as { id: number; result: { content: Array<{ text: string }> } };
    assert.equal(body.id, id);
    return JSON.parse(body.result.content[0]?.text as string) as { pid: number };
  };
  await callWhoami(1);
  const started = hostileProcesses().filter((pid) => !before.has(pid));
  assert.equal(started.length, 1, 'one process, started by the first call, without initialize');
  await callWhoami(2);
  assert.deepEqual(
    hostileProcesses().filter((pid) => !before.has(pid)),
    started,
    'the same process serves the same caller',
  );
  await eventually(() => !hostileProcesses().includes(started[0] as string), 8_000);
  assert.ok(
    !hostileProcesses().includes(started[0] as string),
    'closed after idleTimeoutMs unused',
  );
});

/** The `warm` server's processes on the host. */
function warmProcesses(): string[] {
  return hostileProcesses().filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[2] === 'warm';
    } catch {
      return false;
    }
  });
}

test('a new session gets a warm process, booted before its initialize, its own, with its credential', async (t) => {
  await eventually(() => warmProcesses().length === WARM_POOL, 10_000);
  assert.equal(warmProcesses().length, WARM_POOL, 'the pool is full before any session');
  const beforeInitialize = Date.now();
  const a = await connect('warm');
  t.after(() => a.client.close());
  const b = await connect('warm');
  t.after(() => b.client.close());
  type Who = { startedAt: number; uid: number; instance: string };
  const wa = await call<Who>(a.client, 'whoami');
  const wb = await call<Who>(b.client, 'whoami');
  assert.ok(wa.startedAt < beforeInitialize, 'the first session got a process started before it');
  assert.ok(wb.startedAt < beforeInitialize, 'and so did the second');
  // Not startedAt: the pool boots its processes together, and two can start in the same millisecond.
  assert.notEqual(wa.instance, wb.instance, 'two sessions, two processes');
  if (process.getuid?.() === 0) assert.notEqual(wa.uid, wb.uid, 'each a user of its own');
  const credential = await call<{ value: string }>(a.client, 'credential');
  assert.equal(credential.value, STATIC_SECRET, 'written when the process was handed over');
  // The pool refills in the background: two in use, two waiting.
  await eventually(() => warmProcesses().length === 2 * WARM_POOL, 10_000);
  assert.equal(warmProcesses().length, 2 * WARM_POOL);
});

test('ending a session: stdin closed, then SIGTERM to the server itself, then SIGKILL', async () => {
  for (const server of ['linger', 'stubborn']) {
    const before = new Set(hostileProcesses());
    const init = await post(gateway.urlFor(server), initializeBody(1));
    assert.equal(init.status, 200);
    await init.text();
    const sid = init.headers.get('mcp-session-id') as string;
    const started = hostileProcesses().filter((pid) => !before.has(pid));
    assert.equal(started.length, 1);
    const from = logs.length;
    const t0 = Date.now();
    const del = await fetch(gateway.urlFor(server), {
      method: 'DELETE',
      headers: { 'mcp-session-id': sid },
    });
    assert.equal(del.status, 200);
    const gone = () => !hostileProcesses().includes(started[0] as string);
    await eventually(gone, 5_000);
    assert.ok(gone(), `${server}: the process is gone`);
    const elapsed = Date.now() - t0;
    await eventually(() => logs.slice(from).some((l) => l.stderr === 'got SIGTERM'));
    assert.ok(
      logs.slice(from).some((l) => l.stderr === 'got SIGTERM'),
      `${server}: SIGTERM reached the server inside its sandbox`,
    );
    if (server === 'linger') {
      assert.ok(elapsed < 1_500, `linger left on SIGTERM, after one wait (${elapsed} ms)`);
    } else {
      await eventually(() =>
        logs.slice(from).some((l) => l.msg === 'stdio server ignored SIGTERM; killing it'),
      );
      assert.ok(
        logs.slice(from).some((l) => l.msg === 'stdio server ignored SIGTERM; killing it'),
        'stubborn was killed, and that was logged',
      );
    }
  }
});

// Last: it kills the gateway.
test('the sandboxes die with the gateway, even when it is killed outright', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  await call(client, 'whoami');
  const running = hostileProcesses();
  assert.ok(running.length > 0);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const gone = () => running.every((pid) => !hostileProcesses().includes(pid));
  await eventually(gone, 5_000);
  assert.ok(gone(), 'no server outlived the gateway');

  // What it could not clean up (the credential files among it), the next gateway removes.
  const leftBy = (pid: number | undefined) =>
    readdirSync(os.tmpdir()).filter((d) => d.startsWith(`portcullis-stdio-${pid}-`));
  const left = leftBy(child.pid);
  assert.ok(left.length > 0, 'a killed gateway leaves its private directories');
  const next = await startCli(configPath);
  t.after(async () => {
    const exited = new Promise((r) => next.child.once('exit', r));
    next.child.kill('SIGTERM');
    await exited;
  });
  assert.deepEqual(leftBy(child.pid), [], 'the next gateway removed them at start');
});
