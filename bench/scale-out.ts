// Replicas behind one load balancer, in one run (docs/deployment.md, "Several replicas"):
//
//   1. throughput: nginx round-robin over two gateway replicas vs the same nginx over one, closed
//      loop with wrk (tools/call echo, modern era, to the bench origin), rounds interleaved;
//   2. the added latency of a forwarded stdio request: one legacy session on a stdio server,
//      its home replica A; tools/call sent to A and to B (which forwards to A), alternately;
//   3. store operations per call on the hot path, read from each replica's
//      portcullis_store_operations_total: a session a replica holds (its home, and the replica
//      forwarding, once it has read the session), and stateless calls.
//
// The gateways are the built CLI (dist/), sharing the Redis on 127.0.0.1:6379 under a key prefix
// of their own. Writes a section of bench/RESULTS-scale-out.md and raw JSON.
//
//   npm run bench:scale-out                 # 5 rounds of 10 s per target, 2,000 forwarded calls
//   npm run bench:scale-out -- --help
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';
import { openLegacySession, postLegacy } from './legacy.js';
import { toolCall, TOOL_ECHO } from './mcp.js';
import { writeNginxConfig } from './nginx.js';
import {
  compileBenchChildren,
  freePort,
  GATEWAY_READY_LOG,
  startJsonPortServer,
  startLogged,
  stop,
  waitForLog,
  waitForPort,
} from './proc.js';
import { writeRawResults, writeResultsSection } from './results.js';
import { runWrk, writeWrkScript, wrkVersion } from './wrk.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(HERE, '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const REDIS = 'redis://127.0.0.1:6379';
const SECRET = 'bench-cluster-secret-of-at-least-32-chars';

const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    calls: { type: 'string', default: '2000' },
    out: { type: 'string', default: path.join(HERE, 'RESULTS-scale-out.md') },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write(`npm run bench:scale-out -- [options]
  --rounds N        throughput rounds, one replica and two interleaved (default 5)
  --duration S      seconds of each wrk run (default 10)
  --warmup S        seconds of wrk before each measured run, not counted (default 3)
  --connections N   wrk connections (default 32)
  --calls N         forwarded-latency calls to each replica (default 2000)
  --out FILE        results file (default bench/RESULTS-scale-out.md)
Needs: npm run build, wrk and nginx installed, Redis on 127.0.0.1:6379.
`);
  process.exit(0);
}
const rounds = Number(flags.rounds);
const durationS = Number(flags.duration);
const warmupS = Number(flags.warmup);
const connections = Number(flags.connections);
const calls = Number(flags.calls);

const log = (m: string) => process.stderr.write(`[scale-out] ${m}\n`);
const work = mkdtempSync(path.join(os.tmpdir(), 'portcullis-scale-out-'));
const children: Array<ReturnType<typeof startLogged>> = [];
const agent = new Agent({ connections: 8 });

interface Replica {
  readonly name: string;
  readonly port: number;
  readonly admin: number;
  readonly url: string;
}

async function startReplica(name: string, originPort: number, prefix: string): Promise<Replica> {
  const [port, admin, cluster] = await Promise.all([freePort(), freePort(), freePort()]);
  const file = path.join(work, `${name}.yaml`);
  writeFileSync(
    file,
    stringify({
      listen: { host: '127.0.0.1', port },
      admin: { port: admin },
      auth: { mode: 'none' },
      store: { kind: 'redis', url: REDIS, keyPrefix: prefix },
      cluster: { host: '127.0.0.1', port: cluster, secret: SECRET },
      log: { level: 'info' },
      servers: {
        origin: { url: `http://127.0.0.1:${originPort}/mcp` },
        echo: {
          transport: 'stdio',
          command: process.execPath,
          args: [path.join(HERE, 'echo-stdio.mjs')],
          sandbox: { mode: 'off' },
        },
      },
    }),
  );
  const logFile = path.join(work, `${name}.log`);
  const child = startLogged(process.execPath, [CLI, 'start', '--config', file], logFile);
  children.push(child);
  await waitForLog(child, logFile, GATEWAY_READY_LOG);
  await waitForPort(admin);
  return { name, port, admin, url: `http://127.0.0.1:${port}` };
}

