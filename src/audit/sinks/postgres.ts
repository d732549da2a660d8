/**
 * The `postgres` sink: one row per record in a table partitioned by day
 * (RANGE on `time`, UTC). The row keeps the sealed line byte for byte in
 * `line`, which is what `audit verify` checks; `record` (jsonb) and the
 * columns beside it are copies for querying.
 *
 * Owns: the table, its daily partitions, its indexes and the trigger that
 * makes it append-only, all named from `table` (see `auditTable`). At open
 * and hourly it creates today's and tomorrow's partitions and drops those
 * wholly past `retentionDays`; a record for a day without one creates it
 * first. DDL runs under a transaction-scoped advisory lock, so gateways
 * sharing a table do not race each other's CREATE or DROP.
 *
 * Append-only: a trigger refuses UPDATE and DELETE (on the table and on each
 * partition) and TRUNCATE (on the table), for every role, the owner's too.
 * It stops mistakes and any role granted INSERT or SELECT; it does not stop
 * the owner, which is the gateway's role (it creates and drops partitions),
 * nor a superuser: either can disable the trigger, drop a partition or
 * rewrite rows. That is what `audit verify` detects: the chain's hashes no
 * longer link.
 *
 * Delivery: batches are one INSERT from `unnest` of column arrays, in a
 * transaction. The key (chain, seq, time) with ON CONFLICT DO NOTHING makes a
 * retry after a lost COMMIT reply harmless. The backlog is in memory only;
 * the gateway pairs this sink with the `file` sink for a copy that survives
 * a crash.
 */
import pg from 'pg';
import type { AuditRecord, AuditSink } from '../types.js';
import { BatchedSink, reportError, type QueuedRecord } from './batch-queue.js';
import { untilDeadline } from './timing.js';

export const DEFAULT_POSTGRES_TABLE = 'portcullis_audit';
export const DEFAULT_POSTGRES_RETENTION_DAYS = 90;
/** How often partitions are created ahead and dropped past retention; hourly, so a run missed while the database was down is soon made up. */
export const DEFAULT_POSTGRES_MAINTENANCE_INTERVAL_MS = 3_600_000;
/** Server-side bound on one statement (a batch insert, a DDL waiting for its lock). */
export const DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS = 10_000;
/** Client-side bound on one query, for a server that stopped answering at all. */
const QUERY_TIMEOUT_MS = 15_000;
const CONNECT_TIMEOUT_MS = 2_000;
const DAY_MS = 86_400_000;

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;
/** What is appended to the table's name for the objects named after it; the longest bounds the table's name. */
const SUFFIX = {
  partition: '_p', // + YYYYMMDD
  tenantIndex: '_tenant_time',
  toolIndex: '_tool_time',
  sessionIndex: '_session',
  timeIndex: '_time',
  function: '_append_only',
  changeTrigger: '_no_change',
  truncateTrigger: '_no_truncate',
} as const;
const PARTITION_DATE_LENGTH = 8;
/** Postgres truncates longer names silently, which would let two derived names collide. */
const MAX_TABLE_NAME_LENGTH =
  63 -
  Math.max(
    ...Object.values(SUFFIX).map((s) => s.length),
    SUFFIX.partition.length + PARTITION_DATE_LENGTH,
  );

/** A table's name and the names derived from it, validated once and quoted for SQL. */
export interface AuditTable {
  readonly schema: string | undefined;
  readonly name: string;
  /** Quoted and schema-qualified, as SQL text. */
  readonly sql: string;
  /** The `sql` of an object named `name + suffix` in the same schema. */
  derived(suffix: string): string;
}

/**
 * Validates `name` (and `schema`) against /^[a-z_][a-z0-9_]{0,62}$/, with
 * room left in `name` for the names derived from it. Nothing from
 * configuration reaches SQL text without passing here.
 */
export function auditTable(name: string, schema?: string): AuditTable {
  checkIdentifier('table', name);
  if (name.length > MAX_TABLE_NAME_LENGTH) {
    throw new RangeError(
      `audit table name "${name}" is longer than ${MAX_TABLE_NAME_LENGTH} characters (names derived from it must fit in 63)`,
    );
  }
  if (schema !== undefined) checkIdentifier('schema', schema);
  const qualify = (n: string): string => (schema === undefined ? `"${n}"` : `"${schema}"."${n}"`);
  return { schema, name, sql: qualify(name), derived: (suffix) => qualify(name + suffix) };
}

