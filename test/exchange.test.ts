/**
 * The exchange: every request through the gateway has one, it is the only
 * writer to the client, and what it reports (server, era, session, status,
 * error code, byte counts, timings, each message with its decision) is what
 * happened on the wire. Real peers: server-everything over Streamable HTTP,
 * raw HTTP from fetch, and the official SDK's legacy SSE client.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { startEverything } from './helpers/everything.js';
import { testConfig } from './helpers/gateway.js';
import { ACCEPT_BOTH, initializeBody, LEGACY, post } from './helpers/requests.js';
import { startGateway, type Gateway } from '../src/server/gateway.js';
import type { Exchange, MessageOutcome } from '../src/server/exchange.js';
import type { DemoUpstream } from '../src/demo/everything.js';

/** What the observer kept of an ended exchange (copied: the exchange itself is not kept). */
interface Ended {
  server: string;
  era: string;
  session: string | undefined;
  status: number;
  errorCode: string | undefined;
  bytesIn: number;
  bytesOut: number;
  startedAt: number;
  upstreamSentAt: number;
  upstreamAnsweredAt: number;
  endedAt: number;
  subject: string;
}

interface Heard {
  direction: string;
  method: string | undefined;
  kind: string;
  outcome: MessageOutcome;
  rule: string | undefined;
  server: string;
}

let upstream: DemoUpstream;
let gateway: Gateway;
const ended: Ended[] = [];
const heard: Heard[] = [];
let onEnd: (() => void) | undefined;

/** The next `n` exchanges to end after `action` (in the order they ended), within 5 s. */
async function endsOf(n: number, action: () => Promise<unknown>): Promise<Ended[]> {
  const from = ended.length;
  await action();
  if (ended.length < from + n) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5_000);
      onEnd = () => {
        if (ended.length < from + n) return;
        clearTimeout(timer);
        resolve();
      };
    });
    onEnd = undefined;
  }
  assert.equal(ended.length - from, n, `exchanges ended after the action`);
  return ended.slice(from, from + n);
}

function keep(x: Exchange): void {
  ended.push({
    server: x.server,
    era: x.era,
    session: x.session?.id,
    status: x.status,
    errorCode: x.errorCode,
    bytesIn: x.bytesIn,
    bytesOut: x.bytesOut,
    startedAt: x.startedAt,
    upstreamSentAt: x.upstreamSentAt,
    upstreamAnsweredAt: x.upstreamAnsweredAt,
    endedAt: x.endedAt,
    subject: x.principal.subject,
  });
  onEnd?.();
}

before(async () => {
  upstream = await startEverything();
  gateway = await startGateway(
    testConfig(
      { everything: upstream.url },
      { mode: 'none' },
      { tenants: { local: { servers: { everything: { tools: ['echo'] } } } } },
    ),
    {
      log: pino({ level: 'silent' }),
      observer: {
        end: keep,
        message: (x, f, outcome, rule) =>
          heard.push({
            direction: f.direction,
            method: f.method,
            kind: f.kind,
            outcome,
            rule,
            server: x.server,
          }),
      },
    },
  );
});

after(async () => {
  await gateway?.close();
  await upstream?.stop();
});

function assertTimings(x: Ended, upstreamAsked: boolean): void {
  assert.ok(x.startedAt > 0 && x.endedAt >= x.startedAt, 'started, then ended');
  if (upstreamAsked) {
    assert.ok(x.upstreamSentAt >= x.startedAt, 'the upstream was asked after the request came');
    assert.ok(x.upstreamAnsweredAt >= x.upstreamSentAt, 'it answered after it was asked');
    assert.ok(x.endedAt >= x.upstreamAnsweredAt, 'the exchange ended after the answer began');
  } else {
    assert.equal(x.upstreamSentAt, 0, 'the upstream was never asked');
  }
}

