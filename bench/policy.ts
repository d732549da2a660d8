// What a policy decision costs per message, in process, no sockets: the compiled policy of
// bench/policy-fixture.ts (one tenant, 100 rules, a 200-tool manifest) called as the gateway
// calls it (src/server/app.ts inbound, src/server/decide.ts outbound), on frames made by the
// gateway's own framing (src/mcp/frame.ts) from JSON text, each timed alone with
// process.hrtime.bigint after a warm-up:
//   - inbound: tools/call requests with arguments, a mix of tools, mostly granted and allowed
//     (about 4% denied by a rule, 2% not granted); also resources/read and prompts/get;
//   - outbound: tools/call results and progress notifications (an SSE event each);
//   - outbound, separately: a 200-tool tools/list result (the list review: grants, the manifest,
//     pins, cleaning), with the manifest and without one (trust on first use), a rarer message.
// Every sample is kept; percentiles are exact. The timer's own cost (two hrtime.bigint calls) is
// measured and reported, not subtracted.
// Writes its section of bench/RESULTS-policy.md (or --out FILE). Nothing here is asserted by the
// tests.
//
// Usage: npm run bench:policy [-- --iterations 200000 --list-iterations 2000]
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Principal } from '../src/auth/principal.js';
import type { Config } from '../src/config/schema.js';
import { toFrame, type Frame } from '../src/mcp/frame.js';
import { compilePolicy, type DecisionContext, type Policy } from '../src/policy/policy.js';
import { MemoryPinBook } from '../src/policy/tools.js';
import { LiveTools } from '../src/server/decide.js';
import { cpuSnapshot, foreignCpuPct, QUIET_CPU_PCT, QUIET_WAIT_MS, waitForQuiet } from './proc.js';
import { writeResultsSection } from './results.js';
import {
  GRANT,
  OTHER_SERVER,
  SERVER,
  TENANT,
  benchManifest,
  benchRules,
  toolDefinitions,
  toolName,
  TOOLS,
} from './policy-fixture.js';

const { values: flags } = parseArgs({
  options: {
    iterations: { type: 'string', default: '200000' },
    'list-iterations': { type: 'string', default: '2000' },
    out: { type: 'string' },
  },
});
const ITERATIONS = Number(flags.iterations);
const LIST_ITERATIONS = Number(flags['list-iterations']);
const WARMUP_SHARE = 0.1;
/** Distinct messages per line, cycled: enough that no single message's shape dominates. */
const POOL = 1024;
const TARGET_P99_US = 20;
/** Each line starts once other processes use less than this share of one core (or after the wait). */

const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outFile = flags.out ?? path.join(repoDir, 'bench/RESULTS-policy.md');

// ---- the policy ------------------------------------------------------------------------------
const manifest = benchManifest();
const servers = {
  [SERVER]: { url: 'http://127.0.0.1:1/mcp', pinning: 'block' },
  [OTHER_SERVER]: { url: 'http://127.0.0.1:2/mcp', pinning: 'block' },
} as unknown as Config['servers'];
const rules = benchRules();
const tenants: Config['tenants'] = {
  [TENANT]: {
    servers: { [SERVER]: GRANT, [OTHER_SERVER]: { tools: ['*'] } },
    rules,
    mode: 'enforce',
  },
};
const t0 = process.hrtime.bigint();
const policy = compilePolicy(
  { servers, tenants },
  new Map([[SERVER, { manifest, file: 'bench.json' }]]),
);
const compileMs = Number(process.hrtime.bigint() - t0) / 1e6;
const tofu = compilePolicy({ servers, tenants });

const principal: Principal = {
  tenant: TENANT,
  subject: 'alice',
  clientId: 'agent-1',
  scopes: ['mcp:use', 'db:read', 'files:read'],
};
const ctx = (): DecisionContext => ({
  principal,
  server: SERVER,
  era: 'modern',
  memory: new LiveTools(new MemoryPinBook()),
});

