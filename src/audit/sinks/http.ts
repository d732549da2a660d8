/**
 * The `http` audit sink: ships records to a SIEM's collector (Splunk HEC,
 * Elasticsearch `_bulk`, or any endpoint that takes a JSON array) through an
 * on-disk write-ahead spool, so a collector outage costs latency, never
 * records.
 *
 * In order:
 * 1. `write` appends the record's line to the spool and returns; nothing is
 *    sent from the caller's stack.
 * 2. One shipper reads the oldest durable batch from the spool, POSTs it, and
 *    acks it only on a 2xx that the format accepts (Elastic: no item failed).
 *    A batch goes once `batchMaxRecords` or `batchMaxBytes` are waiting, once
 *    `flushIntervalMs` has passed since the shipper found a record waiting,
 *    or at once while a `flush` is pending.
 * 3. A failed attempt (network error, timeout, non-2xx, failed items) is
 *    counted, reported to `onError`, and the same batch is sent again after
 *    an exponential backoff with jitter. A 4xx other than 408/429 means the
 *    collector refuses the batch as sent (token, index, format); it is retried
 *    all the same, because dropping audit is worse than waiting for an
 *    operator, and its error code says so.
 * 4. `full` is the back-pressure: the gateway refuses new requests while it
 *    is true, so the bound is never kept by dropping. It is also true while
 *    the spool cannot write: records that are only in memory are not audited
 *    yet (fail closed).
 *
 * Delivery is at least once: a batch the collector took but whose answer was
 * lost (timeout, close, crash, a failed ack) is sent again. An Elastic batch
 * with some failed items is sent again whole, so its other documents arrive
 * twice. Records carry `chain` and `seq`, by which a consumer drops the copy.
 */
import { Agent, request } from 'undici';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AuditRecord, AuditSink, SinkStats } from '../types.js';
import {
  DEFAULT_SPOOL_MAX_BYTES,
  DEFAULT_SPOOL_SEGMENT_MAX_BYTES,
  Spool,
  type SpoolBatch,
} from '../spool.js';
import { readBounded } from '../../upstream/bounded-read.js';

export const DEFAULT_HTTP_BATCH_MAX_RECORDS = 500;
export const DEFAULT_HTTP_BATCH_MAX_BYTES = 1024 * 1024;
export const DEFAULT_HTTP_FLUSH_INTERVAL_MS = 1_000;
export const DEFAULT_HTTP_TIMEOUT_MS = 10_000;
export const DEFAULT_HTTP_BACKOFF_INITIAL_MS = 250;
export const DEFAULT_HTTP_BACKOFF_MAX_MS = 30_000;
export const DEFAULT_HTTP_QUEUE_MAX_RECORDS = 100_000;
/** Idle keep-alive sockets to the collector are closed after this long. */
const KEEP_ALIVE_TIMEOUT_MS = 10_000;
/** How much of a collector's error body goes into an error message. */
const ERROR_BODY_CHARS = 200;
/**
 * The collector's answer is read whole (an Elasticsearch `_bulk` answer says
 * per item whether it was taken) up to this size; a larger one fails the POST,
 * which is sent again.
 */
export const MAX_ANSWER_BYTES = 16 * 1024 * 1024;
const SPLUNK_SOURCETYPE = 'portcullis:audit';

export type HttpSinkFormat = 'splunk-hec' | 'elastic-bulk' | 'json';

export interface HttpSinkOptions {
  readonly name: string;
  /** The collector's endpoint, e.g. `https://splunk:8088/services/collector/event` or `…/_bulk`. */
  readonly url: string;
  readonly format: HttpSinkFormat;
  /** Sent with every POST, e.g. `{ authorization: 'Splunk <token>' }`; content-type is the format's. */
  readonly headers?: Readonly<Record<string, string>>;
  readonly spoolDir: string;
  /** Bound of the spool (default 1 GiB); with overflow `spool`, `full` past it. */
  readonly spoolMaxBytes?: number;
  /** Size at which the spool starts a new segment file (default 8 MiB). */
  readonly spoolSegmentMaxBytes?: number;
  readonly batchMaxRecords?: number;
  readonly batchMaxBytes?: number;
  readonly flushIntervalMs?: number;
  /** Bound on one POST, from sending to the end of the response body. */
  readonly timeoutMs?: number;
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number };
  /**
   * `block`: `full` while more than `queueMax` records are undelivered, so an
   * outage shows quickly. `spool` (the default): the spool rides the outage
   * out, `full` only past `spoolMaxBytes`.
   */
  readonly overflow?: 'block' | 'spool';
  readonly queueMax?: number;
  /** Each failed attempt (delivery or spool write); `attempt` counts consecutive failures. */
  readonly onError?: (err: Error, attempt: number) => void;
}

