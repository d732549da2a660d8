/**
 * Upstream failures: each answered with its status and a JSON-RPC error that
 * carries the request id and names the server; no client request hangs.
 * The faults come from test/fixtures/fault-upstream.ts (an injected fault
 * no real server produces on demand).
 */
import assert from 'node:assert/strict';
import { before, after, test } from 'node:test';
import { closedPort, startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';

let fault: FaultUpstream;
let gateway: TestGateway;

before(async () => {
  fault = await startFaultUpstream();
  const down = await closedPort();
  const paths = [
    'ok',
    'slow',
    'die',
    'end',
    'silent-stream',
    'html',
    'not-jsonrpc',
    'bad-event',
    'legacy',
    'deep',
    'deep-sse',
    'forged',
    'forged-sse',
    'ping-comments',
    'forged-400',
  ];
  gateway = await startTestGateway(
    {
      ...Object.fromEntries(paths.map((p) => [p, fault.url(`/${p}`)])),
      status500: fault.url('/status/500'),
      status401: fault.url('/status/401'),
      down: `http://127.0.0.1:${down}/mcp`,
      'legacy-sse': { transport: 'sse', url: fault.url('/legacy-sse') },
    },
    { upstreamDefaults: { timeouts: { connectMs: 1_000, headersMs: 400, idleMs: 600 } } },
  );
});
after(async () => {
  await gateway?.close();
  await fault?.close();
});

const call = (server: string, id: number | string = 'req-1') =>
  post(gateway.urlFor(server), modernCall('tool', {}, id), modernHeaders('tool'));

async function expectError(
  res: Response,
  status: number,
  code: string,
  id: unknown,
  server: string,
) {
  assert.equal(res.status, status);
  assert.match(res.headers.get('content-type') ?? '', /application\/json/);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, id, 'the error carries the request id');
  assert.equal(body.error.code, -32603);
  assert.equal(body.error.data.code, code);
  assert.equal(body.error.data.server, server);
  assert.match(body.error.message, new RegExp(`'${server}'`), 'the message names the server');
}

/** Reads a whole SSE response into its JSON messages. */
async function sseMessages(res: Response): Promise<Array<Record<string, unknown>>> {
  const text = await res.text();
  return text
    .split('\n\n')
    .flatMap((block) =>
      block
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => l.slice(6)),
    )
    .filter((d) => d !== '')
    .map((d) => JSON.parse(d) as Record<string, unknown>);
}

test('a healthy upstream answers (control for the cases below)', async () => {
  const res = await call('ok', 5);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { jsonrpc: '2.0', id: 5, result: { ok: true } });
});

test('connection refused → 502 PORTCULLIS_ERR_UPSTREAM_UNREACHABLE', async () => {
  await expectError(await call('down', 11), 502, 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE', 11, 'down');
});

test('no answer within the headers timeout → 504 PORTCULLIS_ERR_UPSTREAM_TIMEOUT', async () => {
  const started = Date.now();
  await expectError(
    await call('slow', 'slow-1'),
    504,
    'PORTCULLIS_ERR_UPSTREAM_TIMEOUT',
    'slow-1',
    'slow',
  );
  assert.ok(Date.now() - started < 5_000, 'bounded by upstream headersMs, not by the client');
});

test('upstream 5xx → 502 naming the upstream status', async () => {
  const res = await call('status500', 12);
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 12);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
  assert.equal(body.error.data.upstreamStatus, 500);
});

test('upstream 401 is not passed on as the gateway asking the client to authenticate', async () => {
  const res = await call('status401', 13);
  assert.equal(res.status, 502);
  assert.equal(res.headers.get('www-authenticate'), null);
  assert.equal(((await res.json()) as RpcError).error.data.upstreamStatus, 401);
});

test('a body that is not JSON-RPC, or not JSON at all, is never relayed → 502', async () => {
  for (const server of ['html', 'not-jsonrpc']) {
    const res = await call(server, 14);
    assert.equal(res.status, 502, server);
    const body = (await res.json()) as RpcError;
    assert.equal(body.id, 14);
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
    assert.doesNotMatch(JSON.stringify(body), /login|hello/, 'the upstream body is not leaked');
  }
});

test('an upstream stream that dies mid-call ends with a JSON-RPC error for the request', async () => {
  const res = await call('die', 21);
  assert.equal(res.status, 200);
  const messages = await sseMessages(res);
  assert.equal(
    messages[0]?.method,
    'notifications/progress',
    'events before the failure were relayed',
  );
  const last = messages.at(-1) as unknown as RpcError;
  assert.equal(last.id, 21);
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED');
  assert.equal(last.error.data.server, 'die');
});

test('an upstream stream that ends cleanly without the answer gets the same error', async () => {
  const messages = await sseMessages(await call('end', 22));
  const last = messages.at(-1) as unknown as RpcError;
  assert.equal(last.id, 22);
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED');
});

test('an upstream stream that goes silent is ended after idleMs with a timeout error', async () => {
  const started = Date.now();
  const messages = await sseMessages(await call('silent-stream', 23));
  const last = messages.at(-1) as unknown as RpcError;
  assert.equal(last.id, 23);
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_TIMEOUT');
  assert.ok(Date.now() - started < 5_000);
});

test('an SSE event that is not JSON-RPC is dropped, the rest flows', async () => {
  const res = await call('bad-event', 24);
  const text = await res.text();
  assert.doesNotMatch(text, /this is not json/);
  assert.match(text, /"id":24,"result":\{"ok":true\}/);
});

