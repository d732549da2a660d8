// Node-side load generators, run as a child process pinned beside wrk:
//
//   rate  open-loop constant-rate tools/call (wrk2-style, since wrk2 is not in Debian): request
//         i is due at start + i/rate whatever happened to earlier ones, and its latency is
//         counted from that due time, so a stalled target cannot hide behind a slow sender.
//   sse   a few hundred `progress` streams: time to the first event, time to the end of the
//         stream, and whether the first event arrived while the upstream was still streaming.
//
// Usage: node load.js '<json options>'; prints one JSON result line on stdout.
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { TOOL_ECHO, TOOL_PROGRESS, takeSseEvents, toolCall, withHeaders } from './mcp.js';

const RATE_MAX_CONNECTIONS = 256;
const REQUEST_TIMEOUT_MS = 10_000;
/** Time allowed after the last due request for the stragglers, before they count as timeouts. */
const DRAIN_TIMEOUT_MS = 10_000;
/** Streams run (in parallel) before recording, to open the pool's connections and warm the path. */
const SSE_WARMUP_STREAMS = 16;

export interface RateOptions {
  readonly mode: 'rate';
  readonly url: string;
  /** Added to every request: the target's credentials. */
  readonly headers?: Record<string, string>;
  readonly rate: number;
  readonly durationS: number;
  readonly warmupS: number;
}

export interface SseOptions {
  readonly mode: 'sse';
  readonly url: string;
  readonly headers?: Record<string, string>;
  readonly streams: number;
  readonly concurrency: number;
  readonly sseEvents: number;
  readonly sseDelayMs: number;
}

export interface Percentiles {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

export interface RateResult {
  readonly sent: number;
  readonly ok: number;
  readonly errors: number;
  readonly achievedRate: number;
  readonly latencyMs: Percentiles;
  readonly firstError?: string;
}

export interface SseResult {
  readonly streams: number;
  readonly ok: number;
  readonly errors: number;
  /** Streams whose first event arrived at least half an event delay before the stream ended. */
  readonly firstEventBeforeEnd: number;
  readonly minEventsPerStream: number;
  readonly expectedEventsPerStream: number;
  readonly ttfeMs: Percentiles;
  readonly streamMs: Percentiles;
  readonly firstError?: string;
}

export function percentiles(values: Float64Array | number[]): Percentiles {
  const sorted = Float64Array.from(values).sort();
  const at = (q: number): number =>
    sorted.length === 0
      ? NaN
      : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number);
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: at(1) };
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

async function constantRate(o: RateOptions): Promise<RateResult> {
  const url = new URL(o.url);
  const pool = new Pool(url.origin, {
    connections: RATE_MAX_CONNECTIONS,
    pipelining: 1,
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  });
  const req = withHeaders(toolCall(TOOL_ECHO), o.headers);
  const intervalMs = 1000 / o.rate;
  let firstError: string | undefined;

  async function phase(durationS: number): Promise<RateResult> {
    const total = Math.round(o.rate * durationS);
    const latencies = new Float64Array(total);
    let ok = 0;
    let errors = 0;
    let pending = 0;
    const fire = (due: number): void => {
      pending++;
      pool
        .request({ method: 'POST', path: url.pathname, headers: req.headers, body: req.body })
        .then(async ({ statusCode, body }) => {
          const text = await body.text();
          if (statusCode !== 200 || !text.includes('"result"')) {
            throw new Error(`HTTP ${statusCode}: ${text.slice(0, 200)}`);
          }
          latencies[ok++] = performance.now() - due;
        })
        .catch((err: unknown) => {
          errors++;
          firstError ??= describe(err);
        })
        .finally(() => pending--);
    };
    const start = performance.now();
    let sent = 0;
    while (sent < total) {
      const due = Math.min(total, Math.floor((performance.now() - start) / intervalMs) + 1);
      for (; sent < due; sent++) fire(start + sent * intervalMs);
      await sleep(1);
    }
    const sendEnd = performance.now();
    const drainDeadline = sendEnd + DRAIN_TIMEOUT_MS;
    while (pending > 0 && performance.now() < drainDeadline) await sleep(5);
    return {
      sent,
      ok,
      errors: errors + pending,
      achievedRate: (sent * 1000) / (sendEnd - start),
      latencyMs: percentiles(latencies.subarray(0, ok)),
    };
  }

  if (o.warmupS > 0) await phase(o.warmupS);
  firstError = undefined;
  const result = await phase(o.durationS);
  await pool.destroy();
  return firstError === undefined ? result : { ...result, firstError };
}

async function sseStreams(o: SseOptions): Promise<SseResult> {
  const url = new URL(o.url);
  const pool = new Pool(url.origin, {
    connections: o.concurrency,
    pipelining: 1,
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  });
  const req = withHeaders(toolCall(TOOL_PROGRESS), o.headers);
  const expectedEvents = o.sseEvents + 1;
  const ttfe: number[] = [];
  const streamMs: number[] = [];
  let ok = 0;
  let errors = 0;
  let early = 0;
  let minEvents = Infinity;
  let firstError: string | undefined;

  async function one(record: boolean): Promise<void> {
    const t0 = performance.now();
    try {
      const { statusCode, headers, body } = await pool.request({
        method: 'POST',
        path: url.pathname,
        headers: req.headers,
        body: req.body,
      });
      const type = String(headers['content-type'] ?? '');
      if (statusCode !== 200 || !type.startsWith('text/event-stream')) {
        const text = await body.text();
        throw new Error(`HTTP ${statusCode} ${type}: ${text.slice(0, 200)}`);
      }
      let buffer = '';
      let first: number | undefined;
      let events = 0;
      let last = '';
      body.setEncoding('utf8');
      for await (const chunk of body as AsyncIterable<string>) {
        const taken = takeSseEvents(buffer + chunk);
        buffer = taken.rest;
        for (const data of taken.events) {
          first ??= performance.now();
          events++;
          last = data;
        }
      }
      const end = performance.now();
      if (first === undefined || !last.includes('"result"')) {
        throw new Error(`stream ended after ${events} events without a result`);
      }
      if (!record) return;
      ok++;
      ttfe.push(first - t0);
      streamMs.push(end - t0);
      minEvents = Math.min(minEvents, events);
      if (first < end - o.sseDelayMs / 2) early++;
    } catch (err) {
      if (!record) throw err;
      errors++;
      firstError ??= describe(err);
    }
  }

  await Promise.all(Array.from({ length: SSE_WARMUP_STREAMS }, () => one(false)));
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < o.streams) {
      next++;
      await one(true);
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  await pool.destroy();
  const result: SseResult = {
    streams: o.streams,
    ok,
    errors,
    firstEventBeforeEnd: early,
    minEventsPerStream: minEvents === Infinity ? 0 : minEvents,
    expectedEventsPerStream: expectedEvents,
    ttfeMs: percentiles(ttfe),
    streamMs: percentiles(streamMs),
  };
  return firstError === undefined ? result : { ...result, firstError };
}

async function main(): Promise<void> {
  const arg = process.argv[2];
  if (arg === undefined) throw new Error("usage: load.js '<json options>'");
  const o = JSON.parse(arg) as RateOptions | SseOptions;
  const result = o.mode === 'rate' ? await constantRate(o) : await sseStreams(o);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

// Only when run as the child entry, not when run.ts imports the types and `percentiles`.
if (process.argv[1]?.endsWith('load.js') === true) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
