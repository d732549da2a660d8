/**
 * The feature list every path to server-everything must carry, run with the
 * official TypeScript SDK 1.x client: tools, progress, sampling, elicitation,
 * resource subscriptions, prompts, logging, cancellation and session end.
 * Each test file picks the upstream (Streamable HTTP, stdio, legacy SSE) and
 * the client transport (Streamable HTTP, or the legacy SSE client at
 * /mcp/<name>/sse).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { SeenFrames, type TestGateway } from './gateway.js';
import { post } from './requests.js';

const LIST_TOOLS = { jsonrpc: '2.0', id: 9, method: 'tools/list' };

export type ClientKind = 'streamable-http' | 'legacy-sse';

export interface FeatureTarget {
  /** The gateway, once started (by the file's `before`). */
  gateway(): TestGateway;
  /** The gateway's name for the server. */
  readonly server: string;
  readonly client: ClientKind;
  /** Every frame the gateway saw. */
  readonly frames: SeenFrames;
}

export async function connect(target: FeatureTarget, capabilities: Record<string, unknown> = {}) {
  const client = new Client({ name: 'feature-test', version: '1.0.0' }, { capabilities });
  const url = target.gateway().urlFor(target.server);
  const transport =
    target.client === 'legacy-sse'
      ? new SSEClientTransport(new URL(`${url}/sse`))
      : new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  /** The Streamable HTTP transport (session id, DELETE), when that is the client's. */
  const http = transport instanceof StreamableHTTPClientTransport ? transport : undefined;
  return { client, transport, http };
}

/** The gateway session the connection's messages travel in (from the frames the gateway saw). */
export function sessionOf(target: FeatureTarget, marker: string): string | undefined {
  return target.frames.find(
    (f) => f.direction === 'client-to-server' && JSON.stringify(f.message).includes(marker),
  )?.session;
}

/** `promise`, or a failure after `ms`; the timer goes with the promise, never outliving it. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<T>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const CLIENT_KINDS: readonly ClientKind[] = ['streamable-http', 'legacy-sse'];

/**
 * The feature list once per client kind, each run with its own gateway and its
 * own frames, so no assertion of one run can pass on a frame of the other.
 */
export function everythingFeaturesPerClient(
  title: string,
  server: string,
  start: (frames: SeenFrames) => Promise<TestGateway>,
): void {
  for (const client of CLIENT_KINDS) {
    describe(`${title}, ${client} client`, () => {
      const frames = new SeenFrames();
      let gateway: TestGateway | undefined;
      before(async () => {
        gateway = await start(frames);
      });
      after(() => gateway?.close());
      everythingFeatures({ gateway: () => gateway as TestGateway, server, client, frames });
    });
  }
}

