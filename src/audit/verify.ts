/**
 * Proof that an audit trail is whole: every record's hash matches its
 * content, each follows the one before it (`seq` one more, `prevHash` its
 * hash), and every checkpoint's signature, given the gateway's public keys,
 * vouches for the record it names. The first record that breaks any of these
 * is named, by where it was read and its seq; later ones in the same chain
 * are not reported (they follow from it).
 *
 * A source is any ordered run of lines (files, a Redis stream, a table):
 * records of several chains (replicas) may interleave; each chain is checked
 * on its own.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import { GENESIS_HASH, parseLine } from './record.js';
import { auditFiles } from './sinks/file.js';

export interface SourceLine {
  /** Where the line was read: `file:line`, a stream entry, a table row. */
  where: string;
  line: string;
}

export interface ChainReport {
  chain: string;
  records: number;
  firstSeq: number;
  lastSeq: number;
  checkpoints: number;
  signedCheckpoints: number;
  /** The chain's first record is not its genesis (records before it are not in the source). */
  startsLate: boolean;
  /** The chain's last record is its closing checkpoint (a clean shutdown). */
  closed: boolean;
}

export interface VerifyProblem {
  where: string;
  chain?: string;
  seq?: number;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  records: number;
  chains: ChainReport[];
  problems: VerifyProblem[];
}

export interface VerifyOptions {
  /** The gateway's public keys: checkpoints' signatures are checked, and an unsigned one is a problem. */
  jwks?: JSONWebKeySet;
  /** A chain must begin at its genesis (seq 0): nothing was removed from its start. */
  fromGenesis?: boolean;
}

/** How many recent hashes a chain keeps, to check what a checkpoint signed. */
const RECENT = 65_536;

interface ChainState {
  report: ChainReport;
  lastHash: string;
  broken: boolean;
  recent: Map<number, string>;
}

export async function verifyLines(
  source: AsyncIterable<SourceLine>,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const chains = new Map<string, ChainState>();
  const problems: VerifyProblem[] = [];
  const keySet = options.jwks ? createLocalJWKSet(options.jwks) : undefined;
  let records = 0;

  for await (const { where, line } of source) {
    if (line.trim() === '') continue;
    records++;
    const { record, problem } = parseLine(line);
    if (record === undefined || problem === 'not-a-record' || problem === 'unparseable') {
      problems.push({
        where,
        message: 'not an audit record (the line was altered or does not belong here)',
      });
      continue;
    }
    let state = chains.get(record.chain);
    if (state === undefined) {
      state = {
        report: {
          chain: record.chain,
          records: 0,
          firstSeq: record.seq,
          lastSeq: record.seq - 1,
          checkpoints: 0,
          signedCheckpoints: 0,
          startsLate: record.seq !== 0,
          closed: false,
        },
        lastHash: record.seq === 0 ? GENESIS_HASH : record.prevHash,
        broken: false,
        recent: new Map(),
      };
      chains.set(record.chain, state);
      if (record.seq !== 0 && options.fromGenesis)
        fault(
          state,
          where,
          record.seq,
          `the chain begins at seq ${record.seq}: records 0 to ${record.seq - 1} are missing`,
        );
    }
    const r = state.report;
    r.records++;
    const expected = r.lastSeq + 1;
    if (problem === 'hash-mismatch')
      fault(state, where, record.seq, 'altered: its hash does not match its content');
    else if (problem === 'not-canonical')
      fault(state, where, record.seq, 'altered: its bytes are not the form the gateway writes');
    else if (record.seq < expected)
      fault(
        state,
        where,
        record.seq,
        `out of order: seq ${record.seq} comes after seq ${r.lastSeq}`,
      );
    else if (record.seq > expected)
      fault(
        state,
        where,
        record.seq,
        `seq ${record.seq} follows seq ${r.lastSeq}: ${expected === record.seq - 1 ? `seq ${expected} is` : `seq ${expected} to ${record.seq - 1} are`} missing or out of order`,
      );
    else if (record.prevHash !== state.lastHash)
      fault(
        state,
        where,
        record.seq,
        `its prevHash is not the hash of seq ${r.lastSeq}: one of the two was altered`,
      );
    if (record.seq > r.lastSeq) {
      r.lastSeq = record.seq;
      state.lastHash = record.hash;
      state.recent.set(record.seq, record.hash);
      if (state.recent.size > RECENT) state.recent.delete(record.seq - RECENT);
    }
    r.closed = record.kind === 'checkpoint' && record.reason === 'close';
    if (record.kind === 'checkpoint') {
      r.checkpoints++;
      if (record.sig !== undefined) r.signedCheckpoints++;
      if (keySet && !state.broken && record.signedSeq !== undefined) {
        const why = await checkpointProblem(record, state.recent, keySet);
        if (why !== undefined) fault(state, where, record.seq, why);
      }
    }
  }

  function fault(state: ChainState, where: string, seq: number, message: string): void {
    if (state.broken) return;
    state.broken = true;
    problems.push({ where, chain: state.report.chain, seq, message });
  }

  return {
    ok: problems.length === 0,
    records,
    chains: [...chains.values()].map((s) => s.report),
    problems,
  };
}

async function checkpointProblem(
  record: { signedSeq?: number; signedHash?: string; sig?: string; chain: string },
  recent: ReadonlyMap<number, string>,
  keySet: ReturnType<typeof createLocalJWKSet>,
): Promise<string | undefined> {
  if (record.sig === undefined)
    return 'a checkpoint without a signature (keys were given: every checkpoint must be signed)';
  const seen = recent.get(record.signedSeq as number);
  if (seen !== undefined && seen !== record.signedHash)
    return `a checkpoint names seq ${record.signedSeq} with another hash than the record's`;
  try {
    const { payload } = await jwtVerify(record.sig, keySet, {
      typ: 'portcullis-audit-checkpoint+jwt',
    });
    if (
      payload.chain !== record.chain ||
      payload.seq !== record.signedSeq ||
      payload.hash !== record.signedHash
    )
      return 'a checkpoint whose signature vouches for another head than the one it names';
  } catch (err) {
    return `a checkpoint whose signature does not verify (${(err as Error).message})`;
  }
  return undefined;
}

/** The lines of audit files: a directory's files in the order of their names, or files as given. */
export async function* readAuditFiles(paths: readonly string[]): AsyncIterable<SourceLine> {
  const files: string[] = [];
  for (const p of paths) {
    if ((await stat(p)).isDirectory()) files.push(...(await auditFiles(p)));
    else files.push(p);
  }
  for (const file of files) {
    const lines = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
    let n = 0;
    for await (const line of lines) {
      n++;
      yield { where: `${file}:${n}`, line };
    }
  }
}
