// Entry point of the benchmark (`npm run bench`, `npm run bench -- --quick`).
//
// One run measures every target side by side against the same origin, one target at a time:
//   direct      → the origin itself
//   nginx       → Debian's nginx reverse proxy (generated config)
//   node        → the Node floor: node:http + undici Pool, no logic
//   fastify     → fastify + @fastify/http-proxy, no logic
//   portcullis  → the gateway, started with its CLI from dist/ (`npm run build`)
// and for each: closed-loop throughput with wrk, open-loop latency at a fixed rate, SSE time to
// first event, and then, in a second phase on freshly started processes, idle SSE streams and RSS
// per stream. Then it writes RESULTS.md (absolute numbers and ratios) and the raw JSON under
// bench/results/raw/.
//
// On a 2-core machine the load side (this process, wrk, bench/load.ts) and the origin share
// CPU 0 and the target under test gets CPU 1 to itself (taskset), so the proxies never fight
// the load generator for a core. --no-pin leaves placement to the scheduler.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { openIdleStreams } from './idle.js';
import type { RateOptions, RateResult, SseOptions, SseResult } from './load.js';
import { TOOL_ECHO, TOOL_PROGRESS, toolCall, withHeaders, type IdleMethod } from './mcp.js';
import { writeNginxConfig } from './nginx.js';
import {
  compileBenchChildren,
  cpuPct,
  cpuSnapshot,
  cpuTicks,
  foreignCpuPct,
  freePort,
  GATEWAY_READY_LOG,
  launch,
  QUIET_CPU_PCT,
  rssKiB,
  startJsonPortServer,
  startLogged,
  stop,
  waitForLog,
  waitForPort,
  waitForQuiet,
  type Server,
  type Watched,
} from './proc.js';
import {
  TARGET_LABELS,
  combineRounds,
  renderResults,
  type IdleResult,
  type Noise,
  type RunMeta,
  type TargetId,
  type TargetResult,
  type ThroughputResult,
} from './report.js';
import { runWrk, writeWrkScript } from './wrk.js';

const ALL_TARGETS: TargetId[] = [
  'direct',
  'nginx',
  'node',
  'fastify',
  'portcullis',
  'portcullis-jwt',
];
/** The whole run stops itself after this per round, whatever is still running. */
const ROUND_DEADLINE_MS = 25 * 60_000;
const LOAD_CHILD_SLACK_MS = 60_000;
const IDLE_OPEN_CONCURRENCY = 64;
const IDLE_PRIME_STREAMS = 32;
const UPSTREAM_DRAIN_TIMEOUT_MS = 10_000;
const SSE_CONCURRENCY = 16;
/** File descriptors a process needs beyond its held sockets. */
const FD_HEADROOM = 1_000;
/** A measurement starts once other processes use less than QUIET_CPU_PCT of one core, and is repeated (up to --retries) if they took more than this while it ran. */
const NOISY_CPU_PCT = 25;

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const repoDir = path.resolve(benchDir, '..');

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    targets: { type: 'string', default: ALL_TARGETS.join(',') },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    connections: { type: 'string', default: '32' },
    rate: { type: 'string', default: '1000' },
    'rate-duration': { type: 'string' },
    'sse-streams': { type: 'string' },
    'sse-events': { type: 'string', default: '3' },
    'sse-delay-ms': { type: 'string' },
    'idle-streams': { type: 'string' },
    'idle-method': { type: 'string', default: 'listen' },
    retries: { type: 'string' },
    rounds: { type: 'string' },
    'no-pin': { type: 'boolean', default: false },
    build: { type: 'boolean', default: false },
    out: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  console.log(`usage: npm run bench -- [options]
  --quick               small run, under a minute (writes bench/results/raw/RESULTS-quick.md)
  --targets LIST        comma-separated, from ${ALL_TARGETS.join(',')} (default: all)
  --duration S          wrk measured seconds (default 10, quick 2)
  --warmup S            wrk warm-up seconds (default 3, quick 1)
  --connections N       wrk connections (default 32)
  --rate N              fixed rate in calls/s (default 1000)
  --rate-duration S     fixed-rate measured seconds (default 10, quick 2)
  --sse-streams N       progress streams per target (default 300, quick 64)
  --sse-events N        progress events per stream (default 3)
  --sse-delay-ms MS     delay between progress events (default 100, quick 50)
  --idle-streams N      concurrent idle streams per target (default 5000, quick 500)
  --idle-method M       listen (subscriptions/listen) or hold (tools/call hold) (default listen)
  --retries N           repeat a throughput or fixed-rate measurement up to N times while other
                        processes load the machine (default 2, quick 0)
  --rounds N            measure every target N times, interleaved, and report medians (default 1)
  --no-pin              do not pin with taskset
  --build               run \`npm run build\` before starting
  --out FILE            results file (default bench/RESULTS.md)`);
  process.exit(0);
}

