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
  assert.match(body.error.message, /server 'down' \(cannot open the SSE stream: ECONNREFUSED\)/);
});

test('an endpoint event pointing at another origin is refused: nothing is sent there', async () => {
  const res = await post(gateway.urlFor('misdirecting'), initializeBody(1));
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE');
  assert.match(
    body.error.message,
    /endpoint http:\/\/127\.0\.0\.1:\d+ is not on http:\/\/127\.0\.0\.1:\d+/,
  );
  assert.equal(reachedElsewhere, 0);
});

everythingFeaturesPerClient('server-everything over legacy HTTP+SSE', 'everything', (frames) =>
  startTestGateway({ everything: { transport: 'sse', url: upstream.url } }, {}, frames),
);
