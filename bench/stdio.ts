// The stdio bridge under load, beside the two bridges people use today, on the same stdio
// servers in one run: tools/call throughput and latency with N concurrent sessions, and how long
// a session takes to start (with and without the sandbox). Writes bench/RESULTS-stdio.md.
//
//   npm run bench:stdio                       # every target, both servers (about 4 minutes)
//   npm run bench:stdio -- --help
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { format } from 'prettier';
import { Agent, request } from 'undici';
import { childrenByParent } from '../src/upstream/procfs.js';
import { answerTo, openLegacySession, postLegacy, type Answer } from './legacy.js';
import { freePort, startLogged, stop, waitForLog, waitForPort } from './proc.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(HERE, '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
/** The peers, installed on demand beside the bench (git ignores the folder), at pinned versions. */
const TOOLS_DIR = path.join(HERE, '.tools');
const PEERS = { supergateway: '4.0.0', 'mcp-proxy': '6.7.19' } as const;

const EVERYTHING = path.join(
  path.dirname(
    createRequire(import.meta.url).resolve('@modelcontextprotocol/server-everything/package.json'),
  ),
  'dist/index.js',
);
const SERVERS: Record<string, string[]> = {
  everything: [process.execPath, EVERYTHING, 'stdio'],
  echo: [process.execPath, path.join(HERE, 'echo-stdio.mjs')],
};

type TargetId =
  'portcullis-warm' | 'portcullis' | 'portcullis-nosandbox' | 'supergateway' | 'mcp-proxy';
const TARGETS: Record<TargetId, string> = {
  'portcullis-warm': 'Portcullis (sandboxed, process per session, warm pool of 2: the default)',
  portcullis: 'Portcullis (sandboxed, process per session, no warm pool)',
  'portcullis-nosandbox': 'Portcullis (no sandbox, process per session, no warm pool)',
  supergateway: `supergateway ${PEERS.supergateway} (--stateful, process per session)`,
  'mcp-proxy': `mcp-proxy ${PEERS['mcp-proxy']} (one process for all sessions)`,
};

const HELP = `Usage: npm run bench:stdio -- [options]
  --servers LIST    everything,echo (default both)
  --targets LIST    ${Object.keys(TARGETS).join(',')} (default all)
  --sessions N      concurrent sessions (default 16)
  --duration S      measured seconds per target and server (default 10)
  --warmup S        unmeasured seconds first (default 2)
  --starts N        sequential session starts timed per target (default 10)
  --start-gap MS    pause between two timed session starts, as sessions arriving apart (default 500)
  --rounds N        repeat everything N times, targets interleaved; the median round is reported (default 1)
  --out FILE        where the report goes (default bench/RESULTS-stdio.md)
  --note TEXT       a line about the run's conditions, in the report (e.g. other load on the machine)`;

