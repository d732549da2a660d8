/**
 * The SDK 2.x client straight against the modern fixture, no gateway in
 * between: pins down what a real modern client sends and what a real modern
 * server answers, so the gateway tests can rely on both ends.
 *
 *   node --import tsx --test test/modern-direct.test.ts
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test, type TestContext } from 'node:test';

import type { Client, FetchLike } from '@modelcontextprotocol/client';

import {
  ASK_NAME_INPUT_KEY,
  GREETING_RESOURCE_URI,
  startModernServer,
  type ModernServer,
  type ToolCall,
  type CancelledCall,
} from './fixtures/modern-server.js';
import {
  connectModernClient,
  MODERN_PROTOCOL_VERSION,
  type ModernClientOptions,
} from './helpers/modern-client.js';

const CANCELLATION_BOUND_MS = 2_000;

async function setup(
  t: TestContext,
  opts: ModernClientOptions = {},
): Promise<{ server: ModernServer; client: Client }> {
  const server = await startModernServer();
  t.after(() => server.close());
  const client = await connectModernClient(server.url, opts);
  t.after(() => client.close());
  return { server, client };
}

function textOf(result: unknown): string {
  const content = (result as { content?: { type: string; text?: string }[] }).content ?? [];
  return content.map((c) => (c.type === 'text' ? (c.text ?? '') : '')).join('');
}

test('connect sends one server/discover POST and nothing else', async (t) => {
  const { server } = await setup(t);
  assert.deepEqual(
    server.events.requests.map((r) => [r.httpMethod, r.method]),
    [['POST', 'server/discover']],
  );
  const [discover] = server.events.requests;
  assert.equal(discover?.mcpHeaders['mcp-protocol-version'], MODERN_PROTOCOL_VERSION);
  assert.equal(discover?.mcpHeaders['mcp-method'], 'server/discover');
});

test('the client sends only POSTs with the standard headers, never a session id', async (t) => {
  const { server, client } = await setup(t);
  await client.listTools();
  await client.callTool({ name: 'echo', arguments: { text: 'x' } });
  await client.readResource({ uri: GREETING_RESOURCE_URI });
  await client.getPrompt({ name: 'greet', arguments: { who: 'you' } });
  await client.close();

  for (const request of server.events.requests) {
    assert.equal(request.httpMethod, 'POST');
    assert.equal(request.headers['mcp-session-id'], undefined);
    assert.equal(request.mcpHeaders['mcp-protocol-version'], MODERN_PROTOCOL_VERSION);
    assert.equal(request.mcpHeaders['mcp-method'], request.method);
    const meta =
      (request.body as { params?: { _meta?: Record<string, unknown> } }).params?._meta ?? {};
    assert.equal(meta['io.modelcontextprotocol/protocolVersion'], MODERN_PROTOCOL_VERSION);
    assert.ok('io.modelcontextprotocol/clientInfo' in meta);
    assert.ok('io.modelcontextprotocol/clientCapabilities' in meta);
  }
  const named = server.events.requests.filter((r) => r.name !== undefined);
  assert.deepEqual(
    named.map((r) => [r.method, r.mcpHeaders['mcp-name']]),
    [
      ['tools/call', 'echo'],
      ['resources/read', GREETING_RESOURCE_URI],
      ['prompts/get', 'greet'],
    ],
  );
});

test('lists the fixture tools, with the x-mcp-header annotation on region_query', async (t) => {
  const { client } = await setup(t);
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((tool) => tool.name).sort(), [
    'ask_name',
    'echo',
    'progress',
    'region_query',
    'slow',
  ]);
  const regionQuery = tools.find((tool) => tool.name === 'region_query');
  const properties = regionQuery?.inputSchema.properties as
    Record<string, Record<string, unknown>> | undefined;
  assert.equal(properties?.region?.['x-mcp-header'], 'Region');
});

test('echo answers with the text it was given', async (t) => {
  const { server, client } = await setup(t);
  const result = await client.callTool({
    name: 'echo',
    arguments: { text: 'through the portcullis' },
  });
  assert.equal(textOf(result), 'through the portcullis');
  assert.equal(server.events.requestsFor('tools/call', 'echo').length, 1);
});

test('progress notifications arrive on an SSE response before the result', async (t) => {
  const contentTypes: string[] = [];
  const capture: FetchLike = async (url, init) => {
    const response = await fetch(url, init);
    contentTypes.push(response.headers.get('content-type') ?? '');
    return response;
  };
  const { client } = await setup(t, { fetch: capture });
  const seen: { progress: number; total?: number }[] = [];
  const result = await client.callTool(
    { name: 'progress', arguments: { steps: 3 } },
    { onprogress: (p) => seen.push({ progress: p.progress, total: p.total }) },
  );
  assert.equal(textOf(result), 'done 3 steps');
  assert.deepEqual(seen, [
    { progress: 1, total: 3 },
    { progress: 2, total: 3 },
    { progress: 3, total: 3 },
  ]);
  assert.equal(contentTypes.at(-1), 'text/event-stream');
});

test('ask_name completes through MRTR: the client answers the elicitation and retries', async (t) => {
  const asked: string[] = [];
  const { server, client } = await setup(t, {
    onElicit: (params) => {
      asked.push(params.message);
      return { action: 'accept', content: { name: 'Ada' } };
    },
  });
  const result = await client.callTool({ name: 'ask_name', arguments: {} });
  assert.equal(textOf(result), 'Hello, Ada');
  assert.deepEqual(asked, ['What is your name?']);

  const legs = server.events.requestsFor('tools/call', 'ask_name');
  assert.equal(legs.length, 2);
  assert.notEqual(legs[0]?.id, legs[1]?.id, 'the retry is a new JSON-RPC request');
  const retryParams = (legs[1]?.body as { params: { inputResponses?: unknown } }).params;
  assert.deepEqual(retryParams.inputResponses, {
    [ASK_NAME_INPUT_KEY]: { action: 'accept', content: { name: 'Ada' } },
  });
});

test('ask_name ends with an error result when the elicitation is declined', async (t) => {
  const { server, client } = await setup(t, { onElicit: () => ({ action: 'decline' }) });
  const result = await client.callTool({ name: 'ask_name', arguments: {} });
  assert.equal(result.isError, true);
  assert.equal(textOf(result), 'No name given (decline)');
  assert.equal(server.events.requestsFor('tools/call', 'ask_name').length, 2);
});

test('region_query reaches the server with Mcp-Param-Region mirrored from the arguments', async (t) => {
  const { server, client } = await setup(t);
  await client.listTools();
  const result = await client.callTool({
    name: 'region_query',
    arguments: { region: 'eu-west1', query: 'SELECT 1' },
  });
  assert.equal(textOf(result), 'region=eu-west1 query=SELECT 1');
  const calls = server.events.requestsFor('tools/call', 'region_query');
  assert.equal(calls.length, 1);
  assert.equal(calls[0]?.mcpHeaders['mcp-param-region'], 'eu-west1');
});

test('without a cached tools/list the client recovers from -32020 by listing and retrying', async (t) => {
  const { server, client } = await setup(t);
  const result = await client.callTool({
    name: 'region_query',
    arguments: { region: 'us', query: 'q' },
  });
  assert.equal(textOf(result), 'region=us query=q');
  const after = server.events.requests.slice(1);
  assert.deepEqual(
    after.map((r) => [r.method, r.mcpHeaders['mcp-param-region'], r.status]),
    [
      ['tools/call', undefined, 400],
      ['tools/list', undefined, 200],
      ['tools/call', 'us', 200],
    ],
  );
});

test('aborting a slow call closes the request and the server cancels the work', async (t) => {
  const { server, client } = await setup(t);
  const started = once(server.events, 'started', {
    signal: AbortSignal.timeout(CANCELLATION_BOUND_MS),
  });
  const abort = new AbortController();
  const call = client.callTool(
    { name: 'slow', arguments: { ms: 30_000 } },
    { signal: abort.signal },
  );
  const [startedCall] = (await started) as [ToolCall];

  const cancelled = once(server.events, 'cancelled', {
    signal: AbortSignal.timeout(CANCELLATION_BOUND_MS),
  });
  const abortedAt = performance.now();
  abort.abort();
  await assert.rejects(call, /abort/i);
  const [cancelledCall] = (await cancelled) as [CancelledCall];

  assert.ok(performance.now() - abortedAt < CANCELLATION_BOUND_MS);
  assert.equal(cancelledCall.tool, 'slow');
  assert.equal(cancelledCall.requestId, startedCall.requestId);
  assert.deepEqual(server.events.completed, []);
  assert.equal(
    server.events.requests.filter((r) => r.method === 'notifications/cancelled').length,
    0,
    'on Streamable HTTP the disconnect is the cancellation; no notification is POSTed',
  );
});

test('aborting during an SSE progress stream cancels the server work', async (t) => {
  const { server, client } = await setup(t);
  const abort = new AbortController();
  let received = 0;
  const cancelled = once(server.events, 'cancelled', {
    signal: AbortSignal.timeout(CANCELLATION_BOUND_MS * 2),
  });
  const call = client.callTool(
    { name: 'progress', arguments: { steps: 1_000, stepMs: 20 } },
    {
      signal: abort.signal,
      onprogress: () => {
        if (++received === 2) abort.abort();
      },
    },
  );
  await assert.rejects(call, /abort/i);
  const [cancelledCall] = (await cancelled) as [CancelledCall];
  assert.equal(cancelledCall.tool, 'progress');
  assert.deepEqual(server.events.completed, []);
});

test('a raw POST whose Mcp-Name disagrees with the body is refused with 400 / -32020', async (t) => {
  const server = await startModernServer();
  t.after(() => server.close());
  const response = await fetch(server.url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': MODERN_PROTOCOL_VERSION,
      'mcp-method': 'tools/call',
      'mcp-name': 'slow',
    },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 7,
      method: 'tools/call',
      params: {
        name: 'echo',
        arguments: { text: 'x' },
        _meta: {
          'io.modelcontextprotocol/protocolVersion': MODERN_PROTOCOL_VERSION,
          'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
          'io.modelcontextprotocol/clientCapabilities': {},
        },
      },
    }),
  });
  assert.equal(response.status, 400);
  assert.equal(response.headers.get('content-type'), 'application/json');
  const mismatch = 'the body carries params.name="echo" but the Mcp-Name header names "slow"';
  assert.deepEqual(await response.json(), {
    jsonrpc: '2.0',
    id: 7,
    error: {
      code: -32020,
      message: `Bad Request: the request headers and body disagree: ${mismatch}`,
      data: { mismatch: { header: 'slow', body: mismatch } },
    },
  });
  assert.deepEqual(server.events.started, [], 'no tool ran');
});

test('GET and DELETE on the modern endpoint are 405 with Allow: POST', async (t) => {
  const server = await startModernServer();
  t.after(() => server.close());
  for (const method of ['GET', 'DELETE']) {
    const response = await fetch(server.url, { method, headers: { accept: 'text/event-stream' } });
    assert.equal(response.status, 405, method);
    assert.equal(response.headers.get('allow'), 'POST');
    assert.deepEqual(await response.json(), {
      jsonrpc: '2.0',
      error: { code: -32000, message: 'Method not allowed.' },
      id: null,
    });
  }
});
