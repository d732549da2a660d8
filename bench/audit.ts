// What the audit trail costs through the whole gateway, and whether it loses anything, in one
// run (`npm run bench:audit`). Four targets, each the gateway started with its CLI on the bench
// origin (bench/origin.ts), driven by wrk with the same tools/call echo as bench/run.ts (1,268 B
// body, ~1 KiB of arguments), with `signing.keysFile` set (checkpoints are signed):
//   off  → no audit sink: nothing is recorded;
//   file → audit.file, its defaults (a batch is fdatasync'ed before it counts as written);
//   http → audit.http, format json, its defaults (spooled, fdatasync'ed, batches of 500, 1 s),
//          POSTing to a receiver in this process that takes every batch with a 200;
//   both → file and http.
// `both / off` is the figure the audit trail is held to (target ≥ 0.95).
//
// After each audited target's measured step, the accounting, on the same process:
// 1. catch-up: how long after wrk stopped the receiver still got records (the http sink's
//    backlog at full load; about flushIntervalMs when it keeps up);
// 2. `--calls` calls, each with its own JSON-RPC id, 32 at a time (undici), every one a 200;
// 3. SIGTERM, the gateway's drain (the sinks flush; the receiver is up), its exit;
// 4. the files and what the receiver took: each sink's records verified as one chain from its
//    genesis, signatures checked, ending with the closing checkpoint; the receiver's records
//    (deduplicated by chain and seq: the http sink is at-least-once) equal to the files'; each
//    distinct call with its inbound and outbound record in every sink; the wrk calls that got an
//    answer (warm-up, measured and the sanity check) no more than the calls recorded (wrk stops
//    with up to c requests in flight, which are recorded but not counted by wrk).
// "lost" is every record or call the sinks should hold and do not; it must be 0.
//
// Rounds interleave the targets (each round starts with the next one), every target on a
// freshly started process, with a fresh audit directory and spool; each figure is the median of
// the rounds. Pinned as bench/run.ts pins: wrk, this script (and so the receiver) and the origin
// on CPU 0, the gateway on CPU 1. Before each measured step the script waits (up to 15 s) for
// other processes to use less than 20% of a core and records what they took meanwhile.
// Writes its section of bench/RESULTS-audit.md (or --out FILE); raw figures go to
// bench/results/raw/audit-<date>.json.
//
// Usage: npm run bench:audit -- [--rounds 5 --duration 10 --warmup 3 --calls 10000]
//        [--targets off,file,http,both] [--cpu-prof DIR] [--note TEXT] [--out FILE]
import { execFileSync, type ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import { Pool, request } from 'undici';
import { writeKeys } from '../src/cli/dev.js';
import { auditFiles } from '../src/audit/sinks/file.js';
import type { AuditRecord } from '../src/audit/types.js';
import { readAuditFiles, verifyLines, type SourceLine } from '../src/audit/verify.js';
import { TOOL_ECHO, toolCall } from './mcp.js';
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

/** The gateway's default drain bound; its exit is awaited a little longer before SIGKILL. */
const DRAIN_TIMEOUT_MS = 10_000;
const EXIT_WAIT_MS = DRAIN_TIMEOUT_MS + 10_000;
/** No record for this long after wrk stopped: the http sink has caught up (its flush is 1 s). */
const CAUGHT_UP_QUIET_MS = 2_500;
const POLL_MS = 25;
/** The JSON-RPC id of every wrk request (bench/mcp.ts). */
const WRK_RPC_ID = 1;

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const repoDir = path.resolve(benchDir, '..');

const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    calls: { type: 'string', default: '10000' },
    targets: { type: 'string', default: 'off,file,http,both' },
    'cpu-prof': { type: 'string' },
    'audit-thread': { type: 'string', default: 'load' },
    paced: { type: 'string', default: '8' },
    'paced-delay-ms': { type: 'string', default: '12' },
    note: { type: 'string' },
    out: { type: 'string' },
  },
});
const rounds = Number(flags.rounds);
const durationS = Number(flags.duration);
const warmupS = Number(flags.warmup);
const connections = Number(flags.connections);
const distinctCalls = Number(flags.calls);
/** The paced step: this long, each connection waiting this long before each request. */
const pacedS = Number(flags.paced);
const pacedDelayMs = Number(flags['paced-delay-ms']);
type TargetId = 'off' | 'file' | 'http' | 'both';
const targets = flags.targets.split(',') as TargetId[];
const outFile = flags.out ?? path.join(benchDir, 'RESULTS-audit.md');
const hasFile = (id: TargetId) => id === 'file' || id === 'both';
const hasHttp = (id: TargetId) => id === 'http' || id === 'both';

