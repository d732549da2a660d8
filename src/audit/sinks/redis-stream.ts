/**
 * The `redis-stream` sink: one stream entry per record, appended with
 * `XADD <key> * r <line> c <chain> s <seq>`. `r` holds the line exactly as
 * sealed, so `audit verify` checks the stream like any other copy; `c` and
 * `s` let a reader find a record without parsing it. Entries older than
 * `retentionMs` are trimmed by id (`XTRIM MINID ~`), at open and every minute.
 *
 * Owns: the stream under `key` and its one connection. Durability: the
 * backlog is in memory only (no spool), so whatever Redis has not
 * acknowledged when the process dies is lost here; the gateway pairs this
 * sink with the `file` sink, which fsyncs, for a copy that survives a crash.
 *
 * Order and duplicates: each batch is one MULTI/EXEC, so Redis holds all of
 * an attempt or none of it. When an attempt fails after it may have reached
 * Redis (the reply was lost), the retry first looks in the stream for what
 * landed and sends only the rest. The one case left is a transaction still
 * queued on a dropped connection that Redis runs after the retry looked: a
 * duplicate, which `audit verify` reports as a repeated `seq` (never a gap).
 */
import { Redis } from 'ioredis';
import type { AuditRecord, AuditSink } from '../types.js';
import { BatchedSink, reportError, type QueuedRecord } from './batch-queue.js';
import { untilDeadline } from './timing.js';

export const DEFAULT_REDIS_STREAM_KEY = 'portcullis:audit';
export const DEFAULT_REDIS_STREAM_RETENTION_MS = 90 * 24 * 3_600_000;
/** How often entries past retention are trimmed. */
export const DEFAULT_REDIS_STREAM_TRIM_INTERVAL_MS = 60_000;
/** Bound on one reply; a batch is a transaction of up to `batchMaxRecords` XADDs, hence longer than the store's. */
export const DEFAULT_REDIS_STREAM_COMMAND_TIMEOUT_MS = 5_000;
const CONNECT_TIMEOUT_MS = 2_000;
const RECONNECT_STEP_MS = 100;
const RECONNECT_MAX_DELAY_MS = 2_000;
/** Entries read per XRANGE while looking for a batch whose reply was lost. */
const LOOKUP_PAGE_ENTRIES = 1_000;

export interface RedisStreamSinkOptions {
  name: string;
  /** `redis://` or `rediss://`. */
  url: string;
  key?: string;
  /** Entries older than this are trimmed (by the id Redis gave them; default 90 days). */
  retentionMs?: number;
  batchMaxRecords?: number;
  flushIntervalMs?: number;
  /** Records held in memory before the sink reports `full` (default 100,000). */
  queueMax?: number;
  commandTimeoutMs?: number;
  onError?: (err: Error) => void;
}

export class RedisStreamSink extends BatchedSink implements AuditSink {
  readonly kind = 'redis-stream' as const;
  private readonly key: string;
  private readonly retentionMs: number;
  private readonly commandTimeoutMs: number;
  private readonly client: Redis;
  private readonly trimTimer: NodeJS.Timeout;
  /** The newest entry known to be in the stream: where the search for a batch whose reply was lost begins. */
  private knownId: string | undefined;
  /** A batch failed after it may have reached Redis: the next attempt looks before it sends. */
  private maybeStored = false;

  /** Starts connecting at once; reconnects until closed. */
  constructor(private readonly options: RedisStreamSinkOptions) {
    super(options);
    this.key = options.key ?? DEFAULT_REDIS_STREAM_KEY;
    this.retentionMs = options.retentionMs ?? DEFAULT_REDIS_STREAM_RETENTION_MS;
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_REDIS_STREAM_COMMAND_TIMEOUT_MS;
    this.client = new Redis(options.url, {
      lazyConnect: true, // the error listener first, then connect
      // A batch sent while down fails now and is retried by the queue, which
      // keeps order; ioredis must not resend it behind the queue's back.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: this.commandTimeoutMs,
      connectTimeout: CONNECT_TIMEOUT_MS,
      retryStrategy: (times) => Math.min(times * RECONNECT_STEP_MS, RECONNECT_MAX_DELAY_MS),
      connectionName: 'portcullis-audit',
    });
    // Reported through the failed batch or trim instead; each reconnect attempt would repeat it.
    this.client.on('error', () => undefined);
    this.client.connect().catch(() => undefined);
    this.trimTimer = setInterval(
      () => void this.trim(),
      DEFAULT_REDIS_STREAM_TRIM_INTERVAL_MS,
    ).unref();
  }

