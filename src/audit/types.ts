/**
 * The audit record and the sink contract. A record is one JSON object per
 * message crossing the gateway (each direction), per refused request and per
 * checkpoint; its field names are a contract read by checks outside the
 * gateway (docs/audit.md, "Schema"), so they change only with `v`.
 *
 * Sinks receive records already chained (seq, prevHash, hash) and serialized:
 * every sink stores the same bytes, so `portcullis audit verify` checks any
 * of them the same way.
 */

/** The record schema's version; bumped with any change to a field's name or meaning. */
export const AUDIT_SCHEMA_VERSION = 1;

export type AuditKind = 'message' | 'refusal' | 'checkpoint';
export type AuditDecision = 'allow' | 'deny' | 'shadow-deny';
/** What the gateway did with the message: passed it on, rewrote it, dropped it, or refused it. */
export type AuditAction = 'forward' | 'replace' | 'drop' | 'refuse';

/** The fields every record has once chained. */
export interface ChainFields {
  v: number;
  kind: AuditKind;
  /** The chain this record belongs to (one per gateway's audit log, continued across restarts). */
  chain: string;
  /** 0 for a chain's first record, then one more for each record. */
  seq: number;
  /** The `hash` of the record before (64 zeros for a chain's first). */
  prevHash: string;
  /** SHA-256 (hex) of this record's canonical JSON without `hash`. */
  hash: string;
  /** ISO 8601, milliseconds, UTC. */
  time: string;
}

/** A message or a refusal: what the gateway observed. Absent fields were not known. */
export interface MessageFields {
  traceId?: string;
  rpcId?: string | number | null;
  tenant?: string;
  subject?: string;
  client?: string;
  session?: string;
  server?: string;
  era?: string;
  direction?: 'in' | 'out';
  method?: string;
  tool?: string;
  argsHash?: string;
  args?: unknown;
  decision?: AuditDecision;
  rule?: string;
  action?: AuditAction;
  status?: number;
  isError?: boolean;
  error?: string;
  bytesIn?: number;
  bytesOut?: number;
  gatewayMs?: number;
  upstreamMs?: number;
  credentialMode?: string;
  /** A summary refusal: how many requests it stands for (refused while the audit log was full). */
  count?: number;
  /** A refusal's request path (query cut; at most 256 characters). */
  path?: string;
}

/**
 * A checkpoint: a signed statement of the chain's head when it was written
 * (signing is asynchronous, so records may come between the head it signs
 * and the checkpoint itself; its own `prevHash` links it in place).
 */
export interface CheckpointFields {
  /** Why it was written: `start`, `periodic` or `close`. */
  reason?: 'start' | 'periodic' | 'close';
  /** The seq and hash of the record it signs (absent at a chain's very start). */
  signedSeq?: number;
  signedHash?: string;
  /**
   * A JWT (`typ: portcullis-audit-checkpoint+jwt`, the gateway's signing key)
   * with claims `{chain, seq, hash}` of the signed record; absent without a key.
   */
  sig?: string;
}

export type AuditRecord = ChainFields & MessageFields & CheckpointFields;

/** What a sink has done so far. */
export interface SinkStats {
  /** Records the destination has accepted (acknowledged, fsynced, committed). */
  written: number;
  /** Failed attempts to deliver (each retried; a failure is never a loss). */
  failed: number;
  /** Records accepted by the sink and not yet delivered (memory and spool). */
  queued: number;
  /** Bytes held in the sink's on-disk spool (0 without one). */
  spoolBytes: number;
}

/**
 * One destination. `write` never refuses and never drops: a record handed to
 * a sink is delivered, or stays in its spool for the next start. A sink that
 * cannot keep up says so with `full`; the gateway then refuses new requests
 * (503, PORTCULLIS_ERR_AUDIT_UNAVAILABLE) until it is not.
 */
export interface AuditSink {
  /** The sink's name in configuration (unique). */
  readonly name: string;
  readonly kind: 'stdout' | 'file' | 'http' | 'redis-stream' | 'postgres';
  /**
   * Before the first write: the last record this destination holds of `chain`
   * lineage, for a log that continues its chain across restarts (undefined:
   * none, or the sink cannot tell).
   */
  open(): Promise<AuditRecord | undefined>;
  /** Takes one chained record and its serialized line (no trailing newline). */
  write(record: AuditRecord, line: string): void;
  /** True while the sink holds more than its bound; new requests are refused until it drains. */
  readonly full: boolean;
  /** Delivers what is queued, waiting at most until `deadline` (a `Date.now()` value). */
  flush(deadline: number): Promise<void>;
  /**
   * Flushes until `deadline`, then stops; what is left stays in the spool
   * (a sink without a spool says in its stats what it could not deliver).
   */
  close(deadline: number): Promise<void>;
  stats(): SinkStats;
}