const nproc = os.availableParallelism();
const loadCpus = nproc >= 2 ? '0' : undefined;
const relayCpus = nproc >= 2 ? '1' : undefined;
if (loadCpus !== undefined)
  execFileSync('taskset', ['-a', '-p', '-c', loadCpus, String(process.pid)], { stdio: 'ignore' });
/**
 * Where the gateway's threads other than the serving one run (pinThreads):
 * `load`, on the load's CPU; `gateway`, all on the gateway's CPU (one core
 * for all of it).
 */
const auditThread = flags['audit-thread'];
if (auditThread !== 'load' && auditThread !== 'gateway')
  throw new Error('--audit-thread is load or gateway');

const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-audit-bench-'));
const log = (msg: string) =>
  console.log(`[audit-bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
/** git's answer about this checkout, or undefined outside a git checkout (a `git archive` copy). */
const git = (...args: string[]): string | undefined => {
  try {
    return execFileSync('git', ['-C', repoDir, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return undefined;
  }
};

// ---- the receiver ------------------------------------------------------------------------------
/**
 * Stands in for a SIEM's collector (a JSON webhook, the sink's `format: json`): takes every
 * POSTed batch with a 200. It only keeps the bodies while load runs (it shares CPU 0 with wrk
 * and the origin); `records()` parses them afterwards.
 */
class Receiver {
  bodies: Buffer[] = [];
  bodyBytes = 0;
  lastRecordAt = 0;
  private readonly server: HttpServer;

  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        this.bodies.push(body);
        this.bodyBytes += body.length;
        this.lastRecordAt = performance.now();
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
  }

  /**
   * Every record taken, in arrival order, with the line the gateway sealed (canonical JSON has
   * no integer-like keys, so JSON.stringify gives those bytes back).
   */
  records(): Array<{ readonly line: string; readonly record: AuditRecord }> {
    return this.bodies.flatMap((body) =>
      (JSON.parse(body.toString('utf8')) as AuditRecord[]).map((record) => ({
        line: JSON.stringify(record),
        record,
      })),
    );
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/audit`;
  }

  reset(): void {
    this.bodies = [];
    this.bodyBytes = 0;
    this.lastRecordAt = 0;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ---- configs and targets -----------------------------------------------------------------------
function writeConfig(
  id: TargetId,
  round: number,
  keysFile: string,
  originPort: number,
  receiverUrl: string,
): { file: string; auditDir: string } {
  const unlimited = { sessions: 1e6, legacyConnections: 1e6, stdioProcesses: 1e6, inflight: 1e6 };
  const dir = path.join(tmpDir, `${id}-${round}`);
  mkdirSync(dir);
  const auditDir = path.join(dir, 'audit');
  const audit: Record<string, unknown> = {};
  if (hasFile(id)) audit.file = { dir: auditDir };
  if (hasHttp(id))
    audit.http = { url: receiverUrl, format: 'json', spoolDir: path.join(dir, 'spool') };
  const file = path.join(dir, 'config.json');
  writeFileSync(
    file,
    JSON.stringify({
      quotas: { perPrincipal: unlimited, perTenant: unlimited, global: { inflight: 1e6 } },
      servers: { bench: { url: `http://127.0.0.1:${originPort}/mcp` } },
      signing: { keysFile },
      audit,
      shutdown: { drainTimeoutMs: DRAIN_TIMEOUT_MS },
    }),
  );
  return { file, auditDir };
}

interface Running {
  readonly url: string;
  readonly pid: number;
  readonly logFile: string;
  readonly child: ChildProcess;
}

async function startGateway(id: TargetId, config: string, round: number): Promise<Running> {
  const main = path.join(repoDir, 'dist/cli/main.js');
  if (!existsSync(main)) throw new Error(`${main} not found (npm run build)`);
  const port = await freePort();
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
    '--config',
    config,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--admin-port',
    '0',
    '--auth',
    'none',
  ]);
  const logFile = path.join(tmpDir, `${id}-${round}.log`);
  const child = startLogged(cmd, args, logFile);
  try {
    await waitForLog(child, logFile, GATEWAY_READY_LOG);
    pinThreads(child.pid as number);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return { url: `http://127.0.0.1:${port}/mcp/bench`, pid: child.pid as number, logFile, child };
}