/** Parses `table` or `schema.table` (readers take the table this way, from a URL or the command line). */
export function parseAuditTable(text: string): AuditTable {
  const parts = text.split('.');
  if (parts.length === 2) return auditTable(parts[1] ?? '', parts[0]);
  return auditTable(text);
}

function checkIdentifier(what: string, name: string): void {
  if (!IDENTIFIER.test(name)) {
    throw new RangeError(`audit ${what} name "${name}" must match ${IDENTIFIER.source}`);
  }
}

interface Column {
  readonly name: string;
  readonly type: string;
  readonly required?: true;
  readonly value: (record: AuditRecord, line: string) => unknown;
}

/** The table's columns, in order: its DDL and the batch insert are both built from this list. */
const COLUMNS: readonly Column[] = [
  { name: 'chain', type: 'text', required: true, value: (r) => text(r.chain) },
  { name: 'seq', type: 'bigint', required: true, value: (r) => r.seq },
  { name: 'time', type: 'timestamptz', required: true, value: (r) => r.time },
  { name: 'kind', type: 'text', required: true, value: (r) => text(r.kind) },
  { name: 'tenant', type: 'text', value: (r) => text(r.tenant) },
  { name: 'subject', type: 'text', value: (r) => text(r.subject) },
  { name: 'client', type: 'text', value: (r) => text(r.client) },
  { name: 'session', type: 'text', value: (r) => text(r.session) },
  { name: 'server', type: 'text', value: (r) => text(r.server) },
  { name: 'method', type: 'text', value: (r) => text(r.method) },
  { name: 'tool', type: 'text', value: (r) => text(r.tool) },
  { name: 'decision', type: 'text', value: (r) => text(r.decision) },
  { name: 'rule', type: 'text', value: (r) => text(r.rule) },
  { name: 'status', type: 'integer', value: (r) => (Number.isInteger(r.status) ? r.status : null) },
  { name: 'is_error', type: 'boolean', value: (r) => r.isError ?? null },
  { name: 'direction', type: 'text', value: (r) => text(r.direction) },
  {
    name: 'rpc_id',
    type: 'text',
    value: (r) => (typeof r.rpcId === 'number' ? String(r.rpcId) : text(r.rpcId)),
  },
  { name: 'trace_id', type: 'text', value: (r) => text(r.traceId) },
  { name: 'args_hash', type: 'text', value: (r) => text(r.argsHash) },
  { name: 'hash', type: 'text', required: true, value: (r) => text(r.hash) },
  { name: 'prev_hash', type: 'text', required: true, value: (r) => text(r.prevHash) },
  { name: 'record', type: 'jsonb', required: true, value: (r, line) => jsonbText(r, line) },
  { name: 'line', type: 'text', required: true, value: (_r, line) => line },
];

/** Postgres text cannot hold NUL; a column copy shows U+FFFD instead (the line keeps `\u0000`). */
function text(value: unknown): string | null {
  return typeof value === 'string' ? value.replace(/\0/g, '\uFFFD') : null;
}

/** `\u0000` and lone-surrogate escapes: valid JSON that jsonb refuses, which would block the queue. */
const JSONB_REFUSES = /\\u(?:0000|d[89a-f][0-9a-f]{2})/i;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * The line itself, unless jsonb would refuse it (the cheap test can match a
 * harmless `\\u0000`, which only costs a copy); then the record with every
 * such character, in keys and values, made U+FFFD.
 */
function jsonbText(record: AuditRecord, line: string): string {
  return JSONB_REFUSES.test(line) ? JSON.stringify(jsonbSafe(record)) : line;
}

function jsonbSafe(value: unknown): unknown {
  if (typeof value === 'string')
    return value.replace(/\0/g, '\uFFFD').replace(LONE_SURROGATE, '\uFFFD');
  if (Array.isArray(value)) return value.map(jsonbSafe);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[jsonbSafe(k) as string] = jsonbSafe(v);
    return out;
  }
  return value;
}

/** The UTC midnight (ms) of an ISO time. */
function dayOf(time: string): number {
  const ms = Date.parse(time);
  return ms - (((ms % DAY_MS) + DAY_MS) % DAY_MS);
}

/** `YYYYMMDD` of a UTC midnight. */
function dayTag(day: number): string {
  return new Date(day).toISOString().slice(0, 10).replace(/-/g, '');
}