export type HttpSinkErrorCode =
  /** No answer: connection refused or reset, DNS, TLS. */
  | 'AUDIT_HTTP_UNREACHABLE'
  /** No full answer within `timeoutMs`. */
  | 'AUDIT_HTTP_TIMEOUT'
  /** 5xx, 408 or 429: the collector is down or busy; it should take the batch later. */
  | 'AUDIT_HTTP_UNAVAILABLE'
  /** Any other non-2xx: the collector refuses the batch as sent (check token, URL, format). */
  | 'AUDIT_HTTP_REFUSED'
  /** Elastic answered 2xx but failed documents (`"errors":true`), or its answer was unreadable. */
  | 'AUDIT_HTTP_ITEMS_FAILED'
  /** `write` before `open` or after `close`. */
  | 'AUDIT_HTTP_NOT_OPEN';

/** Every error the sink reports or throws; callers `switch (err.code)`. */
export class HttpSinkError extends Error {
  constructor(
    readonly code: HttpSinkErrorCode,
    message: string,
    /** The collector's HTTP status, when it answered. */
    readonly status?: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'HttpSinkError';
  }
}

/** How a batch of record lines is put on the wire for one kind of collector. */
interface Format {
  readonly contentType: string;
  /** The request body; the record lines go in as they are, never re-serialized. */
  body(lines: readonly string[]): string;
  /** What went wrong, if a 2xx answer still reports a failure. */
  failure?(answer: string): string | undefined;
}

const FORMATS: Record<HttpSinkFormat, Format> = {
  json: {
    contentType: 'application/json',
    body: (lines) => `[${lines.join(',')}]`,
  },
  // Splunk HEC's /services/collector/event takes events one after another in one body.
  'splunk-hec': {
    contentType: 'application/json',
    body: (lines) => lines.map(hecEvent).join('\n'),
  },
  // `create`, not `index`: a data stream accepts only `create`.
  'elastic-bulk': {
    contentType: 'application/x-ndjson',
    body: (lines) => lines.map((line) => `{"create":{}}\n${line}\n`).join(''),
    failure: bulkFailure,
  },
};

export class HttpSink implements AuditSink {
  readonly name: string;
  readonly kind = 'http' as const;
  private readonly url: URL;
  /** The endpoint as errors name it: no query string, which may hold a token. */
  private readonly target: string;
  private readonly format: Format;
  private readonly headers: Record<string, string>;
  private readonly agent: Agent;
  private readonly batchMaxRecords: number;
  private readonly batchMaxBytes: number;
  private readonly flushIntervalMs: number;
  private readonly timeoutMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly queueMax: number;
  private spool: Spool | undefined;
  private shipping: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  /** Aborted by `close`: ends the shipper's waits and its request. */
  private readonly stop = new AbortController();
  private inflight: AbortController | undefined;
  /** Ends the shipper's current nap (new durable records, a flush, close). */
  private wakeUp: (() => void) | undefined;
  private readonly flushes = new Set<() => void>();
  private written = 0;
  private failed = 0;

  constructor(private readonly options: HttpSinkOptions) {
    this.name = options.name;
    this.url = new URL(options.url);
    if (this.url.protocol !== 'http:' && this.url.protocol !== 'https:') {
      throw new TypeError(`audit sink '${options.name}': url must be http or https`);
    }
    this.target = `${this.url.origin}${this.url.pathname}`;
    this.format = FORMATS[options.format];
    this.headers = {};
    for (const [name, value] of Object.entries(options.headers ?? {})) {
      this.headers[name.toLowerCase()] = value;
    }
    this.headers['content-type'] = this.format.contentType;
    this.agent = new Agent({ keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS });
    this.batchMaxRecords = options.batchMaxRecords ?? DEFAULT_HTTP_BATCH_MAX_RECORDS;
    this.batchMaxBytes = options.batchMaxBytes ?? DEFAULT_HTTP_BATCH_MAX_BYTES;
    this.flushIntervalMs = options.flushIntervalMs ?? DEFAULT_HTTP_FLUSH_INTERVAL_MS;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS;
    this.backoffInitialMs = options.backoff?.initialMs ?? DEFAULT_HTTP_BACKOFF_INITIAL_MS;
    this.backoffMaxMs = options.backoff?.maxMs ?? DEFAULT_HTTP_BACKOFF_MAX_MS;
    this.queueMax = options.queueMax ?? DEFAULT_HTTP_QUEUE_MAX_RECORDS;
  }