/**
 * With `--audit-thread load`: the gateway's serving thread (its main thread,
 * tid = pid) keeps CPU 1, and every other thread of it (the audit thread,
 * libuv's pool that does its file I/O, V8's helpers) goes to the load's CPU.
 * Done for every target alike (audit off too), after start and again after
 * the warm-up (threads made since inherit their maker's CPU).
 */
function pinThreads(pid: number): void {
  if (auditThread !== 'load' || loadCpus === undefined || relayCpus === undefined) return;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return;
  }
  for (const tid of tids) {
    try {
      execFileSync('taskset', ['-p', '-c', tid === String(pid) ? relayCpus : loadCpus, tid], {
        stdio: 'ignore',
      });
    } catch {
      // A thread that ended meanwhile.
    }
  }
}

/** SIGTERM and the whole drain (bench/proc.ts's stop allows 3 s, less than a drain may take). */
async function drainAndExit(running: Running): Promise<number | null> {
  const { child } = running;
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const gone = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), EXIT_WAIT_MS);
  const code = await gone;
  clearTimeout(timer);
  return code;
}

async function sanityCheck(url: string): Promise<void> {
  const echo = toolCall(TOOL_ECHO);
  const r = await request(url, { method: 'POST', headers: echo.headers, body: echo.body });
  const text = await r.body.text();
  if (r.statusCode !== 200 || !text.includes('echo: hello from bench'))
    throw new Error(`tools/call echo: HTTP ${r.statusCode} ${text.slice(0, 300)}`);
}

// ---- measurement -------------------------------------------------------------------------------
interface Measured extends WrkResult {
  readonly relayCpuPct: number;
  /** The gateway's main thread alone (the one that serves requests). */
  readonly servingCpuPct: number;
  /** The paced step (every target at about the same rate): its rate and the serving thread's CPU. */
  readonly paced?: { readonly requestsPerSec: number; readonly servingCpuPct: number };
  readonly otherCpuPct: number;
  /** Answered wrk calls, warm-up included. */
  readonly wrkCalls: number;
}

async function measure(
  running: Running,
  origin: Server,
  script: string,
  pacedScript: string,
): Promise<Measured> {
  const wrk = (d: number, lua = script) =>
    runWrk({
      url: running.url,
      script: lua,
      connections,
      threads: 1,
      cpus: loadCpus,
      durationS: d,
    });
  const warm = warmupS > 0 ? await wrk(warmupS) : undefined;
  pinThreads(running.pid);
  const watched = [
    { pid: running.pid, withChildren: false },
    { pid: origin.child.pid as number, withChildren: false },
  ];
  await waitForQuiet(watched, QUIET_CPU_PCT, QUIET_WAIT_MS);
  const before = cpuSnapshot(watched);
  const ticks0 = cpuTicks(running.pid);
  const serving0 = mainThreadTicks(running.pid);
  const t0 = performance.now();
  const result = await wrk(durationS);
  const seconds = (performance.now() - t0) / 1000;
  const relayCpuPct = cpuPct(cpuTicks(running.pid) - ticks0, seconds);
  const servingCpuPct = cpuPct(mainThreadTicks(running.pid) - serving0, seconds);
  const otherCpuPct = foreignCpuPct(before, cpuSnapshot(watched));
  let paced: Measured['paced'];
  let pacedCalls = 0;
  if (pacedS > 0) {
    const p0 = mainThreadTicks(running.pid);
    const pt0 = performance.now();
    const r = await wrk(pacedS, pacedScript);
    const ps = (performance.now() - pt0) / 1000;
    paced = {
      requestsPerSec: r.requestsPerSec,
      servingCpuPct: cpuPct(mainThreadTicks(running.pid) - p0, ps),
    };
    pacedCalls = r.requests;
  }
  return {
    ...result,
    relayCpuPct,
    servingCpuPct,
    otherCpuPct,
    paced,
    wrkCalls: result.requests + (warm?.requests ?? 0) + pacedCalls,
  };
}