function num(value: string | undefined, full: number, quick: number): number {
  const n = Number(value ?? (flags.quick ? quick : full));
  if (!Number.isFinite(n) || n < 0) throw new Error(`not a number: ${value}`);
  return n;
}

const settings = {
  durationS: num(flags.duration, 10, 2),
  warmupS: num(flags.warmup, 3, 1),
  connections: num(flags.connections, 32, 32),
  rate: num(flags.rate, 1000, 1000),
  rateDurationS: num(flags['rate-duration'], 10, 2),
  rateWarmupS: flags.quick ? 0.5 : 2,
  sseStreams: num(flags['sse-streams'], 300, 64),
  sseEvents: num(flags['sse-events'], 3, 3),
  sseDelayMs: num(flags['sse-delay-ms'], 100, 50),
  idleStreams: num(flags['idle-streams'], 5000, 500),
  idleSettleMs: flags.quick ? 500 : 1500,
  /** Time allowed for opening the idle streams, after which no new one is started. */
  idleBudgetMs: flags.quick ? 4_000 : 60_000,
  retries: num(flags.retries, 2, 0),
  rounds: Math.max(1, num(flags.rounds, 1, 1)),
  /** How long a measurement waits for the machine to be quiet before it starts anyway. */
  quietWaitMs: flags.quick ? 0 : 15_000,
};
const idleMethod = flags['idle-method'] as IdleMethod;
if (idleMethod !== 'listen' && idleMethod !== 'hold') throw new Error('--idle-method listen|hold');
const targets = flags.targets.split(',').map((t) => t.trim()) as TargetId[];
for (const t of targets) {
  if (!ALL_TARGETS.includes(t)) throw new Error(`unknown target ${t}`);
}
const outFile = path.resolve(
  flags.out ??
    (flags.quick
      ? path.join(benchDir, 'results/raw/RESULTS-quick.md')
      : path.join(benchDir, 'RESULTS.md')),
);
const notes: string[] = [];

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.trim();
  }
}

// --- open-file limit: this process holds the client side of every idle stream --------------
{
  const soft = Number(sh('sh', ['-c', 'ulimit -Sn']));
  const hard = Number(sh('sh', ['-c', 'ulimit -Hn']));
  // A proxy holds two sockets per stream; stay under the hard limit it can raise itself to.
  const maxStreams = Number.isFinite(hard) ? Math.floor((hard - FD_HEADROOM) / 2) : Infinity;
  if (settings.idleStreams > maxStreams) {
    notes.push(
      `idle streams capped at ${maxStreams} (hard open-file limit ${hard}, a proxy needs two sockets per stream)`,
    );
    settings.idleStreams = maxStreams;
  }
  if (soft < settings.idleStreams + FD_HEADROOM && process.env.PORTCULLIS_BENCH_REEXEC !== '1') {
    // Node cannot raise its own limit: run again under a shell that has raised it.
    const r = spawnSync(
      'sh',
      [
        '-c',
        'ulimit -n "$(ulimit -Hn)"; exec "$@"',
        'sh',
        process.execPath,
        ...process.execArgv,
        ...process.argv.slice(1),
      ],
      { stdio: 'inherit', env: { ...process.env, PORTCULLIS_BENCH_REEXEC: '1' } },
    );
    process.exit(r.status ?? 1);
  }
}

