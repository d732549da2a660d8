/**
 * The modern era (2026-07-28) end to end: the SDK 2.x client through the
 * gateway to the SDK 2.x modern fixture. Stateless POST forwarding, the
 * request metadata headers checked against the body, MRTR passed through
 * unchanged, and a client disconnect cancelling the upstream work.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test, type TestContext } from 'node:test';
import { startModernServer, type CancelledCall, type ToolCall } from './fixtures/modern-server.js';
import {
  connectModernClient,
  MODERN_PROTOCOL_VERSION,
  type ModernClientOptions,
} from './helpers/modern-client.js';
import { startTestGateway, type SeenFrame } from './helpers/gateway.js';
import { modernCall, post as rawPost } from './helpers/requests.js';

const post = (url: string, body: unknown, headers: Record<string, string>) =>
  rawPost(url, body, { 'mcp-protocol-version': MODERN_PROTOCOL_VERSION, ...headers });

const CANCELLATION_BOUND_MS = 2_000;

async function setup(t: TestContext, opts: ModernClientOptions = {}) {
  const server = await startModernServer();
  t.after(() => server.close());
  const frames: SeenFrame[] = [];
  const gateway = await startTestGateway({ modern: server.url }, {}, frames);
  t.after(() => gateway.close());
  const url = gateway.urlFor('modern');
  const client = await connectModernClient(url, opts);
  t.after(() => client.close());
  return { server, gateway, client, url, frames };
}

function textOf(result: unknown): string {
  const content = (result as { content?: { type: string; text?: string }[] }).content ?? [];
  return content.map((c) => (c.type === 'text' ? (c.text ?? '') : '')).join('');
}

test('modern calls pass through statelessly with their metadata headers', async (t) => {
  const { server, client, frames } = await setup(t);
  const { tools } = await client.listTools();
  assert.ok(tools.some((tool) => tool.name === 'echo'));
  const result = await client.callTool({ name: 'echo', arguments: { text: 'hi' } });
  assert.equal(textOf(result), 'hi');

  const call = server.events.requestsFor('tools/call', 'echo')[0];
  assert.equal(call?.mcpHeaders['mcp-method'], 'tools/call');
  assert.equal(call?.mcpHeaders['mcp-name'], 'echo');
  assert.equal(call?.mcpHeaders['mcp-protocol-version'], MODERN_PROTOCOL_VERSION);
  assert.equal(call?.headers['mcp-session-id'], undefined, 'no session in the modern era');
  // Both directions were framed: the request and its response.
  assert.ok(
    frames.some(
      (f) => f.direction === 'client-to-server' && f.method === 'tools/call' && f.target === 'echo',
    ),
  );
  assert.ok(
    frames.some(
      (f) => f.direction === 'server-to-client' && f.kind === 'response' && f.id === call?.id,
    ),
  );
});

test('progress notifications stream through before the result', async (t) => {
  const { client } = await setup(t);
  const progress: number[] = [];
  const result = await client.callTool(
    { name: 'progress', arguments: { steps: 3, stepMs: 20 } },
    {
      onprogress: (p) => progress.push(p.progress),
    },
  );
  assert.equal(progress.length, 3);
  assert.ok(textOf(result).length > 0);
});

test('an InputRequiredResult passes through unchanged and the MRTR retry completes', async (t) => {
  const { server, client, url } = await setup(t, {
    onElicit: () => ({ action: 'accept', content: { name: 'Ada' } }),
  });
  const result = await client.callTool({ name: 'ask_name', arguments: {} });
  assert.equal(textOf(result), 'Hello, Ada');
  assert.equal(server.events.requestsFor('tools/call', 'ask_name').length, 2);

  // Byte for byte: the first leg's body through the gateway equals the upstream's.
  const headers = { 'mcp-method': 'tools/call', 'mcp-name': 'ask_name' };
  const caps = { elicitation: { form: {} } };
  const direct = await (
    await post(server.url, modernCall('ask_name', {}, 1, caps), headers)
  ).text();
  const via = await (await post(url, modernCall('ask_name', {}, 1, caps), headers)).text();
  assert.match(via, /"resultType":"input_required"/);
  assert.equal(via, direct);
});

test('Mcp-Param-* is forwarded and checked against the body once the tool is known', async (t) => {
  const { server, client, url } = await setup(t);
  await client.listTools();
  const result = await client.callTool({
    name: 'region_query',
    arguments: { region: 'eu-west1', query: 'q' },
  });
  assert.match(textOf(result), /eu-west1/);
  const seen = server.events.requestsFor('tools/call', 'region_query')[0];
  assert.equal(seen?.mcpHeaders['mcp-param-region'], 'eu-west1');

  const before = server.events.requests.length;
  const res = await post(url, modernCall('region_query', { region: 'eu-west1', query: 'q' }, 7), {
    'mcp-method': 'tools/call',
    'mcp-name': 'region_query',
    'mcp-param-region': 'us-east1',
  });
  assert.equal(res.status, 400);
  const body = (await res.json()) as { id: number; error: { code: number; message: string } };
  assert.equal(body.id, 7);
  assert.equal(body.error.code, -32020);
  assert.match(body.error.message, /mcp-param-region/);
  assert.equal(server.events.requests.length, before, 'nothing reached the upstream');
});

test('header/body mismatches are refused by the gateway with 400 and -32020', async (t) => {
  const { server, url } = await setup(t);
  const before = server.events.requests.length;
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    [
      'wrong Mcp-Name',
      { 'mcp-method': 'tools/call', 'mcp-name': 'slow' },
      /Mcp-Name header value 'slow'/,
    ],
    ['missing Mcp-Name', { 'mcp-method': 'tools/call' }, /Mcp-Name header is required/],
    [
      'wrong Mcp-Method',
      { 'mcp-method': 'tools/list', 'mcp-name': 'echo' },
      /Mcp-Method header value 'tools\/list'/,
    ],
    ['missing Mcp-Method', { 'mcp-name': 'echo' }, /Mcp-Method header is required/],
    [
      'protocol version header differs from _meta',
      { 'mcp-method': 'tools/call', 'mcp-name': 'echo', 'mcp-protocol-version': '2026-12-01' },
      /MCP-Protocol-Version header value '2026-12-01'/,
    ],
    [
      'bad characters in Mcp-Name',
      { 'mcp-method': 'tools/call', 'mcp-name': 'ech\u00f6' },
      /invalid characters/,
    ],
  ];
  for (const [label, headers, message] of cases) {
    const res = await post(url, modernCall('echo', { text: 'x' }, 3), headers);
    assert.equal(res.status, 400, label);
    const body = (await res.json()) as { id: number; error: { code: number; message: string } };
    assert.equal(body.id, 3, label);
    assert.equal(body.error.code, -32020, label);
    assert.match(body.error.message, message, label);
  }
  // A Base64-encoded Mcp-Name is decoded before the comparison and passes.
  const ok = await post(url, modernCall('echo', { text: 'b64' }, 4), {
    'mcp-method': 'tools/call',
    'mcp-name': `=?base64?${Buffer.from('echo').toString('base64')}?=`,
  });
  assert.equal(ok.status, 200);
  assert.equal(
    server.events.requests.length,
    before + 1,
    'only the valid request reached the upstream',
  );
});

test('a request without its required _meta fields gets 400 and -32602, not -32020', async (t) => {
  // Regression: the gateway compared the MCP-Protocol-Version header with a
  // body field that was not there and answered -32020 (header mismatch);
  // spec/2026-07-28/basic/index.mdx makes such a request malformed: -32602.
  const { server, url } = await setup(t);
  const before = server.events.requests.length;
  const info = { 'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' } };
  const cases: Array<[string, unknown, string]> = [
    ['no _meta', {}, '_meta'],
    ['_meta is not an object', { _meta: 'x' }, '_meta'],
    [
      'no protocolVersion',
      { _meta: { ...info, 'io.modelcontextprotocol/clientCapabilities': {} } },
      'io.modelcontextprotocol/protocolVersion',
    ],
    [
      'no clientCapabilities',
      { _meta: { ...info, 'io.modelcontextprotocol/protocolVersion': MODERN_PROTOCOL_VERSION } },
      'io.modelcontextprotocol/clientCapabilities',
    ],
  ];
  for (const [label, params, field] of cases) {
    const res = await post(
      url,
      { jsonrpc: '2.0', id: 101, method: 'server/discover', params },
      { 'mcp-method': 'server/discover' },
    );
    assert.equal(res.status, 400, label);
    const body = (await res.json()) as {
      id: number;
      error: { code: number; data: { code: string; field: string } };
    };
    assert.equal(body.id, 101, label);
    assert.equal(body.error.code, -32602, label);
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_PROTOCOL_META_INVALID', label);
    assert.equal(body.error.data.field, field, label);
  }
  assert.equal(server.events.requests.length, before, 'nothing reached the upstream');
});

test('initialize carrying 2026-07-28 _meta gets 404 and -32601 from the gateway', async (t) => {
  // Regression: it was taken for a legacy initialize and forwarded without its
  // Mcp-Method header, so the upstream answered 400 / -32020. The revision has
  // no initialize, and a server without the method MUST answer 404 / -32601.
  const { server, url } = await setup(t);
  const before = server.events.requests.length;
  const meta = {
    'io.modelcontextprotocol/protocolVersion': MODERN_PROTOCOL_VERSION,
    'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
    'io.modelcontextprotocol/clientCapabilities': {},
  };
  const res = await post(
    url,
    { jsonrpc: '2.0', id: 500, method: 'initialize', params: { _meta: meta } },
    { 'mcp-method': 'initialize' },
  );
  assert.equal(res.status, 404);
  assert.equal(res.headers.get('mcp-session-id'), null, 'no session is opened');
  const body = (await res.json()) as {
    id: number;
    error: { code: number; data: { code: string } };
  };
  assert.equal(body.id, 500);
  assert.equal(body.error.code, -32601);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_PROTOCOL_METHOD_REMOVED');
  assert.equal(server.events.requests.length, before, 'nothing reached the upstream');
});

test('a batch is refused in the modern era', async (t) => {
  const { server, url } = await setup(t);
  const before = server.events.requests.length;
  const res = await post(
    url,
    [modernCall('echo', { text: 'a' }, 1), modernCall('echo', { text: 'b' }, 2)],
    {
      'mcp-method': 'tools/call',
      'mcp-name': 'echo',
    },
  );
  assert.equal(res.status, 400);
  const body = (await res.json()) as { error: { code: number; data: { code: string } } };
  assert.equal(body.error.code, -32600);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_JSONRPC_BATCH');
  assert.equal(server.events.requests.length, before);
});

test('a client disconnect cancels the upstream work', async (t) => {
  const { server, client } = await setup(t);
  const started = once(server.events, 'started');
  const cancelled = once(server.events, 'cancelled', { signal: AbortSignal.timeout(10_000) });
  const controller = new AbortController();
  const call = client.callTool(
    { name: 'slow', arguments: { ms: 30_000 } },
    { signal: controller.signal },
  );
  const [startedCall] = (await started) as [ToolCall];
  const abortedAt = Date.now();
  controller.abort();
  await assert.rejects(call);
  const [cancelledCall] = (await cancelled) as [CancelledCall];
  assert.equal(cancelledCall.requestId, startedCall.requestId);
  assert.ok(Date.now() - abortedAt < CANCELLATION_BOUND_MS, 'cancelled within the bound');
  assert.equal(server.events.completed.length, 0, 'the work never completed');
});

test('GET on a modern endpoint is 405; the modern era has no GET stream', async (t) => {
  const { url } = await setup(t);
  const res = await fetch(url, {
    headers: { accept: 'text/event-stream', 'mcp-protocol-version': MODERN_PROTOCOL_VERSION },
  });
  assert.equal(res.status, 405);
  const body = (await res.json()) as { error: { data: { code: string } } };
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED');
});