/** CPU ticks of a process's main thread (user + system), from /proc/PID/task/PID/stat. */
function mainThreadTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return NaN;
  }
}

/** `distinctCalls` tools/call echo, each with its own id (`audit-<n>`); every one must answer 200. */
async function callDistinct(url: string): Promise<void> {
  const target = new URL(url);
  const pool = new Pool(target.origin, { connections });
  const echo = toolCall(TOOL_ECHO);
  const base = JSON.parse(echo.body) as Record<string, unknown>;
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: connections }, async () => {
        while (next < distinctCalls) {
          const id = `audit-${next++}`;
          const r = await pool.request({
            path: target.pathname,
            method: 'POST',
            headers: echo.headers,
            body: JSON.stringify({ ...base, id }),
          });
          const text = await r.body.text();
          if (r.statusCode !== 200 || !text.includes(id))
            throw new Error(`call ${id}: HTTP ${r.statusCode} ${text.slice(0, 300)}`);
        }
      }),
    );
  } finally {
    await pool.close();
  }
}

/** Waits until the receiver has had no record for CAUGHT_UP_QUIET_MS; ms from `since` to its last. */
async function catchUp(receiver: Receiver, since: number): Promise<number> {
  while (performance.now() - Math.max(receiver.lastRecordAt, since) < CAUGHT_UP_QUIET_MS)
    await sleep(POLL_MS);
  return Math.max(0, receiver.lastRecordAt - since);
}

// ---- accounting --------------------------------------------------------------------------------
interface Accounting {
  /** Records of the chain (the files', or the receiver's without a file sink). */
  readonly records: number;
  readonly fileBytesPerRecord?: number;
  readonly wireBytesPerRecord?: number;
  readonly duplicates?: number;
  readonly catchUpMs?: number;
  /** Records one sink holds and the other does not. */
  readonly missingBetweenSinks: number;
  /** Distinct calls without their inbound or outbound record, summed over the sinks. */
  readonly distinctCallsMissing: number;
  /** Answered wrk calls beyond the calls recorded (in and out), in the sink that has fewest. */
  readonly wrkCallsMissing: number;
  readonly wrkCalls: number;
  readonly wrkCallsRecorded: number;
  /** Sinks whose records do not verify as one whole, closed chain from its genesis. */
  readonly chainsBroken: number;
  /** The gateway's log said records were left undelivered at exit. */
  readonly undelivered: boolean;
  readonly lost: number;
}

async function* linesOf(lines: readonly string[], where: string): AsyncIterable<SourceLine> {
  for (const [i, line] of lines.entries()) yield { where: `${where}:${i + 1}`, line };
}

/** True when `lines` verify as one chain from its genesis, closed, every checkpoint signed. */
async function wholeChain(source: AsyncIterable<SourceLine>, jwks: JSONWebKeySet) {
  const report = await verifyLines(source, { jwks, fromGenesis: true });
  const chain = report.chains[0];
  const whole = report.ok && report.chains.length === 1 && chain?.closed === true;
  if (!whole) log(`  chain not whole: ${JSON.stringify(report).slice(0, 600)}`);
  return whole;
}

function callsIn(records: readonly AuditRecord[]) {
  const inbound = new Map<unknown, number>();
  const outbound = new Map<unknown, number>();
  for (const r of records) {
    if (r.kind !== 'message' || r.method !== 'tools/call') continue;
    const side = r.direction === 'in' ? inbound : outbound;
    side.set(r.rpcId, (side.get(r.rpcId) ?? 0) + 1);
  }
  let distinctMissing = 0;
  for (let n = 0; n < distinctCalls; n++) {
    const id = `audit-${n}`;
    if (inbound.get(id) !== 1 || outbound.get(id) !== 1) distinctMissing++;
  }
  const wrkRecorded = Math.min(inbound.get(WRK_RPC_ID) ?? 0, outbound.get(WRK_RPC_ID) ?? 0);
  return { distinctMissing, wrkRecorded };
}

