// Throughput of the whole gateway with the policy on and off, and of the gateway before the
// exchange refactor, in one run (`npm run bench:policy-pipeline`). Three targets, each the
// gateway started with its CLI on the bench origin (bench/origin.ts), driven by wrk with the
// same tools/call echo as bench/run.ts (1,268 B body, ~1 KiB of arguments):
//   base → the gateway at an older commit (--base DIR: a checkout with `npm run build` done),
//          `--config <quotas> --server bench=URL`, as bench/run.ts starts it;
//   off  → this checkout's gateway, started the same way: no tenants, no manifest. Description
//          cleaning and trust-on-first-use pinning are always on, so the outbound decision point
//          still runs on every answer;
//   on   → this checkout's gateway with bench/policy-fixture.ts in force: the tenant of the
//          anonymous principal (`--auth none`) granted the bench server's tools, its 100 rules,
//          and a 200-tool manifest for the bench server (echo among them, with its schema);
//   bare → `off` with response redaction off too: nothing of the policy but description
//          cleaning and pinning;
//   guarded → `on` with guards on echo's two arguments (size, pattern, shell on `message`;
//          size and pattern on the 960 B `payload`) and response redaction on every result.
// `--targets bare,guarded` measures what the guards and redaction cost (target ≥ 0.85).
// Rounds interleave the targets (each round starts with the next one), every target on a
// freshly started process; each figure is the median of the rounds. Pinned as bench/run.ts
// pins: wrk, this script and the origin on CPU 0, the target on CPU 1. Before each measured
// step the script waits (up to 15 s) for other processes to use less than 20% of a core and
// records what they took meanwhile.
// Writes its section of bench/RESULTS-policy.md (or --out FILE); raw figures go to
// bench/results/raw/policy-pipeline-<date>.json.
//
// Usage: npm run bench:policy-pipeline -- --base DIR [--rounds 5 --duration 10 --warmup 3]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { TOOL_ECHO, toolCall } from './mcp.js';
import {
  GRANT,
  OTHER_SERVER,
  SERVER,
  TENANT,
  benchManifest,
  benchRules,
} from './policy-fixture.js';
import {
  compileBenchChildren,
  QUIET_CPU_PCT,
  QUIET_WAIT_MS,
  GATEWAY_READY_LOG,
  cpuPct,
  cpuSnapshot,
  cpuTicks,
  foreignCpuPct,
  freePort,
  launch,
  startJsonPortServer,
  startLogged,
  stop,
  waitForLog,
  waitForQuiet,
  type Server,
} from './proc.js';
import { writeRawResults, writeResultsSection } from './results.js';
import { runWrk, wrkVersion, writeWrkScript, type WrkResult } from './wrk.js';

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const repoDir = path.resolve(benchDir, '..');

const { values: flags } = parseArgs({
  options: {
    base: { type: 'string' },
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    targets: { type: 'string', default: 'base,off,on' },
    'cpu-prof': { type: 'string' },
    out: { type: 'string' },
  },
});
const rounds = Number(flags.rounds);
const durationS = Number(flags.duration);
const warmupS = Number(flags.warmup);
const connections = Number(flags.connections);
type TargetId = 'base' | 'off' | 'on' | 'bare' | 'guarded';
const targets = flags.targets.split(',') as TargetId[];
if (targets.includes('base') && flags.base === undefined)
  throw new Error('--base DIR (a checkout of the older gateway, built) is needed for target base');
const baseDir = flags.base === undefined ? undefined : path.resolve(flags.base);
const outFile = flags.out ?? path.join(benchDir, 'RESULTS-policy.md');

const nproc = os.availableParallelism();
const loadCpus = nproc >= 2 ? '0' : undefined;
const relayCpus = nproc >= 2 ? '1' : undefined;
if (loadCpus !== undefined)
  execFileSync('taskset', ['-a', '-p', '-c', loadCpus, String(process.pid)], { stdio: 'ignore' });

