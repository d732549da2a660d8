/**
 * The audit spool: a write-ahead, bounded, on-disk FIFO of lines, owned by
 * one sink in one process. A line is durable once `append` resolves, and
 * stays on disk until its reader acknowledges it, across crashes and restarts.
 *
 * On disk, in `dir` (mode 0700):
 * - segments `000000000001.seg`, `000000000002.seg`, …: lines, each ended by
 *   `\n`, appended to the last segment; a new one is started once the last
 *   holds `segmentMaxBytes`;
 * - `cursor.json`: `{segment, offset}`, where the first unacknowledged line
 *   starts. Everything before it is acknowledged; a segment wholly before it
 *   is deleted. It is replaced atomically (temp file, fsync, rename, fsync of
 *   the directory), so a crash leaves the old cursor or the new one.
 *
 * Rules, in order:
 * 1. Appends are queued and coalesced: one write and one fdatasync for
 *    everything queued while the previous write was on its way. A batch is
 *    readable (and its `append` resolves) only after its fdatasync.
 * 2. A failed write is rolled back (the segment truncated to what was
 *    durable) and retried with backoff until it succeeds or the spool is
 *    closed; rewriting rather than retrying the fsync alone matters, because
 *    after a failed fsync Linux may have dropped the dirty pages it reported.
 *    `failing` is true meanwhile.
 * 3. `read` returns lines from disk, from the cursor on, never past what is
 *    durable; `ack` moves the cursor past a batch and deletes what that
 *    finishes. There is one reader, which acks the batches it read, in order.
 * 4. The bound is reported, not enforced: past `maxBytes` the spool is
 *    `full` and the caller stops taking work; appends still succeed, nothing
 *    is dropped.
 *
 * Crash semantics: on open, a segment that does not end in `\n` ends in a torn
 * line from a write whose fdatasync never returned (so no caller was told it
 * was durable); it is cut off. Every line whose `append` resolved is read
 * again, in order, from the persisted cursor. The only lines read twice are
 * those of a batch that was read but not yet acked when the process died:
 * delivery is at least once for that batch, exactly once otherwise.
 *
 * One process per directory: the spool takes no lock.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const DEFAULT_SPOOL_MAX_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_SPOOL_SEGMENT_MAX_BYTES = 8 * 1024 * 1024;
/** First pause after a failed write; doubled after each failure up to the max. */
const WRITE_RETRY_INITIAL_MS = 100;
const WRITE_RETRY_MAX_MS = 5_000;
/** How much is read at a time while scanning segments on open. */
const SCAN_CHUNK_BYTES = 1024 * 1024;
const TAIL_CHUNK_BYTES = 64 * 1024;

const CURSOR_FILE = 'cursor.json';
const CURSOR_TEMP_FILE = 'cursor.json.tmp';
const SEGMENT_NAME = /^(\d{12})\.seg$/;
const NEWLINE = 0x0a;

export type SpoolErrorCode =
  /** `append`, `read` or `ack` after `close`, or a write abandoned by `close`. */
  | 'SPOOL_CLOSED'
  /** `cursor.json` holds no cursor. */
  | 'SPOOL_CORRUPT'
  /** `ack` of a batch that does not start at the cursor (acked already, or not read from here). */
  | 'SPOOL_STALE_BATCH'
  /** A line holds `\n`, which would split it into two records. */
  | 'SPOOL_BAD_LINE';

/** Every error the spool throws; callers `switch (err.code)`. */
export class SpoolError extends Error {
  constructor(
    readonly code: SpoolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SpoolError';
  }
}

/** A place in the spool: a segment's number and a byte offset in it. */
export interface SpoolPosition {
  readonly segment: number;
  readonly offset: number;
}

/** Lines read from the spool, to be acked once delivered. */
export interface SpoolBatch {
  readonly lines: readonly string[];
  /** Their size on disk, newlines included. */
  readonly bytes: number;
  readonly start: SpoolPosition;
  readonly end: SpoolPosition;
}

