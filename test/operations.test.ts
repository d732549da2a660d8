/**
 * Operations: health endpoints, streams relayed event by event, heartbeats
 * on quiet streams, timeouts that never cut a live stream, and the drain.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { test, type TestContext } from 'node:test';
import { startFaultUpstream } from './fixtures/fault-upstream.js';
import { startTestGateway } from './helpers/gateway.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';

/** Reads an SSE body chunk by chunk, recording when each piece arrived. */
async function readStream(res: Response): Promise<Array<{ at: number; text: string }>> {
  const out: Array<{ at: number; text: string }> = [];
  const decoder = new TextDecoder();
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return out;
    out.push({ at: Date.now(), text: decoder.decode(value, { stream: true }) });
  }
}

async function setup(t: TestContext, overrides: Record<string, unknown> = {}) {
  const fault = await startFaultUpstream();
  t.after(() => fault.close());
  const gateway = await startTestGateway(
    {
      drip: fault.url('/drip/800'),
      long: fault.url('/drip/1500'),
      quiet: fault.url('/silent-stream'),
      flood: fault.url('/flood'),
      legacy: fault.url('/legacy'),
    },
    overrides,
  );
  let closed = false;
  t.after(() => (closed ? undefined : gateway.close()));
  return { fault, gateway, close: () => ((closed = true), gateway.close()) };
}

test('/livez and /readyz answer on the admin listener', async (t) => {
  const { gateway } = await setup(t);
  const live = await fetch(`${gateway.adminUrl}/livez`);
  assert.equal(live.status, 200);
  assert.deepEqual(await live.json(), { status: 'ok' });
  const ready = await fetch(`${gateway.adminUrl}/readyz`);
  assert.equal(ready.status, 200);
  // The public listener does not serve them.
  assert.equal((await fetch(`${gateway.url}/livez`)).status, 404);
});

test('a stdio server that cannot start: /readyz is not ready, and the client is told it cannot start, not to retry', async (t) => {
  const gateway = await startTestGateway({
    gone: { transport: 'stdio', command: 'portcullis-no-such-server' },
  });
  t.after(() => gateway.close());
  const ready = await fetch(`${gateway.adminUrl}/readyz`);
  assert.equal(ready.status, 503);
  assert.deepEqual(await ready.json(), { status: "server 'gone' cannot start" });
  // Again and again: never taken for a crash loop.
  for (let i = 0; i < 4; i++) {
    const res = await post(gateway.urlFor('gone'), initializeBody(i));
    assert.equal(res.status, 503);
    const body = (await res.json()) as {
      id: unknown;
      error: { message: string; data: { code: string; reason: string; server: string } };
    };
    assert.equal(body.id, i);
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_CANNOT_START');
    assert.equal(body.error.data.reason, 'cannot_start');
    assert.match(body.error.message, /cannot start/);
    assert.doesNotMatch(body.error.message, /retry|crashing|portcullis-no-such-server|\/usr/);
  }
});

test('an SSE event reaches the client before the upstream ends its stream', async (t) => {
  const { gateway } = await setup(t);
  const sent = Date.now();
  const res = await post(gateway.urlFor('drip'), modernCall('t', {}, 1), modernHeaders('t'));
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  assert.equal(res.headers.get('x-accel-buffering'), 'no');
  assert.match(res.headers.get('cache-control') ?? '', /no-cache/);
  const chunks = await readStream(res);
  const first = chunks.find((c) => c.text.includes('notifications/progress'));
  const answer = chunks.find((c) => c.text.includes('"result"'));
  assert.ok(first && answer);
  assert.ok(first.at - sent < 500, `first event after ${first.at - sent} ms, not buffered`);
  assert.ok(answer.at - first.at >= 600, 'the answer came later, as the upstream sent it');
});

