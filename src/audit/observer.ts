/**
 * Audit's attachment to the exchange: it turns what the exchange's observer
 * hears (each message with its decision, and each exchange's end) into
 * records.
 *
 * One record per JSON-RPC message in each direction, and one `refusal` per
 * request refused before any message was decided (authentication, a bad
 * body, a rate limit, an unknown route). A request's records wait in its
 * exchange until the exchange ends, so they carry what was only known then:
 * the status sent, the gateway's error code, bytes and timings. A long-lived
 * exchange (a GET stream, an SSE answer still open after its first records)
 * writes them as they come, with what is known at that moment.
 *
 * Records go to the audit thread (channel.ts) with the arguments their
 * `argsHash` is made of, hashed there, off the serving thread. With capture
 * on, each message record's message goes with it (the parsed message itself,
 * not a copy, until the batch crosses): its entry is bound to the record's
 * hash, which only the audit thread knows.
 */
import { ANONYMOUS } from '../auth/principal.js';
import type { Frame } from '../mcp/frame.js';
import type { Exchange, ExchangeObserver, MessageOutcome } from '../server/exchange.js';
import type { AuditAction, AuditDecision, AuditKind, MessageFields } from './types.js';

/**
 * Where the observer's records go (the audit channel): each with the
 * arguments to hash into its `argsHash` and, in capture mode, its message.
 */
export interface AuditAppender {
  append(
    kind: Exclude<AuditKind, 'checkpoint'>,
    fields: MessageFields,
    args?: unknown,
    message?: unknown,
  ): void;
  noteRefusedWhileFull(): void;
}

export interface AuditObserverOptions {
  /** The credential mode of each server (`none`, `static`, `mint`, …): named, never the credential. */
  credentialModes: ReadonlyMap<string, string>;
  /** Capture mode (`audit.capture`): each message record's message goes with it. */
  capture: boolean;
}

/** Records an exchange holds back before it writes them as they come. */
const MAX_HELD = 64;
/**
 * A `path`, `method`, `tool` or string `rpcId` longer than this is cut: each
 * is the client's (or the upstream's) to choose, up to the body limit, and a
 * record should stay small. Replay compares a message with its record after
 * the same cut.
 */
export const MAX_RECORDED_TEXT = 256;

/** What a record holds of a client's text: at most MAX_RECORDED_TEXT UTF-16 units. */
export function recordedText<T>(value: T): T {
  return (
    typeof value === 'string' && value.length > MAX_RECORDED_TEXT
      ? value.slice(0, MAX_RECORDED_TEXT)
      : value
  ) as T;
}

const HELD = Symbol('portcullis.audit.held');
/**
 * A held record: its fields, the arguments its `argsHash` is made of (hashed
 * on the audit thread), and its message in capture mode.
 */
interface HeldRecord {
  fields: MessageFields;
  args: unknown;
  message: unknown;
}
type Held = Exchange & { [HELD]?: HeldRecord[] };

const ACTION: Record<MessageOutcome, AuditAction> = {
  allow: 'forward',
  replace: 'replace',
  drop: 'drop',
  deny: 'refuse',
};

/** The W3C trace id of the request (its `traceparent`), if it sent a well-formed one. */
function traceIdOf(x: Exchange): string | undefined {
  return x.callerTrace()?.[1];
}

/**
 * What a message's arguments are, for its `argsHash`: `params.arguments` of a
 * call, else `params` (replay checks a captured message by the same rule).
 */
export function argumentsOf(frame: Frame): unknown {
  const params = frame.message.params as Record<string, unknown> | undefined;
  if (params === undefined) return undefined;
  if (frame.method === 'tools/call' || frame.method === 'prompts/get') return params.arguments;
  return params;
}

/** An answer's `isError`: a JSON-RPC error, or a result with `isError: true`. */
export function isErrorAnswer(frame: Frame): boolean {
  if (frame.kind === 'error') return true;
  if (frame.kind !== 'response') return false;
  const result = frame.message.result as { isError?: unknown } | null | undefined;
  return result?.isError === true;
}

