/**
 * The audit log as the gateway's thread sees it: records go to the audit
 * thread (worker.ts), which chains, seals and hashes them, computes their
 * `argsHash`, and runs every sink. What stays on the thread that serves
 * requests is a push onto an array; the batch crosses once per turn of the
 * event loop. Measured in bench/RESULTS-audit.md: sealing and sinks on the
 * serving thread halved its throughput.
 *
 * Owns: the batch not yet sent, `full` (the sinks' bound, read from memory
 * the two threads share, and a bound on records sent and not yet appended),
 * checkpoint signing (the keys stay on this thread), the metrics, and the
 * worker's life: a worker that dies makes the log full for good, so the
 * gateway refuses new requests (503) rather than serve unaudited.
 */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import pino, { type Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../telemetry/metrics.js';
import {
  STATE_CELLS,
  STATE_FULL,
  STATE_PROCESSED,
  type ChannelEntry,
  type FromWorker,
  type ToWorker,
  type WorkerInit,
} from './channel-protocol.js';
import { SinkStatsPublisher, type CheckpointSigner } from './log.js';
import type { AuditKind, MessageFields, SinkStats } from './types.js';

/** Records sent to the audit thread and not yet appended, past which the log is full. */
const MAX_IN_FLIGHT = 20_000;
/**
 * Records cross in batches at most this far apart, or as soon as this many
 * are waiting: each crossing wakes the audit thread, and costs the serving
 * thread far more than the records' copy does.
 */
const SEND_INTERVAL_MS = 10;
const SEND_RECORDS = 512;
/** Waiting for the audit thread's answer past a deadline, before it is stopped. */
const GRACE_MS = 2_000;

export interface AuditChannelOptions {
  audit: Config['audit'];
  logLevel: string;
  log: Logger;
  metrics?: Metrics;
  signer?: CheckpointSigner;
}

/**
 * The audit thread, from worker.ts beside this file: `.js` once built. Run
 * from source under tsx, the thread registers tsx itself first (in Node 20,
 * a worker does not inherit its parent's module hooks).
 */
function startWorker(workerData: WorkerInit): Worker {
  const here = fileURLToPath(import.meta.url);
  const file = path.join(path.dirname(here), 'worker' + path.extname(here));
  if (!file.endsWith('.ts')) return new Worker(file, { workerData });
  const url = JSON.stringify(pathToFileURL(file).href);
  return new Worker(
    `import('tsx/esm/api').then(({ register }) => { register(); return import(${url}); });`,
    { eval: true, workerData },
  );
}

export class AuditChannel {
  private batch: ChannelEntry[] = [];
  private refused = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Records sent, modulo 2^32 as the shared counter is. */
  private sent = 0;
  private dead = false;
  private closed = false;
  private nextId = 0;
  private readonly waiting = new Map<number, () => void>();
  private latest: Record<string, SinkStats> = {};
  private readonly publisher = new SinkStatsPublisher();
  private readonly state: Int32Array;

  private constructor(
    private readonly worker: Worker,
    private readonly options: AuditChannelOptions,
    shared: SharedArrayBuffer,
    readonly chainId: string,
    readonly sinks: readonly string[],
    /** The audit thread's kernel thread id (Linux), for `top -H` and `taskset -p`. */
    readonly threadId: number | undefined,
  ) {
    this.state = new Int32Array(shared);
  }

  /** Starts the audit thread and waits until its sinks are open and its start checkpoint is written. */
  static async open(options: AuditChannelOptions): Promise<AuditChannel> {
    const shared = new SharedArrayBuffer(STATE_CELLS * Int32Array.BYTES_PER_ELEMENT);
    const init: WorkerInit = {
      audit: options.audit,
      logLevel: options.logLevel,
      signed: options.signer !== undefined,
      state: shared,
    };
    const worker = startWorker(init);
    // Messages go to the channel once it exists; before that, only logs and signing come.
    const bound: { channel?: AuditChannel } = {};
    const ready = new Promise<Extract<FromWorker, { t: 'ready' }>>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'ready') return resolve(m);
        if (m.t === 'failed') return reject(new Error(m.message));
        if (bound.channel) return bound.channel.onMessage(m);
        // Before ready: its logs and the start checkpoint's signature.
        if (m.t === 'log') relog(options.log, m.line);
        else if (m.t === 'sign') sign(worker, options.signer, m);
      });
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the audit thread exited (${code})`)));
    });
    let opened: Extract<FromWorker, { t: 'ready' }>;
    try {
      opened = await ready;
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    const channel = new AuditChannel(
      worker,
      options,
      shared,
      opened.chain,
      opened.sinks,
      opened.tid,
    );
    bound.channel = channel;
    worker.removeAllListeners('error');
    worker.removeAllListeners('exit');
    worker.on('error', (err) => channel.die(err.message));
    worker.on('exit', (code) => channel.die(`exited (${code})`));
    // The gateway's close ends the thread; it never holds the process open by itself.
    worker.unref();
    return channel;
  }

  /**
   * True while a sink holds more than its bound, the audit thread is that far
   * behind, or it is gone: new requests are refused until it drains.
   */
  get full(): boolean {
    if (this.dead) return true;
    if (Atomics.load(this.state, STATE_FULL) === 1) return true;
    const inFlight = (this.sent - Atomics.load(this.state, STATE_PROCESSED)) | 0;
    return inFlight + this.batch.length > MAX_IN_FLIGHT;
  }

  /** Appends a record (see ChannelEntry); it is sealed on the audit thread, in this order. */
  append(
    kind: Exclude<AuditKind, 'checkpoint'>,
    fields: MessageFields,
    args?: unknown,
    message?: unknown,
  ): void {
    if (this.closed) throw new Error('audit log is closed');
    if (this.batch.push([kind, fields, Date.now(), args, message]) >= SEND_RECORDS) this.send();
    else this.schedule();
  }

  /** A request refused because the log was full: counted, and written as one summary refusal. */
  noteRefusedWhileFull(): void {
    this.refused++;
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => this.send(), SEND_INTERVAL_MS);
  }

  private send(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.batch.length === 0 && this.refused === 0) return;
    const batch = this.batch;
    const refused = this.refused;
    this.batch = [];
    this.refused = 0;
    if (this.dead) return this.lost(batch.length);
    this.post({ t: 'records', batch, refused });
    this.sent = (this.sent + batch.length) | 0;
  }

  private post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'log':
        return relog(this.options.log, m.line);
      case 'sign':
        return sign(this.worker, this.options.signer, m);
      case 'stats':
        return this.publish(m.stats);
      case 'done':
        this.publish(m.stats);
        this.waiting.get(m.id)?.();
        this.waiting.delete(m.id);
        return;
      default:
        return;
    }
  }

  private publish(stats: Record<string, SinkStats>): void {
    this.latest = stats;
    if (this.options.metrics) this.publisher.publish(this.options.metrics, stats);
  }

  /** Asks the audit thread for `t` and waits for its answer, at most a little past `deadline`. */
  private ask(t: 'flush' | 'close', deadline: number): Promise<void> {
    this.send();
    if (this.dead) return Promise.resolve();
    const id = ++this.nextId;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(
        () => {
          this.waiting.delete(id);
          this.options.log.error(
            { event: 'audit.thread_unresponsive', request: t },
            'audit: the audit thread did not answer in time',
          );
          resolve();
        },
        Math.max(0, deadline - Date.now()) + GRACE_MS,
      );
      this.waiting.set(id, () => {
        clearTimeout(timer);
        resolve();
      });
      this.post({ t, id, deadline });
    });
  }

  /** Delivers what is queued, waiting at most until `deadline` (a `Date.now()` value). */
  flush(deadline: number): Promise<void> {
    return this.ask('flush', deadline);
  }

  /**
   * Writes the closing checkpoint and closes every sink by `deadline` (what a
   * sink could not deliver stays in its spool), then ends the audit thread.
   */
  async close(deadline: number): Promise<void> {
    if (this.closed) return;
    await this.ask('close', deadline);
    this.closed = true;
    this.dead = true;
    await this.worker.terminate();
  }

  /** Each sink's counts, as the audit thread last reported them. */
  stats(): Record<string, SinkStats> {
    return this.latest;
  }

  private die(why: string): void {
    if (this.dead) return;
    this.dead = true;
    const lost = this.batch.length + ((this.sent - Atomics.load(this.state, STATE_PROCESSED)) | 0);
    this.batch = [];
    this.options.log.error(
      { event: 'audit.thread_failed', err: why, records: lost },
      'audit: the audit thread failed; new requests are refused until the gateway restarts',
    );
    for (const done of this.waiting.values()) done();
    this.waiting.clear();
  }

  private lost(records: number): void {
    if (records > 0)
      this.options.log.error(
        { event: 'audit.thread_failed', records },
        'audit: records made after the audit thread failed were not recorded',
      );
  }
}

/** A line the audit thread's logger wrote, written again by the gateway's (its fields kept). */
function relog(log: Logger, line: string): void {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return;
  }
  const { level, time: _time, pid: _pid, hostname: _host, msg, ...fields } = entry;
  const label = pino.levels.labels[level as number] ?? 'info';
  const write = (log as unknown as Record<string, (o: object, m?: string) => void>)[label];
  write?.call(log, fields, typeof msg === 'string' ? msg : undefined);
}

/** Signs a checkpoint's claims for the audit thread (the keys never leave this thread). */
function sign(
  worker: Worker,
  signer: CheckpointSigner | undefined,
  m: Extract<FromWorker, { t: 'sign' }>,
): void {
  const answer = (reply: ToWorker) => worker.postMessage(reply);
  if (!signer) return answer({ t: 'signed', id: m.id, error: 'no signing key' });
  signer(m.claims).then(
    (sig) => answer({ t: 'signed', id: m.id, sig }),
    (err: unknown) => answer({ t: 'signed', id: m.id, error: (err as Error).message }),
  );
}
