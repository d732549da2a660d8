/**
 * Bad input at the door: each case gets its HTTP status and a JSON-RPC error
 * the agent can act on (standard code plus `data.code`), and none of it ever
 * reaches the upstream.
 */
import assert from 'node:assert/strict';
import { before, after, test } from 'node:test';
import { request } from 'undici';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { openSse } from './helpers/sse.js';
import {
  ACCEPT_BOTH,
  initializeBody,
  LEGACY,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';

const BODY_LIMIT = 8 * 1024;
let fault: FaultUpstream;
let gateway: TestGateway;
let url: string;

before(async () => {
  fault = await startFaultUpstream();
  gateway = await startTestGateway(
    { ok: fault.url('/ok'), legacy: fault.url('/legacy'), secret: fault.url('/ok') },
    { listen: { bodyLimitBytes: BODY_LIMIT } },
  );
  url = gateway.urlFor('ok');
});
after(async () => {
  await gateway?.close();
  await fault?.close();
});

function upstreamHits(): number {
  return [...fault.hits.values()].reduce((a, b) => a + b, 0);
}

async function expectRefused(
  res: Response,
  status: number,
  rpcCode: number,
  code: string,
  id: unknown = null,
) {
  assert.equal(res.status, status);
  assert.match(res.headers.get('content-type') ?? '', /application\/json/);
  const body = (await res.json()) as RpcError;
  assert.equal(body.jsonrpc, '2.0');
  assert.equal(body.id, id);
  assert.equal(body.error.code, rpcCode);
  assert.equal(body.error.data.code, code);
  assert.ok(body.error.message.length > 10, 'the message says what to do');
  return body;
}

test('malformed JSON → 400 -32700', async () => {
  const before = upstreamHits();
  await expectRefused(
    await post(url, '{"jsonrpc":"2.0",', modernHeaders('x')),
    400,
    -32700,
    'PORTCULLIS_ERR_JSONRPC_PARSE',
  );
  assert.equal(upstreamHits(), before);
});

test('bodies that are not a JSON-RPC object → 400 -32600', async () => {
  const before = upstreamHits();
  for (const body of [
    '42',
    '"text"',
    'null',
    'true',
    '{"id":1,"method":"ping"}',
    '{"jsonrpc":"2.0","id":{},"method":"ping"}',
    '{"jsonrpc":"2.0","id":1}',
    '[]',
  ]) {
    const res = await post(url, body, modernHeaders('x'));
    assert.equal(res.status, 400, body);
    const err = (await res.json()) as RpcError;
    assert.equal(err.error.code, -32600, body);
  }
  assert.equal(upstreamHits(), before);
});

test('a request id that is not a string or an integer (1.5, true, an object) is refused at the door', async () => {
  const before = upstreamHits();
  for (const id of ['1.5', 'true', '{"n":1}', '[1]', '1e300']) {
    const res = await post(url, `{"jsonrpc":"2.0","id":${id},"method":"ping"}`, modernHeaders('x'));
    assert.equal(res.status, 400, id);
    const err = (await res.json()) as RpcError;
    assert.equal(err.error.code, -32600, id);
    assert.equal(err.error.data.code, 'PORTCULLIS_ERR_JSONRPC_INVALID', id);
  }
  assert.equal(upstreamHits(), before, 'none of them reached the upstream');
  const ok = await post(url, modernCall('x', {}, 7), modernHeaders('x'));
  assert.equal(ok.status, 200, 'an integer id passes');
});

test('a body nested thousands of levels deep is refused at the door; the next request is served', async () => {
  const before = upstreamHits();
  // As deep as this gateway's small body limit allows (about 4,000 levels).
  const depth = (BODY_LIMIT - 200) / 2;
  const deep = `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":{"a":${'['.repeat(depth)}${']'.repeat(depth)}}}}`;
  const body = await expectRefused(
    await post(url, deep, modernHeaders('x')),
    400,
    -32600,
    'PORTCULLIS_ERR_JSONRPC_INVALID',
  );
  assert.match(body.error.message, /nested deeper than 128 levels/);
  assert.equal(upstreamHits(), before, 'it never reached the upstream');
  const ok = await post(url, modernCall('x', {}, 4), modernHeaders('x'));
  assert.equal(ok.status, 200);
  await ok.body?.cancel();
});

test('a legacy SSE client: a deep message or an id that is not an integer is refused on its POST', async (t) => {
  const stream = await openSse(`${gateway.urlFor('ok')}/sse`);
  t.after(stream.close);
  const endpoint = await stream.next();
  const messages = new URL(endpoint.data, gateway.url).href;
  const before = upstreamHits();
  const depth = (BODY_LIMIT - 200) / 2;
  for (const body of [
    `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":${'['.repeat(depth)}${']'.repeat(depth)}}}`,
    '{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
  ]) {
    const res = await fetch(messages, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    await expectRefused(res, 400, -32600, 'PORTCULLIS_ERR_JSONRPC_INVALID');
  }
  assert.equal(upstreamHits(), before);
});

test('a batch where the era forbids it → 400 PORTCULLIS_ERR_JSONRPC_BATCH', async () => {
  const legacy = gateway.urlFor('legacy');
  const sid = (await post(legacy, initializeBody(0, LEGACY))).headers.get(
    'mcp-session-id',
  ) as string;
  assert.ok(sid);
  const before = upstreamHits();
  const pings = [
    { jsonrpc: '2.0', id: 1, method: 'ping' },
    { jsonrpc: '2.0', id: 2, method: 'ping' },
  ];
  // A 2025-11-25 session: batching was removed in 2025-06-18.
  await expectRefused(
    await post(legacy, pings, { 'mcp-session-id': sid }),
    400,
    -32600,
    'PORTCULLIS_ERR_JSONRPC_BATCH',
  );
  // The modern era: one message per POST.
  await expectRefused(
    await post(url, [modernCall('a', {}, 1), modernCall('b', {}, 2)], modernHeaders('a')),
    400,
    -32600,
    'PORTCULLIS_ERR_JSONRPC_BATCH',
  );
  // No session yet: nothing negotiated batching.
  await expectRefused(await post(legacy, pings), 400, -32600, 'PORTCULLIS_ERR_JSONRPC_BATCH');
  assert.equal(upstreamHits(), before);
});

test('wrong Content-Type → 415', async () => {
  const before = upstreamHits();
  const res = await post(url, 'hello', { 'content-type': 'text/plain' });
  await expectRefused(res, 415, -32600, 'PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
  const none = await fetch(url, { method: 'POST', headers: { accept: ACCEPT_BOTH } });
  await expectRefused(none, 415, -32600, 'PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
  assert.equal(upstreamHits(), before);
});

test('Accept without both media types → 406', async () => {
  const before = upstreamHits();
  for (const accept of ['application/json', 'text/event-stream', '']) {
    const res = await post(url, modernCall('x', {}, 9), { ...modernHeaders('x'), accept });
    await expectRefused(res, 406, -32600, 'PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE');
  }
  assert.equal(upstreamHits(), before);
});

test('oversized body → 413 with a JSON-RPC error', async () => {
  const before = upstreamHits();
  const big = modernCall('x', { blob: 'x'.repeat(BODY_LIMIT * 2) });
  await expectRefused(
    await post(url, big, modernHeaders('x')),
    413,
    -32600,
    'PORTCULLIS_ERR_HTTP_BODY_TOO_LARGE',
  );
  assert.equal(upstreamHits(), before);
});

test('a Host not on the allowlist → 403 (DNS rebinding)', async () => {
  const before = upstreamHits();
  // fetch cannot set Host; undici.request can.
  const res = await request(url, {
    method: 'POST',
    headers: { host: 'evil.example.com', 'content-type': 'application/json', accept: ACCEPT_BOTH },
    body: JSON.stringify(initializeBody()),
  });
  assert.equal(res.statusCode, 403);
  const body = (await res.body.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_HTTP_FORBIDDEN_HOST');
  assert.equal(upstreamHits(), before);
});

test('a present but foreign Origin → 403; loopback origins pass', async () => {
  const before = upstreamHits();
  const res = await post(url, modernCall('x', {}), {
    ...modernHeaders('x'),
    origin: 'https://evil.example.com',
  });
  await expectRefused(res, 403, -32600, 'PORTCULLIS_ERR_HTTP_FORBIDDEN_ORIGIN');
  const nullOrigin = await post(url, modernCall('x', {}), {
    ...modernHeaders('x'),
    origin: 'null',
  });
  await expectRefused(nullOrigin, 403, -32600, 'PORTCULLIS_ERR_HTTP_FORBIDDEN_ORIGIN');
  assert.equal(upstreamHits(), before);
  const local = await post(url, modernCall('x', {}), {
    ...modernHeaders('x'),
    origin: 'http://localhost:6274',
  });
  assert.equal(local.status, 200);
});

test('an unknown server → 404 that names no other server', async () => {
  const res = await post(gateway.urlFor('nope'), modernCall('x', {}), modernHeaders('x'));
  const body = await expectRefused(res, 404, -32600, 'PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER');
  assert.doesNotMatch(JSON.stringify(body), /secret|legacy|"ok"/);
});

test('legacy: a request without a session id → 400; an unknown one → 404', async () => {
  const legacy = gateway.urlFor('legacy');
  const before = upstreamHits();
  const ping = { jsonrpc: '2.0', id: 4, method: 'ping' };
  await expectRefused(await post(legacy, ping), 400, -32600, 'PORTCULLIS_ERR_SESSION_MISSING', 4);
  await expectRefused(
    await post(legacy, ping, { 'mcp-session-id': 'not-a-session' }),
    404,
    -32600,
    'PORTCULLIS_ERR_SESSION_UNKNOWN',
    4,
  );
  const get = await fetch(legacy, {
    headers: { accept: 'text/event-stream', 'mcp-session-id': 'nope' },
  });
  await expectRefused(get, 404, -32600, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  const del = await fetch(legacy, { method: 'DELETE', headers: { 'mcp-session-id': 'nope' } });
  await expectRefused(del, 404, -32600, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  assert.equal(upstreamHits(), before);
});

test('legacy: the upstream session id is never accepted in place of the gateway one', async () => {
  const legacy = gateway.urlFor('legacy');
  const init = await post(legacy, initializeBody());
  assert.equal(init.status, 200);
  const upstreamId = fault.bodies.length; // the fault upstream numbers its sessions
  const res = await post(
    legacy,
    { jsonrpc: '2.0', id: 5, method: 'ping' },
    {
      'mcp-session-id': `upstream-session-${upstreamId}`,
    },
  );
  await expectRefused(res, 404, -32600, 'PORTCULLIS_ERR_SESSION_UNKNOWN', 5);
});

test('legacy: an unsupported MCP-Protocol-Version → 400', async () => {
  const legacy = gateway.urlFor('legacy');
  const sid = (await post(legacy, initializeBody())).headers.get('mcp-session-id') as string;
  const res = await post(
    legacy,
    { jsonrpc: '2.0', id: 6, method: 'ping' },
    {
      'mcp-session-id': sid,
      'mcp-protocol-version': '1999-01-01',
    },
  );
  await expectRefused(res, 400, -32600, 'PORTCULLIS_ERR_PROTOCOL_VERSION', 6);
});

test('initialize carrying a session id is refused', async () => {
  const legacy = gateway.urlFor('legacy');
  const sid = (await post(legacy, initializeBody())).headers.get('mcp-session-id') as string;
  const again = await post(legacy, initializeBody(8), { 'mcp-session-id': sid });
  await expectRefused(again, 400, -32600, 'PORTCULLIS_ERR_JSONRPC_INVALID', 8);
});

test('other methods → 405; other paths → 404', async () => {
  const put = await fetch(url, { method: 'PUT' });
  await expectRefused(put, 405, -32600, 'PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED');
  const other = await fetch(`${gateway.url}/admin`);
  await expectRefused(other, 404, -32600, 'PORTCULLIS_ERR_HTTP_NOT_FOUND');
});

test('the client Authorization header and cookies never reach the upstream', async () => {
  const res = await post(url, modernCall('x', {}, 10), {
    ...modernHeaders('x'),
    authorization: 'Bearer agent-token',
    cookie: 'session=abc',
    'x-custom': 'kept-out',
  });
  assert.equal(res.status, 200);
  const seen = fault.bodies.at(-1)?.headers ?? {};
  assert.equal(seen.authorization, undefined);
  assert.equal(seen.cookie, undefined);
  assert.equal(seen['x-custom'], undefined);
  assert.equal(seen['mcp-name'], 'x');
});