// --- CPU placement ----------------------------------------------------------------------------
const nproc = os.availableParallelism();
let loadCpus: string | undefined;
let relayCpus: string | undefined;
let relayCpuCount = nproc;
if (!flags['no-pin'] && nproc >= 2) {
  const split = Math.ceil(nproc / 2);
  loadCpus = split === 1 ? '0' : `0-${split - 1}`;
  relayCpus = split === nproc - 1 ? String(split) : `${split}-${nproc - 1}`;
  relayCpuCount = nproc - split;
  sh('taskset', ['-a', '-p', '-c', loadCpus, String(process.pid)]);
}
const pinning =
  loadCpus === undefined
    ? 'none (scheduler placement)'
    : `taskset: load generators (wrk, bench/load.ts, bench/run.ts) and the origin on CPU ${loadCpus}; the target under test on CPU ${relayCpus}`;

// --- lifetime: every child is tracked and stopped, on success, error, signal or deadline ------
const children = new Set<ChildProcess>();
const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-'));
let cleaningUp: Promise<void> | undefined;
async function cleanup(): Promise<void> {
  cleaningUp ??= (async () => {
    await Promise.all([...children].map((c) => stop(c)));
    rmSync(tmpDir, { recursive: true, force: true });
  })();
  return cleaningUp;
}
function track<T extends ChildProcess>(child: T): T {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping children`);
    void cleanup().finally(() => process.exit(130));
  });
}
const runDeadlineMs = ROUND_DEADLINE_MS * settings.rounds;
setTimeout(() => {
  console.error(`run deadline of ${runDeadlineMs / 60_000} min reached: stopping`);
  void cleanup().finally(() => process.exit(1));
}, runDeadlineMs).unref();

function log(msg: string): void {
  console.log(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// --- targets ------------------------------------------------------------------------------------
interface Running {
  readonly url: string;
  /** Added to every request: the target's credentials (portcullis with JWT authentication). */
  readonly headers?: Record<string, string>;
  /** The process that relays the traffic: its RSS and CPU are what gets measured. */
  readonly pid: number;
  readonly withChildren: boolean;
  stop(): Promise<void>;
}

const childDir = path.join(tmpDir, 'js');

async function startNodeProxy(name: string, file: string, originUrl: string): Promise<Running> {
  const [cmd, args] = launch(relayCpus, process.execPath, [
    path.join(childDir, file),
    '--upstream',
    originUrl,
  ]);
  const server = await startJsonPortServer(name, cmd, args);
  track(server.child);
  return {
    url: `http://127.0.0.1:${server.port}/mcp`,
    pid: server.child.pid as number,
    withChildren: false,
    stop: () => stop(server.child),
  };
}

async function startNginx(originPort: number): Promise<Running> {
  const dir = path.join(tmpDir, 'nginx');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const hard = Number(sh('sh', ['-c', 'ulimit -Hn']));
  const conf = writeNginxConfig({
    dir,
    port,
    upstreamPorts: [originPort],
    workers: relayCpuCount,
    maxOpenFiles: Number.isFinite(hard) ? hard : 20_000,
  });
  const [cmd, args] = launch(relayCpus, 'nginx', ['-p', dir, '-c', conf]);
  const child = track(startLogged(cmd, args, path.join(dir, 'stdout.log')));
  try {
    await Promise.race([
      waitForPort(port),
      new Promise((_, reject) =>
        child.once('exit', (code) => reject(new Error(`nginx exited with ${code}`))),
      ),
    ]);
  } catch (err) {
    const errorLog = path.join(dir, 'error.log');
    const detail = existsSync(errorLog)
      ? readFileSync(errorLog, 'utf8').trim().split('\n').slice(-3).join(' ')
      : '';
    await stop(child);
    throw new Error(`${errorText(err)} ${detail}`.trim());
  }
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    pid: child.pid as number,
    withChildren: true,
    stop: () => stop(child),
  };
}

/** The issuer the JWT target trusts, and its keys (made once per run with the CLI). */
const BENCH_ISSUER = 'https://issuer.bench';
const benchKeys = path.join(tmpDir, 'bench-signing.json');

/**
 * The gateway from its CLI. With `jwt`, it verifies tokens from a local issuer
 * (`keys generate`), and every request carries one token (`token mint`, 15
 * minutes, longer than one target's turn): after the first request, every
 * check is a cache hit, as for an agent reusing its token.
 */
