/**
 * Capture mode (`audit.capture`): the whole JSON-RPC message of every
 * message record, encrypted at rest, so `portcullis audit replay` can send a
 * recorded call again and show that what it sends is what was recorded.
 *
 * One entry per message record, a JSON line `{chain, seq, iv, ct, tag}`
 * (iv, ct and tag base64url) in files `capture-<UTC time>.jsonl`. `ct` is
 * AES-256-GCM over the UTF-8 of `JSON.stringify(message)`, with a random
 * 96-bit IV, and the additional data binds it to its record:
 * `JSON.stringify(["portcullis-capture/1", chain, seq, hash])`. An entry
 * moved to another record, or kept beside a record that was altered (a new
 * hash), does not decrypt. Records are unchanged: an entry is found by its
 * record's chain and seq.
 *
 * Owns: the key file's checks, the entry format (seal and open), and the
 * capture directory. The sink is one of the log's sinks, so it is opened,
 * flushed, closed and counted with them, and a capture that cannot keep up
 * refuses new requests (`full`) as any sink does; the log's own `write` of
 * each record is ignored: the observer hands it the record and its message
 * (`capture`). The message is held by reference until its batch is written:
 * serialization and encryption happen there, off the exchange's path.
 */
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  randomFillSync,
  type KeyObject,
} from 'node:crypto';
import { promises as fs, type Stats } from 'node:fs';
import type { AuditRecord, AuditSink, SinkStats } from './types.js';
import { Journal, journalFiles } from './sinks/journal.js';

export const CAPTURE_KEY_BYTES = 32;
const IV_BYTES = 12;
/** IVs drawn from the CSPRNG at once (one call per this many entries). */
const IV_POOL_ENTRIES = 1_024;
const AAD_LABEL = 'portcullis-capture/1';
/** Hex (`openssl rand -hex 32`) or base64, standard or URL alphabet (`openssl rand -base64 32`). */
const HEX_KEY = /^[\da-fA-F]{64}$/;
const BASE64_KEY = /^[A-Za-z0-9+/_-]{43}=?$/;

/** One line of a capture file. */
export interface CaptureEntry {
  chain: string;
  seq: number;
  iv: string;
  ct: string;
  tag: string;
}

/**
 * Reads the capture key: 32 bytes written as 64 hex digits or as base64
 * (whitespace around it ignored). Refuses a missing file, one readable or
 * writable by group or others, and anything that is not 32 bytes once decoded,
 * saying which.
 */
export async function loadCaptureKey(file: string): Promise<KeyObject> {
  let stat: Stats;
  try {
    stat = await fs.stat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(
      code === 'ENOENT'
        ? `audit.capture.keyFile ${file} does not exist; make one with: openssl rand -base64 32 > ${file} && chmod 600 ${file}`
        : `audit.capture.keyFile ${file} cannot be read (${code ?? (err as Error).message})`,
    );
  }
  if (!stat.isFile()) throw new Error(`audit.capture.keyFile ${file} is not a file`);
  if (process.platform !== 'win32' && (stat.mode & 0o077) !== 0)
    throw new Error(
      `audit.capture.keyFile ${file} is readable or writable by group or others (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}); chmod 600 ${file}`,
    );
  const text = (await fs.readFile(file, 'utf8')).trim();
  let key: Buffer | undefined;
  if (HEX_KEY.test(text)) key = Buffer.from(text, 'hex');
  else if (BASE64_KEY.test(text)) key = Buffer.from(text, 'base64');
  if (key?.length !== CAPTURE_KEY_BYTES)
    throw new Error(
      `audit.capture.keyFile ${file} does not hold a ${CAPTURE_KEY_BYTES}-byte key as base64 or hex ` +
        `(${text.length} characters); make one with: openssl rand -base64 32`,
    );
  return createSecretKey(key);
}

/** The additional data of an entry: what it is bound to. */
function additionalData(chain: string, seq: number, hash: string): Buffer {
  return Buffer.from(JSON.stringify([AAD_LABEL, chain, seq, hash]), 'utf8');
}

/** Encrypts `plaintext` as the entry of record `{chain, seq, hash}`; returns its line. */
export function sealCapture(
  key: KeyObject,
  record: Pick<AuditRecord, 'chain' | 'seq' | 'hash'>,
  plaintext: string,
  iv: Buffer,
): string {
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(additionalData(record.chain, record.seq, record.hash));
  const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return (
    `{"chain":${JSON.stringify(record.chain)},"seq":${record.seq},` +
    `"iv":"${iv.toString('base64url')}","ct":"${ct.toString('base64url')}",` +
    `"tag":"${cipher.getAuthTag().toString('base64url')}"}`
  );
}