test('legacy: upstream 404 is passed on and the session mapping dropped', async () => {
  const url = gateway.urlFor('legacy');
  const init = await post(url, initializeBody(0, '2025-03-26'));
  assert.equal(init.status, 200);
  const sid = init.headers.get('mcp-session-id') as string;
  assert.ok(sid);
  assert.doesNotMatch(sid, /upstream-session/, 'the upstream id never reaches the client');
  const seen = fault.bodies.at(-1);
  assert.equal(seen?.headers['mcp-session-id'], undefined);

  const ok = await post(url, { jsonrpc: '2.0', id: 1, method: 'ping' }, { 'mcp-session-id': sid });
  assert.equal(ok.status, 200);
  assert.match(fault.bodies.at(-1)?.headers['mcp-session-id'] as string, /^upstream-session-/);

  fault.forgetSessions();
  const gone = await post(
    url,
    { jsonrpc: '2.0', id: 2, method: 'ping' },
    { 'mcp-session-id': sid },
  );
  assert.equal(gone.status, 404);
  await gone.body?.cancel();
  const hitsBefore = fault.hits.get('/legacy');
  const after = await post(
    url,
    { jsonrpc: '2.0', id: 3, method: 'ping' },
    { 'mcp-session-id': sid },
  );
  assert.equal(after.status, 404);
  assert.equal(
    ((await after.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_SESSION_UNKNOWN',
  );
  assert.equal(
    fault.hits.get('/legacy'),
    hitsBefore,
    'the dropped session is refused by the gateway itself',
  );
});

test('legacy: a batch is allowed only when the session negotiated 2025-03-26', async () => {
  const url = gateway.urlFor('legacy');
  const init = await post(url, initializeBody(0, '2025-03-26'));
  const sid = init.headers.get('mcp-session-id') as string;
  const batch = [
    { jsonrpc: '2.0', id: 'a', method: 'ping' },
    { jsonrpc: '2.0', id: 'b', method: 'tools/list' },
  ];
  const res = await post(url, batch, { 'mcp-session-id': sid });
  assert.equal(res.status, 200);
  const answers = (await res.json()) as Array<{ id: string }>;
  assert.deepEqual(
    answers.map((a) => a.id),
    ['a', 'b'],
  );
});

test('an answer nested 10,000 levels deep from an HTTP upstream is refused with a JSON-RPC error; the gateway goes on', async () => {
  await expectError(
    await call('deep', 31),
    502,
    'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
    31,
    'deep',
  );
  const streamed = await sseMessages(await call('deep-sse', 32));
  const last = streamed.at(-1) as unknown as RpcError;
  assert.equal(last.id, 32);
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
  assert.match(last.error.message, /nested deeper than 128 levels/);
  const ok = await call('ok', 33);
  assert.equal(ok.status, 200, 'the next request is served');
  await ok.body?.cancel();
});

test('an answer nested 10,000 levels deep from a legacy SSE upstream is refused with a JSON-RPC error, not left hanging', async () => {
  const url = gateway.urlFor('legacy-sse');
  // Bounded: before the fix this request waited for ever.
  const signal = AbortSignal.timeout(5_000);
  const init = await post(url, initializeBody(1, '2024-11-05'), {}, signal);
  assert.equal(init.status, 200);
  await init.text();
  const headers = { 'mcp-session-id': init.headers.get('mcp-session-id') as string };
  const deep = await post(
    url,
    { jsonrpc: '2.0', id: 34, method: 'tools/call', params: { name: 'deep', arguments: {} } },
    headers,
    signal,
  );
  const body = (await deep.json()) as RpcError;
  assert.equal(body.id, 34);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
  const next = await post(
    url,
    { jsonrpc: '2.0', id: 35, method: 'tools/call', params: { name: 'other', arguments: {} } },
    headers,
    signal,
  );
  assert.equal(next.status, 200);
  assert.deepEqual(await next.json(), { jsonrpc: '2.0', id: 35, result: { ok: true } });
});

test('an answer to an id that was never requested is dropped; the real request gets an error instead', async () => {
  const res = await call('forged', 41);
  await expectError(res, 502, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE', 41, 'forged');
});

test('an upstream 4xx whose body answers an id never requested is replaced by an error for the real request', async () => {
  const res = await call('forged-400', 44);
  assert.equal(res.status, 400);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 44);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE');
  assert.equal(body.error.data.upstreamStatus, 400);
});

test('on a stream, answers to ids never requested, and a second answer, are dropped; the real answer passes', async () => {
  const res = await call('forged-sse', 42);
  assert.equal(res.status, 200);
  const messages = await sseMessages(res);
  assert.deepEqual(messages, [{ jsonrpc: '2.0', id: 42, result: { ok: true } }]);
});

test('SSE comment lines do not keep a pending request alive: it times out after idleMs', async () => {
  const started = Date.now();
  // Bounded: before the fix, pings every 100 ms kept it waiting for ever.
  const res = await post(
    gateway.urlFor('ping-comments'),
    modernCall('tool', {}, 43),
    modernHeaders('tool'),
    AbortSignal.timeout(5_000),
  );
  const last = (await sseMessages(res)).at(-1) as unknown as RpcError;
  assert.equal(last.id, 43);
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_TIMEOUT');
  assert.ok(Date.now() - started < 3_000, 'bounded by the configured 600 ms');
});
