/**
 * What the gateway's thread and the audit thread say to each other
 * (channel.ts is the gateway's side, worker.ts the audit thread's). Records
 * cross in batches, in the order they were made; everything else is a
 * request with its id and its answer.
 */
import type { Config } from '../config/schema.js';
import type { AuditKind, MessageFields, SinkStats } from './types.js';

/**
 * One record to append: its kind, the fields the observer knows, when it was
 * made (`Date.now()`), the arguments to hash into `argsHash` (absent: none),
 * and, in capture mode, the message itself.
 */
export type ChannelEntry = [
  kind: Exclude<AuditKind, 'checkpoint'>,
  fields: MessageFields,
  at: number,
  args?: unknown,
  message?: unknown,
];

/** The cells of the shared state (an Int32Array over a SharedArrayBuffer). */
export const STATE_PROCESSED = 0;
export const STATE_FULL = 1;
export const STATE_CELLS = 2;

export interface WorkerInit {
  audit: Config['audit'];
  logLevel: string;
  signed: boolean;
  state: SharedArrayBuffer;
}

export type ToWorker =
  /** Records, and requests refused meanwhile because the log was full (counted, not recorded). */
  | { t: 'records'; batch: ChannelEntry[]; refused: number }
  | { t: 'flush' | 'close'; id: number; deadline: number }
  | { t: 'signed'; id: number; sig?: string; error?: string };

export type FromWorker =
  | { t: 'ready'; chain: string; sinks: string[]; tid?: number }
  | { t: 'failed'; message: string }
  | { t: 'stats'; stats: Record<string, SinkStats> }
  | { t: 'log'; line: string }
  | { t: 'sign'; id: number; claims: { chain: string; seq: number; hash: string } }
  | { t: 'done'; id: number; stats: Record<string, SinkStats> };