async function startNginx(name: string, ports: readonly number[]): Promise<string> {
  const dir = path.join(work, name);
  const port = await freePort();
  spawnSync('mkdir', ['-p', dir]);
  const conf = writeNginxConfig({
    dir,
    port,
    upstreamPorts: ports,
    workers: 1,
    maxOpenFiles: 20_000,
  });
  const child = startLogged('/usr/sbin/nginx', ['-p', dir, '-c', conf], path.join(dir, 'out.log'));
  children.push(child);
  await waitForPort(port);
  return `http://127.0.0.1:${port}/mcp/origin`;
}

async function storeOperations(r: Replica): Promise<number> {
  const res = await request(`http://127.0.0.1:${r.admin}/metrics`, { dispatcher: agent });
  const text = await res.body.text();
  const line = text.split('\n').find((l) => l.startsWith('portcullis_store_operations_total '));
  return Number(line?.split(' ').pop());
}

async function openSession(url: string): Promise<string> {
  const sid = await openLegacySession(agent, url);
  if (sid === undefined) throw new Error('initialize: no session id');
  return sid;
}

let nextId = 1;
async function echo(url: string, sid: string): Promise<number> {
  const id = nextId++;
  const started = performance.now();
  const res = await postLegacy(
    agent,
    url,
    {
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      params: { name: 'echo', arguments: { message: 'bench' } },
    },
    sid,
  );
  const ms = performance.now() - started;
  if (res.status !== 200 || !res.text.includes('Echo: bench'))
    throw new Error(`tools/call: ${res.status} ${res.text.slice(0, 200)}`);
  return ms;
}

const percentile = (sorted: readonly number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
const median = (xs: readonly number[]): number =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );

async function main(): Promise<void> {
  const childDir = path.join(work, 'children');
  compileBenchChildren(HERE, childDir, ROOT);
  const origin = await startJsonPortServer('origin', process.execPath, [
    path.join(childDir, 'origin.js'),
  ]);
  children.push(origin.child);
  const prefix = `portcullis-bench:${randomUUID()}:`;
  const a = await startReplica('a', origin.port, prefix);
  const b = await startReplica('b', origin.port, prefix);
  const one = await startNginx('nginx-one', [a.port]);
  const two = await startNginx('nginx-two', [a.port, b.port]);
  log(`replicas ${a.url} ${b.url}; nginx over one ${one}, over two ${two}`);

  // 1. Throughput.
  const script = writeWrkScript(work, toolCall(TOOL_ECHO));
  const rps: Record<'one' | 'two', number[]> = { one: [], two: [] };
  let errors = 0;
  for (let r = 0; r < rounds; r++) {
    for (const [target, url] of [
      ['one', one],
      ['two', two],
    ] as const) {
      await runWrk({ url, script, connections, threads: 1, durationS: warmupS, cpus: undefined });
      const res = await runWrk({
        url,
        script,
        connections,
        threads: 1,
        durationS,
        cpus: undefined,
      });
      errors += res.non2xx + res.socketErrors;
      // A refused call is cheap: throughput with errors would measure refusals.
      if (res.non2xx > 0) throw new Error(`${target}: ${res.non2xx} non-2xx answers`);
      rps[target].push(res.requestsPerSec);
      log(`round ${r + 1}: ${target} replica(s) ${res.requestsPerSec.toFixed(0)} req/s`);
    }
  }

  // 3a. Stateless calls: store operations per call, both replicas, through nginx.
  const statelessBefore = (await storeOperations(a)) + (await storeOperations(b));
  const statelessRun = await runWrk({
    url: two,
    script,
    connections: 4,
    threads: 1,
    durationS: 3,
    cpus: undefined,
  });
  const statelessOps = (await storeOperations(a)) + (await storeOperations(b)) - statelessBefore;

  // 2. Forwarded stdio latency, and 3b. store operations per call of a held session.
  const sid = await openSession(`${a.url}/mcp/echo`);
  await echo(`${b.url}/mcp/echo`, sid); // B reads the session once.
  for (let i = 0; i < 100; i++) {
    await echo(`${a.url}/mcp/echo`, sid);
    await echo(`${b.url}/mcp/echo`, sid);
  }
  const opsA = await storeOperations(a);
  const opsB = await storeOperations(b);
  const direct: number[] = [];
  const forwarded: number[] = [];
  for (let i = 0; i < calls; i++) {
    direct.push(await echo(`${a.url}/mcp/echo`, sid));
    forwarded.push(await echo(`${b.url}/mcp/echo`, sid));
  }
  const heldOpsA = (await storeOperations(a)) - opsA;
  const heldOpsB = (await storeOperations(b)) - opsB;
  direct.sort((x, y) => x - y);
  forwarded.sort((x, y) => x - y);

  const result = {
    machine: `${os.cpus().length} × ${os.cpus()[0]?.model.trim()}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${wrkVersion()}`,
    rounds,
    durationS,
    connections,
    rps,
    errors,
    ratio: median(rps.two) / median(rps.one),
    perRound: rps.two.map((t, i) => t / (rps.one[i] as number)),
    forwarded: {
      calls,
      directP50: percentile(direct, 50),
      directP99: percentile(direct, 99),
      forwardedP50: percentile(forwarded, 50),
      forwardedP99: percentile(forwarded, 99),
    },
    storeOpsPerCall: {
      stateless: statelessOps / statelessRun.requests,
      heldHome: heldOpsA / calls,
      heldForwarding: heldOpsB / calls,
    },
  };
  writeRawResults('scale-out', result);
  const f = result.forwarded;
  const section = `
Command: \`npm run bench:scale-out -- --rounds ${rounds} --duration ${durationS} --warmup ${warmupS} --connections ${connections} --calls ${calls}\`
Machine: ${result.machine}. Everything on the same cores: wrk, nginx (1 worker), the origin, both replicas and Redis. No pinning.

### Throughput: two replicas behind nginx vs one (tools/call echo, closed loop, ${connections} connections)

| | one replica | two replicas | two / one |
| --- | --- | --- | --- |
| req/s, median of ${rounds} rounds | ${median(rps.one).toFixed(0)} | ${median(rps.two).toFixed(0)} | **${result.ratio.toFixed(2)}** |
| per round | ${rps.one.map((x) => x.toFixed(0)).join(', ')} | ${rps.two.map((x) => x.toFixed(0)).join(', ')} | ${result.perRound.map((x) => x.toFixed(2)).join(', ')} |

Errors (non-2xx and socket errors, all runs): ${errors}. With every process on the same cores, the second replica has no core of its own: the ratio shows what spreading over replicas costs or gains on one machine, not what a second machine adds.

### A forwarded stdio request (${calls} tools/call each way, alternating, one at a time)

| to | p50 ms | p99 ms |
| --- | --- | --- |
| the session's home (its process is there) | ${f.directP50.toFixed(2)} | ${f.directP99.toFixed(2)} |
| the other replica (forwards to the home) | ${f.forwardedP50.toFixed(2)} | ${f.forwardedP99.toFixed(2)} |
| added by forwarding | **${(f.forwardedP50 - f.directP50).toFixed(2)}** | ${(f.forwardedP99 - f.directP99).toFixed(2)} |

### Store operations per call (portcullis_store_operations_total)

| calls | operations per call |
| --- | --- |
| stateless (2026-07-28), through nginx, both replicas | ${result.storeOpsPerCall.stateless.toFixed(3)} |
| a held session, on its home | ${result.storeOpsPerCall.heldHome.toFixed(3)} |
| a held session, on the replica forwarding it | ${result.storeOpsPerCall.heldForwarding.toFixed(3)} |

A replica reads a session from the store once, on its first request of it; the sweep shares use in the background (two writes per session per sweep, not per call).
`;
  writeResultsSection(flags.out as string, 'scale-out', section, 'Scale-out benchmark results');
  log(
    `ratio two/one ${result.ratio.toFixed(2)}; forwarded +${(f.forwardedP50 - f.directP50).toFixed(2)} ms p50; store ops/call ${JSON.stringify(result.storeOpsPerCall)}`,
  );
  const redis = new Redis(REDIS);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(async () => {
    await Promise.all(children.map((c) => stop(c)));
    await agent.close();
    rmSync(work, { recursive: true, force: true });
  });