export interface PostgresSinkOptions {
  name: string;
  /** `postgres://` or `postgresql://` connection string. */
  url: string;
  table?: string;
  /** Created if absent; without it, the connection's search_path decides. */
  schema?: string;
  /** Partitions whose whole day is older than this are dropped (default 90; 0 keeps all). */
  retentionDays?: number;
  batchMaxRecords?: number;
  flushIntervalMs?: number;
  /** Records held in memory before the sink reports `full` (default 100,000). */
  queueMax?: number;
  onError?: (err: Error) => void;
}

export class PostgresSink extends BatchedSink implements AuditSink {
  readonly kind = 'postgres' as const;
  private readonly table: AuditTable;
  private readonly retentionDays: number;
  private readonly pool: pg.Pool;
  private readonly insertSql: string;
  private readonly maintenanceTimer: NodeJS.Timeout;
  /** Set up once per sink; cleared on failure so the next delivery tries again. */
  private schemaReady: Promise<void> | undefined;
  /** UTC midnights (ms) whose partition is known to exist. */
  private readonly partitions = new Set<number>();

  /** Validates the names (throws RangeError); connects on first use. */
  constructor(private readonly options: PostgresSinkOptions) {
    super(options);
    this.table = auditTable(options.table ?? DEFAULT_POSTGRES_TABLE, options.schema);
    this.retentionDays = options.retentionDays ?? DEFAULT_POSTGRES_RETENTION_DAYS;
    this.pool = new pg.Pool({
      connectionString: options.url,
      // One connection delivers batches, one is left for maintenance.
      max: 2,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
      keepAlive: true,
      allowExitOnIdle: true,
      application_name: 'portcullis-audit',
    });
    // An idle connection that breaks is dropped by the pool; the next use reconnects.
    this.pool.on('error', (err) => reportError(options.onError, err));
    const placeholders = COLUMNS.map((c, i) => `$${i + 1}::${c.type}[]`).join(', ');
    this.insertSql =
      `INSERT INTO ${this.table.sql} (${COLUMNS.map((c) => c.name).join(', ')}) ` +
      `SELECT * FROM unnest(${placeholders}) ON CONFLICT DO NOTHING`;
    this.maintenanceTimer = setInterval(() => {
      this.maintain().catch((err: unknown) => reportError(options.onError, err));
    }, DEFAULT_POSTGRES_MAINTENANCE_INTERVAL_MS).unref();
  }

  /**
   * Creates what is missing, runs maintenance, and returns the newest record
   * (latest `time`, then highest `seq`, whatever its chain). Rejects when the
   * database cannot be reached or refuses the DDL; deliveries retry the setup.
   */
  async open(): Promise<AuditRecord | undefined> {
    await this.maintain();
    const { rows } = await this.pool.query<{ line: string }>(
      `SELECT line FROM ${this.table.sql} ORDER BY time DESC, seq DESC LIMIT 1`,
    );
    const line = rows[0]?.line;
    return line === undefined ? undefined : (JSON.parse(line) as AuditRecord);
  }

  protected stopping(): void {
    clearInterval(this.maintenanceTimer);
  }

  protected async release(deadline: number): Promise<void> {
    await untilDeadline(this.pool.end(), deadline);
  }

  protected async deliver(batch: readonly QueuedRecord[]): Promise<void> {
    await this.ensureSchema();
    await this.ensurePartitions(batch.map((e) => dayOf(e.record.time)));
    const values = COLUMNS.map((c) => batch.map((e) => c.value(e.record, e.line)));
    try {
      await this.transaction((client) => client.query(this.insertSql, values));
    } catch (err) {
      // No partition for a row (23514): one was dropped behind this sink's back; look again.
      if ((err as { code?: unknown }).code === '23514') this.partitions.clear();
      throw err;
    }
  }

  private async maintain(): Promise<void> {
    await this.ensureSchema();
    const today = dayOf(new Date().toISOString());
    await this.ensurePartitions([today, today + DAY_MS]);
    await this.dropExpired();
  }

  private ensureSchema(): Promise<void> {
    this.schemaReady ??= this.createSchema().catch((err: unknown) => {
      this.schemaReady = undefined;
      throw err;
    });
    return this.schemaReady;
  }