async function startPortcullis(originPort: number, auth: 'none' | 'jwt'): Promise<Running> {
  const main = path.join(repoDir, 'dist/cli/main.js');
  if (!existsSync(main)) throw new Error('dist/cli/main.js not found (run `npm run build`)');
  const port = await freePort();
  const logFile = path.join(tmpDir, `portcullis-${auth}.log`);
  const authArgs =
    auth === 'none'
      ? ['--auth', 'none']
      : ['--issuer', BENCH_ISSUER, '--jwks', benchKeys.replace(/\.json$/, '.pub.json')];
  if (auth === 'jwt' && !existsSync(benchKeys)) {
    execFileSync(process.execPath, [main, 'keys', 'generate', '--out', benchKeys]);
  }
  // One load generator stands for many callers: quotas set past anything it opens.
  const quotaConfig = path.join(tmpDir, 'portcullis-quotas.json');
  const unlimited = { sessions: 1e6, legacyConnections: 1e6, stdioProcesses: 1e6, inflight: 1e6 };
  writeFileSync(
    quotaConfig,
    JSON.stringify({
      quotas: { perPrincipal: unlimited, perTenant: unlimited, global: { inflight: 1e6 } },
    }),
  );
  const [cmd, args] = launch(relayCpus, process.execPath, [
    main,
    'start',
    '--config',
    quotaConfig,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--admin-port',
    '0',
    ...authArgs,
    '--server',
    `bench=http://127.0.0.1:${originPort}/mcp`,
  ]);
  // Logs go to a file, not a pipe: draining a pipe here would spend the load CPU on them.
  const child = track(startLogged(cmd, args, logFile));
  try {
    await waitForLog(child, logFile, GATEWAY_READY_LOG);
  } catch (err) {
    await stop(child);
    throw err;
  }
  const headers =
    auth === 'none'
      ? undefined
      : {
          authorization: `Bearer ${execFileSync(
            process.execPath,
            [
              main,
              'token',
              'mint',
              '--keys',
              benchKeys,
              '--iss',
              BENCH_ISSUER,
              '--aud',
              `http://127.0.0.1:${port}`,
              '--ttl',
              '15m',
            ],
            { encoding: 'utf8' },
          ).trim()}`,
        };
  return {
    url: `http://127.0.0.1:${port}/mcp/bench`,
    ...(headers === undefined ? {} : { headers }),
    pid: child.pid as number,
    withChildren: false,
    stop: () => stop(child),
  };
}

// --- measurements ------------------------------------------------------------------------------
async function sanityCheck(url: string, headers?: Record<string, string>): Promise<void> {
  const echo = withHeaders(toolCall(TOOL_ECHO), headers);
  const r1 = await request(url, { method: 'POST', headers: echo.headers, body: echo.body });
  const t1 = await r1.body.text();
  if (r1.statusCode !== 200 || !t1.includes('echo: hello from bench')) {
    throw new Error(`tools/call ${TOOL_ECHO}: HTTP ${r1.statusCode} ${t1.slice(0, 300)}`);
  }
  const sse = withHeaders(toolCall(TOOL_PROGRESS), headers);
  const r2 = await request(url, { method: 'POST', headers: sse.headers, body: sse.body });
  const t2 = await r2.body.text();
  const type = String(r2.headers['content-type'] ?? '');
  if (r2.statusCode !== 200 || !type.startsWith('text/event-stream') || !t2.includes('"result"')) {
    throw new Error(
      `tools/call ${TOOL_PROGRESS}: HTTP ${r2.statusCode} ${type} ${t2.slice(0, 300)}`,
    );
  }
}

async function originOpenStreams(originUrl: string): Promise<number> {
  const r = await request(`${originUrl}/stats`);
  return ((await r.body.json()) as { openStreams: number }).openStreams;
}

async function waitUpstreamDrained(originUrl: string): Promise<number> {
  const deadline = Date.now() + UPSTREAM_DRAIN_TIMEOUT_MS;
  let open = await originOpenStreams(originUrl);
  while (open > 0 && Date.now() < deadline) {
    await sleep(100);
    open = await originOpenStreams(originUrl);
  }
  return open;
}

/** The processes this run started that are alive during a measurement. */
function watchedProcesses(target: Running, origin: Server): Watched[] {
  const originPid = origin.child.pid as number;
  const relay = { pid: target.pid, withChildren: target.withChildren };
  return target.pid === originPid ? [relay] : [relay, { pid: originPid, withChildren: false }];
}