// ---- messages --------------------------------------------------------------------------------
/** A deterministic generator, so every run sends the same messages. */
let seed = 42;
function rand(): number {
  seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
  return seed / 2 ** 31;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
const n = (max: number): number => Math.floor(rand() * max);

function request(id: number, method: string, params: Record<string, unknown>): Frame {
  const text = JSON.stringify({ jsonrpc: '2.0', id, method, params });
  return toFrame(JSON.parse(text), 'client-to-server');
}

type Outcome = 'allow' | 'deny';
interface Sample {
  readonly frame: Frame;
  readonly expect: Outcome;
}

function toolCall(i: number): Sample {
  const r = rand();
  const call = (name: string, args: Record<string, unknown>, expect: Outcome = 'allow') => ({
    frame: request(i, 'tools/call', { name, arguments: args }),
    expect,
  });
  if (r < 0.38)
    return call(toolName('query', n(40)), {
      sql: `select id, total, placed_at from orders where customer_id = ${n(100_000)} order by placed_at desc`,
      limit: 1 + n(500),
      database: pick(['orders', 'analytics']),
    });
  if (r < 0.62)
    return call(toolName('read_file', n(40)), {
      path: `/srv/data/reports/${n(1000)}/summary.txt`,
      encoding: 'utf8',
      maxBytes: 65_536,
    });
  if (r < 0.77)
    return call(toolName('search', n(40)), {
      query: `invoices from customer ${n(10_000)} in ${2020 + n(6)}`,
      limit: 20,
      tags: ['billing', 'q4'],
    });
  if (r < 0.89)
    return call(toolName('write_file', n(40)), {
      path: `/srv/data/out/${n(1000)}.json`,
      content: JSON.stringify({ rows: n(1000), ok: true }),
      mode: 'create',
    });
  if (r < 0.94) return call('echo', { message: 'hello from bench', payload: 'x'.repeat(960) });
  // Denied by a rule: a destructive statement, a path outside /srv, an admin tool without the scope.
  if (r < 0.955)
    return call(toolName('query', n(40)), { sql: 'DROP TABLE users; --', limit: 1 }, 'deny');
  if (r < 0.97) return call(toolName('read_file', n(40)), { path: '/etc/shadow' }, 'deny');
  if (r < 0.98) return call('admin_00', { action: 'reindex' }, 'deny');
  // Not granted: a tool of the tenant's server it may not use.
  return call(toolName('admin', 2 + n(38)), { action: 'vacuum', force: true }, 'deny');
}

function otherRequest(i: number): Sample {
  if (rand() < 0.5)
    return {
      frame: request(i, 'resources/read', { uri: `file:///srv/data/reports/${n(1000)}.txt` }),
      expect: 'allow',
    };
  return {
    frame: request(i, 'prompts/get', { name: 'summarize', arguments: { topic: 'sales' } }),
    expect: 'allow',
  };
}

function response(id: number, result: unknown): Frame {
  const text = JSON.stringify({ jsonrpc: '2.0', id, result });
  return toFrame(JSON.parse(text), 'server-to-client');
}

function toolResult(i: number): Frame {
  return response(i, {
    content: [{ type: 'text', text: `row ${i}: ${'y'.repeat(200 + n(800))}` }],
    structuredContent: { rows: n(100), ok: true },
    isError: false,
  });
}

function progress(i: number): Frame {
  const text = JSON.stringify({
    jsonrpc: '2.0',
    method: 'notifications/progress',
    params: { progressToken: i, progress: n(10), total: 10, message: `step ${n(10)}` },
  });
  return toFrame(JSON.parse(text), 'server-to-client');
}

const toolList = (i: number): Frame => response(i, { tools: toolDefinitions() });

// ---- timing ----------------------------------------------------------------------------------
interface Line {
  readonly name: string;
  readonly samples: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly mean: number;
  readonly target?: boolean;
  readonly note?: string;
  /** CPU that processes outside this one took meanwhile, in % of one core. */
  readonly otherCpuPct?: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

/** µs per call of `fn` on each of `inputs` in turn: warm-up, then every call timed alone. */
async function time<T>(
  name: string,
  inputs: readonly T[],
  iterations: number,
  fn: (input: T) => unknown,
  extra: Partial<Line> = {},
): Promise<Line> {
  await waitForQuiet([], QUIET_CPU_PCT, QUIET_WAIT_MS);
  const before = cpuSnapshot([]);
  const warmup = Math.ceil(iterations * WARMUP_SHARE);
  for (let i = 0; i < warmup; i++) fn(inputs[i % inputs.length] as T);
  const us = new Float64Array(iterations);
  let sum = 0;
  for (let i = 0; i < iterations; i++) {
    const input = inputs[i % inputs.length] as T;
    const start = process.hrtime.bigint();
    fn(input);
    const d = Number(process.hrtime.bigint() - start) / 1000;
    us[i] = d;
    sum += d;
  }
  us.sort();
  return {
    name,
    samples: iterations,
    p50: percentile(us, 50),
    p99: percentile(us, 99),
    p999: percentile(us, 99.9),
    max: us[us.length - 1] as number,
    mean: sum / iterations,
    otherCpuPct: foreignCpuPct(before, cpuSnapshot([])),
    ...extra,
  };
}

// ---- checks: the messages are decided as the bench says ------------------------------------
const inboundCtx = ctx();
const calls = Array.from({ length: POOL }, (_, i) => toolCall(i + 1));
const others = Array.from({ length: POOL }, (_, i) => otherRequest(i + 1));
let shadowHits = 0;
for (const s of [...calls, ...others]) {
  const d = policy.inbound(s.frame, inboundCtx);
  if (d.kind !== s.expect)
    throw new Error(
      `${s.frame.method} ${s.frame.target} ${JSON.stringify(s.frame.message.params)}: ${d.kind}${d.kind === 'deny' ? ` by ${d.rule}` : ''}, expected ${s.expect}`,
    );
  shadowHits += d.shadowed?.length ?? 0;
}
const allowedCalls = calls.filter((s) => s.expect === 'allow');
const deniedShare = 1 - allowedCalls.length / calls.length;

/** How many rules' conditions a message has evaluated: the rules that apply to it. */
function applying(frame: Frame): number {
  return rules.filter((r) => {
    if (r.servers && !r.servers.includes(SERVER)) return false;
    if (r.methods && !r.methods.includes(frame.method ?? '')) return false;
    if (!r.targets) return true;
    return globMatch(r.targets, frame.target ?? '');
  }).length;
}
const meanApplying = (xs: readonly Sample[]) =>
  xs.reduce((s, x) => s + applying(x.frame), 0) / xs.length;

const results = Array.from({ length: POOL }, (_, i) => toolResult(i + 1));
const progresses = Array.from({ length: POOL }, (_, i) => progress(i + 1));
const lists = Array.from({ length: 16 }, (_, i) => toolList(i + 1));
const globMatch = (patterns: readonly string[], t: string): boolean =>
  patterns.some((p) => (p.endsWith('*') ? t.startsWith(p.slice(0, -1)) : p === t));
const shownTools = toolDefinitions().filter((d) => globMatch(GRANT.tools ?? [], d.name)).length;
{
  const d = policy.outbound(lists[0] as Frame, 'tools/list', ctx());
  const kept = d.kind === 'replace' ? (d.message.result as { tools: unknown[] }).tools.length : 200;
  if (kept !== shownTools)
    throw new Error(`tools/list: ${d.kind}, ${kept} tools shown, expected ${shownTools}`);
}

// ---- measure ---------------------------------------------------------------------------------
const lines: Line[] = [];
const inbound = (p: Policy) => (s: Sample) => p.inbound(s.frame, inboundCtx);
lines.push(
  await time('inbound tools/call, mix (allowed and denied)', calls, ITERATIONS, inbound(policy), {
    target: true,
    note: `${(deniedShare * 100).toFixed(1)}% denied; ${meanApplying(calls).toFixed(1)} rules apply per call on average`,
  }),
);
lines.push(
  await time('inbound tools/call, allowed only', allowedCalls, ITERATIONS, inbound(policy), {
    target: true,
    note: `${meanApplying(allowedCalls).toFixed(1)} rules apply per call on average`,
  }),
);
lines.push(
  await time('inbound resources/read and prompts/get', others, ITERATIONS, inbound(policy), {
    target: true,
    note: `${meanApplying(others).toFixed(1)} rules apply on average`,
  }),
);
const outCtx = ctx();
lines.push(
  await time(
    'outbound tools/call result',
    results,
    ITERATIONS,
    (f) => policy.outbound(f, 'tools/call', outCtx),
    { target: true },
  ),
);
lines.push(
  await time(
    'outbound notifications/progress (an SSE event)',
    progresses,
    ITERATIONS,
    (f) => policy.outbound(f, undefined, outCtx),
    { target: true },
  ),
);
lines.push(
  await time(
    'outbound tools/list result, 200 tools, with the manifest',
    lists,
    LIST_ITERATIONS,
    (f) => policy.outbound(f, 'tools/list', outCtx),
    { note: `${shownTools} tools shown (${TOOLS - shownTools} not granted)` },
  ),
);
const tofuCtx = ctx();
lines.push(
  await time(
    'outbound tools/list result, 200 tools, trust on first use',
    lists,
    LIST_ITERATIONS,
    (f) => tofu.outbound(f, 'tools/list', tofuCtx),
    {
      note: 'no manifest: pins from the first list, poisoned descriptions checked (cached by pin)',
    },
  ),
);
// How the cost grows with the rules that apply: 100 rules each time, k of them on every call
// (the unscoped and every-call conditions above, in turn) and the rest on the other server only.
const everyCallConditions = rules
  .filter((r) => r.mode === 'enforce' && !r.servers && !r.targets && r.id.match(/^(global|call)-/))
  .map((r) => r.when);
for (const k of [0, 5, 10, 20]) {
  const scaled = rules.map((r, i) =>
    i < k
      ? {
          ...r,
          id: `k-${i}`,
          when: everyCallConditions[i % everyCallConditions.length] as string,
          servers: undefined,
          methods: undefined,
          targets: undefined,
        }
      : { ...r, id: `k-${i}`, servers: [OTHER_SERVER] },
  );
  const p = compilePolicy(
    {
      servers,
      tenants: {
        [TENANT]: { ...(tenants[TENANT] as NonNullable<typeof tenants>[string]), rules: scaled },
      },
    },
    new Map([[SERVER, { manifest, file: 'bench.json' }]]),
  );
  lines.push(
    await time(
      `inbound tools/call, allowed, ${k} of 100 rules apply`,
      allowedCalls,
      ITERATIONS,
      inbound(p),
      {
        note: k === 0 ? 'grants, the manifest and the argument schema only' : '',
      },
    ),
  );
}
const timer = await time('timer alone (two hrtime.bigint calls)', [0], ITERATIONS, () => undefined);

// ---- report ----------------------------------------------------------------------------------
const f2 = (x: number): string => x.toFixed(2);
const verdict = (l: Line): string =>
  l.target ? (l.p99 <= TARGET_P99_US ? 'yes' : '**no**') : 'not held to it';
const command = `npm run bench:policy${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
const section = [
  '## Policy evaluation per message, in process (`bench/policy.ts`)',
  '',
  `Written by \`bench/policy.ts\` on ${new Date().toISOString()}, one run.`,
  '',
  '```sh',
  command,
  '```',
  '',
  `Machine: ${os.cpus()[0]?.model ?? '?'} x${os.availableParallelism()}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, node ${process.version}; one process, nothing pinned, nothing else of this bench running.`,
  '',
  `Policy: one tenant with ${rules.length} rules (${rules.filter((r) => r.mode === 'shadow').length} shadow), a manifest of ${manifest.tools.length} tools on the server, compiled in ${compileMs.toFixed(0)} ms (bench/policy-fixture.ts says which rules). ${ITERATIONS.toLocaleString('en-US')} timed calls per line (${LIST_ITERATIONS.toLocaleString('en-US')} for tools/list) after a warm-up of ${WARMUP_SHARE * 100}%, over ${POOL} distinct messages (16 lists), each call timed alone; shadow hits during the check pass: ${shadowHits} over ${calls.length + others.length} requests. Target: p99 ≤ ${TARGET_P99_US} µs per message.`,
  '',
  '| message | p50 µs | p99 µs | p99.9 µs | max µs | mean µs | p99 ≤ 20 µs | other CPU % | |',
  '| --- | ---: | ---: | ---: | ---: | ---: | :---: | ---: | --- |',
  ...[...lines, timer].map(
    (l) =>
      `| ${l.name} | ${f2(l.p50)} | ${f2(l.p99)} | ${f2(l.p999)} | ${f2(l.max)} | ${f2(l.mean)} | ${l === timer ? '' : verdict(l)} | ${(l.otherCpuPct ?? 0).toFixed(0)} | ${l.note ?? ''} |`,
  ),
  '',
  'The timer row is what every figure above includes for the timing itself. p99.9 and max are set by garbage collection and the scheduler: the process shares the machine\'s cores with everything else on it, and "other CPU %" is what other processes took while a line ran (in % of one core; each line waits up to 15 s for them to be under 20% first).',
  '',
].join('\n');

console.log(section);
writeResultsSection(outFile, 'policy', section, 'Policy benchmarks');
console.log(`wrote ${path.relative(repoDir, outFile)}`);
