// Child processes for the benchmark: compile the bench servers once to plain JS (so no
// transpiler or esbuild service runs beside them), start them pinned to a CPU, wait until they
// are ready, read their memory, and always stop them.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import ts from 'typescript';

/** Before a measured step: other processes must be under this much of a core … */
export const QUIET_CPU_PCT = 20;
/** … waited for at most this long. */
export const QUIET_WAIT_MS = 15_000;
/** What the gateway logs once it listens. */
export const GATEWAY_READY_LOG = 'gateway listening';

export const READY_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 3_000;
const POLL_INTERVAL_MS = 50;

/** Files started as child processes, compiled to `<outDir>/<name>.js`. */
const CHILD_SOURCES = ['mcp', 'listen', 'origin', 'proxy-node', 'proxy-fastify', 'load'];

export function compileBenchChildren(benchDir: string, outDir: string, repoDir: string): void {
  mkdirSync(outDir, { recursive: true });
  // Bare imports (fastify, undici) resolve from the compiled files through this link.
  symlinkSync(path.join(repoDir, 'node_modules'), path.join(outDir, 'node_modules'), 'dir');
  writeFileSync(path.join(outDir, 'package.json'), '{"type":"module"}\n');
  for (const name of CHILD_SOURCES) {
    const source = readFileSync(path.join(benchDir, `${name}.ts`), 'utf8');
    const out = ts.transpileModule(source, {
      compilerOptions: {
        module: ts.ModuleKind.ESNext,
        target: ts.ScriptTarget.ES2022,
        verbatimModuleSyntax: true,
      },
      fileName: `${name}.ts`,
    });
    writeFileSync(path.join(outDir, `${name}.js`), out.outputText);
  }
}

/**
 * Wraps a command so that it runs with its open-file limit raised to the hard limit (thousands of
 * held streams need two sockets each in a proxy) and, when pinning is on, under
 * `taskset -c <cpus>`. Both `sh` and `taskset` exec, so the child's pid is the command's pid.
 */
export function launch(cpus: string | undefined, cmd: string, args: string[]): [string, string[]] {
  const pin = cpus === undefined ? [] : ['taskset', '-c', cpus];
  return [
    'sh',
    ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', ...pin, cmd, ...args],
  ];
}

export interface Server {
  readonly name: string;
  readonly child: ChildProcess;
  readonly port: number;
  stderr(): string;
}

function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

/** Starts a bench server that prints `{"port":N}` as its first stdout line. */
export async function startJsonPortServer(
  name: string,
  cmd: string,
  args: string[],
): Promise<Server> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-8_000);
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name}: not ready after ${READY_TIMEOUT_MS} ms\n${tail(err)}`));
    }, READY_TIMEOUT_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name}: exited with ${code} before ready\n${tail(err)}`));
    });
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl === -1) return;
      clearTimeout(timer);
      try {
        resolve((JSON.parse(out.slice(0, nl)) as { port: number }).port);
      } catch {
        reject(new Error(`${name}: unexpected first line ${out.slice(0, nl)}`));
      }
    });
  });
  return { name, child, port, stderr: () => err };
}

/**
 * Starts a process whose stdout and stderr go to `logFile`, read by the caller. The file is
 * truncated first: a readiness line left by an earlier start must not count.
 */
export function startLogged(cmd: string, args: string[], logFile: string): ChildProcess {
  const fd = openSync(logFile, 'w');
  try {
    return spawn(cmd, args, { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
}

/** Waits until `logFile` contains `needle`; rejects if the child exits or time runs out. */
export async function waitForLog(
  child: ChildProcess,
  logFile: string,
  needle: string,
  timeoutMs = READY_TIMEOUT_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const text = readFileSync(logFile, 'utf8');
    if (text.includes(needle)) return;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `exited (${child.exitCode ?? child.signalCode}) before logging ${JSON.stringify(needle)}` +
          (text.trim() === '' ? '' : `: ${tail(text, 3)}`),
      );
    }
    await sleep(POLL_INTERVAL_MS);
  }
  throw new Error(`did not log ${JSON.stringify(needle)} within ${timeoutMs} ms`);
}

export async function waitForPort(port: number, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(POLL_INTERVAL_MS);
  }
  throw new Error(`nothing listening on ${port} after ${timeoutMs} ms`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      srv.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port);
        else reject(new Error('no port'));
      });
    });
  });
}

/** SIGTERM, then SIGKILL after a grace period; resolves once the child is gone. */
export async function stop(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  await gone;
  clearTimeout(timer);
}

function statusField(pid: number, field: string): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(text);
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Field 4 (ppid) follows the parenthesised command, which may itself contain spaces.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // the process ended while we were reading
    }
  }
  return out;
}

/** Resident memory in KiB of `pid`, plus its direct children when asked (nginx workers). */
export function rssKiB(pid: number, withChildren = false): number {
  const pids = withChildren ? [pid, ...childPids(pid)] : [pid];
  return pids.reduce((sum, p) => sum + (statusField(p, 'VmRSS') ?? 0), 0);
}

/** CPU time (user + system) in clock ticks consumed so far by `pid` and optionally its children. */
export function cpuTicks(pid: number, withChildren = false): number {
  const pids = withChildren ? [pid, ...childPids(pid)] : [pid];
  let sum = 0;
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      sum += Number(fields[11]) + Number(fields[12]);
    } catch {
      // the process ended while we were reading
    }
  }
  return sum;
}

const CLOCK_TICKS_PER_S = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;

/** Ticks of this process plus every child it has reaped (wrk and the load child end up here). */
function selfTicks(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
}

/** Busy ticks of the whole machine, every CPU, including time stolen by the hypervisor. */
function machineBusyTicks(): number {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  // user nice system idle iowait irq softirq steal
  return (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
}

export interface Watched {
  readonly pid: number;
  readonly withChildren: boolean;
}

export interface CpuSnapshot {
  readonly busy: number;
  readonly ours: number;
  readonly at: number;
}

/**
 * Other tenants of the machine (builds, tests, anything not started by this run) skew every
 * figure on a 2-core box, so each measurement records how much CPU they took meanwhile.
 */
export function cpuSnapshot(ours: readonly Watched[]): CpuSnapshot {
  return {
    busy: machineBusyTicks(),
    ours: selfTicks() + ours.reduce((s, w) => s + cpuTicks(w.pid, w.withChildren), 0),
    at: performance.now(),
  };
}

/** CPU used by processes outside this run between two snapshots, in % of one core. */
export function foreignCpuPct(a: CpuSnapshot, b: CpuSnapshot): number {
  const seconds = (b.at - a.at) / 1000;
  const ticks = b.busy - a.busy - (b.ours - a.ours);
  return Math.max(0, (ticks / CLOCK_TICKS_PER_S / seconds) * 100);
}

/** CPU used by one process between two tick readings, in % of one core. */
export function cpuPct(ticks: number, seconds: number): number {
  return (ticks / CLOCK_TICKS_PER_S / seconds) * 100;
}

/**
 * Waits, up to `maxWaitMs`, for a half-second window in which other processes use less than
 * `quietPct` of a core; returns the last window's figure.
 */
export async function waitForQuiet(
  ours: readonly Watched[],
  quietPct: number,
  maxWaitMs: number,
): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  let pct = Infinity;
  do {
    const a = cpuSnapshot(ours);
    await sleep(500);
    pct = foreignCpuPct(a, cpuSnapshot(ours));
  } while (pct >= quietPct && Date.now() < deadline);
  return pct;
}