async function account(
  id: TargetId,
  auditDir: string,
  receiver: Receiver,
  jwks: JSONWebKeySet,
  m: Measured,
  catchUpMs: number | undefined,
  undelivered: boolean,
): Promise<Accounting> {
  let chainsBroken = 0;
  const keyOf = (r: AuditRecord) => `${r.chain}:${r.seq}`;
  const sinks: AuditRecord[][] = [];
  let fileLines: Array<{ line: string; record: AuditRecord }> | undefined;
  let fileBytes = 0;
  if (hasFile(id)) {
    fileLines = [];
    for await (const { line } of readAuditFiles([auditDir]))
      fileLines.push({ line, record: JSON.parse(line) as AuditRecord });
    for (const f of await auditFiles(auditDir)) fileBytes += statSync(f).size;
    if (!(await wholeChain(readAuditFiles([auditDir]), jwks))) chainsBroken++;
    sinks.push(fileLines.map((l) => l.record));
  }
  let delivered: Map<string, { line: string; record: AuditRecord }> | undefined;
  let duplicates = 0;
  let received = 0;
  if (hasHttp(id)) {
    delivered = new Map();
    for (const r of receiver.records()) {
      received++;
      const key = keyOf(r.record);
      if (delivered.has(key)) duplicates++;
      else delivered.set(key, r);
    }
    const inOrder = [...delivered.values()].sort((a, b) => a.record.seq - b.record.seq);
    const lines = inOrder.map((r) => r.line);
    if (!(await wholeChain(linesOf(lines, 'receiver'), jwks))) chainsBroken++;
    sinks.push(inOrder.map((r) => r.record));
  }
  let missingBetweenSinks = 0;
  if (fileLines && delivered) {
    const inFiles = new Set<string>();
    for (const { line, record } of fileLines) {
      const key = keyOf(record);
      inFiles.add(key);
      if (delivered.get(key)?.line !== line) missingBetweenSinks++;
    }
    for (const key of delivered.keys()) if (!inFiles.has(key)) missingBetweenSinks++;
  }
  let distinctCallsMissing = 0;
  let wrkCallsRecorded = Infinity;
  for (const records of sinks) {
    const calls = callsIn(records);
    distinctCallsMissing += calls.distinctMissing;
    wrkCallsRecorded = Math.min(wrkCallsRecorded, calls.wrkRecorded);
  }
  // The sanity check's call is a wrk-shaped call too.
  const wrkCalls = m.wrkCalls + 1;
  const wrkCallsMissing = Math.max(0, wrkCalls - wrkCallsRecorded);
  const records = fileLines?.length ?? delivered?.size ?? 0;
  return {
    records,
    ...(fileLines ? { fileBytesPerRecord: fileBytes / fileLines.length } : {}),
    ...(delivered
      ? {
          wireBytesPerRecord: receiver.bodyBytes / received,
          duplicates,
          catchUpMs,
        }
      : {}),
    missingBetweenSinks,
    distinctCallsMissing,
    wrkCallsMissing,
    wrkCalls,
    wrkCallsRecorded,
    chainsBroken,
    undelivered,
    lost:
      missingBetweenSinks +
      distinctCallsMissing +
      wrkCallsMissing +
      chainsBroken +
      (undelivered ? 1 : 0),
  };
}

// ---- main --------------------------------------------------------------------------------------
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

interface RoundResult {
  readonly measured: Measured;
  readonly accounting?: Accounting;
}

