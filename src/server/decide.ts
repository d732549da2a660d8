/**
 * The gateway's side of a policy decision: what it records (log and metric)
 * and, outbound, what it makes of the frames a decision changed. The policy
 * itself (src/policy/) decides and knows no transport; this file knows no
 * rule.
 */
import type { Logger } from 'pino';
import type { Principal } from '../auth/principal.js';
import type { JsonRpcId } from '../errors/index.js';
import type { Frame } from '../mcp/frame.js';
import type { Decision } from '../policy/decision.js';
import type { DecisionContext, Policy, ToolMemory } from '../policy/policy.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { MessageOutcome } from './exchange.js';
import { MAX_PINS_PER_SERVER, type Blocked, type PinBook } from '../policy/tools.js';

export interface DecisionSink {
  readonly log: Logger;
  readonly metrics: Metrics | undefined;
}

/** Logs and counts a decision that is not a plain allow (shadow hits included). */
export function recordDecision(
  sink: DecisionSink,
  decision: Decision,
  server: string,
  principal: Principal,
  method: string | undefined,
): void {
  if (decision.shadowed) {
    for (const hit of decision.shadowed) {
      sink.metrics?.policyDecisions.inc({ server, rule: hit.rule, decision: 'shadow' });
      sink.log.info(
        {
          event: 'policy.shadow',
          rule: hit.rule,
          would: hit.would,
          tenant: principal.tenant,
          subject: principal.subject,
          server,
          method,
          reason: hit.reason,
        },
        `policy: shadow rule ${hit.rule} would have ${hit.would === 'deny' ? 'denied' : hit.would === 'drop' ? 'dropped' : 'replaced'} this`,
      );
    }
  }
  if ('findings' in decision && decision.findings) {
    for (const f of decision.findings) {
      sink.metrics?.policyDecisions.inc({ server, rule: f.rule, decision: f.effect });
      sink.log[f.effect === 'blocked' ? 'warn' : 'info'](
        { event: `policy.tool_${f.effect}`, rule: f.rule, tool: f.tool, server, reason: f.reason },
        `policy: tool ${f.tool} on ${server} ${f.effect}: ${f.reason}`,
      );
    }
  }
  if (decision.kind === 'allow') return;
  sink.metrics?.policyDecisions.inc({ server, rule: decision.rule, decision: decision.kind });
  sink.log.info(
    {
      event: `policy.${decision.kind}`,
      rule: decision.rule,
      tenant: principal.tenant,
      subject: principal.subject,
      server,
      method,
    },
    `policy: ${decision.kind} by ${decision.rule}`,
  );
}

/**
 * Frames whose decision the outbound point told the exchange's observer
 * itself (a denial's error, a replacement, a shadowed allow), so the relay
 * does not tell it again as a plain allow.
 */
const told = new WeakSet<Frame>();

/** Whether the observer already heard of this frame from `decideOutbound`. */
export function toldObserver(frame: Frame): boolean {
  return told.has(frame);
}

/** What the outbound decision point needs of an exchange. */
export interface OutboundExchange extends DecisionSink {
  readonly server: string;
  readonly policy: Policy;
  readonly principal: Principal;
  readonly era: 'legacy' | 'modern';
  readonly methodsById: ReadonlyMap<JsonRpcId, string>;
  /** The tool, prompt or resource each pending request named, where it named one. */
  readonly targetsById: ReadonlyMap<JsonRpcId, string> | undefined;
  readonly memory: ToolMemory | undefined;
  /**
   * Sends a message to the upstream in the client's place (a legacy session):
   * how a server→client request the policy refuses is answered, so the
   * server's work ends instead of waiting for the client.
   */
  readonly replyUpstream: ((message: string) => void) | undefined;
  /** Who, where and in which era, for the policy: made once per exchange, not per message. */
  decisionContext(): DecisionContext;
  /** Tells the exchange's observer what became of a message. */
  noteMessage(
    frame: Frame,
    outcome: MessageOutcome,
    rule?: string,
    shadowed?: readonly string[],
  ): void;
}

/**
 * The outbound decision point for the frames of one body or one SSE event:
 * `frames` itself when every decision is allow (the caller then forwards the
 * original bytes), else the frames to send instead: a replaced message in
 * place, a dropped one left out, a denied answer turned into the error.
 */
export function decideOutbound(x: OutboundExchange, frames: Frame[]): Frame[] {
  const ctx = x.decisionContext();
  let out: Frame[] | undefined;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i] as Frame;
    const answering =
      (f.kind === 'response' || f.kind === 'error') && f.id !== undefined
        ? x.methodsById.get(f.id)
        : undefined;
    const target =
      answering !== undefined && f.id !== undefined ? x.targetsById?.get(f.id) : undefined;
    const decision = x.policy.outbound(f, answering, ctx, target);
    if (decision.kind === 'allow' && !decision.shadowed && !decision.findings) {
      out?.push(f);
      continue;
    }
    recordDecision(x, decision, x.server, x.principal, f.method ?? answering);
    const shadowed = decision.shadowed?.map((hit) => hit.rule);
    if (decision.kind === 'allow') {
      x.noteMessage(f, 'allow', undefined, shadowed);
      told.add(f);
      out?.push(f);
      continue;
    }
    x.noteMessage(f, decision.kind, decision.rule, shadowed);
    out ??= frames.slice(0, i);
    let instead: Frame | undefined;
    if (decision.kind === 'replace') instead = { ...f, message: decision.message };
    else if (decision.kind === 'deny' && f.kind === 'request') {
      // A request of the server's: the client never sees it; the server gets the refusal.
      if (f.id !== undefined && f.id !== null)
        x.replyUpstream?.(JSON.stringify(decision.error.toResponse(f.id)));
    } else if (decision.kind === 'deny' && f.id !== undefined && f.id !== null)
      instead = {
        direction: f.direction,
        kind: 'error',
        id: f.id,
        message: decision.error.toResponse(f.id),
      };
    // drop (or a denied message nobody waits for): nothing goes on.
    if (instead) {
      told.add(instead);
      out.push(instead);
    }
  }
  return out ?? frames;
}

/** Refusals remembered per server, at most. */
const MAX_REMEMBERED_VERDICTS = 2 * MAX_PINS_PER_SERVER;

/** What the gateway remembers of servers' tools: pins first seen, and the last verdicts. */
export class LiveTools implements ToolMemory {
  private readonly verdicts = new Map<string, Map<string, Blocked | undefined>>();
  constructor(readonly pins: PinBook) {}

  verdict(server: string, tool: string): Blocked | undefined {
    return this.verdicts.get(server)?.get(tool);
  }

  remember(server: string, verdicts: ReadonlyMap<string, Blocked | undefined>): void {
    let known = this.verdicts.get(server);
    if (!known) this.verdicts.set(server, (known = new Map()));
    for (const [tool, verdict] of verdicts) {
      if (!verdict) {
        known.delete(tool);
        continue;
      }
      // Bounded: a server inventing tool names fills no more than this; the oldest go first.
      if (!known.has(tool) && known.size >= MAX_REMEMBERED_VERDICTS)
        known.delete(known.keys().next().value as string);
      known.set(tool, verdict);
    }
  }
}