  /** Opens the spool (what a previous run left in it is shipped first) and starts the shipper. */
  async open(): Promise<AuditRecord | undefined> {
    if (this.spool || this.closing) {
      throw new Error(`audit sink '${this.name}' opens once, before any close`);
    }
    this.spool = await Spool.open({
      dir: this.options.spoolDir,
      maxBytes: this.options.spoolMaxBytes ?? DEFAULT_SPOOL_MAX_BYTES,
      segmentMaxBytes: this.options.spoolSegmentMaxBytes ?? DEFAULT_SPOOL_SEGMENT_MAX_BYTES,
      onDurable: () => this.wakeUp?.(),
      onWriteError: (err, attempt) => this.report(err, attempt),
    });
    this.shipping = this.ship(this.spool);
    // A collector cannot tell the chain's last record: the chain continues from another sink.
    return undefined;
  }

  write(_record: AuditRecord, line: string): void {
    if (!this.spool || this.closing) {
      throw new HttpSinkError('AUDIT_HTTP_NOT_OPEN', `audit sink '${this.name}' is not open`);
    }
    // The spool's promise is not awaited: the record is held from here on, and
    // `full` (not this call) is how the sink pushes back.
    void this.spool.append([line]);
  }

  get full(): boolean {
    const spool = this.spool;
    if (!spool) return false;
    if (spool.failing) return true;
    return this.options.overflow === 'block' ? spool.count > this.queueMax : spool.full;
  }

  /** Resolves once every record written so far is acknowledged, or at `deadline`. */
  flush(deadline: number): Promise<void> {
    if (!this.spool || this.spool.count === 0 || Date.now() >= deadline) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.flushes.delete(done);
        resolve();
      };
      const timer = setTimeout(done, deadline - Date.now());
      timer.unref();
      this.flushes.add(done);
      this.wakeUp?.();
    });
  }

  /**
   * Flushes until `deadline`, then stops shipping (aborting a POST in
   * flight, whose batch is then sent again by the next start) and closes the
   * spool: what is not acknowledged stays in it.
   */
  close(deadline: number): Promise<void> {
    this.closing ??= (async () => {
      const spool = this.spool;
      if (spool) {
        await this.flush(deadline);
        this.stop.abort();
        this.wakeUp?.();
        this.inflight?.abort();
        await this.shipping;
        await spool.close();
      }
      await this.agent.close();
    })();
    return this.closing;
  }

  stats(): SinkStats {
    return {
      written: this.written,
      failed: this.failed,
      queued: this.spool?.count ?? 0,
      spoolBytes: this.spool?.bytes ?? 0,
    };
  }

  /** The shipper: one batch at a time, in spool order, until close. */
  private async ship(spool: Spool): Promise<void> {
    let batch: SpoolBatch | undefined;
    let attempt = 0;
    while (!this.stop.signal.aborted) {
      try {
        batch ??= await this.nextBatch(spool);
        if (batch === undefined) return;
        await this.post(batch);
        await spool.ack(batch);
        this.written += batch.lines.length;
        batch = undefined;
        attempt = 0;
        if (spool.count === 0) for (const done of [...this.flushes]) done();
      } catch (err) {
        if (this.stop.signal.aborted) return;
        attempt += 1;
        if (err instanceof HttpSinkError) {
          this.failed += batch?.lines.length ?? 0;
        } else {
          // The spool failed to read or ack: read the batch again from the cursor
          // (sent again if it was delivered: at least once).
          batch = undefined;
        }
        this.report(err as Error, attempt);
        await sleep(this.backoff(attempt), undefined, {
          signal: this.stop.signal,
          ref: false,
        }).catch(() => {});
      }
    }
  }

  /** Tells `onError`; a callback that throws must not stop delivery. */
  private report(err: Error, attempt: number): void {
    try {
      this.options.onError?.(err, attempt);
    } catch {
      // The failure stays counted in `failed`, and the batch is retried regardless.
    }
  }

  /** Waits until a batch is due (rule 2); undefined once closing. */
  private async nextBatch(spool: Spool): Promise<SpoolBatch | undefined> {
    let due: number | undefined;
    for (;;) {
      if (this.stop.signal.aborted) return undefined;
      if (spool.readable > 0) {
        due ??= Date.now() + this.flushIntervalMs;
        const enough =
          spool.readable >= this.batchMaxRecords || spool.readableBytes >= this.batchMaxBytes;
        if (enough || this.flushes.size > 0 || Date.now() >= due) {
          return spool.read(this.batchMaxRecords, this.batchMaxBytes);
        }
      }
      await this.nap(due === undefined ? undefined : due - Date.now());
    }
  }

  /** Sleeps until woken, or for `ms` if given. */
  private nap(ms: number | undefined): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        this.wakeUp = undefined;
        resolve();
      };
      if (ms !== undefined) {
        timer = setTimeout(done, Math.max(0, ms));
        timer.unref();
      }
      this.wakeUp = done;
    });
  }

  /** Exponential with jitter: between half and all of initial·2^(attempt-1), capped. */
  private backoff(attempt: number): number {
    const ceiling = Math.min(
      this.backoffMaxMs,
      this.backoffInitialMs * 2 ** Math.min(attempt - 1, 30),
    );
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  /** One POST of a batch; resolves only if the collector took all of it. */
  private async post(batch: SpoolBatch): Promise<void> {
    const abort = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this.timeoutMs);
    timer.unref();
    this.inflight = abort;
    try {
      const response = await request(this.url, {
        dispatcher: this.agent,
        method: 'POST',
        headers: this.headers,
        body: this.format.body(batch.lines),
        signal: abort.signal,
      });
      const answer = await readBounded(response.body, MAX_ANSWER_BYTES);
      const status = response.statusCode;
      if (status < 200 || status > 299) throw this.statusError(status, answer);
      const failure = this.format.failure?.(answer);
      if (failure !== undefined) {
        throw new HttpSinkError(
          'AUDIT_HTTP_ITEMS_FAILED',
          `audit sink '${this.name}': ${this.target} took the batch but ${failure}; sending it again`,
          status,
        );
      }
    } catch (err) {
      if (err instanceof HttpSinkError) throw err;
      if (timedOut) {
        throw new HttpSinkError(
          'AUDIT_HTTP_TIMEOUT',
          `audit sink '${this.name}': ${this.target} did not answer within ${this.timeoutMs} ms`,
        );
      }
      throw new HttpSinkError(
        'AUDIT_HTTP_UNREACHABLE',
        `audit sink '${this.name}': POST ${this.target} failed: ${describe(err)}`,
        undefined,
        { cause: err },
      );
    } finally {
      clearTimeout(timer);
      this.inflight = undefined;
    }
  }

  private statusError(status: number, answer: string): HttpSinkError {
    const said = answer.slice(0, ERROR_BODY_CHARS);
    if (status >= 500 || status === 408 || status === 429) {
      return new HttpSinkError(
        'AUDIT_HTTP_UNAVAILABLE',
        `audit sink '${this.name}': ${this.target} answered ${status}; retrying: ${said}`,
        status,
      );
    }
    return new HttpSinkError(
      'AUDIT_HTTP_REFUSED',
      `audit sink '${this.name}': ${this.target} refused the batch with ${status}` +
        ` (check the sink's url, headers and format); retrying until it takes it: ${said}`,
      status,
    );
  }
}