/**
 * Runs one measurement once the machine is quiet, and again (up to --retries times) while
 * other processes took more than NOISY_CPU_PCT of a core meanwhile; keeps the quietest attempt.
 */
async function measured<T extends object>(
  name: string,
  watched: Watched[],
  retry: boolean,
  fn: () => Promise<T>,
): Promise<T & Noise> {
  let best: (T & { foreignCpuPct: number }) | undefined;
  const maxAttempts = retry ? 1 + settings.retries : 1;
  let attempts = 0;
  while (attempts < maxAttempts) {
    attempts++;
    if (settings.quietWaitMs > 0) await waitForQuiet(watched, QUIET_CPU_PCT, settings.quietWaitMs);
    const before = cpuSnapshot(watched);
    const result = await fn();
    const foreign = foreignCpuPct(before, cpuSnapshot(watched));
    if (best === undefined || foreign < best.foreignCpuPct)
      best = { ...result, foreignCpuPct: foreign };
    if (foreign < NOISY_CPU_PCT) break;
    log(
      `${name}: other processes used ${foreign.toFixed(0)}% of a core meanwhile` +
        (attempts < maxAttempts
          ? ', measuring again'
          : maxAttempts > 1
            ? ', keeping the quietest attempt'
            : ''),
    );
  }
  return { ...(best as T & { foreignCpuPct: number }), attempts };
}

async function measureIdle(
  target: Running,
  origin: Server,
  originUrl: string,
  method: IdleMethod,
): Promise<IdleResult> {
  // Prime the path (lazy init, pools, JIT) so the delta is the streams, not first-use costs.
  const prime = await openIdleStreams({
    url: target.url,
    headers: target.headers,
    method,
    count: IDLE_PRIME_STREAMS,
    concurrency: 8,
    budgetMs: settings.idleBudgetMs,
  });
  prime.close();
  if (prime.opened === 0) throw new Error(prime.firstError ?? 'no stream opened');
  await waitUpstreamDrained(originUrl);
  await sleep(settings.idleSettleMs);
  const originPid = origin.child.pid as number;
  const rssBeforeKiB = rssKiB(target.pid, target.withChildren);
  const originBeforeKiB = rssKiB(originPid);
  const held = await openIdleStreams({
    url: target.url,
    headers: target.headers,
    method,
    count: settings.idleStreams,
    concurrency: IDLE_OPEN_CONCURRENCY,
    budgetMs: settings.idleBudgetMs,
  });
  await sleep(settings.idleSettleMs);
  const rssHeldKiB = rssKiB(target.pid, target.withChildren);
  const originHeldKiB = rssKiB(originPid);
  const dropped = held.dropped();
  held.close();
  const upstreamLeftAfterClose = await waitUpstreamDrained(originUrl);
  const per = (after: number, before: number): number =>
    held.opened > 0 ? (after - before) / held.opened : NaN;
  return {
    method,
    requested: settings.idleStreams,
    opened: held.opened,
    failed: held.failed,
    dropped,
    rssBeforeKiB,
    rssHeldKiB,
    kibPerStream: per(rssHeldKiB, rssBeforeKiB),
    originKibPerStream: per(originHeldKiB, originBeforeKiB),
    upstreamLeftAfterClose,
    ...(held.firstError === undefined ? {} : { firstError: held.firstError }),
  };
}

async function runLoadChild<T>(options: RateOptions | SseOptions, expectedS: number): Promise<T> {
  const [cmd, args] = launch(loadCpus, process.execPath, [
    path.join(childDir, 'load.js'),
    JSON.stringify(options),
  ]);
  const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4_000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), expectedS * 1000 + LOAD_CHILD_SLACK_MS);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  if (code !== 0)
    throw new Error(
      `load.ts ${options.mode} exited with ${code}: ${err.trim().split('\n').slice(-3).join(' ')}`,
    );
  return JSON.parse(out) as T;
}

