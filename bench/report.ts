// RESULTS.md: the machine, the exact command, absolute numbers per target, and ratios against
// each baseline, all from one run. Tables are padded the way prettier formats them, so the
// generated file passes `prettier --check` as written.
import type { IdleMethod } from './mcp.js';
import type { RateResult, SseResult } from './load.js';
import type { WrkResult } from './wrk.js';

export type TargetId = 'direct' | 'nginx' | 'node' | 'fastify' | 'portcullis' | 'portcullis-jwt';

export const TARGET_LABELS: Record<TargetId, string> = {
  direct: 'direct (origin)',
  nginx: 'nginx',
  node: 'Node floor',
  fastify: '@fastify/http-proxy',
  portcullis: 'portcullis',
  'portcullis-jwt': 'portcullis (JWT)',
};

export interface IdleResult {
  readonly method: IdleMethod;
  readonly requested: number;
  readonly opened: number;
  readonly failed: number;
  readonly dropped: number;
  /** RSS of the process that relays the streams (the origin itself for `direct`). */
  readonly rssBeforeKiB: number;
  readonly rssHeldKiB: number;
  readonly kibPerStream: number;
  readonly originKibPerStream: number;
  /** Upstream streams still open this long after every client left (0 = cancellation reached the origin). */
  readonly upstreamLeftAfterClose: number;
  readonly firstError?: string;
}

/** How disturbed a measurement was by processes outside the run. */
export interface Noise {
  /** CPU used meanwhile by processes this run did not start, in % of one core. */
  readonly foreignCpuPct: number;
  /** Attempts made; a noisy attempt is repeated and the quietest one kept. */
  readonly attempts: number;
}

export interface ThroughputResult extends WrkResult {
  /** CPU used by the relaying process during the measured run, in % of one core. */
  readonly relayCpuPct: number;
}

export interface TargetResult {
  readonly id: TargetId;
  readonly url?: string;
  readonly unavailable?: string;
  readonly idle?: IdleResult & Noise;
  readonly throughput?: ThroughputResult & Noise;
  readonly rate?: RateResult & Noise;
  readonly sse?: SseResult & Noise;
  /** Step name → error, for steps that failed while the target itself was up. */
  readonly errors: Record<string, string>;
}

export interface RunMeta {
  readonly date: string;
  readonly command: string;
  readonly nproc: number;
  readonly cpuModel: string;
  readonly memory: string;
  readonly kernel: string;
  readonly node: string;
  readonly nginx: string;
  readonly wrk: string;
  readonly portcullisBuild: string;
  readonly gitCommit: string;
  readonly pinning: string;
  readonly nginxWorkers: number;
  readonly settings: readonly string[];
  readonly notes: readonly string[];
}

function median(values: unknown[]): unknown {
  const first = values[0];
  if (typeof first === 'number') {
    const sorted = (values as number[]).filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
    if (sorted.length === 0) return NaN;
    const mid = sorted.length >> 1;
    return sorted.length % 2 === 1
      ? sorted[mid]
      : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  }
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(first)) {
      out[key] = median(
        values.map((v) => (v as Record<string, unknown>)[key]).filter((v) => v !== undefined),
      );
    }
    return out;
  }
  return first;
}

