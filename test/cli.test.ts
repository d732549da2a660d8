/**
 * The `portcullis` command line, as a user runs it: the built CLI in a child
 * process, its exit codes, what it prints where, and a real start on port 0
 * that drains and exits on SIGTERM.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { before, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { initializeBody, post } from './helpers/requests.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const VERSION = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }
).version;

/** A command that must finish on its own; generous for a cold start of Node. */
const RUN_TIMEOUT_MS = 15_000;
/** How long the gateway may take from SIGTERM to exit with nothing in flight. */
const SHUTDOWN_BOUND_MS = 5_000;
/** Nothing listens on port 1: the upstream is never reached in these tests. */
const DEAD_UPSTREAM = 'a=http://127.0.0.1:1/mcp';
/** `start` on free ports in front of the dead upstream; tests add the auth flags. */
const START_FREE_PORTS = ['start', '--port', '0', '--admin-port', '0', '--server', DEAD_UPSTREAM];

before(() => {
  // `npm test` builds first; when this file runs alone, build once if needed.
  if (!existsSync(CLI)) {
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  }
});

/** The environment for a child: ours, without variables that would change the answer. */
function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (!('SEARCH_API_TOKEN' in extra)) delete env.SEARCH_API_TOKEN;
  delete env.NODE_OPTIONS;
  return env;
}

function spawnCli(t: TestContext, args: string[], env?: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: ROOT,
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return child;
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Resolves when the child exits; fails if it does not within `timeoutMs`. */
function outcome(child: ChildProcess, timeoutMs = RUN_TIMEOUT_MS): Promise<Outcome> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(`CLI did not exit within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`),
      );
    }, timeoutMs);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The "gateway listening" log record of a started child; stdout keeps draining afterwards. */
async function listeningOf(
  child: ChildProcess,
): Promise<{ url: string; adminUrl?: string; servers?: unknown } | undefined> {
  const lines = createInterface({ input: child.stdout! });
  for await (const line of lines) {
    if (line.includes('"msg":"gateway listening"')) {
      // Leaving the loop closes the line reader; keep draining stdout so the child never blocks on it.
      child.stdout?.resume();
      return JSON.parse(line) as { url: string };
    }
  }
  return undefined;
}

function run(t: TestContext, args: string[], env?: NodeJS.ProcessEnv): Promise<Outcome> {
  return outcome(spawnCli(t, args, env));
}

test('--help exits 0 and lists the commands and options', async (t) => {
  const r = await run(t, ['--help']);
  assert.equal(r.code, 0, r.stderr);
  for (const text of [
    'portcullis start',
    'portcullis config check FILE',
    '--version',
    '--config FILE',
    '--server NAME=URL',
    '--auth none',
  ]) {
    assert.ok(r.stdout.includes(text), `--help mentions ${text}`);
  }
  assert.equal(r.stderr, '');
});

test('--help works for each subcommand: its own usage, exit 0', async (t) => {
  const cases: Array<[string[], string, string]> = [
    [['start', '--help'], 'Usage: portcullis start', '--admin-port P'],
    [['start', '--help'], 'Usage: portcullis start', 'SIGHUP'],
    [['token', 'mint', '--help'], 'Usage: portcullis token mint', '--ttl D'],
    [['token', '--help'], 'Usage: portcullis token mint', '--aud AUD'],
    [['config', 'check', '--help'], 'Usage: portcullis config check FILE', 'Exit status'],
    [['keys', 'generate', '-h'], 'Usage: portcullis keys generate', '--alg ES256|EdDSA'],
    [['revoke', '--help'], 'Usage: portcullis revoke', '--admin-url URL'],
  ];
  // Each is its own process; they run side by side.
  const results = await Promise.all(cases.map(([args]) => run(t, args)));
  for (const [i, [args, usage, option]] of cases.entries()) {
    const r = results[i] as Outcome;
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, '');
    assert.ok(r.stdout.startsWith(usage), `${args.join(' ')} prints ${usage}:\n${r.stdout}`);
    assert.ok(r.stdout.includes(option), `${args.join(' ')} lists ${option}`);
    assert.ok(!r.stdout.includes('Examples:'), `${args.join(' ')}: only that command's usage`);
  }
});