const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-policy-bench-'));
const log = (msg: string) =>
  console.log(`[policy-bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const git = (dir: string, ...args: string[]) =>
  execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8' }).trim();

// ---- configs -----------------------------------------------------------------------------------
interface Configs {
  readonly quotas: string;
  readonly on: string;
  readonly bare: string;
  readonly guarded: string;
}

function writeConfigs(originPort: number): Configs {
  const unlimited = { sessions: 1e6, legacyConnections: 1e6, stdioProcesses: 1e6, inflight: 1e6 };
  const quotas = { perPrincipal: unlimited, perTenant: unlimited, global: { inflight: 1e6 } };
  const quotasFile = path.join(tmpDir, 'quotas.json');
  writeFileSync(quotasFile, JSON.stringify({ quotas }));
  const manifestFile = path.join(tmpDir, 'bench-manifest.json');
  writeFileSync(manifestFile, `${JSON.stringify(benchManifest(), null, 2)}\n`);
  const onFile = path.join(tmpDir, 'policy-on.json');
  writeFileSync(
    onFile,
    JSON.stringify({
      quotas,
      servers: {
        [SERVER]: { url: `http://127.0.0.1:${originPort}/mcp`, manifest: manifestFile },
        // Named by 14 of the rules; never called.
        [OTHER_SERVER]: { url: 'http://127.0.0.1:9/mcp' },
      },
      tenants: {
        [TENANT]: {
          servers: { [SERVER]: GRANT, [OTHER_SERVER]: { tools: ['*'] } },
          rules: benchRules(),
        },
      },
    }),
  );
  const bareFile = path.join(tmpDir, 'bare.json');
  writeFileSync(bareFile, JSON.stringify({ quotas, redaction: { mode: 'off' } }));
  const guardedFile = path.join(tmpDir, 'guarded.json');
  const on = JSON.parse(readFileSync(onFile, 'utf8')) as {
    servers: Record<string, Record<string, unknown>>;
  };
  const deny = ['(?i)drop\\s+table', '(?i)<script', '\\$\\{jndi:'];
  on.servers[SERVER] = {
    ...on.servers[SERVER],
    tools: {
      [TOOL_ECHO]: {
        guards: [
          { kind: 'size', argument: 'message', maxLength: 4096 },
          { kind: 'pattern', argument: 'message', deny },
          { kind: 'shell', argument: 'message' },
          { kind: 'size', argument: 'payload', maxBytes: 65536 },
          { kind: 'pattern', argument: 'payload', deny },
        ],
      },
    },
  };
  writeFileSync(guardedFile, JSON.stringify({ ...on, redaction: { mode: 'redact' } }));
  return { quotas: quotasFile, on: onFile, bare: bareFile, guarded: guardedFile };
}

// ---- targets -----------------------------------------------------------------------------------
interface Running {
  readonly url: string;
  readonly pid: number;
  stop(): Promise<void>;
}

