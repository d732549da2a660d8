/**
 * Canonical JSON and the record's hash. One serialization is the record: keys
 * sorted at every depth, no whitespace, `hash` last. The hash is SHA-256
 * over the canonical JSON of the record without `hash`,
 * so anyone holding a line can recompute it (docs/audit.md, "Verifying").
 *
 * Owns: `canonicalJson`, `argsHash`, `sealRecord` (hash and line of a
 * record) and `parseLine` (the reverse, with the hash checked).
 */
import { hash as oneShotHash } from 'node:crypto';
import type { AuditRecord } from './types.js';

export const GENESIS_HASH = '0'.repeat(64);

/**
 * JSON with object keys sorted (by UTF-16 code unit, as `Array.prototype.sort`
 * does) at every depth. Only what JSON can hold comes here: records and the
 * arguments of parsed JSON-RPC messages. `undefined` members are left out, as
 * JSON.stringify does.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ',';
      const item: unknown = value[i];
      out += item === undefined ? 'null' : canonicalJson(item);
    }
    return out + ']';
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).sort();
  let out = '{';
  let first = true;
  for (const key of keys) {
    const member = obj[key];
    if (member === undefined) continue;
    if (!first) out += ',';
    first = false;
    out += JSON.stringify(key) + ':' + canonicalJson(member);
  }
  return out + '}';
}

export function sha256Hex(text: string): string {
  return oneShotHash('sha256', text, 'hex');
}

/**
 * The brief's prompt hash: SHA-256 of the canonical JSON of a call's
 * arguments (`{}` when it has none), so equal arguments hash equal whatever
 * their key order.
 */
export function argsHash(args: unknown): string {
  return sha256Hex(canonicalJson(args ?? {}));
}

/**
 * The record without `hash`, canonical: what `hash` is the SHA-256 of. Every
 * field of a record is a primitive but `args`, so an object literal with the
 * fields in sorted order is, through JSON.stringify (which leaves `undefined`
 * out), the canonical form: the same bytes as `canonicalJson`, without sorting
 * keys per record. `args`, or a field this list does not know, takes the
 * general path; `parseLine` always does, so a disagreement would show there.
 */
function hashedPart(r: AuditRecord): string {
  if (r.args !== undefined) {
    const { hash: _hash, ...rest } = r;
    return canonicalJson(rest);
  }
  return JSON.stringify({
    action: r.action,
    argsHash: r.argsHash,
    bytesIn: r.bytesIn,
    bytesOut: r.bytesOut,
    chain: r.chain,
    client: r.client,
    count: r.count,
    credentialMode: r.credentialMode,
    decision: r.decision,
    direction: r.direction,
    era: r.era,
    error: r.error,
    gatewayMs: r.gatewayMs,
    isError: r.isError,
    kind: r.kind,
    method: r.method,
    path: r.path,
    prevHash: r.prevHash,
    reason: r.reason,
    rpcId: r.rpcId,
    rule: r.rule,
    seq: r.seq,
    server: r.server,
    session: r.session,
    sig: r.sig,
    signedHash: r.signedHash,
    signedSeq: r.signedSeq,
    status: r.status,
    subject: r.subject,
    tenant: r.tenant,
    time: r.time,
    tool: r.tool,
    traceId: r.traceId,
    upstreamMs: r.upstreamMs,
    v: r.v,
  } satisfies Record<Exclude<keyof AuditRecord, 'hash' | 'args'>, unknown>);
}

/** The record without `hash` by the general rule (any keys, sorted at every depth). */
function canonicalHashedPart(record: AuditRecord): string {
  const { hash: _hash, ...rest } = record;
  return canonicalJson(rest);
}

/**
 * Sets the record's `hash` and returns its line: the canonical JSON of the
 * hashed part with `hash` appended as the last member.
 */
export function sealRecord(record: AuditRecord): string {
  return seal(record, hashedPart(record));
}

function seal(record: AuditRecord, body: string): string {
  record.hash = sha256Hex(body);
  return body.slice(0, -1) + (body.length > 2 ? ',' : '') + `"hash":"${record.hash}"}`;
}

/** Why a line is not a sound record. */
export type LineProblem = 'unparseable' | 'not-a-record' | 'hash-mismatch' | 'not-canonical';

/**
 * Parses one line and checks it is what `sealRecord` would have written: its
 * hash matches its content, and its bytes are the canonical form (a record
 * re-serialized by a sink that reorders keys still verifies by hash; one whose
 * bytes differ from canonical is reported, as that is where an edit hides).
 */
export function parseLine(line: string): { record?: AuditRecord; problem?: LineProblem } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { problem: 'unparseable' };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    return { problem: 'not-a-record' };
  const record = value as AuditRecord;
  if (
    typeof record.hash !== 'string' ||
    typeof record.seq !== 'number' ||
    typeof record.prevHash !== 'string' ||
    typeof record.chain !== 'string'
  )
    return { record, problem: 'not-a-record' };
  const claimed = record.hash;
  const copy = { ...record };
  const resealed = seal(copy, canonicalHashedPart(copy));
  if (copy.hash !== claimed) return { record, problem: 'hash-mismatch' };
  if (resealed !== line) return { record, problem: 'not-canonical' };
  return { record };
}