describe('an exchange for every request, reporting what went over the wire', () => {
  let session: string;

  test('initialize: server, era, session, status, and the exact bytes both ways', async () => {
    const body = JSON.stringify(initializeBody(1));
    let received = 0;
    const [x] = await endsOf(1, async () => {
      const res = await post(gateway.urlFor('everything'), body);
      session = res.headers.get('mcp-session-id') as string;
      received = (await res.arrayBuffer()).byteLength;
    });
    const e = x as Ended;
    assert.equal(e.server, 'everything');
    assert.equal(e.era, 'legacy');
    assert.equal(e.session, session);
    assert.equal(e.status, 200);
    assert.equal(e.errorCode, undefined);
    assert.equal(e.bytesIn, Buffer.byteLength(body));
    assert.equal(e.bytesOut, received);
    assert.ok(received > 0);
    assert.equal(e.subject, 'anonymous');
    assertTimings(e, true);
  });

  test('a granted call: both messages heard as allowed, bytes counted on the stream', async () => {
    const [notified] = await endsOf(1, () =>
      post(
        gateway.urlFor('everything'),
        { jsonrpc: '2.0', method: 'notifications/initialized' },
        { 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
      ).then((r) => r.arrayBuffer()),
    );
    assert.equal(notified?.status, 202);
    assert.equal(notified?.bytesOut, 0);
    const from = heard.length;
    let received = 0;
    const body = JSON.stringify({
      jsonrpc: '2.0',
      id: 2,
      method: 'tools/call',
      params: { name: 'echo', arguments: { message: 'héllo' } },
    });
    const [x] = await endsOf(1, async () => {
      const res = await post(gateway.urlFor('everything'), body, {
        'mcp-session-id': session,
        'mcp-protocol-version': LEGACY,
      });
      received = (await res.arrayBuffer()).byteLength;
    });
    assert.equal(x?.bytesIn, Buffer.byteLength(body), 'bytes, not characters');
    assert.equal(x?.bytesOut, received);
    assert.equal(x?.status, 200);
    const mine = heard.slice(from).filter((h) => h.server === 'everything');
    assert.deepEqual(
      mine.map((h) => [h.direction, h.kind, h.method, h.outcome]),
      [
        ['client-to-server', 'request', 'tools/call', 'allow'],
        ['server-to-client', 'response', undefined, 'allow'],
      ],
    );
  });

  test('a call the tenant is not granted: heard as denied with its rule; a 200 JSON-RPC error', async () => {
    const from = heard.length;
    let text = '';
    const [x] = await endsOf(1, async () => {
      const res = await post(
        gateway.urlFor('everything'),
        { jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'get-sum', arguments: {} } },
        { 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
      );
      text = await res.text();
    });
    assert.equal(x?.status, 200);
    assert.equal(x?.errorCode, 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND');
    assert.equal(x?.bytesOut, Buffer.byteLength(text));
    assertTimings(x as Ended, false);
    const denied = heard.slice(from);
    assert.equal(denied.length, 1);
    assert.equal(denied[0]?.outcome, 'deny');
    assert.equal(denied[0]?.method, 'tools/call');
    assert.match(denied[0]?.rule ?? '', /^tenants\.local\.servers\.everything/);
  });

  test('the GET stream is an exchange too, ended when the client leaves', async () => {
    const controller = new AbortController();
    const [x] = await endsOf(1, async () => {
      const res = await fetch(gateway.urlFor('everything'), {
        headers: {
          accept: 'text/event-stream',
          'mcp-session-id': session,
          'mcp-protocol-version': LEGACY,
        },
        signal: controller.signal,
      });
      assert.equal(res.status, 200);
      controller.abort();
    });
    assert.equal(x?.server, 'everything');
    assert.equal(x?.session, session);
    assert.equal(x?.status, 200);
    assertTimings(x as Ended, true);
  });

  test('DELETE is an exchange, with the session it ended', async () => {
    const [x] = await endsOf(1, async () => {
      const res = await fetch(gateway.urlFor('everything'), {
        method: 'DELETE',
        headers: { 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
      });
      assert.equal(res.status, 200);
      await res.arrayBuffer();
    });
    assert.equal(x?.server, 'everything');
    assert.equal(x?.session, session);
    assert.equal(x?.status, 200);
    assert.equal(x?.bytesOut, 0);
    assertTimings(x as Ended, true);
  });

  test('refusals before any upstream is asked: unknown server, bad JSON, unknown session', async () => {
    const cases: Array<[string, string, Record<string, string>, number, string]> = [
      [gateway.urlFor('nope'), '{}', {}, 404, 'PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER'],
      [gateway.urlFor('everything'), '{"jsonrpc":', {}, 400, 'PORTCULLIS_ERR_JSONRPC_PARSE'],
      [
        gateway.urlFor('everything'),
        JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }),
        { 'mcp-session-id': 'not-a-session' },
        404,
        'PORTCULLIS_ERR_SESSION_UNKNOWN',
      ],
    ];
    for (const [url, body, headers, status, code] of cases) {
      let text = '';
      const [x] = await endsOf(1, async () => {
        const res = await post(url, body, headers);
        assert.equal(res.status, status, code);
        text = await res.text();
      });
      assert.equal(x?.status, status, code);
      assert.equal(x?.errorCode, code);
      assert.equal(x?.bytesIn, Buffer.byteLength(body));
      assert.equal(x?.bytesOut, Buffer.byteLength(text), code);
      assertTimings(x as Ended, false);
    }
  });

  test('a request refused at the door (Accept, method) still ends an exchange with its code', async () => {
    const [x] = await endsOf(1, async () => {
      const res = await fetch(gateway.urlFor('everything'), {
        method: 'PUT',
        headers: { accept: ACCEPT_BOTH },
      });
      assert.equal(res.status, 405);
      await res.arrayBuffer();
    });
    assert.equal(x?.errorCode, 'PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED');
    assert.equal(x?.status, 405);
  });

  test('each message of a legacy SSE client goes through an exchange of its own', async () => {
    const client = new Client({ name: 'exchange-test', version: '1' });
    const transport = new SSEClientTransport(new URL(`${gateway.urlFor('everything')}/sse`));
    await client.connect(transport);
    try {
      const from = heard.length;
      const result = await client.callTool({ name: 'echo', arguments: { message: 'via sse' } });
      assert.deepEqual(result.content, [{ type: 'text', text: 'Echo: via sse' }]);
      const mine = heard
        .slice(from)
        .filter((h) => h.method === 'tools/call' || h.kind === 'response');
      assert.deepEqual(
        mine.map((h) => [h.direction, h.outcome, h.server]),
        [
          ['client-to-server', 'allow', 'everything'],
          ['server-to-client', 'allow', 'everything'],
        ],
      );
    } finally {
      await client.close();
    }
  });
});