async function measureThroughput(target: Running, script: string): Promise<ThroughputResult> {
  const ticks0 = cpuTicks(target.pid, target.withChildren);
  const t0 = performance.now();
  const result = await runWrk({
    url: target.url,
    script,
    connections: settings.connections,
    threads: 1,
    cpus: loadCpus,
    durationS: settings.durationS,
  });
  const seconds = (performance.now() - t0) / 1000;
  return {
    ...result,
    relayCpuPct: cpuPct(cpuTicks(target.pid, target.withChildren) - ticks0, seconds),
  };
}

async function startTarget(id: TargetId, origin: Server, originUrl: string): Promise<Running> {
  switch (id) {
    case 'direct':
      return {
        url: `${originUrl}/mcp`,
        pid: origin.child.pid as number,
        withChildren: false,
        stop: async () => undefined,
      };
    case 'nginx':
      return startNginx(origin.port);
    case 'node':
      return startNodeProxy('node floor', 'proxy-node.js', originUrl);
    case 'fastify':
      return startNodeProxy('fastify-proxy', 'proxy-fastify.js', originUrl);
    case 'portcullis':
      return startPortcullis(origin.port, 'none');
    case 'portcullis-jwt':
      return startPortcullis(origin.port, 'jwt');
  }
}

type Phase = 'load' | 'idle';

/** Held idle streams and RSS per stream, into `result`; falls back to `tools/call hold`. */
async function measureIdleStep(
  id: TargetId,
  running: Running,
  origin: Server,
  originUrl: string,
  result: { idle?: IdleResult & Noise },
  errors: Record<string, string>,
): Promise<void> {
  log(`${id}: ${settings.idleStreams} idle streams`);
  const watched = watchedProcesses(running, origin);
  const idleWith = (method: IdleMethod): Promise<IdleResult & Noise> =>
    measured(`${id} idle`, watched, false, () => measureIdle(running, origin, originUrl, method));
  try {
    result.idle = await idleWith(idleMethod);
    if (result.idle.opened === 0 && idleMethod === 'listen') {
      errors.idle = `subscriptions/listen: ${result.idle.firstError ?? 'no stream'}; fell back to tools/call hold`;
      result.idle = await idleWith('hold');
    }
    if (result.idle.failed > 0)
      errors.idleOpen = `${result.idle.failed} failed: ${result.idle.firstError}`;
  } catch (err) {
    errors.idle = errorText(err);
    if (idleMethod === 'listen') {
      try {
        result.idle = await idleWith('hold');
        errors.idle += '; fell back to tools/call hold';
      } catch (err2) {
        errors.idle += `; hold: ${errorText(err2)}`;
      }
    }
  }
}

/**
 * The load phase (throughput, fixed rate, SSE) or the idle phase (held streams) of one target,
 * on a relay started for it alone.
 */
