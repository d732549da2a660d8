/**
 * OpenTelemetry: with `tracing.otlp` set, every request has a span, a child
 * of the caller's `traceparent`, and the upstream is told the gateway's span
 * as its parent. The spans arrive at an OTLP/HTTP endpoint through the
 * official exporter; the endpoint here is a small HTTP server that stands in
 * for an OpenTelemetry Collector (none runs on these machines) and keeps the
 * JSON the exporter posts.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, test } from 'node:test';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startKeyedGateway } from './helpers/auth-gateway.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: Array<{ key: string; value: { stringValue?: string; intValue?: string | number } }>;
  status?: { code?: number; message?: string };
}

let upstream: ModernServer;
let collector: Server;
let collectorUrl: string;
const spans: OtlpSpan[] = [];
const contentTypes: string[] = [];

before(async () => {
  upstream = await startModernServer();
  collector = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      contentTypes.push(String(req.headers['content-type']));
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
        resourceSpans: Array<{ scopeSpans: Array<{ spans: OtlpSpan[] }> }>;
      };
      for (const rs of body.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  collectorUrl = `http://127.0.0.1:${(collector.address() as { port: number }).port}/v1/traces`;
});

after(async () => {
  await upstream.close();
  await new Promise((resolve) => collector.close(resolve));
});

const attr = (span: OtlpSpan | undefined, key: string) => {
  const v = span?.attributes.find((a) => a.key === key)?.value;
  return v?.stringValue ?? (v?.intValue === undefined ? undefined : Number(v.intValue));
};

test('a span per request, under the caller’s trace, parent of the upstream’s', async () => {
  const keyed = await startKeyedGateway(
    { docs: upstream.url },
    { tracing: { serviceName: 'portcullis-test', otlp: { url: collectorUrl } } },
  );
  const seen: Array<Record<string, string>> = [];
  const listener = (r: { headers: Record<string, string> }) => seen.push(r.headers);
  upstream.events.on('request', listener);
  const traceId = '0af7651916cd43dd8448eb211c80319c';
  const callerSpan = 'b7ad6b7169203331';
  try {
    const bearer = await keyed.token('local', 'alice');
    const ok = await post(keyed.gw.urlFor('docs'), modernCall('echo', { text: 'hi' }, 5), {
      ...modernHeaders('echo'),
      authorization: `Bearer ${bearer}`,
      traceparent: `00-${traceId}-${callerSpan}-01`,
    });
    assert.equal(ok.status, 200);
    await ok.text();
    const refused = await post(
      keyed.gw.urlFor('docs'),
      modernCall('echo', {}, 6),
      modernHeaders('echo'),
    );
    assert.equal(refused.status, 401);
    await refused.text();
  } finally {
    upstream.events.off('request', listener);
    // Closing flushes the batch of spans.
    await keyed.close();
  }
  assert.ok(
    contentTypes.every((t) => t.startsWith('application/json')),
    contentTypes.join(),
  );

  const call = spans.find((s) => s.name === 'mcp tools/call');
  assert.ok(call, `spans: ${spans.map((s) => s.name).join(', ')}`);
  assert.equal(call.traceId, traceId, 'the caller’s trace');
  assert.equal(call.parentSpanId, callerSpan, 'a child of the caller’s span');
  assert.equal(call.kind, 2, 'SpanKind.SERVER');
  assert.equal(attr(call, 'portcullis.server'), 'docs');
  assert.equal(attr(call, 'portcullis.tenant'), 'local');
  assert.equal(attr(call, 'portcullis.target'), 'echo');
  assert.equal(attr(call, 'jsonrpc.request.id'), '5');
  assert.equal(attr(call, 'http.response.status_code'), 200);

  // The upstream was told the gateway's span, in the same trace.
  assert.equal(seen[0]?.traceparent, `00-${traceId}-${call.spanId}-01`);

  const refusal = spans.find((s) => attr(s, 'portcullis.error') === 'PORTCULLIS_ERR_AUTH_MISSING');
  assert.ok(refusal, 'the refused request has its span');
  assert.equal(refusal.status?.code, 2, 'SpanStatusCode.ERROR');
  assert.notEqual(refusal.traceId, traceId, 'a new trace: it sent no traceparent');
});
