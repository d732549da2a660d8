/**
 * Legacy sessions: idle expiry ends both sides, the session limit, and a
 * session id that is only good on the server that issued it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFaultUpstream } from './fixtures/fault-upstream.js';
import { startTestGateway } from './helpers/gateway.js';
import { initializeBody, post, type RpcError } from './helpers/requests.js';

test('an idle session expires: 404 to the client, DELETE to the upstream', async (t) => {
  const fault = await startFaultUpstream();
  t.after(() => fault.close());
  const gateway = await startTestGateway(
    { legacy: fault.url('/legacy') },
    { sessions: { idleTimeoutMs: 1_000 } },
  );
  t.after(() => gateway.close());
  const url = gateway.urlFor('legacy');
  const sid = (await post(url, initializeBody())).headers.get('mcp-session-id') as string;
  const upstreamId = fault.bodies.at(-1)?.headers['mcp-session-id'];
  assert.equal(upstreamId, undefined, 'initialize goes upstream without a session');

  await sleep(2_600);
  const deletes = fault.bodies.filter(
    (b) => b.path === '/legacy' && b.body === '' && b.headers['mcp-session-id'],
  );
  assert.equal(deletes.length, 1, 'the upstream session was ended too');
  const res = await post(url, { jsonrpc: '2.0', id: 1, method: 'ping' }, { 'mcp-session-id': sid });
  assert.equal(res.status, 404);
  assert.equal(((await res.json()) as RpcError).error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
});

test('past sessions.max, initialize gets 503 and nothing reaches the upstream', async (t) => {
  const fault = await startFaultUpstream();
  t.after(() => fault.close());
  const gateway = await startTestGateway(
    { legacy: fault.url('/legacy') },
    { sessions: { max: 1 } },
  );
  t.after(() => gateway.close());
  const url = gateway.urlFor('legacy');
  assert.equal((await post(url, initializeBody(1))).status, 200);
  const hits = fault.hits.get('/legacy');
  const res = await post(url, initializeBody(2));
  assert.equal(res.status, 503);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 2);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_LIMIT');
  assert.equal(fault.hits.get('/legacy'), hits);
});

test('a session id is unknown on any other server of the same gateway', async (t) => {
  const fault = await startFaultUpstream();
  t.after(() => fault.close());
  const gateway = await startTestGateway({ a: fault.url('/legacy'), b: fault.url('/legacy') });
  t.after(() => gateway.close());
  const sid = (await post(gateway.urlFor('a'), initializeBody())).headers.get(
    'mcp-session-id',
  ) as string;
  const res = await post(
    gateway.urlFor('b'),
    { jsonrpc: '2.0', id: 1, method: 'ping' },
    { 'mcp-session-id': sid },
  );
  assert.equal(res.status, 404);
  const ok = await post(
    gateway.urlFor('a'),
    { jsonrpc: '2.0', id: 2, method: 'ping' },
    { 'mcp-session-id': sid },
  );
  assert.equal(ok.status, 200);
});