test('token mint refuses a --ttl longer than the gateway allows a token to live', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-ttl-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'signing.json');
  assert.equal((await run(t, ['keys', 'generate', '--out', file])).code, 0);
  const mint = (...args: string[]) => run(t, ['token', 'mint', '--keys', file, ...args]);

  const over = await mint('--ttl', '16m');
  assert.equal(over.code, 2);
  assert.equal(over.stdout, '', 'no token printed');
  assert.match(over.stderr, /--ttl 16m is longer than the 900 s a token may live/);
  assert.match(over.stderr, /auth\.jwt\.maxLifetimeMs/);
  assert.equal((await mint('--ttl', '15m')).code, 0, 'the maximum itself is fine');

  // With the gateway's configuration, its own maximum is the bound.
  const config = join(dir, 'gateway.yaml');
  await writeFile(
    config,
    JSON.stringify({
      auth: {
        jwt: {
          issuer: 'https://cli.test',
          jwksFile: join(dir, 'signing.pub.json'),
          maxLifetimeMs: 3_600_000,
        },
      },
      servers: { a: { url: 'http://127.0.0.1:1/mcp' } },
    }),
  );
  assert.equal((await mint('--ttl', '1h', '--config', config)).code, 0);
  const overConfig = await mint('--ttl', '61m', '--config', config);
  assert.equal(overConfig.code, 2);
  assert.match(overConfig.stderr, new RegExp(`3600 s .*auth\\.jwt\\.maxLifetimeMs in ${config}`));
});

test('--version prints the package.json version', async (t) => {
  const r = await run(t, ['--version']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${VERSION}\n`);
});

test('config check on the example file exits 0', async (t) => {
  // The directory its stdio server serves must exist, and be writable by the server.
  const files = await mkdtemp(join(tmpdir(), 'portcullis-files-'));
  t.after(() => rm(files, { recursive: true, force: true }));
  await chmod(files, 0o777);
  const r = await run(t, ['config', 'check', 'config/portcullis.example.yaml'], {
    FILES_ROOT: files,
    SEARCH_API_TOKEN: 'example-token',
    PORTCULLIS_ADMIN_TOKEN: 'a'.repeat(64),
    TICKETS_CLIENT_SECRET: 'example-secret',
    PORTCULLIS_CLUSTER_SECRET: 'c'.repeat(48),
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'config/portcullis.example.yaml: ok (5 server(s))\n');
  assert.equal(r.stderr, '');
});

test("the README says how to install the stdio example's server and names every variable the example config needs", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const stdio = readme.slice(readme.indexOf('## Local (stdio) servers'));
  assert.match(stdio, /npm install -g @modelcontextprotocol\/server-filesystem/);
  assert.ok(
    stdio.indexOf('npm install -g') < stdio.indexOf('stdio:mcp-server-filesystem'),
    'the install comes before the command that needs it',
  );
  const example = readFileSync(join(ROOT, 'config/portcullis.example.yaml'), 'utf8');
  const needed = new Set<string>();
  for (const line of example.split('\n')) {
    const code = line.replace(/#.*/, '');
    for (const m of code.matchAll(/\$\{([A-Za-z_]\w*)(:-)?/g)) if (m[1]) needed.add(m[1]);
  }
  assert.ok(needed.size >= 3, `found the variables: ${[...needed].join(', ')}`);
  for (const name of needed) assert.ok(readme.includes(`\`${name}\``), `README names ${name}`);
});

test('config check exits 1 naming the key when a referenced variable is unset', async (t) => {
  const r = await run(t, ['config', 'check', 'config/portcullis.example.yaml']);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /^ {2}servers\.search\.credential\.value: environment variable SEARCH_API_TOKEN is not set$/m,
  );
});

