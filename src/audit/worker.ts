/**
 * The audit thread: the log and every sink, off the thread that serves
 * requests (channel.ts is the other side). Batches of records arrive in the
 * order they were made; each gets its `argsHash`, its place in the chain and
 * its hash here, and goes to every sink. Checkpoints are signed by the
 * gateway's thread, which holds the keys.
 *
 * Two cells of shared memory tell the gateway's thread, without a message,
 * how many records have been appended and whether a sink is over its bound.
 */
import { readlinkSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import pino from 'pino';
import { STATE_FULL, STATE_PROCESSED, type ToWorker, type WorkerInit } from './channel-protocol.js';
import type { FromWorker } from './channel-protocol.js';
import { openAuditLog } from './index.js';
import type { AuditLog, CheckpointSigner } from './log.js';
import type { CaptureSink } from './capture.js';
import { argsHash } from './record.js';

/** How often `full` is refreshed while sinks drain (it is also set after every batch). */
const FULL_REFRESH_MS = 50;
const STATS_MS = 1_000;

const port = parentPort;
if (port === null) throw new Error('src/audit/worker.ts runs as a worker thread');
const init = workerData as WorkerInit;
const state = new Int32Array(init.state);
const post = (m: FromWorker) => port.postMessage(m);

const log = pino({ level: init.logLevel }, { write: (line: string) => post({ t: 'log', line }) });

/**
 * The thread's id in the kernel (Linux: /proc/thread-self), so an operator
 * can watch or pin it apart from the serving thread (`top -H`, `taskset -p`).
 */
function threadId(): number | undefined {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) ? tid : undefined;
  } catch {
    return undefined;
  }
}

let nextSign = 0;
const signing = new Map<number, { resolve: (sig: string) => void; reject: (e: Error) => void }>();
const signer: CheckpointSigner | undefined = init.signed
  ? (claims) =>
      new Promise<string>((resolve, reject) => {
        const id = ++nextSign;
        signing.set(id, { resolve, reject });
        post({ t: 'sign', id, claims });
      })
  : undefined;

let audit: AuditLog | undefined;
let capture: CaptureSink | undefined;

function refreshFull(): void {
  if (audit) Atomics.store(state, STATE_FULL, audit.full ? 1 : 0);
}

function handle(m: ToWorker): void {
  if (m.t === 'signed') {
    const waiting = signing.get(m.id);
    signing.delete(m.id);
    if (m.sig !== undefined) waiting?.resolve(m.sig);
    else waiting?.reject(new Error(m.error ?? 'not signed'));
    return;
  }
  // Before `ready` the gateway sends nothing but signatures (it waits for the log to open).
  if (!audit) return;
  const trail = audit;
  if (m.t === 'records') {
    for (const [kind, fields, at, args, message] of m.batch) {
      if (args !== undefined) fields.argsHash = argsHash(args);
      const record = trail.append(kind, fields, at);
      if (message !== undefined) capture?.capture(record, message);
    }
    if (m.refused > 0) trail.noteRefusedWhileFull(m.refused);
    Atomics.add(state, STATE_PROCESSED, m.batch.length);
    refreshFull();
    return;
  }
  const work = m.t === 'flush' ? trail.flush(m.deadline) : trail.close(m.deadline);
  void work
    .catch((err: unknown) => log.error({ err: (err as Error).message }, `audit: ${m.t} failed`))
    .finally(() => post({ t: 'done', id: m.id, stats: trail.stats() }));
}

port.on('message', handle);

try {
  const opened = await openAuditLog(init.audit, { log, signer });
  audit = opened.log;
  capture = opened.capture;
} catch (err) {
  post({ t: 'failed', message: (err as Error).message });
  port.close();
}

if (audit) {
  const opened = audit;
  setInterval(refreshFull, FULL_REFRESH_MS).unref();
  setInterval(() => post({ t: 'stats', stats: opened.stats() }), STATS_MS).unref();
  post({ t: 'ready', chain: opened.chainId, sinks: Object.keys(opened.stats()), tid: threadId() });
}
