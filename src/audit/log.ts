/**
 * The audit log: one hash chain, handed to every sink. In a gateway it runs
 * on the audit thread (worker.ts; channel.ts is its serving-thread side). `append` is
 * synchronous and cheap (a canonical serialization and one SHA-256): it gives
 * the record its place (`seq`, `prevHash`), seals it and gives the same line
 * to each sink, which queues it. Checkpoints sign the chain's head with the
 * gateway's key, at start, periodically and at close.
 *
 * Owns: the chain's head, checkpoints, the log-wide `full` (any sink over its
 * bound), and publishing each sink's counts as metrics.
 *
 * The chain continues across restarts: at open, the newest record any sink
 * can read back (the file sink can) gives the chain id, seq and hash to go
 * on from, so `audit verify` over a directory of files sees one unbroken
 * chain. Without such a sink, each start begins a new chain.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Metrics } from '../telemetry/metrics.js';
import { GENESIS_HASH, sealRecord } from './record.js';
import {
  AUDIT_SCHEMA_VERSION,
  type AuditKind,
  type AuditRecord,
  type AuditSink,
  type CheckpointFields,
  type MessageFields,
  type SinkStats,
} from './types.js';

/** Signs a checkpoint's claims (the gateway's SigningKeys.signCheckpoint). */
export type CheckpointSigner = (claims: {
  chain: string;
  seq: number;
  hash: string;
}) => Promise<string>;

export interface AuditLogOptions {
  sinks: readonly AuditSink[];
  log: Logger;
  metrics?: Metrics;
  signer?: CheckpointSigner;
  /** A periodic checkpoint after this long (default 60 s) … */
  checkpointIntervalMs?: number;
  /** … or after this many records, whichever comes first (default 10,000). */
  checkpointRecords?: number;
}

export class AuditLog {
  private chain = '';
  private seq = -1;
  private head = GENESIS_HASH;
  private sinceCheckpoint = 0;
  private checkpointing = false;
  private lastCheckpointAt = Date.now();
  private closed = false;
  /** Requests refused because the log was full, not yet written as one summary record. */
  private refusedWhileFull = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly publisher = new SinkStatsPublisher();

  private constructor(
    private readonly options: Required<Omit<AuditLogOptions, 'metrics' | 'signer'>> &
      AuditLogOptions,
  ) {
    // Metrics every few seconds; a checkpoint once its interval has passed with records since.
    this.timer = setInterval(
      () => {
        this.publishStats();
        if (this.refusedWhileFull > 0 && !this.full) this.summarizeRefusals();
        if (
          this.sinceCheckpoint > 0 &&
          Date.now() - this.lastCheckpointAt >= this.options.checkpointIntervalMs
        )
          void this.checkpoint('periodic');
      },
      Math.min(5_000, this.options.checkpointIntervalMs),
    );
    this.timer.unref();
  }