test('config check on a bad file exits 1 and prints every problem with its path', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'bad.yaml');
  await writeFile(
    file,
    [
      'listen:',
      '  prot: 8080',
      '  host: 0.0.0.0',
      'log:',
      '  level: loud',
      'servers:',
      '  "my docs":',
      '    url: http://127.0.0.1:3001/mcp',
      '  docs:',
      '    url: ftp://docs.internal/mcp',
      '    timeouts:',
      '      connectMs: -1',
      '',
    ].join('\n'),
  );
  const r = await run(t, ['config', 'check', file]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines[0], `${file}: 5 problem(s)`);
  assert.deepEqual(lines.slice(1).sort(), [
    '  listen.prot: unknown key',
    '  log.level: must be one of "fatal", "error", "warn", "info", "debug", "trace", "silent"',
    '  servers.docs.timeouts.connectMs: must be >= 0',
    '  servers.docs.url: must be an http:// or https:// URL',
    '  servers.my docs: server names must be 1-63 letters, digits, "_" or "-", starting with a letter or digit',
  ]);
});

/** A config file with one stdio server, `server` merged into it; its path. */
async function stdioConfig(t: TestContext, server: Record<string, unknown>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'stdio.yaml');
  // JSON is YAML.
  await writeFile(
    file,
    JSON.stringify({
      auth: { mode: 'none' },
      servers: { files: { transport: 'stdio', command: process.execPath, ...server } },
    }),
  );
  return file;
}

test('config check reports a stdio command that does not exist, with the command and the PATH searched', async (t) => {
  const file = await stdioConfig(t, { command: 'portcullis-no-such-server' });
  const r = await run(t, ['config', 'check', file]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.match(
    r.stderr,
    /^ {2}servers\.files\.command: command 'portcullis-no-such-server' is not found on the PATH searched \([^)]*\/usr\/bin[^)]*\); install it, or give its absolute path$/m,
  );
});

test('config check resolves a writable path given through a symlink, and says when the server cannot write it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-paths-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const real = join(dir, 'real');
  await mkdir(real, { mode: 0o755 });
  // Not writable by the server: not by others (as root, the server's user), nor by its owner.
  await chmod(real, 0o555);
  const link = join(dir, 'link');
  await symlink(dir, link);
  const given = join(link, 'real');
  const file = await stdioConfig(t, { sandbox: { writablePaths: [given] } });
  const r = await run(t, ['config', 'check', file]);
  assert.equal(r.code, 0, r.stderr);
  const warning = new RegExp(
    `^${file}: warning: servers\\.files\\.sandbox\\.writablePaths\\[0\\]: ${given} \\(${real}\\) is not writable by .*: its writes will fail \\(EACCES\\)`,
    'm',
  );
  assert.match(r.stderr, warning);
  if (process.getuid?.() === 0)
    assert.match(r.stderr, /chgrp 65534 .* or set sandbox\.gid to its group \(0\)/);

  const missing = await stdioConfig(t, { sandbox: { writablePaths: [join(dir, 'gone')] } });
  const m = await run(t, ['config', 'check', missing]);
  assert.equal(m.code, 1);
  assert.match(m.stderr, /servers\.files\.sandbox\.writablePaths\[0\]: .*gone does not exist/);
});

test('config check refuses an unsandboxed server below a directory its user cannot enter, naming it and the fix', async (t) => {
  const locked = await mkdtemp(join(tmpdir(), 'portcullis-locked-'));
  t.after(() => rm(locked, { recursive: true, force: true }));
  await chmod(locked, 0o700);
  const script = join(locked, 'server.mjs');
  await writeFile(script, '');
  const file = await stdioConfig(t, { args: [script], sandbox: { mode: 'off' } });
  const r = await run(t, ['config', 'check', file]);
  if (process.getuid?.() === 0) {
    // As root the server runs as a user of its own, and without a sandbox nothing can bind it in.
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `servers\\.files\\.args\\[0\\]: ${script} is below ${locked}, which the server's own user .* cannot enter; chmod o\\+x ${locked}, install the server where others may read it, or run it sandboxed`,
      ),
    );
  } else {
    // As another user it runs as the gateway's own user, who can enter.
    assert.equal(r.code, 0, r.stderr);
  }
});