/** One target's rounds as one result: the median of every figure; errors kept per round. */
export function combineRounds(rounds: readonly TargetResult[]): TargetResult {
  const first = rounds[0];
  if (first === undefined) throw new Error('no rounds');
  if (rounds.length === 1) return first;
  const up = rounds.filter((r) => r.unavailable === undefined);
  if (up.length === 0) return first;
  const errors: Record<string, string> = {};
  rounds.forEach((r, i) => {
    if (r.unavailable !== undefined) errors[`round ${i + 1}`] = `unavailable: ${r.unavailable}`;
    for (const [step, err] of Object.entries(r.errors)) errors[`round ${i + 1} ${step}`] = err;
  });
  const pick = <K extends 'idle' | 'throughput' | 'rate' | 'sse'>(key: K): TargetResult[K] => {
    const values = up.map((r) => r[key]).filter((v) => v !== undefined);
    return values.length === 0 ? undefined : (median(values) as TargetResult[K]);
  };
  const combined: { -readonly [K in keyof TargetResult]: TargetResult[K] } = {
    id: first.id,
    errors,
  };
  if (up[0]?.url !== undefined) combined.url = up[0].url;
  // Every round's idle phase starts a fresh origin and relay, and direct goes first in it.
  const idle = pick('idle');
  const throughput = pick('throughput');
  const rate = pick('rate');
  const sse = pick('sse');
  if (idle !== undefined) combined.idle = idle;
  if (throughput !== undefined) combined.throughput = throughput;
  if (rate !== undefined) combined.rate = rate;
  if (sse !== undefined) combined.sse = sse;
  return combined;
}

type Align = 'left' | 'right';

function table(header: string[], rows: string[][], align: Align[]): string {
  const widths = header.map((h, i) =>
    Math.max(3, h.length, ...rows.map((r) => (r[i] ?? '').length)),
  );
  const cell = (text: string, i: number): string =>
    align[i] === 'right' ? text.padStart(widths[i] as number) : text.padEnd(widths[i] as number);
  const line = (cells: string[]): string => `| ${cells.map(cell).join(' | ')} |`;
  const rule = widths.map((w, i) =>
    align[i] === 'right' ? `${'-'.repeat(w - 1)}:` : '-'.repeat(w),
  );
  return [line(header), `| ${rule.join(' | ')} |`, ...rows.map(line)].join('\n');
}

const ms = (v: number | undefined): string =>
  v === undefined || Number.isNaN(v) ? 'n/a' : v.toFixed(2);
const signedMs = (v: number | undefined): string =>
  v === undefined || Number.isNaN(v) ? 'n/a' : `${v >= 0 ? '+' : ''}${v.toFixed(2)}`;
const int = (v: number | undefined): string =>
  v === undefined || Number.isNaN(v) ? 'n/a' : Math.round(v).toString();
const mib = (kib: number): string => (kib / 1024).toFixed(1);

function ratio(value: number | undefined, base: number | undefined): string {
  if (value === undefined || base === undefined || Number.isNaN(value) || Number.isNaN(base)) {
    return 'n/a';
  }
  // An added cost at or below zero is noise around the direct figure: no meaningful ratio.
  if (base <= 0 || value <= 0) return 'n/a';
  return `${(value / base).toFixed(2)}x`;
}

/** Foreign CPU during the measurement, and how many attempts it took when more than one. */
function noise(n: Noise | undefined): string {
  if (n === undefined) return 'n/a';
  const pct = Math.round(n.foreignCpuPct).toString();
  const attempts = Math.round(n.attempts);
  return attempts > 1 ? `${pct} (${attempts} tries)` : pct;
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\s+/g, ' ').trim();
}

interface Derived {
  readonly rps?: number;
  readonly p99c32?: number;
  readonly addedP50?: number;
  readonly addedP99?: number;
  readonly addedTtfe?: number;
  readonly kibPerStream?: number;
}

function derive(r: TargetResult, direct: TargetResult | undefined): Derived {
  const sub = (a: number | undefined, b: number | undefined): number | undefined =>
    a === undefined || b === undefined ? undefined : a - b;
  return {
    rps: r.throughput?.requestsPerSec,
    p99c32: r.throughput?.p99Ms,
    addedP50: sub(r.rate?.latencyMs.p50, direct?.rate?.latencyMs.p50),
    addedP99: sub(r.rate?.latencyMs.p99, direct?.rate?.latencyMs.p99),
    addedTtfe: sub(r.sse?.ttfeMs.p50, direct?.sse?.ttfeMs.p50),
    kibPerStream: r.idle !== undefined && r.idle.opened > 0 ? r.idle.kibPerStream : undefined,
  };
}

