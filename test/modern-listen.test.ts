/**
 * The 2026-07-28 streams a conformance run drives through the gateway, each
 * against the SDK 2.x conformance fixture and compared with what the fixture
 * says directly: a `subscriptions/listen` stream (acknowledgement first,
 * notifications tagged with the subscription id, nothing outside the
 * filter), and a tool whose response stream asks for input through an
 * `InputRequiredResult`, never a server→client request. Both were reported
 * broken through the gateway by conformance 0.2 (server-stateless).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { createParser } from 'eventsource-parser';

import { startConformanceModernServer } from './fixtures/conformance-modern-server.js';
import { startTestGateway } from './helpers/gateway.js';
import { MODERN, post } from './helpers/requests.js';

/** How long a test waits for one message on a stream before it gives up. */
const MESSAGE_WAIT_MS = 5_000;

interface Message {
  id?: unknown;
  method?: string;
  result?: Record<string, unknown>;
  error?: { code: number };
  params?: { _meta?: Record<string, unknown>; [k: string]: unknown };
}

const meta = (capabilities: Record<string, unknown> = {}) => ({
  'io.modelcontextprotocol/protocolVersion': MODERN,
  'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
  'io.modelcontextprotocol/clientCapabilities': capabilities,
});

const headersFor = (method: string, name?: string): Record<string, string> => ({
  'mcp-protocol-version': MODERN,
  'mcp-method': method,
  ...(name === undefined ? {} : { 'mcp-name': name }),
});

/** The JSON-RPC messages of an SSE response, read as they arrive. */
async function messagesOf(res: Response) {
  const queue: Message[] = [];
  const waiters: Array<() => void> = [];
  let ended = false;
  const wake = () => waiters.splice(0).forEach((w) => w());
  const parser = createParser({
    onEvent: (event) => {
      if (event.data === '') return;
      queue.push(JSON.parse(event.data) as Message);
      wake();
    },
  });
  const body = res.body as ReadableStream<Uint8Array>;
  const reader = body.getReader();
  const decoder = new TextDecoder();
  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch {
      // aborted by the test
    } finally {
      ended = true;
      wake();
    }
  })();
  return {
    async next(): Promise<Message> {
      const deadline = Date.now() + MESSAGE_WAIT_MS;
      while (queue.length === 0) {
        if (ended) throw new Error('the stream ended');
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no message within ${MESSAGE_WAIT_MS} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      return queue.shift() as Message;
    },
    /** Everything until the stream ends. */
    async rest(): Promise<Message[]> {
      const out: Message[] = [];
      for (;;) {
        try {
          out.push(await this.next());
        } catch (err) {
          if ((err as Error).message === 'the stream ended') return out;
          throw err;
        }
      }
    },
  };
}

async function setup(t: TestContext) {
  const upstream = await startConformanceModernServer();
  t.after(() => upstream.close());
  const gateway = await startTestGateway({ conformance: upstream.url });
  t.after(() => gateway.close());
  return { direct: upstream.url, via: gateway.urlFor('conformance') };
}

async function openListen(t: TestContext, url: string, id: number) {
  const controller = new AbortController();
  t.after(() => controller.abort());
  const res = await post(
    url,
    {
      jsonrpc: '2.0',
      id,
      method: 'subscriptions/listen',
      params: { _meta: meta(), notifications: { toolsListChanged: true } },
    },
    headersFor('subscriptions/listen'),
    controller.signal,
  );
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  return messagesOf(res);
}

async function callTool(url: string, name: string, id: number, capabilities = {}) {
  const res = await post(
    url,
    {
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      params: { name, arguments: {}, _meta: meta(capabilities) },
    },
    headersFor('tools/call', name),
  );
  // A server answers with one JSON body or an SSE stream, as it likes.
  if ((res.headers.get('content-type') ?? '').startsWith('application/json'))
    return { res, messages: [(await res.json()) as Message] };
  return { res, messages: await (await messagesOf(res)).rest() };
}

test('subscriptions/listen through the gateway: acknowledged first, tagged, filtered', async (t) => {
  const { via } = await setup(t);
  const stream = await openListen(t, via, 41);

  const ack = await stream.next();
  assert.equal(ack.method, 'notifications/subscriptions/acknowledged');
  assert.equal(ack.params?._meta?.['io.modelcontextprotocol/subscriptionId'], 41);
  assert.deepEqual(ack.params?.notifications, { toolsListChanged: true });

  // A prompt change is outside the filter and must not arrive; the tool change after it must.
  for (const [i, tool] of ['test_trigger_prompt_change', 'test_trigger_tool_change'].entries()) {
    const { res } = await callTool(via, tool, 100 + i);
    assert.equal(res.status, 200, tool);
  }
  const changed = await stream.next();
  assert.equal(changed.method, 'notifications/tools/list_changed');
  assert.equal(changed.params?._meta?.['io.modelcontextprotocol/subscriptionId'], 41);
});

test('a tool asking for input streams its InputRequiredResult through the gateway as sent', async (t) => {
  const { direct, via } = await setup(t);
  const caps = { elicitation: { form: {} } };
  const straight = await callTool(direct, 'test_streaming_elicitation', 7, caps);
  const relayed = await callTool(via, 'test_streaming_elicitation', 7, caps);

  assert.equal(relayed.res.status, straight.res.status);
  assert.deepEqual(relayed.messages, straight.messages);
  const last = relayed.messages.at(-1);
  assert.equal(last?.id, 7);
  assert.equal(last?.result?.resultType, 'input_required');
  assert.ok(
    relayed.messages.every((m) => m.method === undefined || m.method.startsWith('notifications/')),
    'no server→client request on the response stream',
  );
});