test('config check without a file is a usage error (exit 2)', async (t) => {
  const r = await run(t, ['config', 'check']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage: portcullis config check FILE/);
});

test('an unknown command exits 2 with a hint', async (t) => {
  const r = await run(t, ['frobnicate']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command 'frobnicate'/);
  assert.match(r.stderr, /portcullis --help/);
  assert.equal(r.stdout, '');

  const sub = await run(t, ['config', 'frobnicate']);
  assert.equal(sub.code, 2);
  assert.match(sub.stderr, /portcullis config check FILE/);
});

test('an unknown flag exits 2 with a hint', async (t) => {
  const r = await run(t, ['start', '--bogus']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--bogus/);
  assert.match(r.stderr, /portcullis --help/);
  assert.doesNotMatch(r.stdout, /gateway listening/);
});

test('bad flag values exit 2 before anything listens', async (t) => {
  for (const args of [
    ['--port', 'eighty'],
    ['--admin-port', '70000'],
    ['--auth', 'basic'],
    ['--auth', 'jwt'],
    ['--auth', 'none', '--issuer', 'https://login.example.com'],
    ['--server', 'no-equals-sign'],
    ['--server', DEAD_UPSTREAM, '--server', DEAD_UPSTREAM],
  ]) {
    const r = await run(t, ['start', '--server', 'z=http://127.0.0.1:1/mcp', ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.doesNotMatch(r.stdout, /gateway listening/);
  }
});

test('start --host 0.0.0.0 --auth none is refused without listening', async (t) => {
  const r = await run(t, [
    'start',
    '--host',
    '0.0.0.0',
    '--auth',
    'none',
    '--server',
    DEAD_UPSTREAM,
  ]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--auth: .*loopback/);
  assert.doesNotMatch(r.stdout, /gateway listening/);
  assert.doesNotMatch(r.stderr, /is listening on/);
});

test('flags are validated together with the file they overlay', async (t) => {
  // minimal.yaml is valid on its own; --host makes the whole invalid.
  const r = await run(t, ['start', '--config', 'config/minimal.yaml', '--host', '0.0.0.0']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /config\/minimal\.yaml/);
  for (const path of ['listen.tls', 'listen.allowedHosts']) {
    assert.ok(r.stderr.includes(`  ${path}: `), `names ${path}`);
  }
  const none = await run(t, [
    'start',
    '--config',
    'config/minimal.yaml',
    '--host',
    '0.0.0.0',
    '--auth',
    'none',
  ]);
  assert.equal(none.code, 2);
  assert.ok(none.stderr.includes('  auth.mode: '), 'names auth.mode');

  const named = await run(t, ['start', '--server', 'bad name=http://127.0.0.1:1/mcp']);
  assert.equal(named.code, 2);
  assert.match(named.stderr, /--server bad name: server names must be/);
});

test('flag-only runs report problems by flag name, not by configuration key', async (t) => {
  const cases: Array<[string[], RegExp[]]> = [
    [['--port', 'abc'], [/--port expects a port number, got 'abc'/]],
    [['--log-level', 'loud'], [/^ {2}--log-level: must be one of/m]],
    [['--tenant-claim', ''], [/^ {2}--tenant-claim: /m]],
    [
      ['--server', 'b=ftp://x/mcp'],
      [/^ {2}--server b \(url\): must be an http:\/\/ or https:\/\/ URL/m],
    ],
    [
      ['--host', '0.0.0.0', '--auth', 'none'],
      [
        /^ {2}--auth: "none" is only allowed when --host is a loopback address/m,
        // What no flag can set is named as such, with the way to set it.
        /^ {2}listen\.tls \(no flag sets it; use --config FILE\): is required when --host is not/m,
      ],
    ],
  ];
  // Found only at start-up, not by the schema (exit 1).
  const atStart: Array<[string[], RegExp[]]> = [
    [
      ['--issuer', 'https://cli.test', '--jwks', '/nonexistent/keys.json'],
      [/--jwks: .*keys\.json/],
    ],
  ];
  const all = [...cases, ...atStart];
  const results = await Promise.all(
    all.map(([args]) => run(t, ['start', '--server', DEAD_UPSTREAM, ...args])),
  );
  for (const [i, [args, expected]] of all.entries()) {
    const r = results[i] as Outcome;
    assert.equal(r.code, i < cases.length ? 2 : 1, `${args.join(' ')}: ${r.stderr}`);
    for (const e of expected) assert.match(r.stderr, e, args.join(' '));
    assert.doesNotMatch(
      r.stderr,
      /\b(listen\.(port|host)|log\.level|auth\.mode|auth\.jwt\.\w+|servers\.\w+)\b/,
      `${args.join(' ')}: no key a flag sets is named by its key`,
    );
  }
});

test('a port in use is an error naming the flag and the key that change it', async (t) => {
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => taken.close(() => resolve())));
  const port = String((taken.address() as AddressInfo).port);
  const base = ['start', '--auth', 'none', '--server', DEAD_UPSTREAM];

  const pub = await run(t, [...base, '--port', port, '--admin-port', '0']);
  assert.equal(pub.code, 1);
  assert.match(pub.stderr, new RegExp(`port ${port} is in use`));
  assert.match(pub.stderr, /--port P .* or listen\.port in the configuration file/);
  assert.doesNotMatch(pub.stderr, /EADDRINUSE/, 'no errno text');

  const admin = await run(t, [...base, '--port', '0', '--admin-port', port]);
  assert.equal(admin.code, 1);
  assert.match(admin.stderr, new RegExp(`admin listener's port ${port} is in use`));
  assert.match(admin.stderr, /--admin-port P .* or admin\.port in the configuration file/);
});