  private async createSchema(): Promise<void> {
    const t = this.table;
    const columns = COLUMNS.map((c) => `${c.name} ${c.type}${c.required ? ' NOT NULL' : ''}`);
    await this.ddl(async (client) => {
      if (t.schema !== undefined) await client.query(`CREATE SCHEMA IF NOT EXISTS "${t.schema}"`);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${t.sql} (${columns.join(', ')}, ` +
          // A partitioned table's key must hold the partition key.
          `PRIMARY KEY (chain, seq, time)) PARTITION BY RANGE (time)`,
      );
      const indexes: Array<[string, string]> = [
        [SUFFIX.tenantIndex, 'tenant, time'],
        [SUFFIX.toolIndex, 'tool, time'],
        [SUFFIX.sessionIndex, 'session'],
        // For `open`: the newest row without reading a whole partition.
        [SUFFIX.timeIndex, 'time'],
      ];
      for (const [suffix, on] of indexes) {
        // An index always lives in its table's schema, so its name is unqualified.
        await client.query(`CREATE INDEX IF NOT EXISTS "${t.name}${suffix}" ON ${t.sql} (${on})`);
      }
      await client.query(
        `CREATE OR REPLACE FUNCTION ${t.derived(SUFFIX.function)}() RETURNS trigger ` +
          `LANGUAGE plpgsql AS $$ BEGIN ` +
          `RAISE EXCEPTION 'portcullis audit table %.% is append-only: % refused', ` +
          `TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege'; ` +
          `END $$`,
      );
      // A row trigger on a partitioned table is cloned onto every partition,
      // present and future, so it also guards a partition addressed directly.
      // Statement triggers are not cloned: TRUNCATE is refused on the parent only.
      const triggers: Array<[string, string]> = [
        [SUFFIX.changeTrigger, `BEFORE UPDATE OR DELETE ON ${t.sql} FOR EACH ROW`],
        [SUFFIX.truncateTrigger, `BEFORE TRUNCATE ON ${t.sql} FOR EACH STATEMENT`],
      ];
      for (const [suffix, when] of triggers) {
        const name = t.name + suffix;
        const { rowCount } = await client.query(
          'SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2',
          [t.sql, name],
        );
        if (rowCount === 0) {
          await client.query(
            `CREATE TRIGGER "${name}" ${when} ` +
              `EXECUTE FUNCTION ${t.derived(SUFFIX.function)}()`,
          );
        }
      }
    });
  }

  /** Creates the partitions of `days` (UTC midnights, ms) not known to exist. */
  private async ensurePartitions(days: Iterable<number>): Promise<void> {
    for (const day of new Set(days)) {
      if (this.partitions.has(day)) continue;
      const from = new Date(day).toISOString();
      const to = new Date(day + DAY_MS).toISOString();
      try {
        await this.ddl((client) =>
          client.query(
            `CREATE TABLE IF NOT EXISTS ${this.table.derived(SUFFIX.partition + dayTag(day))} ` +
              `PARTITION OF ${this.table.sql} FOR VALUES FROM ('${from}') TO ('${to}')`,
          ),
        );
      } catch (err) {
        // 42P17: a partition of another name (a DBA's) already covers the day; rows go there.
        if ((err as { code?: unknown }).code !== '42P17') throw err;
      }
      this.partitions.add(day);
    }
  }

  /** Drops the partitions (named by this sink) whose whole day is past retention. */
  private async dropExpired(): Promise<void> {
    if (this.retentionDays <= 0) return;
    const cutoff = Date.now() - this.retentionDays * DAY_MS;
    const prefix = this.table.name + SUFFIX.partition;
    const ours = new RegExp(`^${prefix}(\\d{4})(\\d{2})(\\d{2})$`);
    await this.ddl(async (client) => {
      const { rows } = await client.query<{ relname: string }>(
        'SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid ' +
          'WHERE i.inhparent = to_regclass($1)',
        [this.table.sql],
      );
      for (const { relname } of rows) {
        const match = ours.exec(relname);
        if (!match) continue;
        const [, year, month, date] = match;
        const day = Date.UTC(Number(year), Number(month) - 1, Number(date));
        if (day + DAY_MS > cutoff) continue;
        await client.query(`DROP TABLE ${this.table.derived(SUFFIX.partition + dayTag(day))}`);
        this.partitions.delete(day);
      }
    });
  }

  /** DDL on this table, serialized across gateways by an advisory lock held until commit. */
  private ddl<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.transaction(async (client) => {
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [
        `portcullis audit ${this.table.sql}`,
      ]);
      return work(client);
    });
  }

  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    // A connection that breaks between two queries emits 'error' on the
    // client, which without a listener would crash the process.
    const onError = (): void => undefined;
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      client.off('error', onError);
      client.release();
      return result;
    } catch (err) {
      client.off('error', onError);
      // Destroyed rather than rolled back: closing the connection aborts the
      // transaction, and a connection that failed once is not trusted again.
      client.release(err instanceof Error ? err : true);
      throw err;
    }
  }
}
