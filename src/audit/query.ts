/**
 * `portcullis audit query`: the records of a trail that match a filter, read
 * from the file sink's files or from the PostgreSQL sink's table. A query
 * reads, it does not prove: it shows what the store holds (`audit verify`
 * says whether that was altered).
 *
 * Owns: the filter's meaning, the same for both sources (every condition
 * must hold; `since` inclusive, `until` exclusive; checkpoints never match,
 * they are the chain's, not traffic), time bounds as the command line gives
 * them, and one record as a line for a terminal.
 *
 * Files are streamed line by line and stop at the limit, so a directory of
 * any size is read in bounded memory; PostgreSQL filters and limits in SQL.
 */
import { DEFAULT_AUDIT_QUERY_LIMIT, queryPostgres, type AuditQuery } from './readers.js';
import type { AuditDecision, AuditKind, AuditRecord } from './types.js';
import { readAuditFiles } from './verify.js';

export const AUDIT_DECISIONS: readonly AuditDecision[] = ['allow', 'deny', 'shadow-deny'];

/** The kinds a query shows: a checkpoint is a statement about the chain, not about traffic. */
export const QUERIED_KINDS: readonly AuditKind[] = ['message', 'refusal'];

/** Where a query reads: audit files (each a file or a directory of them), or a PostgreSQL table. */
export type QuerySource =
  | { readonly kind: 'files'; readonly paths: readonly string[] }
  | { readonly kind: 'postgres'; readonly url: string };

export interface QueryMatch {
  /** The stored line, byte for byte. */
  readonly line: string;
  readonly record: AuditRecord;
}

export interface QueryHandlers {
  /** A line that is not an audit record (not JSON, or not an object): left out, named here. */
  onUnreadable?: (where: string) => void;
}

/** True when `record` meets every condition of `filter` (its `limit` aside). */
export function matches(record: AuditRecord, filter: AuditQuery): boolean {
  if (!(filter.kinds ?? QUERIED_KINDS).includes(record.kind)) return false;
  if (filter.tenant !== undefined && record.tenant !== filter.tenant) return false;
  if (filter.subject !== undefined && record.subject !== filter.subject) return false;
  if (filter.tool !== undefined && record.tool !== filter.tool) return false;
  if (filter.session !== undefined && record.session !== filter.session) return false;
  if (filter.decision !== undefined && record.decision !== filter.decision) return false;
  if (filter.since !== undefined || filter.until !== undefined) {
    const time = typeof record.time === 'string' ? Date.parse(record.time) : NaN;
    // A record without a readable time cannot be placed inside a window.
    if (Number.isNaN(time)) return false;
    if (filter.since !== undefined && time < filter.since.getTime()) return false;
    if (filter.until !== undefined && time >= filter.until.getTime()) return false;
  }
  return true;
}

/**
 * The matching records, oldest first, at most `filter.limit` (default
 * 1,000): files in the order they were written, a table by time.
 */
export async function* queryAudit(
  source: QuerySource,
  filter: AuditQuery,
  handlers: QueryHandlers = {},
): AsyncIterable<QueryMatch> {
  const limit = filter.limit ?? DEFAULT_AUDIT_QUERY_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`audit query limit must be a positive integer, got ${limit}`);
  }
  const scoped: AuditQuery = { ...filter, kinds: filter.kinds ?? QUERIED_KINDS, limit };
  if (source.kind === 'postgres') {
    const lines = await queryPostgres(source.url, undefined, scoped);
    for (const [i, line] of lines.entries()) {
      const record = parseRecord(line);
      if (record === undefined) handlers.onUnreadable?.(`row ${i + 1} of the result`);
      else yield { line, record };
    }
    return;
  }
  let found = 0;
  for await (const { where, line } of readAuditFiles(source.paths)) {
    if (line.trim() === '') continue;
    const record = parseRecord(line);
    if (record === undefined) {
      handlers.onUnreadable?.(where);
      continue;
    }
    if (!matches(record, scoped)) continue;
    yield { line, record };
    // Returning ends the file read: the rest of the trail is never opened.
    if (++found >= limit) return;
  }
}

function parseRecord(line: string): AuditRecord | undefined {
  try {
    const value: unknown = JSON.parse(line);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
    return value as AuditRecord;
  } catch {
    return undefined;
  }
}

const DURATION = /^(\d+)(s|m|h|d)$/;
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
/** A date (midnight UTC), or a date and time with its offset: never the reader's local zone. */
const ISO_TIME =
  /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):(\d{2})))?$/i;

/**
 * A time bound as the command line gives it: a duration back from `now`
 * (`90s`, `30m`, `1h`, `7d`) or an ISO 8601 time (`2026-05-01`,
 * `2026-05-01T12:00:00Z`, `…+02:00`). Undefined when it is neither.
 */
export function parseTimeBound(text: string, now: number = Date.now()): Date | undefined {
  const duration = DURATION.exec(text);
  if (duration !== null) {
    const ms = Number(duration[1]) * UNIT_MS[duration[2] as keyof typeof UNIT_MS];
    return Number.isSafeInteger(ms) ? new Date(now - ms) : undefined;
  }
  const iso = ISO_TIME.exec(text);
  if (iso === null) return undefined;
  const [year, month, day, hour = 0, minute = 0, second = 0, offsetHour = 0, offsetMinute = 0] = iso
    .slice(1)
    .map((part) => (part === undefined ? undefined : Number(part)));
  // Date.parse rolls an impossible date over (February 30th is March 2nd): refuse it instead.
  const date = new Date(Date.UTC(year as number, (month as number) - 1, day));
  if (date.getUTCMonth() !== (month as number) - 1 || date.getUTCDate() !== day) return undefined;
  if (hour > 23 || minute > 59 || second > 59 || offsetHour > 23 || offsetMinute > 59)
    return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : new Date(ms);
}

/** Control, format and separator characters, escaped: a record's strings are the client's. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;

function cell(value: unknown): string {
  if (value === undefined || value === null || value === '') return '-';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.replace(UNSAFE, (c) => `\\u{${(c.codePointAt(0) as number).toString(16)}}`);
}

/**
 * One record as a line for a terminal: time, tenant/subject, server,
 * direction, method (a refusal: `refused` and its path), tool, decision,
 * then `rule=`, `status=`, `id=` and `error=` when the record has them.
 */
export function formatRecord(record: AuditRecord): string {
  const method = record.kind === 'refusal' ? `refused ${cell(record.path)}` : cell(record.method);
  const columns = [
    cell(record.time),
    `${cell(record.tenant)}/${cell(record.subject)}`,
    cell(record.server),
    cell(record.direction),
    method,
    cell(record.tool),
    cell(record.decision),
  ];
  if (record.rule !== undefined) columns.push(`rule=${cell(record.rule)}`);
  if (record.status !== undefined) columns.push(`status=${cell(record.status)}`);
  // JSON, so a string id ("7") and a number id (7) read differently, as they are.
  if (record.rpcId !== undefined) columns.push(`id=${cell(JSON.stringify(record.rpcId))}`);
  if (record.error !== undefined) columns.push(`error=${cell(record.error)}`);
  return columns.join('  ');
}