/** One HEC event: the record's own time (epoch seconds, ms fraction), the record as `event`. */
function hecEvent(line: string): string {
  const seconds = epochSeconds(line);
  // Without a readable time, HEC stamps the event on arrival.
  const time = seconds === undefined ? '' : `"time":${seconds},`;
  return `{${time}"sourcetype":"${SPLUNK_SOURCETYPE}","event":${line}}`;
}

function epochSeconds(line: string): string | undefined {
  let time: unknown;
  try {
    time = (JSON.parse(line) as { time?: unknown }).time;
  } catch {
    return undefined;
  }
  const ms = typeof time === 'string' ? Date.parse(time) : NaN;
  return Number.isFinite(ms) ? (ms / 1000).toFixed(3) : undefined;
}

/**
 * Elastic answers `_bulk` with 200 even when documents failed: `"errors":true`
 * and a status per item. Any failure fails the batch (sent again whole).
 */
function bulkFailure(answer: string): string | undefined {
  let parsed: { errors?: unknown; items?: unknown } | undefined;
  try {
    parsed = JSON.parse(answer) as typeof parsed;
  } catch {
    parsed = undefined;
  }
  if (parsed?.errors === false) return undefined;
  if (parsed?.errors !== true) return 'its answer has no "errors" flag';
  const items = Array.isArray(parsed.items) ? (parsed.items as unknown[]) : [];
  const failures = items
    .map((item) => Object.values(item ?? {})[0] as { status?: number; error?: unknown } | undefined)
    .filter((result) => result?.error !== undefined || (result?.status ?? 0) > 299);
  const first = failures[0]?.error as { type?: unknown; reason?: unknown } | undefined;
  return (
    `failed ${failures.length} of its ${items.length} documents` +
    (first ? ` (first: ${String(first.type)}: ${String(first.reason)})` : '')
  );
}

/** An undici error as an operator reads it: its message and the errno code beneath it. */
function describe(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  let cause: unknown = err;
  while (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && code.startsWith('E') && !code.startsWith('ERR_')) {
      return `${message} (${code})`;
    }
    cause = cause.cause;
  }
  return message;
}
