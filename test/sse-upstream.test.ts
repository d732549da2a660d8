/**
 * A legacy HTTP+SSE server behind the gateway: @modelcontextprotocol/server-everything
 * in its `sse` mode, bridged (the gateway follows the `endpoint` event and
 * POSTs there), used by the official SDK's Streamable HTTP client and its
 * legacy SSE client.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { everythingFeaturesPerClient } from './helpers/everything-features.js';
import { startEverything } from './helpers/everything.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { initializeBody, post, type RpcError } from './helpers/requests.js';

let upstream: Awaited<ReturnType<typeof startEverything>>;
/**
 * A legacy SSE server whose `endpoint` points at another origin, and that
 * other origin, counting what reaches it. A fault no real server produces on
 * demand: this one is written for the test, and says so.
 */
let misdirecting: Server | undefined;
let elsewhere: Server | undefined;
let reachedElsewhere = 0;
let gateway: TestGateway;

before(async () => {
  upstream = await startEverything(undefined, 'sse');
  elsewhere = createServer((_req, res) => {
    reachedElsewhere++;
    res.writeHead(202).end();
  });
  await new Promise<void>((resolve) => elsewhere?.listen(0, '127.0.0.1', resolve));
  const target = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/messages`;
  misdirecting = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`event: endpoint\ndata: ${target}\n\n`);
  });
  await new Promise<void>((resolve) => misdirecting?.listen(0, '127.0.0.1', resolve));
  gateway = await startTestGateway({
    everything: { transport: 'sse', url: upstream.url },
    // Nothing listens on port 1.
    down: { transport: 'sse', url: 'http://127.0.0.1:1/sse' },
    misdirecting: {
      transport: 'sse',
      url: `http://127.0.0.1:${(misdirecting.address() as AddressInfo).port}/sse`,
    },
  });
});
after(async () => {
  await gateway?.close();
  await upstream?.stop();
  misdirecting?.closeAllConnections();
  misdirecting?.close();
  elsewhere?.close();
});

test('a legacy SSE server that is down: 502 naming the server, a JSON-RPC error for the request', async () => {
  const res = await post(gateway.urlFor('down'), initializeBody(3));
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 3);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE');
  assert.match(body.error.message, /server 'down' could not be reached/);
  // Where it lives and what the system said are the operator's, not the client's.
  assert.doesNotMatch(JSON.stringify(body), /127\.0\.0\.1|:1\b|ECONN|errno/);
});

test('an endpoint event pointing at another origin is refused: nothing is sent there', async () => {
  const res = await post(gateway.urlFor('misdirecting'), initializeBody(1));
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE');
  assert.match(
    body.error.message,
    /server 'misdirecting' named a message endpoint on another origin/,
  );
  assert.doesNotMatch(body.error.message, /127\.0\.0\.1/, 'neither origin is shown');
  assert.equal(reachedElsewhere, 0);
});

/** A bridged answer: one JSON message, or the SSE stream's message for `id`. */
async function answerFor(res: Response, id: unknown): Promise<Record<string, unknown>> {
  const text = await res.text();
  if ((res.headers.get('content-type') ?? '').startsWith('application/json'))
    return JSON.parse(text) as Record<string, unknown>;
  const messages = text
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => JSON.parse(l.slice(6)) as Record<string, unknown>);
  return messages.find((m) => m.id === id) as Record<string, unknown>;
}

test('a message the SSE server refuses (400) fails that request alone: the session goes on, and the crash-loop breaker stays off', async () => {
  const url = gateway.urlFor('everything');
  // More than the crash-loop threshold: each refusal used to end the connection as a crash.
  for (let i = 0; i < 4; i++) {
    const init = await post(url, initializeBody(1));
    assert.equal(init.status, 200, `initialize ${i + 1}`);
    await init.text();
    const sid = init.headers.get('mcp-session-id') as string;
    const headers = { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-11-25' };
    await (
      await post(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, headers)
    ).text();
    // Well-formed JSON-RPC the gateway lets through, which the SDK's SSE server refuses (params as an array).
    const bad = await post(
      url,
      { jsonrpc: '2.0', id: 10 + i, method: 'tools/call', params: [1] },
      headers,
    );
    const refused = (await answerFor(bad, 10 + i)) as unknown as RpcError;
    assert.equal(refused.id, 10 + i);
    assert.equal(refused.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
    assert.equal(refused.error.data.upstreamStatus, 400);
    const list = await post(url, { jsonrpc: '2.0', id: 20 + i, method: 'tools/list' }, headers);
    assert.equal(list.status, 200, 'the session outlived the refusal');
    const tools = (await answerFor(list, 20 + i)) as { result?: { tools: unknown[] } };
    assert.ok(tools.result && tools.result.tools.length > 0);
    await fetch(url, { method: 'DELETE', headers });
  }
});

everythingFeaturesPerClient('server-everything over legacy HTTP+SSE', 'everything', (frames) =>
  startTestGateway({ everything: { transport: 'sse', url: upstream.url } }, {}, frames),
);
