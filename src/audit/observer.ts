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
 * With capture on, each message record's message is held beside its fields
 * (the parsed message itself, not a copy) and handed to the capture with
 * the record once appended: its entry is bound to the record's hash, which
 * only the append knows.
 */
import { ANONYMOUS } from '../auth/principal.js';
import type { Frame } from '../mcp/frame.js';
import { TRACEPARENT } from '../telemetry/trace-context.js';
import type { Exchange, ExchangeObserver, MessageOutcome } from '../server/exchange.js';
import type { MessageCapture } from './capture.js';
import type { AuditLog } from './log.js';
import { argsHash } from './record.js';
import type { AuditAction, AuditDecision, MessageFields } from './types.js';

export interface AuditObserverOptions {
  /** The credential mode of each server (`none`, `static`, `mint`, …): named, never the credential. */
  credentialModes: ReadonlyMap<string, string>;
  /** Capture mode (`audit.capture`): where each message record's message goes; absent, off. */
  capture?: MessageCapture;
}

/** Records an exchange holds back before it writes them as they come. */
const MAX_HELD = 64;
/** A `path` longer than this is cut: it is the client's, and the record should stay small. */
const MAX_PATH = 256;

const HELD = Symbol('portcullis.audit.held');
/** The messages of the held records, in the same order (capture mode only). */
const HELD_MESSAGES = Symbol('portcullis.audit.held-messages');
type Held = Exchange & { [HELD]?: MessageFields[]; [HELD_MESSAGES]?: unknown[] };

const ACTION: Record<MessageOutcome, AuditAction> = {
  allow: 'forward',
  replace: 'replace',
  drop: 'drop',
  deny: 'refuse',
};

/** The W3C trace id of the request (its `traceparent`), if it sent a well-formed one. */
function traceIdOf(x: Exchange): string | undefined {
  const header = x.reply.request.headers.traceparent;
  if (typeof header !== 'string') return undefined;
  return TRACEPARENT.exec(header)?.[1];
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

export function auditObserver(audit: AuditLog, options: AuditObserverOptions): ExchangeObserver {
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
    const messages = x[HELD_MESSAGES];
    x[HELD] = undefined;
    x[HELD_MESSAGES] = undefined;
    for (let i = 0; i < held.length; i++) {
      const fields = held[i] as MessageFields;
      who(x, fields);
      outcome(x, fields);
      const record = audit.append('message', fields);
      if (messages !== undefined) capture?.capture(record, messages[i]);
    }
  };

  return {
    message(x: Held, frame, decided, rule, shadowed) {
      const fields: MessageFields = {};
      fields.direction = frame.direction === 'client-to-server' ? 'in' : 'out';
      if (frame.id !== undefined) fields.rpcId = frame.id;
      const answering =
        frame.method === undefined && frame.id !== undefined && frame.id !== null
          ? x.methodsById.get(frame.id)
          : undefined;
      const method = frame.method ?? answering;
      if (method !== undefined) fields.method = method;
      const tool =
        frame.target ??
        (answering !== undefined && frame.id !== undefined && frame.id !== null
          ? x.targetsById?.get(frame.id)
          : undefined);
      if (tool !== undefined) fields.tool = tool;
      if (frame.kind === 'request' || frame.kind === 'notification') {
        const args = argumentsOf(frame);
        if (args !== undefined) fields.argsHash = argsHash(args);
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
      held.push(fields);
      if (capture !== undefined) (x[HELD_MESSAGES] ??= []).push(frame.message);
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
        path: (x.reply.request.url.split('?')[0] as string).slice(0, MAX_PATH),
      });
      outcome(x, fields);
      audit.append('refusal', fields);
    },
  };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
