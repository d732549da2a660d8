/**
 * The `file` sink: JSON lines in a directory, one record per line, exactly the
 * bytes the log sealed. Files are named `audit-<UTC time>.jsonl`, so their
 * names sort in the chain's order; a new file begins when the current one
 * reaches `maxFileBytes` or `maxFileAgeMs`, and files older than
 * `retentionDays` are removed (at open and hourly).
 *
 * Owns: the directory and its files. Writes are batched: what arrives while a
 * write is in flight goes in the next one, and each batch is fdatasync'ed
 * before its records count as written, so `written` means on disk.
 */
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import type { AuditRecord, AuditSink, SinkStats } from '../types.js';
import { sleep, untilDeadline } from './timing.js';

export interface FileSinkOptions {
  name: string;
  dir: string;
  /** Begin a new file past this size (default 100 MiB). */
  maxFileBytes?: number;
  /** … or past this age (default 1 day). */
  maxFileAgeMs?: number;
  /** Remove files whose newest record is older than this (default 90 days; 0 keeps all). */
  retentionDays?: number;
  /** Records waiting for the disk before the sink reports `full` (default 100,000). */
  queueMax?: number;
  /** fdatasync after each batch (default true). */
  fsync?: boolean;
  onError?: (err: Error) => void;
}

const FILE_PATTERN = /^audit-\d{8}T\d{6}\.\d{3}Z(-\d+)?\.jsonl$/;
const HOUR = 3_600_000;

/** The audit files of `dir`, oldest first (their names sort by time). */
export async function auditFiles(dir: string): Promise<string[]> {
  const names = await fs.readdir(dir);
  return names
    .filter((n) => FILE_PATTERN.test(n))
    .sort()
    .map((n) => path.join(dir, n));
}

function stamp(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '');
}

/**
 * The last complete line of a file, cutting a torn tail (a write a crash
 * interrupted) so the chain goes on from what is whole.
 */
async function lastLineRepairing(file: string): Promise<string | undefined> {
  const handle = await fs.open(file, 'r+');
  try {
    let { size } = await handle.stat();
    // Records are small: read back from the end, further only when a line is longer.
    for (let span = 64 * 1024; ; span *= 4) {
      const length = Math.min(size, span);
      const buf = Buffer.alloc(length);
      await handle.read(buf, 0, length, size - length);
      const lastNewline = buf.lastIndexOf(0x0a);
      if (lastNewline < 0 && length < size) continue;
      const wholeEnd = lastNewline + 1;
      if (wholeEnd < length) {
        // Bytes after the last newline: a write cut short, never counted as written.
        size = size - length + wholeEnd;
        await handle.truncate(size);
      }
      if (wholeEnd === 0) return undefined;
      const previousNewline = wholeEnd >= 2 ? buf.lastIndexOf(0x0a, wholeEnd - 2) : -1;
      if (previousNewline < 0 && length < size) continue;
      return buf.toString('utf8', previousNewline + 1, wholeEnd - 1);
    }
  } finally {
    await handle.close();
  }
}

export class FileSink implements AuditSink {
  readonly kind = 'file' as const;
  readonly name: string;
  private readonly dir: string;
  private readonly maxFileBytes: number;
  private readonly maxFileAgeMs: number;
  private readonly retentionMs: number;
  private readonly queueMax: number;
  private readonly fsync: boolean;
  private handle: fs.FileHandle | undefined;
  private fileBytes = 0;
  private fileOpenedAt = 0;
  private pending: string[] = [];
  private inFlight = 0;
  private writing: Promise<void> | undefined;
  private closed = false;
  private readonly counts = { written: 0, failed: 0 };
  private retentionTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: FileSinkOptions) {
    this.name = options.name;
    this.dir = options.dir;
    this.maxFileBytes = options.maxFileBytes ?? 100 * 1024 * 1024;
    this.maxFileAgeMs = options.maxFileAgeMs ?? 24 * HOUR;
    this.retentionMs = (options.retentionDays ?? 90) * 24 * HOUR;
    this.queueMax = options.queueMax ?? 100_000;
    this.fsync = options.fsync ?? true;
  }

  async open(): Promise<AuditRecord | undefined> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.applyRetention();
    this.retentionTimer = setInterval(() => void this.applyRetention(), HOUR);
    this.retentionTimer.unref();
    const files = await auditFiles(this.dir);
    for (let i = files.length - 1; i >= 0; i--) {
      const line = await lastLineRepairing(files[i] as string);
      if (line === undefined) continue;
      try {
        return JSON.parse(line) as AuditRecord;
      } catch {
        throw new Error(
          `audit file ${files[i]}: its last line is not a record; move the file aside or run "portcullis audit verify" on it`,
        );
      }
    }
    return undefined;
  }

  get full(): boolean {
    return this.pending.length + this.inFlight > this.queueMax;
  }

  write(_record: AuditRecord, line: string): void {
    if (this.closed) throw new Error(`audit sink ${this.name} is closed`);
    this.pending.push(line);
    this.writing ??= this.drain();
  }

  /** Writes batches until nothing is pending; a failed batch is retried, never dropped. */
  private async drain(): Promise<void> {
    let backoff = 100;
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      this.inFlight = batch.length;
      const bytes = Buffer.from(batch.join('\n') + '\n');
      try {
        const handle = await this.fileFor(bytes.length);
        await handle.write(bytes, 0, bytes.length, null);
        if (this.fsync) await handle.datasync();
        this.fileBytes += bytes.length;
        this.counts.written += batch.length;
        backoff = 100;
      } catch (err) {
        this.counts.failed += batch.length;
        this.options.onError?.(err as Error);
        // A partial write would tear a line: start a new file for the retry.
        await this.closeFile();
        this.pending = batch.concat(this.pending);
        if (this.closed) break;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5_000);
      } finally {
        this.inFlight = 0;
      }
    }
    this.writing = undefined;
  }

  /** The file to write `size` more bytes to, beginning a new one when the current is done. */
  private async fileFor(size: number): Promise<fs.FileHandle> {
    const now = Date.now();
    if (
      this.handle &&
      this.fileBytes > 0 &&
      (this.fileBytes + size > this.maxFileBytes || now - this.fileOpenedAt >= this.maxFileAgeMs)
    )
      await this.closeFile();
    if (this.handle) return this.handle;
    const base = `audit-${stamp(new Date(now))}`;
    for (let n = 0; ; n++) {
      const file = path.join(this.dir, `${base}${n === 0 ? '' : `-${n}`}.jsonl`);
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

  private async closeFile(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
  }

  /** Removes files last written before the retention bound (never the one being written). */
  private async applyRetention(): Promise<void> {
    if (this.retentionMs <= 0) return;
    const cutoff = Date.now() - this.retentionMs;
    try {
      const files = await auditFiles(this.dir);
      // The newest file stays whatever its age: the chain goes on from it.
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

  async close(deadline: number): Promise<void> {
    await this.flush(deadline);
    this.closed = true;
    clearInterval(this.retentionTimer);
    if (this.writing) await untilDeadline(this.writing, deadline);
    await this.closeFile();
  }

  stats(): SinkStats {
    return {
      written: this.counts.written,
      failed: this.counts.failed,
      queued: this.pending.length + this.inFlight,
      spoolBytes: 0,
    };
  }
}