async function measureTarget(
  id: TargetId,
  origin: Server,
  originUrl: string,
  script: string,
  phase: Phase,
): Promise<TargetResult> {
  let running: Running;
  try {
    running = await startTarget(id, origin, originUrl);
  } catch (err) {
    return { id, unavailable: errorText(err), errors: {} };
  }
  const errors: Record<string, string> = {};
  const result: { -readonly [K in keyof TargetResult]: TargetResult[K] } = {
    id,
    url: running.url,
    errors,
  };
  const watched = watchedProcesses(running, origin);
  try {
    try {
      await sanityCheck(running.url, running.headers);
    } catch (err) {
      return {
        id,
        url: running.url,
        unavailable: `sanity check failed: ${errorText(err)}`,
        errors,
      };
    }

    if (phase === 'idle') {
      await measureIdleStep(id, running, origin, originUrl, result, errors);
      return result;
    }

    log(
      `${id}: wrk -c${settings.connections}, ${settings.warmupS} s warm-up + ${settings.durationS} s`,
    );
    // A target with credentials gets its own copy of the script, with them in every request.
    const targetScript =
      running.headers === undefined
        ? script
        : writeWrkScript(
            tmpDir,
            withHeaders(toolCall(TOOL_ECHO), running.headers),
            `tools-call-${id}.lua`,
          );
    try {
      if (settings.warmupS > 0) {
        await runWrk({
          url: running.url,
          script: targetScript,
          connections: settings.connections,
          threads: 1,
          cpus: loadCpus,
          durationS: settings.warmupS,
        });
      }
      result.throughput = await measured(`${id} throughput`, watched, true, () =>
        measureThroughput(running, targetScript),
      );
    } catch (err) {
      errors.throughput = errorText(err);
    }

    log(`${id}: ${settings.rate} calls/s for ${settings.rateDurationS} s`);
    try {
      result.rate = await measured(`${id} rate`, watched, true, () =>
        runLoadChild<RateResult>(
          {
            mode: 'rate',
            url: running.url,
            ...(running.headers === undefined ? {} : { headers: running.headers }),
            rate: settings.rate,
            durationS: settings.rateDurationS,
            warmupS: settings.rateWarmupS,
          },
          settings.rateDurationS + settings.rateWarmupS,
        ),
      );
      if (result.rate.firstError !== undefined)
        errors.rate = `${result.rate.errors} failed: ${result.rate.firstError}`;
    } catch (err) {
      errors.rate = errorText(err);
    }

    log(`${id}: ${settings.sseStreams} SSE streams`);
    try {
      result.sse = await measured(`${id} sse`, watched, false, () =>
        runLoadChild<SseResult>(
          {
            mode: 'sse',
            url: running.url,
            ...(running.headers === undefined ? {} : { headers: running.headers }),
            streams: settings.sseStreams,
            concurrency: SSE_CONCURRENCY,
            sseEvents: settings.sseEvents,
            sseDelayMs: settings.sseDelayMs,
          },
          ((settings.sseStreams / SSE_CONCURRENCY + 2) *
            (settings.sseEvents + 1) *
            settings.sseDelayMs) /
            1000,
        ),
      );
      if (result.sse.firstError !== undefined)
        errors.sse = `${result.sse.errors} failed: ${result.sse.firstError}`;
      if (result.sse.firstEventBeforeEnd < result.sse.ok) {
        errors.sseStreaming = `${result.sse.ok - result.sse.firstEventBeforeEnd} streams delivered their first event only at the end (buffered)`;
      }
    } catch (err) {
      errors.sse = errorText(err);
    }
  } finally {
    await running.stop();
  }
  return result;
}