  /**
   * The stream's last entry (whatever its chain), parsed from `r`; trims once.
   * Rejects when Redis cannot be reached in time; the sink still delivers
   * what it is given once Redis is back.
   */
  async open(): Promise<AuditRecord | undefined> {
    await this.connected();
    const [last] = await this.client.xrevrange(this.key, '+', '-', 'COUNT', 1);
    await this.trim();
    if (!last) return undefined;
    const [id, fields] = last;
    this.knownId ??= id;
    const line = field(fields, 'r');
    if (line === undefined) throw new Error(`${this.describe()}: entry ${id} has no "r" field`);
    return JSON.parse(line) as AuditRecord;
  }

  protected stopping(): void {
    clearInterval(this.trimTimer);
  }

  protected async release(deadline: number): Promise<void> {
    // QUIT lets replies in flight arrive; past the deadline the socket is just dropped.
    if (this.client.status === 'ready') await untilDeadline(this.client.quit(), deadline);
    this.client.disconnect();
  }

  protected async deliver(batch: readonly QueuedRecord[]): Promise<void> {
    let fresh = batch;
    if (this.maybeStored) {
      fresh = batch.slice(await this.storedPrefix(batch));
      this.maybeStored = false;
      if (fresh.length === 0) return;
    }
    const transaction = this.client.multi();
    for (const { record, line } of fresh) {
      transaction.xadd(this.key, '*', 'r', line, 'c', record.chain, 's', String(record.seq));
    }
    let lastId: unknown;
    try {
      const replies = await transaction.exec();
      if (!replies) throw new Error(`${this.describe()}: transaction discarded`);
      for (const [err] of replies) if (err) throw err;
      lastId = replies.at(-1)?.[1];
    } catch (err) {
      this.maybeStored = true;
      throw err;
    }
    if (typeof lastId === 'string') this.knownId = lastId;
  }

  /**
   * How many of `batch`'s first records the stream already holds. An earlier
   * attempt was a prefix of what is queued now and landed whole or not at
   * all, so its entries sit together after `knownId`.
   */
  private async storedPrefix(batch: readonly QueuedRecord[]): Promise<number> {
    let matched = 0;
    let start = this.knownId === undefined ? '-' : `(${this.knownId}`;
    for (;;) {
      const page = await this.client.xrange(this.key, start, '+', 'COUNT', LOOKUP_PAGE_ENTRIES);
      for (const [id, fields] of page) {
        const expected = batch[matched]?.record;
        if (
          expected &&
          field(fields, 'c') === expected.chain &&
          field(fields, 's') === String(expected.seq)
        ) {
          matched += 1;
          this.knownId = id;
          if (matched === batch.length) return matched;
        } else if (matched > 0) {
          return matched;
        }
      }
      const last = page.at(-1);
      if (!last || page.length < LOOKUP_PAGE_ENTRIES) return matched;
      start = `(${last[0]}`;
    }
  }

  /**
   * Stream ids carry the time Redis added the entry, so trimming by MINID is
   * trimming by age (against this host's clock: skew shifts retention by as
   * much). `~` lets Redis drop whole nodes only, which is cheap; up to one
   * node of entries (100 by default) may outlive the retention.
   */
  private async trim(): Promise<void> {
    // While down there is nothing to trim with; the next interval tries again.
    if (this.client.status !== 'ready') return;
    try {
      await this.client.xtrim(this.key, 'MINID', '~', Date.now() - this.retentionMs);
    } catch (err) {
      reportError(this.options.onError, err);
    }
  }

  /** Resolves once connected; rejects after the connect timeout and a command timeout. */
  private connected(): Promise<void> {
    if (this.client.status === 'ready') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onReady = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(new Error(`${this.describe()}: Redis not reachable`));
      }, CONNECT_TIMEOUT_MS + this.commandTimeoutMs);
      this.client.once('ready', onReady);
    });
  }

  /** Names the sink, never the URL: it may hold a password. */
  private describe(): string {
    return `audit sink ${this.name} (redis stream ${this.key})`;
  }
}

/** The value of `name` in an entry's flat [field, value, …] list. */
export function field(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}
