/**
 * The `file` sink: JSON lines in a directory, one record per line, exactly the
 * bytes the log sealed, in a journal (journal.ts: `audit-<UTC time>.jsonl`
 * files, rotated, kept `retentionDays`, each batch fdatasync'ed before it
 * counts as written).
 *
 * Owns: where the chain stands on disk. At open, the newest file's last whole
 * record is where the chain goes on from; a torn tail a crash left is cut.
 */
import { promises as fs } from 'node:fs';
import type { AuditRecord, AuditSink, SinkStats } from '../types.js';
import { Journal, journalFiles } from './journal.js';

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

/** The audit files of `dir`, oldest first (their names sort by time). */
export function auditFiles(dir: string): Promise<string[]> {
  return journalFiles(dir, 'audit');
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
  private readonly journal: Journal<string>;

  constructor(private readonly options: FileSinkOptions) {
    this.name = options.name;
    this.journal = new Journal<string>({
      dir: options.dir,
      prefix: 'audit',
      maxFileBytes: options.maxFileBytes ?? 100 * 1024 * 1024,
      maxFileAgeMs: options.maxFileAgeMs ?? 86_400_000,
      retentionDays: options.retentionDays ?? 90,
      queueMax: options.queueMax ?? 100_000,
      fsync: options.fsync ?? true,
      // The lines are the records as sealed: nothing to make.
      serialize: (lines) => lines,
      onError: options.onError,
    });
  }

  async open(): Promise<AuditRecord | undefined> {
    await this.journal.open();
    const files = await this.journal.files();
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
    return this.journal.full;
  }

  write(_record: AuditRecord, line: string): void {
    this.journal.push(line);
  }

  flush(deadline: number): Promise<void> {
    return this.journal.flush(deadline);
  }

  close(deadline: number): Promise<void> {
    return this.journal.close(deadline);
  }

  stats(): SinkStats {
    return { ...this.journal.counts, queued: this.journal.queued, spoolBytes: 0 };
  }
}
