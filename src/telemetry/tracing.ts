/**
 * OpenTelemetry traces, exported over OTLP/HTTP when `tracing.otlp` is set:
 * one span per request through the gateway (kind SERVER), a child of the
 * caller's W3C `traceparent` when it sent a well-formed one, and the parent
 * of what the upstream does (its `traceparent` names the gateway's span).
 *
 * Owns: the tracer provider, starting a request's span when it goes upstream
 * (so the upstream sees its id) and ending every span when its exchange ends;
 * a request refused at the door gets its span then. Attributes hold what the
 * audit record holds of who and where, never arguments or credentials.
 *
 * Without `tracing.otlp`, nothing here runs: the caller's `traceparent`
 * passes upstream unchanged (app.ts).
 */
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import { performance } from 'node:perf_hooks';
import { ANONYMOUS } from '../auth/principal.js';
import type { Frame } from '../mcp/frame.js';
import type { Exchange, ExchangeObserver } from '../server/exchange.js';

export interface TracingConfig {
  otlp?: { url: string; headers: Record<string, string>; timeoutMs: number };
  serviceName: string;
  sampleRatio: number;
}

const SPAN = Symbol('portcullis.tracing.span');
const FIRST = Symbol('portcullis.tracing.first');
type Traced = Exchange & { [SPAN]?: Span; [FIRST]?: Frame };

export interface Tracing {
  readonly observer: ExchangeObserver;
  /** Starts the exchange's span (once) and returns the `traceparent` to send upstream. */
  upstreamTraceparent(x: Exchange): string;
  close(): Promise<void>;
}

function parentOf(x: Exchange): Context {
  const m = x.callerTrace();
  if (!m) return ROOT_CONTEXT;
  return trace.setSpanContext(ROOT_CONTEXT, {
    traceId: m[1] as string,
    spanId: m[2] as string,
    traceFlags: parseInt(m[3] as string, 16) & 1,
    isRemote: true,
  });
}

/** The exchange's start as wall-clock milliseconds (spans take epoch time). */
function wallTime(at: number): number {
  return performance.timeOrigin + at;
}

export function createTracing(config: TracingConfig): Tracing | undefined {
  if (config.otlp === undefined) return undefined;
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': config.serviceName }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio) }),
    spanProcessors: [
      new BatchSpanProcessor(
        new OTLPTraceExporter({
          url: config.otlp.url,
          headers: config.otlp.headers,
          timeoutMillis: config.otlp.timeoutMs,
        }),
      ),
    ],
  });
  const tracer: Tracer = provider.getTracer('portcullis');

  const spanOf = (x: Traced): Span =>
    (x[SPAN] ??= tracer.startSpan(
      'mcp.request',
      { kind: SpanKind.SERVER, startTime: wallTime(x.startedAt) },
      parentOf(x),
    ));

  return {
    upstreamTraceparent(x: Traced) {
      const ctx = spanOf(x).spanContext();
      return `00-${ctx.traceId}-${ctx.spanId}-0${ctx.traceFlags & 1}`;
    },
    observer: {
      message(x: Traced, frame) {
        if (frame.direction === 'client-to-server') x[FIRST] ??= frame;
      },
      end(x: Traced) {
        const span = spanOf(x);
        const first = x[FIRST];
        const p =
          x.principal === ANONYMOUS ? (x.reply.request.principal ?? x.principal) : x.principal;
        span.updateName(first?.method === undefined ? 'mcp.request' : `mcp ${first.method}`);
        span.setAttributes({
          'http.request.method': x.reply.request.method,
          'http.response.status_code': x.status,
          'portcullis.tenant': p.tenant,
          'portcullis.subject': p.subject,
          'portcullis.era': x.era,
        });
        if (x.server !== '') span.setAttribute('portcullis.server', x.server);
        if (first?.method !== undefined) span.setAttribute('rpc.method', first.method);
        if (first?.target !== undefined) span.setAttribute('portcullis.target', first.target);
        if (first?.id !== undefined && first.id !== null)
          span.setAttribute('jsonrpc.request.id', String(first.id));
        const session = x.sessionId();
        if (session !== undefined) span.setAttribute('portcullis.session', session);
        if (x.upstreamSentAt > 0 && x.upstreamAnsweredAt >= x.upstreamSentAt)
          span.setAttribute(
            'portcullis.upstream_ms',
            Math.round((x.upstreamAnsweredAt - x.upstreamSentAt) * 1000) / 1000,
          );
        if (x.errorCode !== undefined) {
          span.setAttribute('portcullis.error', x.errorCode);
          span.setStatus({ code: SpanStatusCode.ERROR, message: x.errorCode });
        }
        span.end(wallTime(x.endedAt || performance.now()));
      },
    },
    close: () => provider.shutdown(),
  };
}