async function runTarget(
  id: TargetId,
  round: number,
  ctx: {
    keysFile: string;
    jwks: JSONWebKeySet;
    origin: Server;
    receiver: Receiver;
    receiverUrl: string;
    script: string;
    pacedScript: string;
  },
): Promise<RoundResult> {
  const { file, auditDir } = writeConfig(id, round, ctx.keysFile, ctx.origin.port, ctx.receiverUrl);
  ctx.receiver.reset();
  const running = await startGateway(id, file, round);
  let measured: Measured;
  let catchUpMs: number | undefined;
  try {
    await sanityCheck(running.url);
    measured = await measure(running, ctx.origin, ctx.script, ctx.pacedScript);
    log(
      `  ${measured.requestsPerSec.toFixed(0)} req/s, relay CPU ${measured.relayCpuPct.toFixed(0)}%, other CPU ${measured.otherCpuPct.toFixed(0)}%`,
    );
    if (id === 'off') return { measured };
    if (hasHttp(id)) {
      catchUpMs = await catchUp(ctx.receiver, performance.now());
      if (ctx.receiver.bodies.length === 0)
        throw new Error(`${id}: the receiver got no record: the gateway built no http sink`);
    }
    await callDistinct(running.url);
  } finally {
    const code = await drainAndExit(running);
    if (code !== 0) log(`  ${id}: the gateway exited with ${code}`);
  }
  const undelivered = readFileSync(running.logFile, 'utf8').includes('"audit.undelivered"');
  const accounting = await account(
    id,
    auditDir,
    ctx.receiver,
    ctx.jwks,
    measured,
    catchUpMs,
    undelivered,
  );
  log(
    `  ${accounting.records} records, lost ${accounting.lost}` +
      (accounting.catchUpMs === undefined
        ? ''
        : `, http caught up ${accounting.catchUpMs.toFixed(0)} ms after wrk`),
  );
  rmSync(path.dirname(auditDir), { recursive: true, force: true });
  ctx.receiver.reset();
  return { measured, accounting };
}

async function main(): Promise<void> {
  const childDir = path.join(tmpDir, 'js');
  compileBenchChildren(benchDir, childDir, repoDir);
  const keysFile = path.join(tmpDir, 'signing.json');
  const { publicFile } = await writeKeys(keysFile, 'ES256');
  const jwks = JSON.parse(readFileSync(publicFile, 'utf8')) as JSONWebKeySet;
  const [ocmd, oargs] = launch(loadCpus, process.execPath, [path.join(childDir, 'origin.js')]);
  const origin = await startJsonPortServer('origin', ocmd, oargs);
  const receiver = new Receiver();
  const receiverUrl = await receiver.listen();
  const script = writeWrkScript(tmpDir, toolCall(TOOL_ECHO));
  // The same request, each connection pausing before each one: about the same rate for every
  // target, well under what any of them sustains, so the serving thread's CPU per call compares
  // like with like (closed-loop, the load generator's own share of the cores sets the rate).
  const pacedScript = writeWrkScript(tmpDir, toolCall(TOOL_ECHO), 'tools-call-paced.lua');
  appendFileSync(pacedScript, `function delay()\n  return ${pacedDelayMs}\nend\n`);
  const byTarget = new Map<TargetId, RoundResult[]>(targets.map((t) => [t, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length] as TargetId);
      for (const id of order) {
        log(`round ${round + 1}/${rounds}: ${id}`);
        const result = await runTarget(id, round + 1, {
          keysFile,
          jwks,
          origin,
          receiver,
          receiverUrl,
          script,
          pacedScript,
        });
        byTarget.get(id)?.push(result);
      }
    }
  } finally {
    await stop(origin.child);
    await receiver.close();
  }
  writeReport(byTarget);
}