  /** Opens every sink, finds where the chain stands, and writes the start checkpoint. */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const log = new AuditLog({
      checkpointIntervalMs: 60_000,
      checkpointRecords: 10_000,
      ...options,
    });
    const lasts = await Promise.all(options.sinks.map((s) => s.open()));
    let last: AuditRecord | undefined;
    for (const r of lasts) if (r && (!last || r.time > last.time)) last = r;
    if (last) {
      log.chain = last.chain;
      log.seq = last.seq;
      log.head = last.hash;
    } else {
      log.chain = randomUUID();
    }
    await log.checkpoint('start');
    return log;
  }

  get chainId(): string {
    return this.chain;
  }

  /** True while any sink holds more than its bound: new requests are refused until it drains. */
  get full(): boolean {
    for (const s of this.options.sinks) if (s.full) return true;
    return false;
  }

  /**
   * Appends one record of `kind`; the log gives it its place and hash, and
   * its time (`at`, a `Date.now()` value, when it was made elsewhere).
   */
  append(kind: AuditKind, fields: MessageFields & CheckpointFields, at?: number): AuditRecord {
    if (this.closed) throw new Error('audit log is closed');
    if (this.refusedWhileFull > 0 && !this.full) this.summarizeRefusals();
    const record = fields as AuditRecord;
    record.v = AUDIT_SCHEMA_VERSION;
    record.kind = kind;
    record.chain = this.chain;
    record.seq = ++this.seq;
    record.prevHash = this.head;
    record.time = (at === undefined ? new Date() : new Date(at)).toISOString();
    const line = sealRecord(record);
    this.head = record.hash;
    for (const sink of this.options.sinks) sink.write(record, line);
    if (kind !== 'checkpoint' && ++this.sinceCheckpoint >= this.options.checkpointRecords)
      void this.checkpoint('periodic');
    return record;
  }

  /**
   * A request refused because the log was full: counted, not recorded one by
   * one (each record would grow the queue that is already over its bound), and
   * written as one refusal with its `count` as soon as the log has room.
   */
  noteRefusedWhileFull(count = 1): void {
    this.refusedWhileFull += count;
  }

  private summarizeRefusals(): void {
    const count = this.refusedWhileFull;
    this.refusedWhileFull = 0;
    this.append('refusal', {
      decision: 'deny',
      action: 'refuse',
      status: 503,
      error: 'PORTCULLIS_ERR_AUDIT_UNAVAILABLE',
      count,
    });
  }

  /** Writes a checkpoint signing the head as it is now (one at a time). */
  private async checkpoint(reason: 'start' | 'periodic' | 'close'): Promise<void> {
    if (this.checkpointing && reason === 'periodic') return;
    this.checkpointing = true;
    this.sinceCheckpoint = 0;
    this.lastCheckpointAt = Date.now();
    try {
      const fields: CheckpointFields = { reason };
      if (this.seq >= 0) {
        fields.signedSeq = this.seq;
        fields.signedHash = this.head;
        if (this.options.signer) {
          try {
            fields.sig = await this.options.signer({
              chain: this.chain,
              seq: this.seq,
              hash: this.head,
            });
          } catch (err) {
            this.options.log.error(
              { err: (err as Error).message },
              'audit: could not sign a checkpoint',
            );
          }
        }
      }
      if (!this.closed) this.append('checkpoint', fields);
    } finally {
      this.checkpointing = false;
    }
  }

  /** Delivers what is queued, waiting at most until `deadline` (a `Date.now()` value). */
  async flush(deadline: number): Promise<void> {
    await Promise.all(this.options.sinks.map((s) => s.flush(deadline)));
    this.publishStats();
  }

  /**
   * Writes the closing checkpoint, then closes every sink by `deadline`; what
   * a sink could not deliver stays in its spool for the next start.
   */
  async close(deadline: number): Promise<void> {
    if (this.closed) return;
    clearInterval(this.timer);
    if (this.refusedWhileFull > 0) this.summarizeRefusals();
    await this.checkpoint('close');
    this.closed = true;
    await Promise.all(
      this.options.sinks.map((s) =>
        s
          .close(deadline)
          .catch((err: unknown) =>
            this.options.log.error(
              { sink: s.name, err: (err as Error).message },
              'audit: sink failed to close',
            ),
          ),
      ),
    );
    this.publishStats();
    for (const s of this.options.sinks) {
      const left = s.stats().queued;
      if (left > 0)
        this.options.log.warn(
          { event: 'audit.undelivered', sink: s.name, records: left },
          s.stats().spoolBytes > 0
            ? 'audit: records left in the spool; they are delivered at the next start'
            : 'audit: records could not be delivered before the drain bound',
        );
    }
  }

  stats(): Record<string, SinkStats> {
    const out: Record<string, SinkStats> = {};
    for (const s of this.options.sinks) out[s.name] = s.stats();
    return out;
  }

  /** Copies each sink's counts into the metrics. */
  publishStats(): void {
    if (this.options.metrics) this.publisher.publish(this.options.metrics, this.stats());
  }
}

/**
 * Copies sinks' counts into the metrics: counters grow by what is new since
 * the last copy, gauges are set.
 */
export class SinkStatsPublisher {
  private readonly published = new Map<string, SinkStats>();

  publish(metrics: Metrics, stats: Record<string, SinkStats>): void {
    for (const [sink, now] of Object.entries(stats)) {
      const before = this.published.get(sink) ?? {
        written: 0,
        failed: 0,
        queued: 0,
        spoolBytes: 0,
      };
      if (now.written > before.written)
        metrics.auditRecords.inc({ sink, outcome: 'written' }, now.written - before.written);
      if (now.failed > before.failed)
        metrics.auditRecords.inc({ sink, outcome: 'failed' }, now.failed - before.failed);
      metrics.auditQueued.set({ sink }, now.queued);
      metrics.auditSpoolBytes.set({ sink }, now.spoolBytes);
      this.published.set(sink, { ...now });
    }
  }
}