export interface SpoolOptions {
  readonly dir: string;
  /** Past this many unacknowledged bytes the spool is `full`. */
  readonly maxBytes?: number;
  /** A new segment is started once the last one holds this many bytes. */
  readonly segmentMaxBytes?: number;
  /** Called each time appended lines become durable, and so readable. */
  readonly onDurable?: () => void;
  /** Called for each failed write (it is retried); `attempt` counts consecutive failures. */
  readonly onWriteError?: (err: Error, attempt: number) => void;
}

interface Segment {
  readonly id: number;
  /** Bytes known durable: appended lines end here, reads stop here. */
  size: number;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

export class Spool {
  /** Lines appended and not yet durable: queued for the next write, or in the current one. */
  private queue: string[] = [];
  private queueBytes = 0;
  private writingCount = 0;
  private writingBytes = 0;
  /** One per group of appends that share a write, oldest first. */
  private waiters: Waiter[] = [];
  /** The group new appends join; a write takes it, so later appends start the next one. */
  private group: Promise<void> | undefined;
  private writing: Promise<void> | undefined;
  /** A failed write may have left part of its batch after the durable size. */
  private dirty = false;
  private reader: { readonly id: number; readonly fh: FileHandle } | undefined;
  private readonly closing = new AbortController();
  private closed: Promise<void> | undefined;
  private readonly maxBytes: number;
  private readonly segmentMaxBytes: number;
  private writeFailing = false;

  private constructor(
    private readonly dir: string,
    private readonly segments: Segment[],
    private cursor: SpoolPosition,
    private writer: FileHandle,
    /** Durable lines not acknowledged, and their bytes. */
    private readableCount: number,
    private readableSize: number,
    /** Bytes of torn lines cut off on open. */
    readonly discardedBytes: number,
    private readonly options: SpoolOptions,
  ) {
    this.maxBytes = options.maxBytes ?? DEFAULT_SPOOL_MAX_BYTES;
    this.segmentMaxBytes = options.segmentMaxBytes ?? DEFAULT_SPOOL_SEGMENT_MAX_BYTES;
  }