// --- machine facts ------------------------------------------------------------------------------
function cpuModel(): string {
  const line = readFileSync('/proc/cpuinfo', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('model name'));
  return line?.split(':')[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
}

function portcullisBuild(): string {
  const main = path.join(repoDir, 'dist/cli/main.js');
  if (!existsSync(main)) return 'dist/cli/main.js missing';
  return `dist/cli/main.js built ${statSync(main).mtime.toISOString()}`;
}

function commandLine(): string {
  const args = process.argv.slice(2);
  return args.length === 0 ? 'npm run bench' : `npm run bench -- ${args.join(' ')}`;
}

/** The origin for one phase: a fresh process, pinned with the load side. */
async function startOrigin(): Promise<Server> {
  const [cmd, args] = launch(loadCpus, process.execPath, [
    path.join(childDir, 'origin.js'),
    '--sse-events',
    String(settings.sseEvents),
    '--sse-delay-ms',
    String(settings.sseDelayMs),
  ]);
  const origin = await startJsonPortServer('origin', cmd, args);
  track(origin.child);
  log(`origin on http://127.0.0.1:${origin.port}`);
  return origin;
}

/** One round's result for a target: the load phase's figures and the idle phase's. */
function mergePhases(load: TargetResult | undefined, idle: TargetResult | undefined): TargetResult {
  const base = load ?? idle;
  if (base === undefined) throw new Error('no phase ran');
  const errors = { ...load?.errors, ...idle?.errors };
  const unavailable = load?.unavailable ?? idle?.unavailable;
  return {
    ...base,
    ...(idle?.idle === undefined ? {} : { idle: idle.idle }),
    ...(unavailable === undefined ? {} : { unavailable }),
    errors,
  };
}

// --- main ------------------------------------------------------------------------------------------
async function main(): Promise<void> {
  if (sh('sh', ['-c', 'command -v wrk']) === '')
    throw new Error('wrk not found: apt-get install -y wrk');
  if (flags.build) {
    log('npm run build');
    const r = spawnSync('npm', ['run', 'build'], { cwd: repoDir, stdio: 'inherit' });
    if (r.status !== 0) notes.push(`npm run build failed (exit ${r.status}); dist/ as it was`);
  }
  compileBenchChildren(benchDir, childDir, repoDir);
  const script = writeWrkScript(tmpDir, toolCall(TOOL_ECHO));

  log(pinning);

  // Rounds interleave the targets, so slow drift in the machine's load spreads over all of them.
  // Each round runs the load steps of every target, then the idle step of every target, each
  // phase against a freshly started origin and every target on a freshly started relay: holding
  // 5,000 streams leaves garbage in every heap it touched (relay and origin), and the longer GC
  // pauses that follow would otherwise land in the next step's fixed-rate tail (bench/README.md).
  const selected = ALL_TARGETS.filter((t) => targets.includes(t));
  const rounds = new Map<TargetId, TargetResult[]>(selected.map((id) => [id, []]));
  const label = (id: TargetId, round: number, phase: Phase): string =>
    `== ${TARGET_LABELS[id]}, ${phase === 'load' ? 'load steps' : 'idle streams'}${settings.rounds > 1 ? ` (round ${round}/${settings.rounds})` : ''}`;
  for (let round = 1; round <= settings.rounds; round++) {
    const byPhase = new Map<Phase, Map<TargetId, TargetResult>>();
    for (const phase of ['load', 'idle'] as const) {
      const origin = await startOrigin();
      const originUrl = `http://127.0.0.1:${origin.port}`;
      const results = new Map<TargetId, TargetResult>();
      try {
        for (const id of selected) {
          log(label(id, round, phase));
          const r = await measureTarget(id, origin, originUrl, script, phase);
          if (r.unavailable !== undefined) log(`${id}: unavailable: ${r.unavailable}`);
          results.set(id, r);
        }
      } finally {
        await stop(origin.child);
      }
      byPhase.set(phase, results);
    }
    for (const id of selected) {
      rounds.get(id)?.push(mergePhases(byPhase.get('load')?.get(id), byPhase.get('idle')?.get(id)));
    }
  }
  const results = selected.map((id) => combineRounds(rounds.get(id) ?? []));

  const meta: RunMeta = {
    date: new Date().toISOString(),
    command: commandLine(),
    nproc,
    cpuModel: cpuModel(),
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    nginx: sh('sh', ['-c', 'nginx -v 2>&1']).replace(/^nginx version:\s*/, '') || 'not installed',
    wrk: sh('wrk', ['--version']).split('\n')[0]?.split(' Copyright')[0]?.trim() ?? 'unknown',
    portcullisBuild: portcullisBuild(),
    gitCommit: sh('git', ['-C', repoDir, 'log', '-1', '--format=%h %s']) || 'unknown',
    pinning,
    nginxWorkers: relayCpuCount,
    settings: [
      ...(settings.rounds > 1
        ? [
            `${settings.rounds} rounds, targets interleaved; every figure is the median of its ${settings.rounds} values`,
          ]
        : []),
      `throughput: wrk -t1 -c${settings.connections}, ${settings.warmupS} s warm-up then ${settings.durationS} s measured, tools/call with ${toolCall(TOOL_ECHO).body.length} B body (~1 KiB arguments)`,
      `fixed rate: ${settings.rate} calls/s open loop for ${settings.rateDurationS} s after ${settings.rateWarmupS} s warm-up, undici Pool (bench/load.ts), latency from each request's due time`,
      `SSE: ${settings.sseStreams} streams, ${SSE_CONCURRENCY} at a time; the origin sends ${settings.sseEvents} progress events ${settings.sseDelayMs} ms apart, then the result`,
      `idle: ${settings.idleStreams} concurrent streams (${idleMethod === 'listen' ? 'subscriptions/listen' : 'tools/call hold'}), opened ${IDLE_OPEN_CONCURRENCY} at a time, RSS read ${settings.idleSettleMs} ms after the last one opened`,
    ],
    notes,
  };
  mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileSync(outFile, renderResults(meta, results));
  const rawDir = path.join(benchDir, 'results/raw');
  mkdirSync(rawDir, { recursive: true });
  const rawFile = path.join(rawDir, `${meta.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    rawFile,
    `${JSON.stringify({ meta, settings, results, rounds: Object.fromEntries(rounds) }, null, 2)}\n`,
  );
  log(`wrote ${path.relative(repoDir, outFile)} and ${path.relative(repoDir, rawFile)}`);
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await cleanup();
}