export function auditObserver(
  audit: AuditAppender,
  options: AuditObserverOptions,
): ExchangeObserver {
  const capture = options.capture;
  const who = (x: Exchange, fields: MessageFields): MessageFields => {
    // Authenticated, the request knows its principal before the exchange is told (a body
    // refused as malformed was still sent by someone).
    const p = x.principal === ANONYMOUS ? (x.reply.request.principal ?? x.principal) : x.principal;
    fields.tenant = p.tenant;
    fields.subject = p.subject;
    if (p.clientId !== undefined) fields.client = p.clientId;
    const traceId = traceIdOf(x);
    if (traceId !== undefined) fields.traceId = traceId;
    if (x.server !== '') {
      fields.server = x.server;
      // The era is known once the body was framed: a message's, not a refusal's.
      if (fields.direction !== undefined) fields.era = x.era;
      const mode = options.credentialModes.get(x.server);
      if (mode !== undefined) fields.credentialMode = mode;
    }
    const session = x.sessionId();
    if (session !== undefined) fields.session = session;
    return fields;
  };

  // Who and where: read when the records are written, by which time an initialize has its session.
  /** What only the exchange's end knows: status, error, bytes and timings. */
  const outcome = (x: Exchange, fields: MessageFields): void => {
    if (x.status !== 0) fields.status = x.status;
    if (fields.direction !== 'out' && x.errorCode !== undefined) fields.error = x.errorCode;
    fields.bytesIn = x.bytesIn;
    fields.bytesOut = x.bytesOut;
    if (x.endedAt === 0) return;
    const upstream =
      x.upstreamSentAt > 0 && x.upstreamAnsweredAt >= x.upstreamSentAt
        ? x.upstreamAnsweredAt - x.upstreamSentAt
        : 0;
    if (x.upstreamSentAt > 0) fields.upstreamMs = round(upstream);
    fields.gatewayMs = round(x.endedAt - x.startedAt - upstream);
  };

  const flush = (x: Held): void => {
    const held = x[HELD];
    if (held === undefined) return;
    x[HELD] = undefined;
    for (const { fields, args, message } of held) {
      who(x, fields);
      outcome(x, fields);
      audit.append('message', fields, args, message);
    }
  };

  return {
    message(x: Held, frame, decided, rule, shadowed) {
      const fields: MessageFields = {};
      fields.direction = frame.direction === 'client-to-server' ? 'in' : 'out';
      if (frame.id !== undefined) fields.rpcId = recordedText(frame.id);
      const answering =
        frame.method === undefined && frame.id !== undefined && frame.id !== null
          ? x.methodsById.get(frame.id)
          : undefined;
      const method = frame.method ?? answering;
      if (method !== undefined) fields.method = recordedText(method);
      const tool =
        frame.target ??
        (answering !== undefined && frame.id !== undefined && frame.id !== null
          ? x.targetsById?.get(frame.id)
          : undefined);
      if (tool !== undefined) fields.tool = recordedText(tool);
      let args: unknown;
      if (frame.kind === 'request' || frame.kind === 'notification') {
        args = argumentsOf(frame);
      } else {
        fields.isError = isErrorAnswer(frame);
      }
      let decision: AuditDecision = decided === 'deny' || decided === 'drop' ? 'deny' : 'allow';
      if (decision === 'allow' && shadowed !== undefined && shadowed.length > 0) {
        decision = 'shadow-deny';
        fields.rule = shadowed.join(',');
      } else if (rule !== undefined) {
        fields.rule = rule;
      }
      fields.decision = decision;
      fields.action = ACTION[decided];

      // Held until the end (so they carry its status, bytes and timings), unless the
      // exchange is a stream that may stay open for hours.
      const held = (x[HELD] ??= []);
      held.push({ fields, args, message: capture ? frame.message : undefined });
      if (x.longLived || held.length >= MAX_HELD) flush(x);
    },

    end(x: Held) {
      if (x[HELD] !== undefined) return flush(x);
      // Nothing was decided: a request refused at the door, or one that was not MCP at all.
      if (x.errorCode === undefined) return;
      if (x.errorCode === 'PORTCULLIS_ERR_AUDIT_UNAVAILABLE') return audit.noteRefusedWhileFull();
      const fields = who(x, {
        decision: 'deny',
        action: 'refuse',
        path: recordedText(x.reply.request.url.split('?')[0] as string),
      });
      outcome(x, fields);
      audit.append('refusal', fields);
    },
  };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
