// What JWT authentication costs per request, counted in CPU instructions rather than timed:
// the gateway runs under valgrind's callgrind, against the bench origin, once with
// `--auth none` and once with JWT authentication (one token, reused: the cache-hit path);
// after a warm-up the counters are zeroed, N tools/call requests are sent, and the
// instructions the gateway executed are divided by N. Instruction counts do not depend on
// what else the machine is doing, so the ratio is stable where throughput on a shared
// 2-core machine is not (bench/README.md). Runs alternate, `--runs` times each.
//
// Usage: npm run bench:instructions [-- --requests 1000 --runs 3]
// Appends its table to bench/RESULTS-identity.md (or --out FILE). Needs valgrind.
import { execFileSync, spawn } from 'node:child_process';
import {
  appendFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { TOOL_ECHO, toolCall, withHeaders } from './mcp.js';

const { values: flags } = parseArgs({
  options: {
    requests: { type: 'string', default: '1000' },
    runs: { type: 'string', default: '3' },
    out: { type: 'string' },
  },
});
const REQUESTS = Number(flags.requests);
const RUNS = Number(flags.runs);
const WARMUP_REQUESTS = 300;
const CONCURRENCY = 4;
const START_TIMEOUT_MS = 240_000;
const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const main = path.join(repoDir, 'dist/cli/main.js');
const outFile = flags.out ?? path.join(repoDir, 'bench/RESULTS-identity.md');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'portcullis-instr-'));
const ISSUER = 'https://issuer.bench';

function cli(args: string[]): string {
  return execFileSync(process.execPath, [main, ...args], { encoding: 'utf8' }).trim();
}

async function startOrigin(): Promise<{ url: string; stop: () => void }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(repoDir, 'bench/origin.ts')],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) =>
      resolve((JSON.parse(d.toString()) as { port: number }).port),
    );
    child.once('exit', () => reject(new Error('origin exited')));
  });
  return { url: `http://127.0.0.1:${port}/mcp`, stop: () => child.kill('SIGKILL') };
}

async function send(url: string, n: number, headers?: Record<string, string>): Promise<void> {
  const target = new URL(url);
  const req = withHeaders(toolCall(TOOL_ECHO), headers);
  const pool = new Pool(target.origin, { connections: CONCURRENCY });
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      const r = await pool.request({
        method: 'POST',
        path: target.pathname,
        headers: req.headers,
        body: req.body,
      });
      await r.body.text();
      if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}`);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await pool.close();
}

/** Instructions the gateway runs per request, in one callgrind run. */
async function measure(originUrl: string, auth: 'none' | 'jwt', keys: string): Promise<number> {
  const port = 18_000 + Math.floor(Math.random() * 2000);
  const authArgs =
    auth === 'none'
      ? ['--auth', 'none']
      : ['--issuer', ISSUER, '--jwks', keys.replace(/\.json$/, '.pub.json')];
  const outPrefix = path.join(tmp, `cg-${auth}`);
  const child = spawn(
    'valgrind',
    [
      '--tool=callgrind',
      '--smc-check=all-non-file',
      `--callgrind-out-file=${outPrefix}.%p`,
      process.execPath,
      main,
      'start',
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--admin-port',
      '0',
      '--log-level',
      'warn',
      ...authArgs,
      '--server',
      `bench=${originUrl}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!stderr.includes('is listening')) {
    if (Date.now() > deadline || child.exitCode !== null)
      throw new Error(`gateway did not start:\n${stderr.slice(-2000)}`);
    await sleep(500);
  }
  const url = `http://127.0.0.1:${port}/mcp/bench`;
  const headers =
    auth === 'none'
      ? undefined
      : {
          authorization: `Bearer ${cli(['token', 'mint', '--keys', keys, '--iss', ISSUER, '--aud', `http://127.0.0.1:${port}`, '--ttl', '15m'])}`,
        };
  await send(url, WARMUP_REQUESTS, headers);
  execFileSync('callgrind_control', ['-z', String(child.pid)]);
  await send(url, REQUESTS, headers);
  execFileSync('callgrind_control', ['-d', String(child.pid)]);
  await sleep(1000);
  child.kill('SIGKILL');
  const dumps = readdirSync(tmp)
    .filter((f) => f.startsWith(`cg-${auth}.${child.pid}`))
    .map((f) => path.join(tmp, f));
  // The dump taken on request holds exactly the measured requests.
  const counts = dumps
    .map((f) => /^(?:summary|totals): (\d+)/m.exec(readFileSync(f, 'utf8'))?.[1])
    .filter((v): v is string => v !== undefined)
    .map(Number)
    .filter((v) => v > 0);
  for (const f of dumps) rmSync(f, { force: true });
  const measured = Math.min(...counts);
  return measured / REQUESTS;
}

if (!existsSync(main)) throw new Error('dist/cli/main.js not found (run `npm run build`)');
const keys = path.join(tmp, 'keys.json');
cli(['keys', 'generate', '--out', keys]);
const origin = await startOrigin();
const results: Record<'none' | 'jwt', number[]> = { none: [], jwt: [] };
try {
  for (let run = 1; run <= RUNS; run++) {
    for (const auth of ['none', 'jwt'] as const) {
      const perRequest = await measure(origin.url, auth, keys);
      results[auth].push(perRequest);
      console.error(
        `[bench instructions] run ${run}: auth ${auth}: ${Math.round(perRequest)} instructions/request`,
      );
    }
  }
} finally {
  origin.stop();
  rmSync(tmp, { recursive: true, force: true });
}
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const none = mean(results.none);
const jwt = mean(results.jwt);
appendFileSync(
  outFile,
  [
    '',
    '## Full pipeline: instructions per request, authentication off and on',
    '',
    `Written by \`bench/instructions.ts\` on ${new Date().toISOString()}: the gateway under valgrind (callgrind), ${REQUESTS} tools/call requests after ${WARMUP_REQUESTS} of warm-up, ${CONCURRENCY} connections, ${RUNS} runs of each, alternating; git ${execFileSync('git', ['-C', repoDir, 'log', '-1', '--format=%h'], { encoding: 'utf8' }).trim()}.`,
    '',
    '```sh',
    `npm run bench:instructions -- --requests ${REQUESTS} --runs ${RUNS}`,
    '```',
    '',
    '| gateway | instructions/request, each run | mean |',
    '| --- | --- | ---: |',
    `| \`--auth none\` | ${results.none.map(fmt).join(', ')} | ${fmt(none)} |`,
    `| JWT, one token reused (cache hit) | ${results.jwt.map(fmt).join(', ')} | ${fmt(jwt)} |`,
    '',
    `Throughput with authentication on, as a share of off (by instructions): **${(none / jwt).toFixed(3)}** (authentication adds ${(((jwt - none) / none) * 100).toFixed(1)}% per request).`,
    '',
  ].join('\n'),
);
console.error(
  `[bench instructions] none ${fmt(none)}, jwt ${fmt(jwt)}, ratio ${(none / jwt).toFixed(3)}`,
);