  /** Opens (or creates) the spool in `options.dir`, recovering from a crash if there was one. */
  static async open(options: SpoolOptions): Promise<Spool> {
    const dir = options.dir;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // A temp cursor is a replacement that never got renamed: the old cursor stands.
    await rm(join(dir, CURSOR_TEMP_FILE), { force: true });
    const ids = (await readdir(dir))
      .map((name) => SEGMENT_NAME.exec(name)?.[1])
      .filter((id): id is string => id !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    let cursor = (await readCursor(dir)) ?? { segment: ids[0] ?? 1, offset: 0 };

    // Segments before the cursor were acknowledged; a crash came between the
    // cursor's rename and their deletion.
    for (const id of ids) if (id < cursor.segment) await unlink(join(dir, segmentName(id)));
    const live = ids.filter((id) => id >= cursor.segment);
    // The cursor's own segment is gone only once it was wholly acknowledged.
    if (live[0] !== cursor.segment) cursor = { segment: live[0] ?? cursor.segment, offset: 0 };
    if (live.length === 0) {
      await (await open(join(dir, segmentName(cursor.segment)), 'a', 0o600)).close();
      await syncDirectory(dir);
      live.push(cursor.segment);
    }

    const segments: Segment[] = [];
    let discardedBytes = 0;
    for (const id of live) {
      const path = join(dir, segmentName(id));
      const size = (await stat(path)).size;
      const kept = await cutTornTail(path, size);
      discardedBytes += size - kept;
      segments.push({ id, size: kept });
    }
    cursor = { segment: cursor.segment, offset: Math.min(cursor.offset, segments[0]?.size ?? 0) };

    let readableCount = 0;
    let readableSize = 0;
    for (const segment of segments) {
      const from = segment.id === cursor.segment ? cursor.offset : 0;
      readableCount += await countLines(join(dir, segmentName(segment.id)), from, segment.size);
      readableSize += segment.size - from;
    }
    const last = segments[segments.length - 1] as Segment;
    const writer = await open(join(dir, segmentName(last.id)), 'a', 0o600);
    return new Spool(
      dir,
      segments,
      cursor,
      writer,
      readableCount,
      readableSize,
      discardedBytes,
      options,
    );
  }

  /** Lines appended and not acknowledged (those still waiting for their write included). */
  get count(): number {
    return this.readableCount + this.writingCount + this.queue.length;
  }

  /** Their bytes, newlines included: on disk, or about to be. */
  get bytes(): number {
    return this.readableSize + this.writingBytes + this.queueBytes;
  }

  /** Durable lines not acknowledged: what `read` can return now. */
  get readable(): number {
    return this.readableCount;
  }

  get readableBytes(): number {
    return this.readableSize;
  }

  /** True while `bytes` is over `maxBytes`. */
  get full(): boolean {
    return this.bytes > this.maxBytes;
  }

  /** True from a failed write until a write succeeds: appended lines are only in memory. */
  get failing(): boolean {
    return this.writeFailing;
  }

  /**
   * Queues `lines` (each without a newline) for the next write; resolves once
   * they are durable. It rejects only if `close` abandons a write that kept
   * failing; a caller may ignore the promise (the rejection is handled here).
   */
  append(lines: readonly string[]): Promise<void> {
    if (this.closed) throw new SpoolError('SPOOL_CLOSED', 'the audit spool is closed');
    for (const line of lines) {
      if (line.includes('\n')) {
        throw new SpoolError('SPOOL_BAD_LINE', 'a spooled line cannot hold a newline');
      }
    }
    for (const line of lines) {
      this.queue.push(line);
      this.queueBytes += Buffer.byteLength(line) + 1;
    }
    const done = this.waiting();
    this.writing ??= this.writeQueued();
    return done;
  }

  /**
   * The oldest unacknowledged lines, at most `maxRecords` of them and at most
   * `maxBytes` (newlines included) unless the first line alone is larger.
   * Read again without an `ack` in between, it returns the same lines. A batch
   * never spans two segments, so it may be shorter than asked.
   */
  async read(maxRecords: number, maxBytes: number): Promise<SpoolBatch> {
    if (this.closed) throw new SpoolError('SPOOL_CLOSED', 'the audit spool is closed');
    const cursor = this.cursor;
    for (const segment of this.segments) {
      // Before the cursor's segment: done with (a reclaim that could not delete it).
      const from =
        segment.id === cursor.segment ? cursor.offset : segment.id > cursor.segment ? 0 : Infinity;
      if (from < segment.size) {
        return this.readFrom(segment, from, Math.max(1, maxRecords), Math.max(1, maxBytes));
      }
    }
    return { lines: [], bytes: 0, start: cursor, end: cursor };
  }

  /**
   * Acknowledges a batch from `read`: the cursor moves past it (persisted
   * before this resolves) and wholly acknowledged segments are deleted.
   */
  async ack(batch: SpoolBatch): Promise<void> {
    if (this.closed) throw new SpoolError('SPOOL_CLOSED', 'the audit spool is closed');
    const { segment, offset } = this.cursor;
    if (batch.start.segment !== segment || batch.start.offset !== offset) {
      throw new SpoolError('SPOOL_STALE_BATCH', 'the batch does not start at the spool cursor');
    }
    if (batch.lines.length === 0) return;
    await this.persistCursor(batch.end);
    this.cursor = batch.end;
    this.readableCount -= batch.lines.length;
    this.readableSize -= batch.bytes;
    await this.reclaim();
  }

  /**
   * Writes what is queued, then closes the files. A write that is failing is
   * abandoned: its `append`s reject, and its lines stay counted in `count`.
   */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing.abort();
      await this.writing;
      await this.reader?.fh.close();
      this.reader = undefined;
      await this.writer.close();
    })();
    return this.closed;
  }

  /** The promise shared by every append the next write will make durable. */
  private waiting(): Promise<void> {
    if (this.group === undefined) {
      let waiter: Waiter | undefined;
      this.group = new Promise<void>((resolve, reject) => (waiter = { resolve, reject }));
      // Callers may drop the promise; a rejection nobody awaits must not end the process.
      this.group.catch(() => {});
      this.waiters.push(waiter as Waiter);
    }
    return this.group;
  }

  /**
   * Writes until the queue is empty. It starts a microtask after the first
   * append, so the appends of one synchronous run share the first write.
   * `writing` is cleared in the same step as the final empty check, so an
   * append made after it (a resolved caller's, say) starts a new writer.
   */
  private async writeQueued(): Promise<void> {
    await Promise.resolve();
    let attempt = 0;
    try {
      while (this.queue.length > 0) {
        const lines = this.queue;
        const queuedBytes = this.queueBytes;
        const waiters = this.waiters;
        this.queue = [];
        this.queueBytes = 0;
        this.waiters = [];
        this.group = undefined;
        this.writingCount = lines.length;
        this.writingBytes = queuedBytes;
        try {
          await this.writeDurably(Buffer.from(lines.join('\n') + '\n'), lines.length);
        } catch (err) {
          this.writingCount = 0;
          this.writingBytes = 0;
          // Back to the head of the queue, ahead of what was appended meanwhile: order is kept.
          this.queue = lines.concat(this.queue);
          this.queueBytes += queuedBytes;
          this.waiters = waiters.concat(this.waiters);
          attempt += 1;
          if (!(await this.pauseAfterFailure(err as Error, attempt))) return;
          continue;
        }
        attempt = 0;
        this.writeFailing = false;
        for (const waiter of waiters) waiter.resolve();
        this.options.onDurable?.();
        if ((this.segments[this.segments.length - 1] as Segment).size >= this.segmentMaxBytes) {
          await this.roll().catch((err: Error) => this.options.onWriteError?.(err, 1));
        }
      }
    } finally {
      this.writing = undefined;
    }
  }

  /** Reports a failed write and waits before the next try; false once `close` abandons it. */
  private async pauseAfterFailure(err: Error, attempt: number): Promise<boolean> {
    this.writeFailing = true;
    this.options.onWriteError?.(err, attempt);
    const closing = this.closing.signal;
    const pause = Math.min(WRITE_RETRY_MAX_MS, WRITE_RETRY_INITIAL_MS * 2 ** (attempt - 1));
    await sleep(pause, undefined, { signal: closing, ref: false }).catch(() => {});
    if (!closing.aborted) return true;
    const abandoned = new SpoolError(
      'SPOOL_CLOSED',
      'the audit spool closed before a write succeeded',
    );
    for (const waiter of this.waiters) waiter.reject(abandoned);
    this.waiters = [];
    this.group = undefined;
    return false;
  }

  private async writeDurably(data: Buffer, lines: number): Promise<void> {
    const last = this.segments[this.segments.length - 1] as Segment;
    if (this.dirty) await this.writer.truncate(last.size);
    this.dirty = true;
    for (let written = 0; written < data.length;) {
      written += (await this.writer.write(data, written, data.length - written)).bytesWritten;
    }
    await this.writer.datasync();
    this.dirty = false;
    last.size += data.length;
    this.readableCount += lines;
    this.readableSize += data.length;
    this.writingCount = 0;
    this.writingBytes = 0;
  }

  /** Starts the next segment; the file exists on disk (directory fsynced) before anything goes to it. */
  private async roll(): Promise<void> {
    const id = (this.segments[this.segments.length - 1] as Segment).id + 1;
    const writer = await open(this.path(id), 'a', 0o600);
    try {
      await syncDirectory(this.dir);
    } catch (err) {
      await writer.close();
      throw err;
    }
    const previous = this.writer;
    this.writer = writer;
    this.segments.push({ id, size: 0 });
    await previous.close();
  }

  private async readFrom(
    segment: Segment,
    from: number,
    maxRecords: number,
    maxBytes: number,
  ): Promise<SpoolBatch> {
    if (this.reader?.id !== segment.id) {
      await this.reader?.fh.close();
      this.reader = undefined;
      this.reader = { id: segment.id, fh: await open(this.path(segment.id), 'r') };
    }
    const available = segment.size - from;
    let length = Math.min(available, maxBytes);
    // The durable region ends with a newline, so reading all of it finds a line.
    for (;;) {
      const buffer = await readAt(this.reader.fh, length, from);
      if (buffer.length < length) {
        throw new SpoolError('SPOOL_CORRUPT', `${this.path(segment.id)} is shorter than written`);
      }
      const lines: string[] = [];
      let bytes = 0;
      while (lines.length < maxRecords) {
        const newline = buffer.indexOf(NEWLINE, bytes);
        if (newline === -1) break;
        if (lines.length > 0 && newline + 1 > maxBytes) break;
        lines.push(buffer.toString('utf8', bytes, newline));
        bytes = newline + 1;
      }
      if (lines.length > 0) {
        const end = { segment: segment.id, offset: from + bytes };
        return { lines, bytes, start: this.cursor, end };
      }
      if (length === available) {
        throw new SpoolError('SPOOL_CORRUPT', `${this.path(segment.id)} lost a line's newline`);
      }
      // A line longer than maxBytes: read on to its end.
      length = Math.min(available, length * 2);
    }
  }

  private async persistCursor(cursor: SpoolPosition): Promise<void> {
    const temp = join(this.dir, CURSOR_TEMP_FILE);
    const fh = await open(temp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ segment: cursor.segment, offset: cursor.offset }));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, join(this.dir, CURSOR_FILE));
    await syncDirectory(this.dir);
  }

  /**
   * Deletes the segments the cursor is done with (never the last: it is being
   * written). The cursor then points at the next segment in memory only; on
   * open, a cursor naming a deleted segment means the same.
   */
  private async reclaim(): Promise<void> {
    for (;;) {
      const [first, next] = this.segments;
      if (first === undefined || next === undefined) return;
      const cursor = this.cursor;
      const done =
        first.id < cursor.segment || (first.id === cursor.segment && cursor.offset >= first.size);
      if (!done) return;
      if (this.reader?.id === first.id) {
        await this.reader.fh.close();
        this.reader = undefined;
      }
      await unlink(this.path(first.id));
      this.segments.shift();
      if (cursor.segment === first.id) this.cursor = { segment: next.id, offset: 0 };
    }
  }

  private path(id: number): string {
    return join(this.dir, segmentName(id));
  }
}