const { values: opts } = parseArgs({
  options: {
    servers: { type: 'string', default: 'everything,echo' },
    targets: { type: 'string', default: Object.keys(TARGETS).join(',') },
    sessions: { type: 'string', default: '16' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    starts: { type: 'string', default: '10' },
    'start-gap': { type: 'string', default: '500' },
    note: { type: 'string' },
    rounds: { type: 'string', default: '1' },
    out: { type: 'string', default: path.join(HERE, 'RESULTS-stdio.md') },
    help: { type: 'boolean', default: false },
  },
});
if (opts.help) {
  console.log(HELP);
  process.exit(0);
}
/** The bench is one caller standing for many: quotas set past anything it opens. */
const BENCH_QUOTAS = {
  perPrincipal: {
    sessions: 100_000,
    legacyConnections: 100_000,
    stdioProcesses: 10_000,
    inflight: 100_000,
  },
  perTenant: {
    sessions: 100_000,
    legacyConnections: 100_000,
    stdioProcesses: 10_000,
    inflight: 100_000,
  },
  global: { inflight: 100_000 },
};
const SESSIONS = Number(opts.sessions);
const DURATION_MS = Number(opts.duration) * 1000;
const WARMUP_MS = Number(opts.warmup) * 1000;
const STARTS = Number(opts.starts);
const START_GAP_MS = Number(opts['start-gap']);
const ROUNDS = Math.max(1, Number(opts.rounds));

const agent = new Agent({ connections: SESSIONS * 2, pipelining: 1, keepAliveTimeout: 30_000 });

// --- the client side: raw Streamable HTTP, a session per loop ----------------------------------

const post = (url: string, body: unknown, sessionId?: string): Promise<Answer> =>
  postLegacy(agent, url, body, sessionId);

class Session {
  private nextId = 1;
  constructor(
    readonly url: string,
    readonly id: string | undefined,
  ) {}

  static async open(url: string): Promise<Session> {
    return new Session(url, await openLegacySession(agent, url));
  }

  async echo(): Promise<void> {
    const id = this.nextId++;
    const res = await post(
      this.url,
      {
        jsonrpc: '2.0',
        id,
        method: 'tools/call',
        params: { name: 'echo', arguments: { message: 'bench' } },
      },
      this.id,
    );
    const m = answerTo(res.text, id);
    if (
      res.status !== 200 ||
      m.error !== undefined ||
      !JSON.stringify(m.result).includes('Echo: bench')
    )
      throw new Error(`tools/call: ${res.status} ${res.text.slice(0, 200)}`);
  }

  async close(): Promise<void> {
    if (this.id === undefined) return;
    await request(this.url, {
      method: 'DELETE',
      dispatcher: agent,
      headers: { 'mcp-session-id': this.id, 'mcp-protocol-version': '2025-11-25' },
    })
      .then((r) => r.body.dump())
      .catch(() => undefined);
  }
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** Resident memory of a process and all its descendants, in MiB, and how many there are. */
function treeMemory(root: number): { mib: number; processes: number } {
  const children = childrenByParent();
  let kib = 0;
  let processes = 0;
  const walk = (pid: number): void => {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      kib += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
      processes++;
    } catch {
      return;
    }
    for (const c of children.get(pid) ?? []) walk(c);
  };
  walk(root);
  return { mib: kib / 1024, processes };
}

// --- the targets ---------------------------------------------------------------------------------

interface Running {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

function ensurePeers(): void {
  const missing = Object.entries(PEERS).filter(([name, version]) => {
    const file = path.join(TOOLS_DIR, 'node_modules', name, 'package.json');
    return (
      !existsSync(file) ||
      (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version !== version
    );
  });
  if (missing.length === 0) return;
  mkdirSync(TOOLS_DIR, { recursive: true });
  if (!existsSync(path.join(TOOLS_DIR, 'package.json')))
    writeFileSync(path.join(TOOLS_DIR, 'package.json'), '{"name":"bench-tools","private":true}\n');
  console.error(`installing ${missing.map(([n, v]) => `${n}@${v}`).join(' ')} into ${TOOLS_DIR}`);
  execFileSync(
    'npm',
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--prefix',
      TOOLS_DIR,
      ...missing.map(([n, v]) => `${n}@${v}`),
    ],
    { stdio: 'inherit' },
  );
}

async function startTarget(target: TargetId, server: string[], work: string): Promise<Running> {
  const port = await freePort();
  const log = path.join(work, `${target}.log`);
  const [command, ...args] = server as [string, ...string[]];
  if (target.startsWith('portcullis')) {
    const config = path.join(work, `${target}.json`);
    writeFileSync(
      config,
      JSON.stringify({
        listen: { host: '127.0.0.1', port },
        admin: { port: 0 },
        auth: { mode: 'none' },
        log: { level: 'warn' },
        sessions: { max: 10_000 },
        // One anonymous load generator stands for many callers: quotas out of the way.
        quotas: BENCH_QUOTAS,
        servers: {
          bench: {
            transport: 'stdio',
            command,
            args,
            sandbox: { mode: target === 'portcullis-nosandbox' ? 'off' : 'required' },
            ...(target === 'portcullis-warm' ? {} : { warmPool: 0 }),
          },
        },
      }),
    );
    const child = startLogged(process.execPath, [CLI, 'start', '--config', config], log);
    await waitForPort(port);
    return {
      url: `http://127.0.0.1:${port}/mcp/bench`,
      pid: child.pid as number,
      stop: () => stop(child),
    };
  }
  const bin = path.join(TOOLS_DIR, 'node_modules', '.bin', target);
  const child =
    target === 'supergateway'
      ? startLogged(
          bin,
          [
            '--stdio',
            server.map((a) => JSON.stringify(a)).join(' '),
            '--outputTransport',
            'streamableHttp',
            '--stateful',
            '--port',
            String(port),
            '--logLevel',
            'none',
          ],
          log,
        )
      : startLogged(
          bin,
          ['--port', String(port), '--host', '127.0.0.1', '--server', 'stream', '--', ...server],
          log,
        );
  await waitForPort(port);
  if (target === 'mcp-proxy')
    await waitForLog(child, log, 'starting server on port').catch(() => undefined);
  return { url: `http://127.0.0.1:${port}/mcp`, pid: child.pid as number, stop: () => stop(child) };
}

// --- the measurements ----------------------------------------------------------------------------

interface StartResult {
  /** initialize sent → its answer read, ms. */
  initP50: number;
  /** initialize sent → first tools/call answered, ms. */
  firstCallP50: number;
  firstCallMax: number;
}

async function measureStarts(url: string): Promise<StartResult> {
  const init: number[] = [];
  const first: number[] = [];
  for (let i = 0; i < STARTS; i++) {
    // Untimed: sessions arrive apart (a warm pool refills meanwhile, as it would).
    await new Promise((r) => setTimeout(r, START_GAP_MS));
    const t0 = performance.now();
    const session = await Session.open(url);
    init.push(performance.now() - t0);
    await session.echo();
    first.push(performance.now() - t0);
    await session.close();
  }
  init.sort((a, b) => a - b);
  first.sort((a, b) => a - b);
  return {
    initP50: percentile(init, 50),
    firstCallP50: percentile(first, 50),
    firstCallMax: first.at(-1) as number,
  };
}

interface LoadResult {
  callsPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  memory: { mib: number; processes: number };
}

async function measureLoad(url: string, pid: number): Promise<LoadResult> {
  const sessions = await Promise.all(Array.from({ length: SESSIONS }, () => Session.open(url)));
  const latencies: number[] = [];
  let errors = 0;
  let measuring = false;
  let running = true;
  const loops = sessions.map(async (s) => {
    while (running) {
      const t0 = performance.now();
      try {
        await s.echo();
        if (measuring) latencies.push(performance.now() - t0);
      } catch (err) {
        if (measuring) errors++;
        if (errors === 1) console.error(`  error: ${(err as Error).message}`);
      }
    }
  });
  await new Promise((r) => setTimeout(r, WARMUP_MS));
  measuring = true;
  const started = performance.now();
  await new Promise((r) => setTimeout(r, DURATION_MS / 2));
  const memory = treeMemory(pid);
  await new Promise((r) => setTimeout(r, DURATION_MS / 2));
  measuring = false;
  const elapsed = performance.now() - started;
  running = false;
  await Promise.all(loops);
  await Promise.all(sessions.map((s) => s.close()));
  latencies.sort((a, b) => a - b);
  return {
    callsPerSecond: latencies.length / (elapsed / 1000),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    errors,
    memory,
  };
}

// --- the run -------------------------------------------------------------------------------------

interface Row {
  server: string;
  target: TargetId;
  load?: LoadResult;
  starts?: StartResult;
  failure?: string;
  /** Calls per second of every round, when there were several. */
  spread?: number[];
}

/** The round with the median throughput for `server` and `target` (a failure if any round failed). */
function medianRound(rounds: readonly Row[], server: string, target: TargetId): Row {
  const mine = rounds.filter((r) => r.server === server && r.target === target);
  const failed = mine.find((r) => r.failure !== undefined || r.load === undefined);
  if (failed) return failed;
  const sorted = [...mine].sort(
    (a, b) => (a.load?.callsPerSecond ?? 0) - (b.load?.callsPerSecond ?? 0),
  );
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as Row;
  return { ...median, spread: mine.map((r) => r.load?.callsPerSecond ?? 0) };
}

async function main(): Promise<void> {
  if (!existsSync(CLI)) throw new Error('dist/cli/main.js is missing: run `npm run build` first');
  const servers = opts.servers.split(',').filter((s) => SERVERS[s] !== undefined);
  const targets = opts.targets.split(',').filter((t): t is TargetId => t in TARGETS);
  if (targets.some((t) => t === 'supergateway' || t === 'mcp-proxy')) ensurePeers();
  const work = mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-stdio-'));
  const rounds: Row[] = [];
  try {
    // Rounds interleave the targets, so slow drift in the machine's load spreads over all of them.
    for (let round = 1; round <= ROUNDS; round++) {
      for (const server of servers) {
        for (const target of targets) {
          console.error(`round ${round}/${ROUNDS}: ${server} via ${target}`);
          const row: Row = { server, target };
          rounds.push(row);
          let running: Running | undefined;
          try {
            running = await startTarget(target, SERVERS[server] as string[], work);
            row.starts = await measureStarts(running.url);
            row.load = await measureLoad(running.url, running.pid);
            console.error(
              `  ${row.load.callsPerSecond.toFixed(0)} calls/s, p50 ${row.load.p50.toFixed(2)} ms, p99 ${row.load.p99.toFixed(2)} ms, start ${row.starts.firstCallP50.toFixed(0)} ms`,
            );
          } catch (err) {
            row.failure = (err as Error).message;
            console.error(`  failed: ${row.failure}`);
          } finally {
            await running?.stop();
          }
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
    await agent.close();
  }
  const rows = servers.flatMap((server) =>
    targets.map((target) => medianRound(rounds, server, target)),
  );
  // Formatted as the repository's Markdown is, so the committed report passes the lint.
  writeFileSync(opts.out, await format(render(rows, servers, targets), { parser: 'markdown' }));
  console.error(`wrote ${opts.out}`);
}

function render(
  rows: readonly Row[],
  servers: readonly string[],
  targets: readonly TargetId[],
): string {
  const cpu =
    readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m)?.[1] ?? 'unknown';
  const f = (n: number | undefined, digits = 0) =>
    n === undefined || Number.isNaN(n) ? '—' : n.toFixed(digits);
  const ratio = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || b === 0 ? '—' : `${(a / b).toFixed(2)}×`;
  const out = [
    '# The stdio bridge under load',
    '',
    `- Command: \`npm run bench:stdio -- ${process.argv.slice(2).join(' ')}\`.`.replace(
      ' -- `',
      '`',
    ),
    `- Date: ${new Date().toISOString()}. Machine: ${os.cpus().length} × ${cpu}, ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}.`,
    `- Load: ${SESSIONS} concurrent sessions, each calling \`tools/call echo\` in a closed loop over raw Streamable HTTP (undici), ${WARMUP_MS / 1000} s warm-up, ${DURATION_MS / 1000} s measured. The load generator shares the machine with the target.`,
    `- Session start: ${STARTS} sessions one after another, ${START_GAP_MS} ms apart: \`initialize\`, \`notifications/initialized\`, one \`tools/call\`, DELETE.`,
    ROUNDS > 1
      ? `- Rounds: ${ROUNDS}, targets interleaved in each; each row is the round with the median calls/s (every round's figure in parentheses), the ratios are between medians.`
      : '- Rounds: 1.',
    ...(opts.note === undefined ? [] : [`- Note: ${opts.note}`]),
    '',
  ];
  for (const server of servers) {
    const of = (t: TargetId) => rows.find((r) => r.server === server && r.target === t);
    const sg = of('supergateway')?.load?.callsPerSecond;
    const mp = of('mcp-proxy')?.load?.callsPerSecond;
    out.push(
      `## ${server === 'everything' ? '`@modelcontextprotocol/server-everything` (stdio)' : "the project's echo server (`bench/echo-stdio.mjs`)"}`,
      '',
      '| target | calls/s | p50 ms | p99 ms | vs supergateway | vs mcp-proxy | errors | processes | RSS MiB (all) | session start p50 ms (initialize / first call) |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const t of targets) {
      const r = of(t);
      if (r?.failure !== undefined || r === undefined) {
        out.push(`| ${TARGETS[t]} | unavailable: ${r?.failure ?? 'not run'} | | | | | | | | |`);
        continue;
      }
      const l = r.load;
      const spread =
        r.spread && r.spread.length > 1 ? ` (${r.spread.map((x) => f(x)).join(', ')})` : '';
      out.push(
        `| ${TARGETS[t]} | ${f(l?.callsPerSecond)}${spread} | ${f(l?.p50, 2)} | ${f(l?.p99, 2)} | ${ratio(l?.callsPerSecond, sg)} | ${ratio(l?.callsPerSecond, mp)} | ${l?.errors ?? '—'} | ${l?.memory.processes ?? '—'} | ${f(l?.memory.mib)} | ${f(r.starts?.initP50)} / ${f(r.starts?.firstCallP50)} |`,
      );
    }
    out.push('');
  }
  return `${out.join('\n')}\n`;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