export function renderResults(meta: RunMeta, results: readonly TargetResult[]): string {
  const direct = results.find((r) => r.id === 'direct');
  const up = results.filter((r) => r.unavailable === undefined);
  const label = (r: TargetResult): string => TARGET_LABELS[r.id];
  const out: string[] = [];

  out.push(
    '# Benchmark results',
    '',
    `Written by \`bench/run.ts\` on ${meta.date}. Every number below comes from this one run, on the same origin, one target after the other. See \`bench/README.md\` for what each target is.`,
    '',
    '```sh',
    meta.command,
    '```',
    '',
    table(
      ['machine', ''],
      [
        ['nproc', String(meta.nproc)],
        ['CPU', meta.cpuModel],
        ['memory', meta.memory],
        ['kernel', meta.kernel],
        ['node', meta.node],
        ['nginx', `${meta.nginx} (worker_processes ${meta.nginxWorkers})`],
        ['wrk', meta.wrk],
        ['portcullis', meta.portcullisBuild],
        ['git', meta.gitCommit],
        ['pinning', meta.pinning],
      ].map((row) => row.map(escapeCell)),
      ['left', 'left'],
    ),
    '',
    'Settings:',
    '',
    ...meta.settings.map((s) => `- ${s}`),
    '',
  );

  const unavailable = results.filter((r) => r.unavailable !== undefined);
  if (unavailable.length > 0) {
    out.push('Unavailable targets:', '');
    for (const r of unavailable) out.push(`- ${label(r)}: ${escapeCell(r.unavailable ?? '')}`);
    out.push('');
  }

  out.push(
    '## tools/call throughput, closed loop (wrk)',
    '',
    table(
      [
        'target',
        'req/s',
        'p50 ms',
        'p90 ms',
        'p99 ms',
        'relay CPU %',
        'non-2xx',
        'socket errors',
        'other CPU %',
      ],
      up.map((r) => {
        const t = r.throughput;
        return [
          label(r),
          int(t?.requestsPerSec),
          ms(t?.p50Ms),
          ms(t?.p90Ms),
          ms(t?.p99Ms),
          int(t?.relayCpuPct),
          int(t?.non2xx),
          int(t?.socketErrors),
          noise(t),
        ];
      }),
      ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    'relay CPU % is the CPU time of the relaying process (the origin for direct) over the run, in % of one core. other CPU % (in every table) is the CPU that processes outside this run took meanwhile, in % of one core (of 200 on 2 cores); a noisy throughput or fixed-rate measurement is repeated and the quietest attempt kept.',
    '',
    '## Added latency at a fixed rate, open loop (bench/load.ts)',
    '',
    table(
      [
        'target',
        'achieved/s',
        'p50 ms',
        'p99 ms',
        'p99.9 ms',
        'max ms',
        'added p50',
        'added p99',
        'errors',
        'other CPU %',
      ],
      up.map((r) => {
        const l = r.rate;
        const d = derive(r, direct);
        return [
          label(r),
          int(l?.achievedRate),
          ms(l?.latencyMs.p50),
          ms(l?.latencyMs.p99),
          ms(l?.latencyMs.p999),
          ms(l?.latencyMs.max),
          signedMs(d.addedP50),
          signedMs(d.addedP99),
          int(l?.errors),
          noise(l),
        ];
      }),
      ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    'Latency is counted from the moment each request was due, not from when it was sent. added = target minus direct.',
    '',
    '## SSE: progress streams (bench/load.ts)',
    '',
    table(
      [
        'target',
        'streams ok',
        'first event before upstream end',
        'events/stream',
        'TTFE p50 ms',
        'TTFE p99 ms',
        'added TTFE p50',
        'stream p50 ms',
        'other CPU %',
      ],
      up.map((r) => {
        const s = r.sse;
        const d = derive(r, direct);
        return [
          label(r),
          s === undefined ? 'n/a' : `${s.ok}/${s.streams}`,
          s === undefined ? 'n/a' : `${s.firstEventBeforeEnd}/${s.ok}`,
          s === undefined ? 'n/a' : `${s.minEventsPerStream}/${s.expectedEventsPerStream}`,
          ms(s?.ttfeMs.p50),
          ms(s?.ttfeMs.p99),
          signedMs(d.addedTtfe),
          ms(s?.streamMs.p50),
          noise(s),
        ];
      }),
      ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    'first event before upstream end: streams whose first event reached the client at least half an event delay before the stream ended, i.e. while the origin was still streaming; a buffering relay scores 0. events/stream is the fewest events any stream delivered over the number the origin sent.',
    '',
    '## Concurrent idle SSE streams (bench/idle.ts)',
    '',
    table(
      [
        'target',
        'method',
        'held',
        'RSS before MiB',
        'RSS held MiB',
        'KiB/stream',
        'origin KiB/stream',
        'dropped',
        'upstream left open',
        'other CPU %',
      ],
      up.map((r) => {
        const i = r.idle;
        return [
          label(r),
          i?.method ?? 'n/a',
          i === undefined ? 'n/a' : `${i.opened}/${i.requested}`,
          i === undefined ? 'n/a' : mib(i.rssBeforeKiB),
          i === undefined ? 'n/a' : mib(i.rssHeldKiB),
          i === undefined ? 'n/a' : i.kibPerStream.toFixed(1),
          i === undefined ? 'n/a' : i.originKibPerStream.toFixed(1),
          int(i?.dropped),
          int(i?.upstreamLeftAfterClose),
          noise(i),
        ];
      }),
      ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    'RSS is the relaying process (nginx: master plus workers; direct: the origin). KiB/stream = (RSS held - RSS before) / streams held. origin KiB/stream is only meaningful for the first target of each idle phase (direct), since the origin reuses memory freed by earlier targets. upstream left open counts origin streams still open after every client socket was closed: 0 means the disconnect reached the origin as a cancellation.',
    '',
    '## Ratios',
    '',
    'req/s: target / baseline (above 1 is faster). p99 c32, added p50/p99 at the fixed rate, added TTFE and KiB/stream: target / baseline (above 1 costs more). n/a where the baseline figure is zero, negative or missing.',
    '',
  );

  // vs portcullis: what authentication costs (the JWT target against the same gateway without it).
  const baselines: TargetId[] = ['nginx', 'node', 'fastify', 'portcullis'];
  for (const b of baselines) {
    const base = up.find((r) => r.id === b);
    if (base === undefined) continue;
    const bd = derive(base, direct);
    out.push(
      `### vs ${TARGET_LABELS[b]}`,
      '',
      table(
        ['target', 'req/s', 'p99 c32', 'added p50', 'added p99', 'added TTFE', 'KiB/stream'],
        up
          .filter((r) => r.id !== 'direct' && r.id !== b)
          .map((r) => {
            const d = derive(r, direct);
            return [
              label(r),
              ratio(d.rps, bd.rps),
              ratio(d.p99c32, bd.p99c32),
              ratio(d.addedP50, bd.addedP50),
              ratio(d.addedP99, bd.addedP99),
              ratio(d.addedTtfe, bd.addedTtfe),
              ratio(d.kibPerStream, bd.kibPerStream),
            ];
          }),
        ['left', 'right', 'right', 'right', 'right', 'right', 'right'],
      ),
      '',
    );
  }

  const failures = up.flatMap((r) =>
    Object.entries(r.errors).map(([step, err]) => `- ${label(r)}, ${step}: ${escapeCell(err)}`),
  );
  if (failures.length > 0) out.push('## Errors during the run', '', ...failures, '');
  if (meta.notes.length > 0) out.push('## Notes', '', ...meta.notes.map((n) => `- ${n}`), '');
  return `${out.join('\n').trimEnd()}\n`;
}