async function startGateway(
  id: TargetId,
  configs: Configs,
  originPort: number,
  round: number,
): Promise<Running> {
  const dir = id === 'base' ? (baseDir as string) : repoDir;
  const main = path.join(dir, 'dist/cli/main.js');
  if (!existsSync(main)) throw new Error(`${main} not found (npm run build in ${dir})`);
  const port = await freePort();
  const origin = `${SERVER}=http://127.0.0.1:${originPort}/mcp`;
  const serverArgs =
    id === 'on' || id === 'guarded'
      ? ['--config', configs[id]]
      : ['--config', id === 'bare' ? configs.bare : configs.quotas, '--server', origin];
  const prof =
    flags['cpu-prof'] === undefined
      ? []
      : [
          '--cpu-prof',
          `--cpu-prof-dir=${path.resolve(flags['cpu-prof'])}`,
          `--cpu-prof-name=${id}-${round}.cpuprofile`,
        ];
  const [cmd, args] = launch(relayCpus, process.execPath, [
    ...prof,
    main,
    'start',
    ...serverArgs,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--admin-port',
    '0',
    '--auth',
    'none',
  ]);
  const logFile = path.join(tmpDir, `${id}.log`);
  const child = startLogged(cmd, args, logFile);
  try {
    await waitForLog(child, logFile, GATEWAY_READY_LOG);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return {
    url: `http://127.0.0.1:${port}/mcp/${SERVER}`,
    pid: child.pid as number,
    stop: () => stop(child),
  };
}

async function sanityCheck(url: string): Promise<void> {
  const echo = toolCall(TOOL_ECHO);
  const r = await request(url, { method: 'POST', headers: echo.headers, body: echo.body });
  const text = await r.body.text();
  if (r.statusCode !== 200 || !text.includes('echo: hello from bench'))
    throw new Error(`tools/call echo: HTTP ${r.statusCode} ${text.slice(0, 300)}`);
}

interface Measured extends WrkResult {
  readonly relayCpuPct: number;
  readonly otherCpuPct: number;
}

async function measure(running: Running, origin: Server, script: string): Promise<Measured> {
  const wrk = (d: number) =>
    runWrk({ url: running.url, script, connections, threads: 1, cpus: loadCpus, durationS: d });
  if (warmupS > 0) await wrk(warmupS);
  const watched = [
    { pid: running.pid, withChildren: false },
    { pid: origin.child.pid as number, withChildren: false },
  ];
  await waitForQuiet(watched, QUIET_CPU_PCT, QUIET_WAIT_MS);
  const before = cpuSnapshot(watched);
  const ticks0 = cpuTicks(running.pid);
  const t0 = performance.now();
  const result = await wrk(durationS);
  const seconds = (performance.now() - t0) / 1000;
  return {
    ...result,
    relayCpuPct: cpuPct(cpuTicks(running.pid) - ticks0, seconds),
    otherCpuPct: foreignCpuPct(before, cpuSnapshot(watched)),
  };
}

// ---- main --------------------------------------------------------------------------------------
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

async function main(): Promise<void> {
  const childDir = path.join(tmpDir, 'js');
  compileBenchChildren(benchDir, childDir, repoDir);
  const [ocmd, oargs] = launch(loadCpus, process.execPath, [path.join(childDir, 'origin.js')]);
  const origin = await startJsonPortServer('origin', ocmd, oargs);
  const configs = writeConfigs(origin.port);
  const script = writeWrkScript(tmpDir, toolCall(TOOL_ECHO));
  const byTarget = new Map<TargetId, Measured[]>(targets.map((t) => [t, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length] as TargetId);
      for (const id of order) {
        log(`round ${round + 1}/${rounds}: ${id}`);
        const running = await startGateway(id, configs, origin.port, round + 1);
        try {
          await sanityCheck(running.url);
          const m = await measure(running, origin, script);
          log(
            `  ${m.requestsPerSec.toFixed(0)} req/s, relay CPU ${m.relayCpuPct.toFixed(0)}%, other CPU ${m.otherCpuPct.toFixed(0)}%`,
          );
          byTarget.get(id)?.push(m);
        } finally {
          await running.stop();
        }
      }
    }
  } finally {
    await stop(origin.child);
  }

  const rps = (id: TargetId) => median((byTarget.get(id) ?? []).map((m) => m.requestsPerSec));
  const ratio = (a: TargetId, b: TargetId) =>
    targets.includes(a) && targets.includes(b) ? (rps(a) / rps(b)).toFixed(3) : 'n/a';
  const paired = (a: TargetId, b: TargetId): number[] =>
    (byTarget.get(a) ?? []).map(
      (m, i) => m.requestsPerSec / ((byTarget.get(b) ?? [])[i]?.requestsPerSec ?? NaN),
    );
  const roundRatios = (a: TargetId, b: TargetId) =>
    targets.includes(a) && targets.includes(b)
      ? paired(a, b)
          .map((r) => r.toFixed(2))
          .join(', ')
      : 'n/a';
  /** The median of the rounds' ratios, with the quartiles around it. */
  const pairedMedian = (a: TargetId, b: TargetId) => {
    if (!targets.includes(a) || !targets.includes(b)) return 'n/a';
    const rs = paired(a, b).sort((x, y) => x - y);
    const q = (p: number) =>
      rs[Math.min(rs.length - 1, Math.floor(p * (rs.length - 1) + 0.5))] ?? NaN;
    return `${median(rs).toFixed(3)} (${q(0.25).toFixed(2)}–${q(0.75).toFixed(2)})`;
  };
  const label: Record<TargetId, string> = {
    base: `before the exchange refactor (${baseDir ? git(baseDir, 'log', '-1', '--format=%h') : '?'})`,
    off: 'this commit, policy off (no tenants, no manifest)',
    on: 'this commit, policy on (100 rules, 200-tool manifest)',
    bare: 'this commit, policy off and redaction off',
    guarded: 'this commit, policy on, 5 guards on echo, redaction on',
  };
  const row = (id: TargetId) => {
    const ms = byTarget.get(id) ?? [];
    const med = (f: (m: Measured) => number) => median(ms.map(f));
    return `| ${label[id]} | ${med((m) => m.requestsPerSec).toFixed(0)} | ${ms.map((m) => m.requestsPerSec.toFixed(0)).join(', ')} | ${med((m) => m.p50Ms).toFixed(2)} | ${med((m) => m.p99Ms).toFixed(2)} | ${med((m) => m.relayCpuPct).toFixed(0)} | ${ms.reduce((s, m) => s + m.non2xx + m.socketErrors, 0)} | ${ms.map((m) => m.otherCpuPct.toFixed(0)).join(', ')} |`;
  };
  const command = `npm run bench:policy-pipeline -- ${process.argv.slice(2).join(' ')}`.trim();
  const section = [
    '## Throughput through the gateway: policy on vs off, and before vs after the exchange refactor (`bench/policy-pipeline.ts`)',
    '',
    `Written by \`bench/policy-pipeline.ts\` on ${new Date().toISOString()}, one run.`,
    '',
    '```sh',
    command,
    '```',
    '',
    `Machine: ${os.cpus()[0]?.model ?? '?'} x${nproc}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, node ${process.version}, ${wrkVersion()}. This checkout: ${git(repoDir, 'log', '-1', '--format=%h %s')}${git(repoDir, 'status', '--porcelain', '--untracked-files=no') ? ' (with uncommitted changes)' : ''}.`,
    '',
    `Load: wrk -t1 -c${connections}, ${warmupS} s warm-up then ${durationS} s measured, tools/call echo (${toolCall(TOOL_ECHO).body.length} B body), \`--auth none\`; ${rounds} rounds, targets interleaved (each round starts with the next target), each on a fresh process; figures are medians of the rounds. ${loadCpus === undefined ? 'Not pinned.' : "Pinned with taskset: wrk, this script and the origin on CPU 0, the gateway on CPU 1: the load generator shares the machine's 2 cores with the target and the origin."} other CPU % is what processes outside this run took during each measured step, in % of one core (200 = both cores).`,
    '',
    '| target | req/s (median) | req/s per round | p50 ms | p99 ms | gateway CPU % | errors | other CPU % per round |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |',
    ...targets.map(row),
    '',
    '| ratio | of the medians | median of the rounds (quartiles) | per round |',
    '| --- | ---: | ---: | --- |',
    `| policy on / policy off (target ≥ 0.9) | ${ratio('on', 'off')} | ${pairedMedian('on', 'off')} | ${roundRatios('on', 'off')} |`,
    `| after / before the exchange refactor, no policy configured (off / base) | ${ratio('off', 'base')} | ${pairedMedian('off', 'base')} | ${roundRatios('off', 'base')} |`,
    `| policy on / before the refactor (on / base) | ${ratio('on', 'base')} | ${pairedMedian('on', 'base')} | ${roundRatios('on', 'base')} |`,
    `| guards and redaction on / everything off (guarded / bare, target ≥ 0.85) | ${ratio('guarded', 'bare')} | ${pairedMedian('guarded', 'bare')} | ${roundRatios('guarded', 'bare')} |`,
    '',
  ].join('\n');
  console.log(section);
  writeResultsSection(outFile, 'policy-pipeline', section, 'Policy benchmarks');
  writeRawResults('policy-pipeline', Object.fromEntries(byTarget));
  log(`wrote ${path.relative(repoDir, outFile)}`);
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  rmSync(tmpDir, { recursive: true, force: true });
}
