/**
 * What a policy step decides about one message, and the one shape every
 * decision point in `server/` acts on.
 *
 * - allow: the message goes on as its original bytes;
 * - deny: it does not; the client gets `error` (a request's answer) and the
 *   upstream gets nothing;
 * - replace: `message` goes on instead (re-encoded: the rare path, e.g. a
 *   `tools/list` result with tools removed);
 * - drop: it does not go on and nothing is said (a notification).
 *
 * Every decision but a plain allow names the rule that made it. A rule in
 * shadow mode never changes the outcome: it is reported in `shadowed`, with
 * what it would have done, for the log and the metrics.
 */
import type { GatewayError } from '../errors/index.js';
import type { JsonRpcMessage } from '../mcp/frame.js';

export interface ShadowHit {
  readonly rule: string;
  readonly would: 'deny' | 'replace' | 'drop';
  readonly reason: string;
}

/** Something a decision found about a tool: blocked from agents, or only reported. */
export interface Finding {
  readonly tool: string;
  readonly rule: string;
  readonly effect: 'blocked' | 'flagged';
  readonly reason: string;
}

export interface Allow {
  readonly kind: 'allow';
  readonly shadowed?: readonly ShadowHit[];
  readonly findings?: readonly Finding[];
}

export interface Deny {
  readonly kind: 'deny';
  readonly rule: string;
  readonly error: GatewayError;
  readonly shadowed?: readonly ShadowHit[];
  readonly findings?: readonly Finding[];
}

export interface Replace {
  readonly kind: 'replace';
  readonly rule: string;
  readonly message: JsonRpcMessage;
  readonly shadowed?: readonly ShadowHit[];
  readonly findings?: readonly Finding[];
}

export interface Drop {
  readonly kind: 'drop';
  readonly rule: string;
  readonly reason: string;
  readonly shadowed?: readonly ShadowHit[];
}

/**
 * An inbound decision that waits on the host: only a tool whose guards ask
 * it (DNS for `url`, the file system for `path` with symlinks resolved).
 */
export interface Pending {
  readonly kind: 'pending';
  readonly decision: Promise<Allow | Deny | Replace>;
}

export type Decision = Allow | Deny | Replace | Drop;

/** The decision of the hot path: one frozen object, never allocated per message. */
export const ALLOW: Allow = Object.freeze({ kind: 'allow' });
