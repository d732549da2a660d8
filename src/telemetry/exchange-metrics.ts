/**
 * Request metrics from the exchange: requests by server, tenant, method and
 * decision, gateway and upstream time, and upstream errors. An observer like
 * audit's, always on.
 *
 * Label values come only from configuration and the MCP specification,
 * never from what a client sends: a server is a configured name (the route's;
 * `none` before one is known), a tenant one the configuration names (else
 * `other`), a method one of the specification's (else `other`). So an agent
 * calling a million invented tools or methods adds no series.
 */
import { ANONYMOUS } from '../auth/principal.js';
import type { Config } from '../config/schema.js';
import type { Frame } from '../mcp/frame.js';
import type { Exchange, ExchangeObserver } from '../server/exchange.js';
import type { Metrics } from './metrics.js';

/** Every method of the specification's schemas (2025-11-25 and 2026-07-28). */
const MCP_METHODS: ReadonlySet<string> = new Set([
  'initialize',
  'ping',
  'server/discover',
  'tools/list',
  'tools/call',
  'resources/list',
  'resources/read',
  'resources/templates/list',
  'resources/subscribe',
  'resources/unsubscribe',
  'prompts/list',
  'prompts/get',
  'completion/complete',
  'logging/setLevel',
  'subscriptions/listen',
  'sampling/createMessage',
  'elicitation/create',
  'roots/list',
  'tasks/get',
  'tasks/list',
  'tasks/result',
  'tasks/cancel',
  'notifications/initialized',
  'notifications/cancelled',
  'notifications/progress',
  'notifications/message',
  'notifications/roots/list_changed',
  'notifications/tools/list_changed',
  'notifications/prompts/list_changed',
  'notifications/resources/list_changed',
  'notifications/resources/updated',
  'notifications/elicitation/complete',
  'notifications/subscriptions/acknowledged',
  'notifications/tasks/status',
]);

const METHOD = Symbol('portcullis.metrics.method');
type Measured = Exchange & { [METHOD]?: string };

export function methodLabel(method: string | undefined): string {
  if (method === undefined) return 'none';
  return MCP_METHODS.has(method) ? method : 'other';
}

export function metricsObserver(metrics: Metrics, config: Config): ExchangeObserver {
  const tenants = new Set(Object.keys(config.tenants ?? {}));
  // Without tenants, every principal is in the single-tenant default.
  tenants.add('local');
  const servers = new Set(Object.keys(config.servers));
  const tenantLabel = (x: Exchange): string => {
    // Refused before the exchange was told who asks, the request still knows (once authenticated).
    const p = x.principal === ANONYMOUS ? (x.reply.request.principal ?? x.principal) : x.principal;
    return tenants.has(p.tenant) ? p.tenant : 'other';
  };
  const serverLabel = (x: Exchange): string => (servers.has(x.server) ? x.server : 'none');

  return {
    message(x: Measured, frame: Frame, outcome, _rule, shadowed) {
      if (frame.direction !== 'client-to-server' || frame.kind !== 'request') return;
      const method = methodLabel(frame.method);
      x[METHOD] ??= method;
      const decision =
        outcome === 'deny' || outcome === 'drop'
          ? 'deny'
          : shadowed !== undefined && shadowed.length > 0
            ? 'shadow-deny'
            : 'allow';
      metrics.requests.inc({ server: serverLabel(x), tenant: tenantLabel(x), method, decision });
    },

    end(x: Measured) {
      const server = serverLabel(x);
      const method = x[METHOD];
      if (method === undefined) {
        // Refused before any message was decided (authentication, a bad body, a quota).
        if (x.errorCode !== undefined)
          metrics.requests.inc({
            server,
            tenant: tenantLabel(x),
            method: 'none',
            decision: 'refuse',
          });
        return;
      }
      if (x.errorCode?.startsWith('PORTCULLIS_ERR_UPSTREAM_'))
        metrics.upstreamErrors.inc({ server, code: x.errorCode });
      if (x.upstreamSentAt === 0 || x.longLived) return;
      const upstream =
        x.upstreamAnsweredAt >= x.upstreamSentAt ? x.upstreamAnsweredAt - x.upstreamSentAt : 0;
      metrics.upstreamDuration.observe({ server, method }, upstream / 1000);
      metrics.gatewayDuration.observe(
        { server, method },
        Math.max(0, x.endedAt - x.startedAt - upstream) / 1000,
      );
    },
  };
}
