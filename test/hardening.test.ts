/**
 * Regressions an attacker or a new user found at the edges of the transports:
 * routing headers smuggled on legacy requests, legacy SSE clients that send
 * `Accept: *\/*` or none, and internals in the errors clients see.
 */
import assert from 'node:assert/strict';
import { get as httpGet } from 'node:http';
import { after, before, test } from 'node:test';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import {
  initializeBody,
  LEGACY,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';

let upstream: FaultUpstream;
let gw: TestGateway;

before(async () => {
  upstream = await startFaultUpstream();
  gw = await startTestGateway({
    legacy: upstream.url('/legacy'),
    ok: upstream.url('/ok'),
    down: 'http://127.0.0.1:9/mcp',
  });
});

after(async () => {
  await gw.close();
  await upstream.close();
});

const SMUGGLED = {
  'mcp-method': 'tools/call',
  'mcp-name': 'delete_everything',
  'mcp-param-target': 'prod',
};

test('legacy requests carrying Mcp-Method, Mcp-Name or Mcp-Param-* reach the upstream without them', async () => {
  const init = await post(gw.urlFor('legacy'), initializeBody(), SMUGGLED);
  assert.equal(init.status, 200);
  await init.text();
  const session = init.headers.get('mcp-session-id') ?? '';
  const res = await post(
    gw.urlFor('legacy'),
    { jsonrpc: '2.0', id: 2, method: 'tools/list' },
    { ...SMUGGLED, 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
  );
  assert.equal(res.status, 200);
  await res.text();
  const seen = upstream.bodies.filter((b) => b.path === '/legacy').slice(-2);
  assert.equal(seen.length, 2);
  for (const { headers } of seen) {
    for (const name of Object.keys(SMUGGLED)) assert.equal(headers[name], undefined, name);
  }
});

test('a 2026-07-28 request still forwards its checked routing headers and Mcp-Param-*', async () => {
  const res = await post(gw.urlFor('ok'), modernCall('echo', { text: 'hi' }, 3), {
    ...modernHeaders('echo'),
    'mcp-param-region': 'eu',
  });
  assert.equal(res.status, 200);
  await res.text();
  const last = upstream.bodies.filter((b) => b.path === '/ok').at(-1);
  assert.equal(last?.headers['mcp-method'], 'tools/call');
  assert.equal(last?.headers['mcp-name'], 'echo');
  assert.equal(last?.headers['mcp-param-region'], 'eu');
});

test('the legacy HTTP+SSE endpoint accepts Accept: */*, text/* or no Accept at all', async () => {
  for (const accept of ['*/*', 'text/*', 'text/event-stream;q=0.9', undefined]) {
    const controller = new AbortController();
    const res = await fetch(`${gw.urlFor('legacy')}/sse`, {
      headers: accept === undefined ? {} : { accept },
      signal: controller.signal,
    });
    assert.equal(res.status, 200, String(accept));
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const { value } = await reader.read();
    assert.match(new TextDecoder().decode(value), /^event: endpoint\n/);
    controller.abort();
  }
  // fetch always sends an Accept (*/* when none is given); node:http sends none.
  const none = await new Promise<{ status: number; first: string }>((resolve, reject) => {
    const req = httpGet(`${gw.urlFor('legacy')}/sse`, (res) => {
      res.once('data', (chunk: Buffer) => {
        resolve({ status: res.statusCode ?? 0, first: chunk.toString() });
        req.destroy();
      });
    });
    req.once('error', reject);
  });
  assert.equal(none.status, 200);
  assert.match(none.first, /^event: endpoint\n/);
  const refused = await fetch(`${gw.urlFor('legacy')}/sse`, {
    headers: { accept: 'application/json' },
  });
  assert.equal(refused.status, 406);
});

test('an unreachable upstream is named in the error without its address or the errno text', async () => {
  const res = await post(gw.urlFor('down'), modernCall('echo', {}, 4), modernHeaders('echo'));
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE');
  assert.match(body.error.message, /server 'down'/);
  assert.doesNotMatch(JSON.stringify(body), /127\.0\.0\.1|:9\b|ECONN|EHOST|errno|connect /i);
});