/** Why an entry could not be opened. */
export type CaptureProblem = 'malformed' | 'does-not-decrypt';

export class CaptureError extends Error {
  constructor(
    readonly code: CaptureProblem,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Decrypts an entry as the capture of `record` (its chain, seq and hash):
 * the plaintext, or a CaptureError when the entry was altered, belongs to
 * another record, the record was altered, or the key is another.
 */
export function openCapture(
  key: KeyObject,
  entry: CaptureEntry,
  record: Pick<AuditRecord, 'chain' | 'seq' | 'hash'>,
): string {
  const iv = Buffer.from(entry.iv, 'base64url');
  const tag = Buffer.from(entry.tag, 'base64url');
  if (iv.length !== IV_BYTES || tag.length !== 16)
    throw new CaptureError('malformed', 'its iv or tag is not of the right length');
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
    decipher.setAAD(additionalData(record.chain, record.seq, record.hash));
    decipher.setAuthTag(tag);
    const ct = Buffer.from(entry.ct, 'base64url');
    return Buffer.concat([decipher.update(ct), decipher.final()]).toString('utf8');
  } catch {
    throw new CaptureError(
      'does-not-decrypt',
      'it does not decrypt as this record’s: the entry or the record was altered, the entry is another record’s, or the key is another',
    );
  }
}

/** Parses a capture line; undefined for a line that is not an entry. */
export function parseCaptureLine(line: string): CaptureEntry | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  const e = value as Partial<CaptureEntry> | null;
  if (
    e === null ||
    typeof e !== 'object' ||
    typeof e.chain !== 'string' ||
    typeof e.seq !== 'number' ||
    typeof e.iv !== 'string' ||
    typeof e.ct !== 'string' ||
    typeof e.tag !== 'string'
  )
    return undefined;
  return e as CaptureEntry;
}

/** The capture files of `dir`, oldest first (their names sort by time). */
export function captureFiles(dir: string): Promise<string[]> {
  return journalFiles(dir, 'capture');
}

/** What the observer hands the capture: a record just appended, and its message. */
export interface MessageCapture {
  capture(record: AuditRecord, message: unknown): void;
}

export interface CaptureSinkOptions {
  name: string;
  dir: string;
  key: KeyObject;
  maxFileBytes: number;
  maxFileAgeMs: number;
  /** Files last written longer ago are removed (0 keeps all). */
  retentionDays: number;
  /** Entries waiting for the disk before the sink reports `full`. */
  queueMax: number;
  fsync: boolean;
  onError?: (err: Error) => void;
}

/**
 * The capture directory as a sink of the log: a journal (journal.ts) of
 * entries, each sealed when its batch is written.
 */
export class CaptureSink implements AuditSink, MessageCapture {
  // A sink of files; the metrics name it by `name`.
  readonly kind = 'file' as const;
  readonly name: string;
  private readonly journal: Journal<{ record: AuditRecord; message: unknown }>;
  private readonly ivPool = Buffer.alloc(IV_BYTES * IV_POOL_ENTRIES);
  private ivNext = IV_POOL_ENTRIES;

  constructor(private readonly options: CaptureSinkOptions) {
    this.name = options.name;
    this.journal = new Journal({
      dir: options.dir,
      prefix: 'capture',
      maxFileBytes: options.maxFileBytes,
      maxFileAgeMs: options.maxFileAgeMs,
      retentionDays: options.retentionDays,
      queueMax: options.queueMax,
      fsync: options.fsync,
      serialize: (entries) =>
        entries.map(({ record, message }) =>
          sealCapture(this.options.key, record, JSON.stringify(message) ?? 'null', this.nextIv()),
        ),
      onError: options.onError,
    });
  }

  async open(): Promise<AuditRecord | undefined> {
    await this.journal.open();
    // Entries are not records: the chain goes on from the record sinks.
    return undefined;
  }

  get full(): boolean {
    return this.journal.full;
  }

  /** Every record the log appends comes here too; the capture waits for its message instead. */
  write(): void {}

  capture(record: AuditRecord, message: unknown): void {
    this.journal.push({ record, message });
  }

  private nextIv(): Buffer {
    if (this.ivNext === IV_POOL_ENTRIES) {
      randomFillSync(this.ivPool);
      this.ivNext = 0;
    }
    const at = this.ivNext++ * IV_BYTES;
    return this.ivPool.subarray(at, at + IV_BYTES);
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
