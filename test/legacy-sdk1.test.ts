/**
 * The legacy era end to end: the official TypeScript SDK 1.x client through
 * the gateway to @modelcontextprotocol/server-everything (Streamable HTTP).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { startEverything } from './helpers/everything.js';
import { startTestGateway, type SeenFrame, type TestGateway } from './helpers/gateway.js';

let upstream: Awaited<ReturnType<typeof startEverything>>;
let gateway: TestGateway;
const frames: SeenFrame[] = [];

before(async () => {
  upstream = await startEverything();
  gateway = await startTestGateway({ everything: upstream.url }, {}, frames);
});
after(async () => {
  await gateway?.close();
  await upstream?.stop();
});

async function connect(capabilities: Record<string, unknown> = {}) {
  const client = new Client({ name: 'legacy-test', version: '1.0.0' }, { capabilities });
  const transport = new StreamableHTTPClientTransport(new URL(gateway.urlFor('everything')));
  await client.connect(transport);
  return { client, transport };
}

test('initialize returns a gateway session id, not the upstream one', async (t) => {
  const { client, transport } = await connect();
  t.after(() => client.close());
  assert.equal(client.getServerVersion()?.name, 'mcp-servers/everything');
  const sid = transport.sessionId;
  assert.ok(sid && sid.length >= 43, 'gateway issued a session id');
  assert.match(sid, /^[\x21-\x7e]+$/);
});

test('tools/list and a tool call pass through', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const { tools } = await client.listTools();
  assert.ok(tools.some((tool) => tool.name === 'echo'));
  const result = await client.callTool({
    name: 'echo',
    arguments: { message: 'through the gate' },
  });
  const content = result.content as Array<{ type: string; text: string }>;
  assert.equal(content[0]?.text, 'Echo: through the gate');
});

test('a long-running tool streams progress notifications before its result', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const progress: number[] = [];
  const result = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  assert.deepEqual(progress, [1, 2, 3]);
  assert.match(JSON.stringify(result.content), /completed/i);
});

test('a sampling request reaches the client and its answer reaches the server', async (t) => {
  const { client } = await connect({ sampling: {} });
  t.after(() => client.close());
  let asked = '';
  client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
    asked = JSON.stringify(req.params.messages);
    return {
      model: 'test-model',
      role: 'assistant',
      content: { type: 'text', text: 'sampled reply' },
    };
  });
  const result = await client.callTool({
    name: 'trigger-sampling-request',
    arguments: { prompt: 'What is a portcullis?', maxTokens: 20 },
  });
  assert.match(asked, /What is a portcullis\?/);
  assert.match(JSON.stringify(result.content), /sampled reply/);
});

test('an elicitation request is answered by the client', async (t) => {
  const { client } = await connect({ elicitation: {} });
  t.after(() => client.close());
  client.setRequestHandler(ElicitRequestSchema, async () => ({
    action: 'accept',
    content: {
      name: 'Ada',
      check: true,
      firstLine: 'x',
      email: 'ada@example.com',
      homepage: 'https://example.com',
      birthdate: '1815-12-10',
      integer: 5,
      number: 1.5,
      enums: 'Blue',
      untitledSingleSelectEnum: 'option1',
      untitledMultipleSelectEnum: ['option1'],
      titledSingleSelectEnum: 'value1',
      titledMultipleSelectEnum: ['value1'],
      legacyTitledEnum: 'opt1',
    },
  }));
  const result = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
  assert.match(JSON.stringify(result.content), /Ada/);
});

test('resource subscribe delivers an update notification on the GET stream', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const updated = new Promise<string>((resolve) => {
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => resolve(n.params.uri));
  });
  const uri = 'demo://resource/static/document/architecture.md';
  const { resources } = await client.listResources();
  assert.ok(resources.length > 0);
  await client.subscribeResource({ uri });
  await client.callTool({ name: 'toggle-subscriber-updates', arguments: {} });
  const got = await Promise.race([
    updated,
    new Promise<string>((_, reject) =>
      setTimeout(() => reject(new Error('no update within 15 s')), 15_000),
    ),
  ]);
  assert.equal(got, uri);
  assert.ok(
    frames.some(
      (f) => f.direction === 'server-to-client' && f.method === 'notifications/resources/updated',
    ),
    'the update was framed on its way through',
  );
});

test('prompts list and get', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const { prompts } = await client.listPrompts();
  assert.ok(prompts.some((p) => p.name === 'simple-prompt'));
  const prompt = await client.getPrompt({ name: 'simple-prompt' });
  assert.ok(prompt.messages.length > 0);
});

test('logging level is set and log messages arrive', async (t) => {
  const { client } = await connect();
  t.after(() => client.close());
  const messages = new Promise<string>((resolve) => {
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => resolve(n.params.level));
  });
  await client.setLoggingLevel('debug');
  await client.callTool({ name: 'toggle-simulated-logging', arguments: {} });
  const level = await Promise.race([
    messages,
    new Promise<string>((_, reject) =>
      setTimeout(() => reject(new Error('no log message within 15 s')), 15_000),
    ),
  ]);
  assert.ok(level);
});

test('cancellation: notifications/cancelled reaches the upstream and the session keeps working', async (t) => {
  const { client, transport } = await connect();
  t.after(() => client.close());
  const controller = new AbortController();
  const call = client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 10, steps: 10 } },
    undefined,
    { signal: controller.signal },
  );
  setTimeout(() => controller.abort('user gave up'), 300);
  await assert.rejects(call);
  const callFrame = frames.find(
    (f) =>
      f.session === transport.sessionId &&
      f.method === 'tools/call' &&
      f.target === 'trigger-long-running-operation',
  );
  assert.ok(callFrame, 'the call was framed');
  const deadline = Date.now() + 2_000;
  let cancelled: SeenFrame | undefined;
  while (!cancelled && Date.now() < deadline) {
    cancelled = frames.find(
      (f) =>
        f.session === transport.sessionId &&
        f.method === 'notifications/cancelled' &&
        (f.message.params as { requestId?: unknown }).requestId === callFrame.id,
    );
    if (!cancelled) await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(cancelled, 'notifications/cancelled for the call passed through the gateway');
  const after = await client.callTool({ name: 'echo', arguments: { message: 'still here' } });
  assert.match(JSON.stringify(after.content), /still here/);
});

test('DELETE ends the session on both sides; the id is then unknown (404)', async () => {
  const { client, transport } = await connect();
  const sid = transport.sessionId as string;
  await transport.terminateSession();
  await client.close();
  const res = await fetch(gateway.urlFor('everything'), {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-session-id': sid,
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }),
  });
  assert.equal(res.status, 404);
  const body = (await res.json()) as { id: number; error: { data: { code: string } } };
  assert.equal(body.id, 9);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
});
