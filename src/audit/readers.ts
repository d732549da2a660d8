/**
 * Reading back the audit copies kept in Redis and PostgreSQL, for
 * `portcullis audit verify` (every line, in order, with where it is held) and
 * `portcullis audit query` (the lines matching a filter). Readers return the
 * stored lines untouched: checking them is the caller's.
 *
 * Owns: audit locations as URLs (`redis://host:port/db?key=name`,
 * `postgres://…?table=name` or `?table=schema.name`) and paged reads, so a
 * log of any length is read in bounded memory.
 */
import { Redis } from 'ioredis';
import pg from 'pg';
import type { AuditDecision, AuditKind } from './types.js';
import { DEFAULT_POSTGRES_TABLE, parseAuditTable } from './sinks/postgres.js';
import { DEFAULT_REDIS_STREAM_KEY, field } from './sinks/redis-stream.js';

/** Entries or rows fetched per round trip. */
const READ_PAGE_RECORDS = 1_000;
const CONNECT_TIMEOUT_MS = 5_000;
const COMMAND_TIMEOUT_MS = 30_000;
/** Lines `queryPostgres` returns when the filter sets no limit. */
export const DEFAULT_AUDIT_QUERY_LIMIT = 1_000;

/** One stored line and where it was found, for a verifier's report. */
export interface StoredLine {
  readonly where: string;
  readonly line: string;
}

export type AuditLocation =
  | { readonly kind: 'redis'; readonly url: string; readonly key: string }
  | { readonly kind: 'postgres'; readonly url: string; readonly table: string };

/**
 * Splits an audit URL into the connection URL and the stream key (`?key=`,
 * default `portcullis:audit`) or table (`?table=`, default
 * `portcullis_audit`). The parameter is taken out of the URL, so the client
 * library never reads it as one of its own options.
 */
export function parseAuditUrl(url: string): AuditLocation {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Not echoed: it may hold a password.
    throw new RangeError('audit location is not a URL');
  }
  const take = (name: string): string | undefined => {
    const value = parsed.searchParams.get(name) ?? undefined;
    if (value !== undefined) parsed.searchParams.delete(name);
    return value;
  };
  switch (parsed.protocol) {
    case 'redis:':
    case 'rediss:': {
      const key = take('key');
      if (key === '') throw new RangeError('audit location: ?key= is empty');
      return {
        kind: 'redis',
        url: key === undefined ? url : parsed.toString(),
        key: key ?? DEFAULT_REDIS_STREAM_KEY,
      };
    }
    case 'postgres:':
    case 'postgresql:': {
      const table = take('table');
      parseAuditTable(table ?? DEFAULT_POSTGRES_TABLE);
      return {
        kind: 'postgres',
        url: table === undefined ? url : parsed.toString(),
        table: table ?? DEFAULT_POSTGRES_TABLE,
      };
    }
    default:
      throw new RangeError(
        `audit location must be a redis://, rediss://, postgres:// or postgresql:// URL, not ${parsed.protocol}`,
      );
  }
}

function locate<K extends AuditLocation['kind']>(
  url: string,
  kind: K,
): Extract<AuditLocation, { kind: K }> {
  const location = parseAuditUrl(url);
  if (location.kind !== kind) throw new RangeError(`audit location is not a ${kind} URL`);
  return location as Extract<AuditLocation, { kind: K }>;
}

/**
 * Every entry of the stream, oldest first. `key` overrides the URL's `?key=`.
 * An entry without an `r` field is not an audit record: reading stops there
 * with an error that names it.
 */
export async function* readRedisStream(url: string, key?: string): AsyncIterable<StoredLine> {
  const location = locate(url, 'redis');
  const stream = key ?? location.key;
  const client = new Redis(location.url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    // A one-shot read: a lost connection ends it with an error, it does not wait for Redis.
    retryStrategy: () => null,
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: COMMAND_TIMEOUT_MS,
    connectionName: 'portcullis-audit-reader',
  });
  // Failures surface through connect() and each XRANGE.
  client.on('error', () => undefined);
  try {
    await client.connect();
    let start = '-';
    for (;;) {
      const page = await client.xrange(stream, start, '+', 'COUNT', READ_PAGE_RECORDS);
      for (const [id, fields] of page) {
        const where = `redis stream ${stream} id ${id}`;
        const line = field(fields, 'r');
        if (line === undefined) throw new Error(`${where}: no "r" field, not an audit record`);
        yield { where, line };
      }
      const last = page.at(-1);
      if (!last || page.length < READ_PAGE_RECORDS) return;
      start = `(${last[0]}`;
    }
  } finally {
    client.disconnect();
  }
}