test('start on port 0 logs where it listens, serves, and exits 0 on SIGTERM', async (t) => {
  const child = spawnCli(t, [...START_FREE_PORTS, '--auth', 'none']);
  const exited = outcome(child, RUN_TIMEOUT_MS + SHUTDOWN_BOUND_MS);
  const listening = await listeningOf(child);
  assert.ok(listening, 'logged a JSON "gateway listening" line');
  assert.match(String(listening.url), /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.notEqual(new URL(String(listening.url)).port, '0');
  assert.deepEqual(listening.servers, ['a']);

  // Both listeners are real sockets.
  const live = await fetch(`${String(listening.adminUrl)}/livez`);
  assert.equal(live.status, 200);
  assert.deepEqual(await live.json(), { status: 'ok' });
  const unknown = await fetch(`${String(listening.url)}/mcp/nope`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  assert.equal(unknown.status, 404);
  await unknown.body?.cancel();

  const signalledAt = Date.now();
  child.kill('SIGTERM');
  const r = await exited;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.signal, null);
  assert.ok(Date.now() - signalledAt < SHUTDOWN_BOUND_MS, 'exited within the shutdown bound');
});

test('start --config reloads on SIGHUP: the flags stay laid over the file, a bad file is refused and the gateway serves on', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-sighup-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'portcullis.yaml');
  const good = [
    'auth: { mode: none }',
    'servers: { a: { url: "http://127.0.0.1:1/mcp" } }',
    'tenants: { anonymous: { servers: { a: { tools: ["*"] } } } }',
    '',
  ].join('\n');
  await writeFile(file, good);
  // --port and --admin-port differ from the file (8080, 9090): a reload must not see that as a change.
  const child = spawnCli(t, ['start', '--config', file, '--port', '0', '--admin-port', '0']);
  const exited = outcome(child, RUN_TIMEOUT_MS + SHUTDOWN_BOUND_MS);
  const records: Array<Record<string, unknown>> = [];
  let waiter: { match: (r: Record<string, unknown>) => boolean; found: () => void } | undefined;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const record = JSON.parse(line) as Record<string, unknown>;
    records.push(record);
    if (waiter?.match(record)) waiter.found();
  });
  const next = (event: string): Promise<Record<string, unknown>> => {
    const from = records.length;
    return new Promise((resolve) => {
      const match = (r: Record<string, unknown>) => r.event === event;
      waiter = { match, found: () => resolve(records.slice(from).find(match)!) };
    });
  };
  const listening = new Promise<void>((resolve) => {
    waiter = { match: (r) => r.msg === 'gateway listening', found: resolve };
  });
  await listening;

  const reloaded = next('config.reloaded');
  child.kill('SIGHUP');
  assert.deepEqual((await reloaded).changed, []);
  assert.ok(!records.some((r) => r.event === 'config.restart_required'), 'flags re-applied');

  // A bad file, written and then signalled: refused (by the watch, the signal, or both).
  const refused = next('config.reload_failed');
  await writeFile(file, good.replace('tools: ["*"]', 'tools: ["*"], bogus: 1'));
  child.kill('SIGHUP');
  const problem = ((await refused).problems as Array<{ path: string }>)[0];
  assert.equal(problem?.path, 'tenants.anonymous.servers.a.bogus');
  const live = await fetch(
    `${records.find((r) => r.msg === 'gateway listening')?.adminUrl as string}/livez`,
  );
  assert.equal(live.status, 200);

  child.kill('SIGTERM');
  const r = await exited;
  assert.equal(r.code, 0, r.stderr);
});

