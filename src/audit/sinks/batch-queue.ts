/**
 * The delivery loop of the sinks that keep their backlog in memory
 * (`redis-stream`, `postgres`): records wait in arrival order and leave in
 * batches, one batch in flight at a time. A batch that fails is retried, with
 * backoff, before anything behind it, so the destination receives the chain
 * in order and nothing is dropped: a record leaves the queue only once the
 * destination has acknowledged it.
 *
 * Owns: the queue, the retry schedule and the counts behind `SinkStats`. The
 * queue has no hard bound; `full` tells the gateway to stop admitting
 * requests while it holds more than `queueMax`.
 */
import type { AuditRecord, SinkStats } from '../types.js';

/** Records per batch, for sinks whose destination takes many records in one round trip. */
export const DEFAULT_BATCH_MAX_RECORDS = 500;
/** How long a record may wait for others to share its batch. */
export const DEFAULT_FLUSH_INTERVAL_MS = 200;
/** Records held before the sink reports `full`. */
export const DEFAULT_QUEUE_MAX_RECORDS = 100_000;
/** Wait before the first retry of a failed batch; doubled on each failure after it. */
export const RETRY_INITIAL_DELAY_MS = 100;
/**
 * Longest wait between retries. Short on purpose: a retry against a
 * destination that is down costs one refused connection, and a backlog that
 * waits longer than it must keeps the gateway refusing requests.
 */
export const RETRY_MAX_DELAY_MS = 2_000;
/** Consumed entries are cut from the array past this many, so a long backlog is not copied per batch. */
const COMPACT_AFTER_ENTRIES = 4_096;

export interface QueuedRecord {
  readonly record: AuditRecord;
  readonly line: string;
}

export interface BatchQueueOptions {
  batchMaxRecords: number;
  /** How long a record may wait for others to share its batch. */
  flushIntervalMs: number;
  queueMax: number;
  /** Stores the whole batch, in order, or rejects; a rejected batch is offered again. */
  deliver: (batch: readonly QueuedRecord[]) => Promise<void>;
  onError?: (err: Error) => void;
}

export class BatchQueue {
  private entries: QueuedRecord[] = [];
  /** Index of the oldest entry not yet delivered. */
  private head = 0;
  private running = false;
  private stopped = false;
  private batchTimer: NodeJS.Timeout | undefined;
  /** Ends the current retry wait early (a flush asks for delivery now). */
  private wake: (() => void) | undefined;
  private readonly drainWaiters = new Set<() => void>();
  private written = 0;
  private failed = 0;

  constructor(private readonly options: BatchQueueOptions) {}

  /** Records accepted and not yet delivered. */
  get pending(): number {
    return this.entries.length - this.head;
  }

  get full(): boolean {
    return this.pending > this.options.queueMax;
  }

  get counts(): { written: number; failed: number; queued: number } {
    return { written: this.written, failed: this.failed, queued: this.pending };
  }

  /** Queues one record; after `close` it is only counted (in `queued`), never sent. */
  push(entry: QueuedRecord): void {
    this.entries.push(entry);
    if (this.stopped || this.running) return;
    if (this.pending >= this.options.batchMaxRecords) this.start();
    else this.batchTimer ??= setTimeout(() => this.start(), this.options.flushIntervalMs).unref();
  }

  /** Resolves once everything queued so far is delivered, or at `deadline` (a `Date.now()` value). */
  async flush(deadline: number): Promise<void> {
    if (this.pending === 0 || this.stopped) return;
    this.start();
    this.wake?.();
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.drainWaiters.delete(done);
        resolve();
      };
      // Not unref'd: a caller awaiting the flush must keep the process alive until its deadline.
      const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
      this.drainWaiters.add(done);
    });
  }

  /** Flushes until `deadline`, then stops sending; what is left stays counted in `queued`. */
  async close(deadline: number): Promise<void> {
    await this.flush(deadline);
    this.stopped = true;
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    this.wake?.();
    this.notifyDrained();
  }

  private start(): void {
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    if (this.running || this.stopped) return;
    this.running = true;
    void this.run();
  }

  /** Never rejects: every failure of `deliver` is caught, counted and retried. */
  private async run(): Promise<void> {
    let delay = RETRY_INITIAL_DELAY_MS;
    // Records arriving while a batch is in flight go in the next one, with no
    // wait: a busy gateway fills its batches by itself.
    while (this.pending > 0 && !this.stopped) {
      const batch = this.entries.slice(this.head, this.head + this.options.batchMaxRecords);
      try {
        await this.options.deliver(batch);
      } catch (err) {
        if (this.stopped) break;
        this.failed += 1;
        reportError(this.options.onError, err);
        await this.pause(delay);
        delay = Math.min(delay * 2, RETRY_MAX_DELAY_MS);
        continue;
      }
      delay = RETRY_INITIAL_DELAY_MS;
      this.head += batch.length;
      this.written += batch.length;
      if (this.head >= COMPACT_AFTER_ENTRIES) {
        this.entries = this.entries.slice(this.head);
        this.head = 0;
      }
    }
    // In the same tick as the check above: a record pushed after it starts a new run.
    this.running = false;
    if (this.pending === 0) this.notifyDrained();
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms).unref();
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }

  private notifyDrained(): void {
    for (const done of [...this.drainWaiters]) done();
  }
}

/** Hands `err` to a sink's listener; a listener that throws must not stop delivery or trimming. */
export function reportError(onError: ((err: Error) => void) | undefined, err: unknown): void {
  try {
    onError?.(err instanceof Error ? err : new Error(String(err)));
  } catch {
    // The records matter more than the report.
  }
}

export interface BatchedSinkOptions {
  name: string;
  batchMaxRecords?: number;
  flushIntervalMs?: number;
  queueMax?: number;
  onError?: (err: Error) => void;
}

/**
 * A sink that delivers through a BatchQueue (Redis stream, PostgreSQL): the
 * queue keeps the order, the bound and the retries; the sink says how a
 * batch is stored (`deliver`), what stops before the queue is closed
 * (`stopping`, its timers) and what it lets go of after (`release`, its
 * connection).
 */
export abstract class BatchedSink {
  readonly name: string;
  protected readonly queue: BatchQueue;
  private closed = false;

  protected constructor(options: BatchedSinkOptions) {
    this.name = options.name;
    this.queue = new BatchQueue({
      batchMaxRecords: options.batchMaxRecords ?? DEFAULT_BATCH_MAX_RECORDS,
      flushIntervalMs: options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS,
      queueMax: options.queueMax ?? DEFAULT_QUEUE_MAX_RECORDS,
      deliver: (batch) => this.deliver(batch),
      ...(options.onError ? { onError: options.onError } : {}),
    });
  }

  /** Stores the whole batch, in order, or rejects (it is offered again). */
  protected abstract deliver(batch: readonly QueuedRecord[]): Promise<void>;

  /** At close, before the queue's last deliveries: the sink's own timers stop. */
  protected abstract stopping(): void;

  /** After the queue is closed: the sink lets its connection go by `deadline`. */
  protected abstract release(deadline: number): Promise<void>;

  get full(): boolean {
    return this.queue.full;
  }

  write(record: AuditRecord, line: string): void {
    this.queue.push({ record, line });
  }

  flush(deadline: number): Promise<void> {
    return this.queue.flush(deadline);
  }

  async close(deadline: number): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopping();
    await this.queue.close(deadline);
    await this.release(deadline);
  }

  stats(): SinkStats {
    return { ...this.queue.counts, spoolBytes: 0 };
  }
}