/**
 * Every row, ordered by chain, then seq (then time, which only a duplicated
 * seq needs), by keyset pagination. `table` (`name` or `schema.name`)
 * overrides the URL's `?table=`.
 */
export async function* readPostgres(url: string, table?: string): AsyncIterable<StoredLine> {
  const location = locate(url, 'postgres');
  const tableText = table ?? location.table;
  const t = parseAuditTable(tableText);
  const client = await connectPostgres(location.url);
  try {
    // The key is fetched as text under names of its own: ORDER BY would
    // otherwise sort by the text aliases. Time as text round-trips exactly
    // within the session (a JS Date would lose microseconds).
    const columns = `SELECT chain, seq::text AS key_seq, time::text AS key_time, line FROM ${t.sql}`;
    const order = `ORDER BY chain, seq, time LIMIT ${READ_PAGE_RECORDS}`;
    let after: [string, string, string] | undefined;
    for (;;) {
      const { rows } = await client.query<{
        chain: string;
        key_seq: string;
        key_time: string;
        line: string;
      }>(
        after
          ? `${columns} WHERE (chain, seq, time) > ($1, $2::bigint, $3::timestamptz) ${order}`
          : `${columns} ${order}`,
        after,
      );
      for (const row of rows) {
        yield {
          where: `postgres table ${tableText} chain ${row.chain} seq ${row.key_seq}`,
          line: row.line,
        };
      }
      const last = rows.at(-1);
      if (!last || rows.length < READ_PAGE_RECORDS) return;
      after = [last.chain, last.key_seq, last.key_time];
    }
  } finally {
    await client.end();
  }
}

export interface AuditQuery {
  tenant?: string;
  subject?: string;
  tool?: string;
  session?: string;
  decision?: AuditDecision;
  /** Records of these kinds only (every kind when absent). */
  kinds?: readonly AuditKind[];
  /** Records at or after this time. */
  since?: Date;
  /** Records before this time. */
  until?: Date;
  /** At most this many lines (default 1,000). */
  limit?: number;
}

/**
 * The lines matching every condition of `filter`, oldest first. Values
 * travel as parameters; only the validated table name is in the SQL text.
 */
export async function queryPostgres(
  url: string,
  table: string | undefined,
  filter: AuditQuery,
): Promise<string[]> {
  const location = locate(url, 'postgres');
  const t = parseAuditTable(table ?? location.table);
  const limit = filter.limit ?? DEFAULT_AUDIT_QUERY_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`audit query limit must be a positive integer, got ${limit}`);
  }
  const params: unknown[] = [];
  const conditions: string[] = [];
  const where = (column: string, operator: string, value: unknown): void => {
    if (value === undefined) return;
    params.push(value);
    conditions.push(`${column} ${operator} $${params.length}`);
  };
  where('tenant', '=', filter.tenant);
  where('subject', '=', filter.subject);
  where('tool', '=', filter.tool);
  where('session', '=', filter.session);
  where('decision', '=', filter.decision);
  if (filter.kinds !== undefined) {
    params.push([...filter.kinds]);
    conditions.push(`kind = ANY($${params.length}::text[])`);
  }
  where('time', '>=', filter.since);
  where('time', '<', filter.until);
  params.push(limit);
  const sql =
    `SELECT line FROM ${t.sql}` +
    (conditions.length > 0 ? ` WHERE ${conditions.join(' AND ')}` : '') +
    ` ORDER BY time, chain, seq LIMIT $${params.length}`;
  const client = await connectPostgres(location.url);
  try {
    const { rows } = await client.query<{ line: string }>(sql, params);
    return rows.map((r) => r.line);
  } finally {
    await client.end();
  }
}

async function connectPostgres(url: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: COMMAND_TIMEOUT_MS,
    application_name: 'portcullis-audit-reader',
  });
  // A connection lost between queries is emitted here; the next query reports it.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}