// --- identity commands ------------------------------------------------------------

test('keys generate writes a private JWKS (mode 600) and its public half, and refuses to overwrite', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-keys-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'signing.json');
  const r = await run(t, ['keys', 'generate', '--alg', 'EdDSA', '--kid', 'k1', '--out', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /EdDSA key "k1"/);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const priv = JSON.parse(readFileSync(file, 'utf8')) as { keys: Array<Record<string, unknown>> };
  assert.equal(priv.keys[0]?.kid, 'k1');
  assert.equal(typeof priv.keys[0]?.d, 'string');
  const pub = JSON.parse(readFileSync(join(dir, 'signing.pub.json'), 'utf8')) as {
    keys: Array<Record<string, unknown>>;
  };
  assert.equal(pub.keys[0]?.kid, 'k1');
  assert.equal(pub.keys[0]?.d, undefined, 'the public file holds no private part');

  const again = await run(t, ['keys', 'generate', '--out', file]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /--add/);
  const added = await run(t, ['keys', 'generate', '--out', file, '--add', '--kid', 'k2']);
  assert.equal(added.code, 0, added.stderr);
  assert.deepEqual(
    (
      JSON.parse(readFileSync(join(dir, 'signing.pub.json'), 'utf8')) as {
        keys: Array<{ kid: string }>;
      }
    ).keys.map((k) => k.kid),
    ['k1', 'k2'],
  );
  const bad = await run(t, ['keys', 'generate', '--alg', 'HS256']);
  assert.equal(bad.code, 2);
});