function segmentName(id: number): string {
  return `${String(id).padStart(12, '0')}.seg`;
}

async function readCursor(dir: string): Promise<SpoolPosition | undefined> {
  const path = join(dir, CURSOR_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const { segment, offset } = (parsed ?? {}) as Partial<Record<keyof SpoolPosition, unknown>>;
  if (Number.isSafeInteger(segment) && Number.isSafeInteger(offset)) {
    const position = { segment: segment as number, offset: offset as number };
    if (position.segment >= 0 && position.offset >= 0) return position;
  }
  throw new SpoolError(
    'SPOOL_CORRUPT',
    `${path} holds no spool cursor; move it away to send the spool again from its first segment`,
  );
}

/**
 * Cuts a segment back to its last newline; returns the size kept. What
 * follows the last newline is a line whose write never finished.
 */
async function cutTornTail(path: string, size: number): Promise<number> {
  if (size === 0) return 0;
  const fh = await open(path, 'r+');
  try {
    let kept = 0;
    for (let end = size; end > 0;) {
      const start = Math.max(0, end - TAIL_CHUNK_BYTES);
      const chunk = await readAt(fh, end - start, start);
      const newline = chunk.lastIndexOf(NEWLINE);
      if (newline !== -1) {
        kept = start + newline + 1;
        break;
      }
      end = start;
    }
    if (kept < size) {
      await fh.truncate(kept);
      await fh.datasync();
    }
    return kept;
  } finally {
    await fh.close();
  }
}

async function countLines(path: string, from: number, to: number): Promise<number> {
  if (from >= to) return 0;
  const fh = await open(path, 'r');
  try {
    let lines = 0;
    for (let position = from; position < to; position += SCAN_CHUNK_BYTES) {
      const chunk = await readAt(fh, Math.min(SCAN_CHUNK_BYTES, to - position), position);
      for (let i = chunk.indexOf(NEWLINE); i !== -1; i = chunk.indexOf(NEWLINE, i + 1)) lines += 1;
    }
    return lines;
  } finally {
    await fh.close();
  }
}

/** Reads exactly `length` bytes at `position` (the caller knows they are there). */
async function readAt(fh: FileHandle, length: number, position: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  for (let filled = 0; filled < length;) {
    const { bytesRead } = await fh.read(buffer, filled, length - filled, position + filled);
    if (bytesRead === 0) return buffer.subarray(0, filled);
    filled += bytesRead;
  }
  return buffer;
}

/** Makes a rename or a new file in `dir` durable (POSIX: the entry lives in the directory). */
async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