function writeReport(byTarget: ReadonlyMap<TargetId, RoundResult[]>): void {
  const results = (id: TargetId) => byTarget.get(id) ?? [];
  const rps = (id: TargetId) => median(results(id).map((r) => r.measured.requestsPerSec));
  const paired = (a: TargetId, b: TargetId): number[] =>
    results(a).map(
      (r, i) => r.measured.requestsPerSec / (results(b)[i]?.measured.requestsPerSec ?? NaN),
    );
  const has = (a: TargetId, b: TargetId) => targets.includes(a) && targets.includes(b);
  /** The serving thread's CPU per call (µs): what bounds one process's throughput. */
  const servingUs = (m: Measured) => (m.servingCpuPct / 100 / m.requestsPerSec) * 1e6;
  const pacedUs = (m: Measured) =>
    m.paced === undefined ? NaN : (m.paced.servingCpuPct / 100 / m.paced.requestsPerSec) * 1e6;
  const servingRow = (a: TargetId, b: TargetId, what: string, us: (m: Measured) => number) => {
    if (!has(a, b)) return `| ${what} | n/a | n/a | n/a |`;
    const per = results(a).map(
      (r, i) => us((results(b)[i] as RoundResult).measured) / us(r.measured),
    );
    const ua = median(results(a).map((r) => us(r.measured)));
    const ub = median(results(b).map((r) => us(r.measured)));
    return `| ${what} | ${(ub / ua).toFixed(3)} | ${median(per).toFixed(3)} | ${per.map((r) => r.toFixed(2)).join(', ')} |`;
  };
  const pacedRow = (id: TargetId) => {
    const ms = results(id).map((r) => r.measured);
    const rates = ms.map((m) => m.paced?.requestsPerSec ?? NaN);
    return `| ${label[id]} | ${median(rates).toFixed(0)} | ${median(ms.map((m) => m.paced?.servingCpuPct ?? NaN)).toFixed(0)} | ${median(ms.map(pacedUs)).toFixed(0)} | ${ms.map((m) => pacedUs(m).toFixed(0)).join(', ')} |`;
  };
  const ratioRow = (a: TargetId, b: TargetId, what: string) => {
    if (!has(a, b)) return `| ${what} | n/a | n/a | n/a |`;
    const rs = paired(a, b).sort((x, y) => x - y);
    const q = (p: number) =>
      rs[Math.min(rs.length - 1, Math.floor(p * (rs.length - 1) + 0.5))] ?? NaN;
    return `| ${what} | ${(rps(a) / rps(b)).toFixed(3)} | ${median(rs).toFixed(3)} (${q(0.25).toFixed(2)}–${q(0.75).toFixed(2)}) | ${paired(
      a,
      b,
    )
      .map((r) => r.toFixed(2))
      .join(', ')} |`;
  };
  const label: Record<TargetId, string> = {
    off: 'audit off',
    file: 'audit.file',
    http: 'audit.http (json, spooled, to a local receiver)',
    both: 'audit.file + audit.http',
  };
  const row = (id: TargetId) => {
    const ms = results(id).map((r) => r.measured);
    const med = (f: (m: Measured) => number) => median(ms.map(f));
    return `| ${label[id]} | ${med((m) => m.requestsPerSec).toFixed(0)} | ${ms.map((m) => m.requestsPerSec.toFixed(0)).join(', ')} | ${med((m) => m.p50Ms).toFixed(2)} | ${med((m) => m.p99Ms).toFixed(2)} | ${med((m) => m.relayCpuPct).toFixed(0)} | ${med((m) => (m.relayCpuPct / 100 / m.requestsPerSec) * 1e6).toFixed(0)} | ${med((m) => m.servingCpuPct).toFixed(0)} | ${med(servingUs).toFixed(0)} | ${ms.reduce((s, m) => s + m.non2xx + m.socketErrors, 0)} | ${ms.map((m) => m.otherCpuPct.toFixed(0)).join(', ')} |`;
  };
  const sum = (xs: Array<number | undefined>) => xs.reduce<number>((s, x) => s + (x ?? 0), 0);
  const accountingRow = (id: TargetId) => {
    const as = results(id).flatMap((r) => (r.accounting ? [r.accounting] : []));
    const med = (f: (a: Accounting) => number | undefined, digits = 0) => {
      const xs = as.map(f).filter((x): x is number => x !== undefined);
      return xs.length === 0 ? '—' : median(xs).toFixed(digits);
    };
    return `| ${label[id]} | ${sum(as.map((a) => a.records))} | ${sum(as.map((a) => a.wrkCalls))} / ${sum(as.map((a) => a.wrkCallsRecorded))} | ${as.length * distinctCalls} | ${sum(as.map((a) => a.duplicates))} | ${med((a) => a.catchUpMs)} | ${med((a) => a.fileBytesPerRecord)} | ${med((a) => a.wireBytesPerRecord)} | ${sum(as.map((a) => a.lost))} |`;
  };
  const audited = targets.filter((t) => t !== 'off');
  // Quoted as a shell would need them, so the line can be pasted (a --note has spaces).
  const quoted = process.argv
    .slice(2)
    .map((a) => (/^[\w.,/=:-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`));
  const command = `npm run bench:audit -- ${quoted.join(' ')}`.trim();
  const commit = git('log', '-1', '--format=%h %s');
  const dirty = git('status', '--porcelain', '--untracked-files=no');
  const checkout =
    commit === undefined
      ? 'not a git checkout'
      : `${commit}${dirty ? ' (with uncommitted changes)' : ''}`;
  const section = [
    '## Throughput with the audit trail on vs off, and records lost (`bench/audit.ts`)',
    '',
    `Written by \`bench/audit.ts\` on ${new Date().toISOString()}, one run.`,
    '',
    '```sh',
    command,
    '```',
    '',
    `Machine: ${os.cpus()[0]?.model ?? '?'} x${nproc}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, node ${process.version}, ${wrkVersion()}. This checkout: ${checkout}.${flags.note === undefined ? '' : ` ${flags.note}`}`,
    '',
    `Load: wrk -t1 -c${connections}, ${warmupS} s warm-up then ${durationS} s measured, tools/call echo (${toolCall(TOOL_ECHO).body.length} B body), \`--auth none\`, \`signing.keysFile\` set; ${rounds} rounds, targets interleaved (each round starts with the next target), each on a fresh process with a fresh audit directory and spool; figures are medians of the rounds. ${loadCpus === undefined ? 'Not pinned.' : `Pinned with taskset: wrk, this script (with the receiver) and the origin on CPU 0, the gateway on CPU 1${auditThread === 'load' ? ", its main (serving) thread alone: its other threads, the audit thread, libuv's pool and V8's helpers, moved to CPU 0 for every target (`--audit-thread load`)" : ', all its threads (`--audit-thread gateway`)'}.`} other CPU % is what processes outside this run took during each measured step, in % of one core (200 = both cores).`,
    '',
    '| target | req/s (median) | req/s per round | p50 ms | p99 ms | gateway CPU % | gateway CPU µs per call | serving thread CPU % | serving thread µs per call | errors | other CPU % per round |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...targets.map(row),
    '',
    '| ratio | of the medians | median of the rounds (quartiles) | per round |',
    '| --- | ---: | ---: | --- |',
    ratioRow('both', 'off', 'file + http / off (target ≥ 0.95)'),
    ratioRow('file', 'off', 'file / off'),
    ratioRow('http', 'off', 'http / off'),
    '',
    `The serving thread at an equal rate: after the measured step, ${pacedS} s more of the same calls with each connection pausing ${pacedDelayMs} ms before each one (wrk's \`delay()\`), so every target runs at about the same rate, below what any of them sustains; the serving thread's CPU per call is then the audit trail's cost to the thread that bounds a gateway process's throughput, apart from how much of the shared cores the load generator gets.`,
    '',
    '| target | paced req/s (median) | serving thread CPU % | serving thread µs per call | per round |',
    '| --- | ---: | ---: | ---: | --- |',
    ...targets.map(pacedRow),
    '',
    "The serving thread's capacity: its CPU per call with audit off / with the audit trail on (1.0 = the audit trail costs the thread that serves requests nothing). A gateway process is bound by this thread when it has a core to itself and its other threads (the audit thread above all) have cores of their own.",
    '',
    '| capacity of the serving thread | of the medians | median of the rounds | per round |',
    '| --- | ---: | ---: | --- |',
    servingRow('both', 'off', 'file + http vs off, at an equal rate', pacedUs),
    servingRow('file', 'off', 'file vs off, at an equal rate', pacedUs),
    servingRow('http', 'off', 'http vs off, at an equal rate', pacedUs),
    servingRow('both', 'off', 'file + http vs off, closed loop', servingUs),
    '',
    `Records, summed over the rounds. wrk calls: answered (warm-up, measured, the sanity check) / recorded in and out in every sink (wrk stops with up to ${connections} calls in flight: recorded, not counted). Distinct calls: \`--calls\` calls with their own ids after the measured step, each checked for its inbound and outbound record in every sink. Duplicates: records the receiver got twice (the http sink is at least once). Catch-up: how long after wrk stopped the receiver still got records (median). Bytes per record: the audit files' bytes / their records; on the wire, the POST bodies' bytes / the records in them. Lost: records one sink holds and the other lacks, calls without their records, sinks whose records do not verify as one closed chain from its genesis with every checkpoint signed, and records the gateway reported undelivered at exit.`,
    '',
    '| target | records | wrk calls answered / recorded | distinct calls | duplicates | catch-up ms | file bytes per record | wire bytes per record | lost |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...audited.map(accountingRow),
    '',
  ].join('\n');
  console.log(section);
  writeResultsSection(outFile, 'audit', section, 'Audit trail');
  writeRawResults('audit', Object.fromEntries(byTarget));
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
