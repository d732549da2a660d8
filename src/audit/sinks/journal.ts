/**
 * A journal: JSON lines appended to files in a directory, what the file sink
 * and the capture share. Files are named `<prefix>-<UTC time>.jsonl`, so
 * their names sort in the order they were written; a new file begins past
 * `maxFileBytes` or `maxFileAgeMs`, and files last written before
 * `retentionDays` are removed (at open and hourly; never the newest).
 *
 * Owns: the directory (0700) and its files (0600), and the queue of what is
 * to be written. Writes are batched: what arrives while a write is in flight
 * goes in the next one, each batch is fdatasync'ed before it counts as
 * written, and a batch whose write or fdatasync fails is cut back out of the
 * file and written again, never dropped and never twice.
 */
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { sleep, untilDeadline } from './timing.js';

export interface JournalOptions<T> {
  dir: string;
  prefix: string;
  maxFileBytes: number;
  maxFileAgeMs: number;
  /** 0 keeps every file. */
  retentionDays: number;
  /** Items waiting for the disk before the journal reports `full`. */
  queueMax: number;
  fsync: boolean;
  /** The lines of a batch of items, made when the batch is written (not when queued). */
  serialize(items: T[]): string[];
  onError?: (err: Error) => void;
}

const HOUR = 3_600_000;
const RETRY_MAX_MS = 5_000;

/** The files of a journal in `dir`, oldest first (their names sort by time). */
export async function journalFiles(dir: string, prefix: string): Promise<string[]> {
  const pattern = new RegExp(`^${prefix}-\\d{8}T\\d{6}\\.\\d{3}Z(-\\d+)?\\.jsonl$`);
  const names = await fs.readdir(dir);
  return names
    .filter((n) => pattern.test(n))
    .sort()
    .map((n) => path.join(dir, n));
}

function stamp(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '');
}

export class Journal<T> {
  private handle: fs.FileHandle | undefined;
  private fileBytes = 0;
  private fileOpenedAt = 0;
  private queue: T[] = [];
  /** A failed batch's lines, written again before anything queued after them. */
  private retry: string[] = [];
  private inFlight = 0;
  private writing: Promise<void> | undefined;
  private closed = false;
  private retentionTimer: NodeJS.Timeout | undefined;
  readonly counts = { written: 0, failed: 0 };

  constructor(private readonly options: JournalOptions<T>) {}

  /** Makes the directory private, applies retention, and starts its hourly round. */
  async open(): Promise<void> {
    const dir = this.options.dir;
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    // An existing directory is made private too: what it holds is who did what.
    if (((await fs.stat(dir)).mode & 0o077) !== 0) await fs.chmod(dir, 0o700);
    await this.applyRetention();
    this.retentionTimer = setInterval(() => void this.applyRetention(), HOUR);
    this.retentionTimer.unref();
  }

  files(): Promise<string[]> {
    return journalFiles(this.options.dir, this.options.prefix);
  }

  get queued(): number {
    return this.queue.length + this.retry.length + this.inFlight;
  }

  get full(): boolean {
    return this.queued > this.options.queueMax;
  }

  push(item: T): void {
    if (this.closed) throw new Error(`journal ${this.options.dir} is closed`);
    this.queue.push(item);
    this.writing ??= this.drain();
  }

  /** Writes batches until nothing is queued; a failed batch is retried, never dropped. */
  private async drain(): Promise<void> {
    let backoff = 100;
    while (this.queue.length > 0 || this.retry.length > 0) {
      const batch = this.retry;
      this.retry = [];
      if (this.queue.length > 0) {
        const items = this.queue;
        this.queue = [];
        batch.push(...this.options.serialize(items));
      }
      this.inFlight = batch.length;
      const bytes = Buffer.from(batch.join('\n') + '\n');
      try {
        const handle = await this.fileFor(bytes.length);
        // A write may take less than it is given (a regular file near ENOSPC): write the rest.
        for (let done = 0; done < bytes.length;) {
          const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, null);
          if (bytesWritten <= 0) throw new Error('a write took none of its bytes');
          done += bytesWritten;
        }
        if (this.options.fsync) await handle.datasync();
        this.fileBytes += bytes.length;
        this.counts.written += batch.length;
        backoff = 100;
      } catch (err) {
        this.counts.failed += batch.length;
        this.options.onError?.(err as Error);
        await this.rollBack();
        this.retry = batch;
        if (this.closed) break;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, RETRY_MAX_MS);
      } finally {
        this.inFlight = 0;
      }
    }
    this.writing = undefined;
  }

  /** The file to write `size` more bytes to, beginning a new one when the current is done. */
  private async fileFor(size: number): Promise<fs.FileHandle> {
    const now = Date.now();
    const { maxFileBytes, maxFileAgeMs } = this.options;
    if (
      this.handle &&
      this.fileBytes > 0 &&
      (this.fileBytes + size > maxFileBytes || now - this.fileOpenedAt >= maxFileAgeMs)
    )
      await this.closeFile();
    if (this.handle) return this.handle;
    const base = `${this.options.prefix}-${stamp(new Date(now))}`;
    for (let n = 0; ; n++) {
      const file = path.join(this.options.dir, `${base}${n === 0 ? '' : `-${n}`}.jsonl`);
      try {
        this.handle = await fs.open(
          file,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_APPEND,
          0o600,
        );
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    this.fileBytes = 0;
    this.fileOpenedAt = now;
    return this.handle;
  }

  /**
   * Cuts what a failed batch left in the file (part of it, or all of it with its fdatasync
   * failed) back to the last batch written whole, so the retry neither writes those lines
   * twice nor after a torn one. Truncating rather than retrying the fdatasync alone matters:
   * after a failed fsync Linux may have dropped the dirty pages it reported. A file that
   * cannot be cut is left as it is, and the retry begins a new one.
   */
  private async rollBack(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    try {
      await handle.truncate(this.fileBytes);
    } catch (err) {
      this.options.onError?.(err as Error);
      await this.closeFile();
    }
  }

  private async closeFile(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
  }

  /** Removes files last written before the retention bound; the newest stays whatever its age. */
  private async applyRetention(): Promise<void> {
    if (this.options.retentionDays <= 0) return;
    const cutoff = Date.now() - this.options.retentionDays * 24 * HOUR;
    try {
      const files = await this.files();
      for (const file of files.slice(0, -1)) {
        const { mtimeMs } = await fs.stat(file);
        if (mtimeMs < cutoff) await fs.unlink(file);
      }
    } catch (err) {
      this.options.onError?.(err as Error);
    }
  }

  async flush(deadline: number): Promise<void> {
    while (this.writing && Date.now() < deadline) await untilDeadline(this.writing, deadline);
  }

  /** Flushes until `deadline`, then stops; what is still queued is reported by `queued`. */
  async close(deadline: number): Promise<void> {
    await this.flush(deadline);
    this.closed = true;
    clearInterval(this.retentionTimer);
    if (this.writing) await untilDeadline(this.writing, deadline);
    await this.closeFile();
  }
}