test('quiet streams get comment heartbeats; the upstream idle limit still applies', async (t) => {
  const { gateway } = await setup(t, {
    listen: { heartbeatIntervalMs: 150 },
    upstreamDefaults: { timeouts: { idleMs: 1_000 } },
  });
  const res = await post(gateway.urlFor('quiet'), modernCall('t', {}, 2), modernHeaders('t'));
  const chunks = await readStream(res);
  const text = chunks.map((c) => c.text).join('');
  const heartbeats = text.split('\n\n').filter((block) => block === ':').length;
  assert.ok(heartbeats >= 3, `saw ${heartbeats} heartbeats`);
  const last = JSON.parse(text.trim().split('\n').at(-1)!.slice(6)) as RpcError;
  assert.equal(last.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_TIMEOUT');
});

test('the request and headers timeouts never cut a live stream', async (t) => {
  const { gateway } = await setup(t, { listen: { headersTimeoutMs: 300, requestTimeoutMs: 500 } });
  const res = await post(gateway.urlFor('long'), modernCall('t', {}, 3), modernHeaders('t'));
  const text = (await readStream(res)).map((c) => c.text).join('');
  assert.match(text, /"id":3,"result":\{"ok":true\}/);
});

test('drain: in-flight calls finish, idle streams close with a retry hint, readyz turns 503', async (t) => {
  const { gateway, close } = await setup(t, {
    shutdown: { drainTimeoutMs: 5_000, retryHintMs: 2_500 },
  });
  // An idle stream: the legacy GET stream of a session.
  const legacy = gateway.urlFor('legacy');
  const sid = (await post(legacy, initializeBody())).headers.get('mcp-session-id') as string;
  const getStream = await fetch(legacy, {
    headers: { accept: 'text/event-stream', 'mcp-session-id': sid },
  });
  assert.equal(getStream.status, 200);
  const idleBody = readStream(getStream);
  const inflight = await post(gateway.urlFor('drip'), modernCall('t', {}, 4), modernHeaders('t'));
  const inflightBody = readStream(inflight);
  const adminUrl = gateway.adminUrl as string;

  const closing = close();
  const ready = await fetch(`${adminUrl}/readyz`);
  assert.equal(ready.status, 503);
  const text = (await inflightBody).map((c) => c.text).join('');
  assert.match(text, /"id":4,"result":\{"ok":true\}/, 'the in-flight call completed');
  const idle = (await idleBody).map((c) => c.text).join('');
  assert.match(idle, /id: prime-1\ndata: \n\n/, 'the priming event passed through');
  assert.match(idle, /retry: 2500\n\n$/, 'the idle stream ended with the retry hint');
  await closing;
  await assert.rejects(
    post(legacy, { jsonrpc: '2.0', id: 1, method: 'ping' }, { 'mcp-session-id': sid }),
  );
});

test('drain: a call that outlives the bound ends with a JSON-RPC error and a retry hint', async (t) => {
  const { gateway, close } = await setup(t, {
    shutdown: { drainTimeoutMs: 200, retryHintMs: 2_500 },
  });
  const res = await post(gateway.urlFor('long'), modernCall('t', {}, 5), modernHeaders('t'));
  const body = readStream(res);
  const started = Date.now();
  await close();
  assert.ok(Date.now() - started < 1_500, 'the drain is bounded');
  const text = (await body).map((c) => c.text).join('');
  assert.match(text, /"id":5,"error":\{"code":-32603/);
  assert.match(text, /PORTCULLIS_ERR_HTTP_SHUTTING_DOWN/);
  assert.match(text, /retry: 2500/);
});

test('held streams are not capped by an upstream connection pool (regression: 128 of 5000 held)', async (t) => {
  const { gateway } = await setup(t, { upstreamDefaults: { timeouts: { idleMs: 0 } } });
  const STREAMS = 300;
  const controller = new AbortController();
  t.after(() => controller.abort());
  const opened = await Promise.all(
    Array.from({ length: STREAMS }, (_, i) =>
      post(
        gateway.urlFor('quiet'),
        modernCall('t', {}, i),
        modernHeaders('t'),
        AbortSignal.any([controller.signal, AbortSignal.timeout(10_000)]),
      ),
    ),
  );
  assert.equal(opened.filter((r) => r.status === 200).length, STREAMS);
  controller.abort();
});

test('backpressure: a client that stops reading stops the upstream too', async (t) => {
  const { gateway, fault } = await setup(t);
  const controller = new AbortController();
  t.after(() => controller.abort());
  const res = await post(
    gateway.urlFor('flood'),
    modernCall('t', {}, 1),
    modernHeaders('t'),
    controller.signal,
  );
  assert.equal(res.status, 200);
  // The body is never read: once the socket buffers fill, the gateway must stop reading upstream.
  await new Promise((r) => setTimeout(r, 1_000));
  const first = fault.flooded.bytes;
  await new Promise((r) => setTimeout(r, 500));
  const second = fault.flooded.bytes;
  assert.ok(first > 0, 'the upstream sent something');
  assert.ok(
    second - first < 1024 * 1024,
    `the upstream kept writing: ${second - first} bytes in 500 ms`,
  );
  assert.ok(second < 64 * 1024 * 1024, `the gateway buffered ${second} bytes`);
  controller.abort();
});

test('drain: a connection that never sent a request, or is idle after its answer, does not hold the shutdown', async (t) => {
  const { gateway, close } = await setup(t, { shutdown: { drainTimeoutMs: 10_000 } });
  const { port } = new URL(gateway.url);
  // What an HTTP client's pool does: it connects ahead of a request it then never sends.
  const silent = connect(Number(port), '127.0.0.1');
  await once(silent, 'connect');
  const silentClosed = once(silent, 'close');
  // A keep-alive connection that got its answer and stays open.
  const kept = connect(Number(port), '127.0.0.1');
  await once(kept, 'connect');
  kept.write(`GET /mcp/nope HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`);
  await once(kept, 'data');
  const keptClosed = once(kept, 'close');
  t.after(() => {
    silent.destroy();
    kept.destroy();
  });

  const started = Date.now();
  await close();
  const took = Date.now() - started;
  assert.ok(took < 2_000, `closed in ${took} ms, not after the 10 s hard stop`);
  await Promise.all([silentClosed, keptClosed]);
});