test('token mint signs the claims asked for, and start --issuer --jwks accepts only such tokens', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-keys-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'signing.json');
  assert.equal((await run(t, ['keys', 'generate', '--out', file])).code, 0);

  const child = spawnCli(t, [
    ...START_FREE_PORTS,
    '--issuer',
    'https://cli.test',
    '--jwks',
    join(dir, 'signing.pub.json'),
  ]);
  const url = (await listeningOf(child))?.url;
  assert.ok(url);

  const minted = await run(t, [
    'token',
    'mint',
    '--keys',
    file,
    '--iss',
    'https://cli.test',
    '--aud',
    url,
    '--sub',
    'ci-agent',
    '--tenant',
    'acme',
    '--scope',
    'mcp tools:call',
    '--ttl',
    '10m',
  ]);
  assert.equal(minted.code, 0, minted.stderr);
  const token = minted.stdout.trim();
  const claims = JSON.parse(
    Buffer.from(token.split('.')[1] ?? '', 'base64url').toString(),
  ) as Record<string, unknown>;
  assert.equal(claims.sub, 'ci-agent');
  assert.equal(claims.tenant, 'acme');
  assert.equal(claims.scope, 'mcp tools:call');
  assert.equal(claims.aud, url);
  assert.equal((claims.exp as number) - (claims.iat as number), 600);

  const call = (headers: Record<string, string>) =>
    post(`${url}/mcp/a`, initializeBody(1), headers);
  assert.equal((await call({})).status, 401);
  // Authenticated, the request goes on to the (dead) upstream: 502, not 401.
  assert.equal((await call({ authorization: `Bearer ${token}` })).status, 502);

  const tooLong = await run(t, ['token', 'mint', '--keys', file, '--ttl', 'forever']);
  assert.equal(tooLong.code, 2);
  const missing = await run(t, ['token', 'mint', '--keys', join(dir, 'nope.json')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /cannot mint/);
  child.kill('SIGTERM');
});

const EVERYTHING = join(
  dirname(
    createRequire(import.meta.url).resolve('@modelcontextprotocol/server-everything/package.json'),
  ),
  'dist/index.js',
);

test('--server NAME=stdio:COMMAND runs a local server, sandboxed, a process per session', async (t) => {
  const child = spawnCli(t, [
    'start',
    '--port',
    '0',
    '--admin-port',
    '0',
    '--auth',
    'none',
    '--server',
    `everything=stdio:"${process.execPath}" ${EVERYTHING} stdio`,
  ]);
  const listening = await listeningOf(child);
  assert.ok(listening, 'the gateway started');
  const res = await post(`${listening.url}/mcp/everything`, initializeBody(1));
  assert.equal(res.status, 200);
  assert.match(await res.text(), /mcp-servers\/everything/);
});

test('a server that requires its sandbox stops start-up where the sandbox cannot run; auto warns and runs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-nosandbox-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const configFor = async (mode: string) => {
    const file = join(dir, `${mode}.yaml`);
    await writeFile(
      file,
      JSON.stringify({
        listen: { port: 0 },
        admin: { port: 0 },
        auth: { mode: 'none' },
        servers: {
          local: {
            transport: 'stdio',
            command: process.execPath,
            args: [EVERYTHING, 'stdio'],
            sandbox: { mode },
          },
        },
      }),
    );
    return file;
  };
  // With nothing on PATH (the commands are absolute) bwrap and prlimit are not found.
  const noSandbox = { PATH: dir };

  const required = await run(t, ['start', '--config', await configFor('required')], noSandbox);
  assert.equal(required.code, 1);
  assert.match(required.stderr, /server 'local' needs its sandbox, and bubblewrap cannot run here/);
  assert.doesNotMatch(required.stdout, /gateway listening/);

  const child = spawnCli(t, ['start', '--config', await configFor('auto')], noSandbox);
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  assert.ok(await listeningOf(child), 'the gateway started');
  assert.match(output, /stdio server runs WITHOUT a sandbox/);
});

test('config check reads the manifests the servers name, and names the one it cannot use', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'manifests.yaml');
  await writeFile(join(dir, 'broken.json'), '{"version": 1, "server": "docs", "tools": [{}]}\n');
  await writeFile(
    file,
    [
      'auth: { mode: none }',
      'servers:',
      '  docs:',
      '    url: http://127.0.0.1:3001/mcp',
      `    manifest: ${join(dir, 'broken.json')}`,
      '  wiki:',
      '    url: http://127.0.0.1:3002/mcp',
      `    manifest: ${join(dir, 'missing.json')}`,
      '',
    ].join('\n'),
  );
  const r = await run(t, ['config', 'check', file]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^ {2}servers\.docs\.manifest: .*broken\.json: /m);
  assert.match(r.stderr, /^ {2}servers\.wiki\.manifest: .*missing\.json: .*ENOENT/m);
});