export function everythingFeatures(target: FeatureTarget): void {
  const via = `(${target.client} client)`;

  test(`initialize reaches server-everything ${via}`, async (t) => {
    const { client, transport } = await connect(target);
    t.after(() => client.close());
    assert.equal(client.getServerVersion()?.name, 'mcp-servers/everything');
    if (transport instanceof StreamableHTTPClientTransport) {
      const sid = transport.sessionId;
      assert.ok(sid && sid.length >= 43, 'the gateway issued its own session id');
      assert.match(sid, /^[\x21-\x7e]+$/);
    }
  });

  test(`tools/list and a tool call pass through ${via}`, async (t) => {
    const { client } = await connect(target);
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

  test(`a long-running tool streams progress notifications before its result ${via}`, async (t) => {
    const { client } = await connect(target);
    t.after(() => client.close());
    const progress: number[] = [];
    const before = target.frames.length;
    const result = await client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
      undefined,
      { onprogress: (p) => progress.push(p.progress) },
    );
    assert.match(JSON.stringify(result.content), /completed/i);
    const relayed = target.frames
      .slice(before)
      .filter((f) => f.method === 'notifications/progress')
      .map((f) => (f.message.params as { progress: number }).progress);
    assert.deepEqual(relayed, [1, 2, 3], 'every progress notification passed the gateway in order');
    if (target.client === 'legacy-sse') {
      // The SDK's SSE client drops the notification that arrives together with the
      // result (measured against server-everything's own SSE endpoint, no gateway).
      assert.deepEqual(progress, [1, 2, 3].slice(0, progress.length));
      assert.ok(progress.length >= 2);
    } else {
      assert.deepEqual(progress, [1, 2, 3]);
    }
  });

  test(`a sampling request reaches the client and its answer reaches the server ${via}`, async (t) => {
    const { client } = await connect(target, { sampling: {} });
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

  test(`an elicitation request is answered by the client ${via}`, async (t) => {
    const { client } = await connect(target, { elicitation: {} });
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

  test(`resource subscribe delivers an update notification ${via}`, async (t) => {
    const { client } = await connect(target);
    t.after(() => client.close());
    const updated = new Promise<string>((resolve) => {
      client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) =>
        resolve(n.params.uri),
      );
    });
    const uri = 'demo://resource/static/document/architecture.md';
    const from = target.frames.length;
    const { resources } = await client.listResources();
    assert.ok(resources.length > 0);
    await client.subscribeResource({ uri });
    await client.callTool({ name: 'toggle-subscriber-updates', arguments: {} });
    assert.equal(await within(updated, 15_000, 'no update'), uri);
    assert.ok(
      target.frames
        .slice(from)
        .some(
          (f) =>
            f.direction === 'server-to-client' && f.method === 'notifications/resources/updated',
        ),
      'the update was framed on its way through',
    );
  });

  test(`prompts list and get ${via}`, async (t) => {
    const { client } = await connect(target);
    t.after(() => client.close());
    const { prompts } = await client.listPrompts();
    assert.ok(prompts.some((p) => p.name === 'simple-prompt'));
    const prompt = await client.getPrompt({ name: 'simple-prompt' });
    assert.ok(prompt.messages.length > 0);
  });

  test(`logging level is set and log messages arrive ${via}`, async (t) => {
    const { client } = await connect(target);
    t.after(() => client.close());
    const messages = new Promise<string>((resolve) => {
      client.setNotificationHandler(LoggingMessageNotificationSchema, (n) =>
        resolve(n.params.level),
      );
    });
    await client.setLoggingLevel('debug');
    await client.callTool({ name: 'toggle-simulated-logging', arguments: {} });
    assert.ok(await within(messages, 15_000, 'no log message'));
  });

  test(`cancellation: notifications/cancelled reaches the server and the session keeps working ${via}`, async (t) => {
    const { client } = await connect(target);
    t.after(() => client.close());
    const controller = new AbortController();
    const marker = `cancel-${Math.random()}`;
    await client.callTool({ name: 'echo', arguments: { message: marker } });
    const session = sessionOf(target, marker);
    // The user gives up once the server is at work: at its first progress notification.
    const call = client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 10, steps: 100 } },
      undefined,
      { signal: controller.signal, onprogress: () => controller.abort('user gave up') },
    );
    await assert.rejects(call);
    const callFrame = target.frames.find(
      (f) =>
        f.session === session &&
        f.method === 'tools/call' &&
        f.target === 'trigger-long-running-operation',
    );
    assert.ok(callFrame, 'the call was framed');
    await target.frames.waitFor(
      (f) =>
        f.session === session &&
        f.method === 'notifications/cancelled' &&
        (f.message.params as { requestId?: unknown }).requestId === callFrame.id,
      2_000,
      'notifications/cancelled for the call passed through the gateway',
    );
    const after = await client.callTool({ name: 'echo', arguments: { message: 'still here' } });
    assert.match(JSON.stringify(after.content), /still here/);
  });

  if (target.client === 'streamable-http') {
    test(`DELETE ends the session on both sides; the id is then unknown (404) ${via}`, async () => {
      const { client, http } = await connect(target);
      const sid = http?.sessionId as string;
      await http?.terminateSession();
      await client.close();
      const res = await post(target.gateway().urlFor(target.server), LIST_TOOLS, {
        'mcp-session-id': sid,
      });
      assert.equal(res.status, 404);
      const body = (await res.json()) as { id: number; error: { data: { code: string } } };
      assert.equal(body.id, 9);
      assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
    });
  } else {
    test(`closing the SSE stream ends the gateway session ${via}`, async () => {
      const { client } = await connect(target);
      const marker = `close-${Math.random()}`;
      await client.callTool({ name: 'echo', arguments: { message: marker } });
      const session = sessionOf(target, marker);
      assert.ok(session, 'the messages travelled in a gateway session');
      await client.close();
      // The stream's end deletes the session in the background: ask until it is gone.
      let status = 0;
      for (let i = 0; i < 50 && status !== 404; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 40));
        const res = await post(target.gateway().urlFor(target.server), LIST_TOOLS, {
          'mcp-session-id': session as string,
        });
        status = res.status;
        await res.body?.cancel();
      }
      assert.equal(status, 404, 'the session ended with the stream');
    });
  }
}
