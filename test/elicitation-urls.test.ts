/**
 * URL-mode elicitation through the gateway, against server-everything's
 * `trigger-url-elicitation` tool and the official SDK 1.x client: a URL the
 * user would open is checked before the client sees it, on the request path
 * (`elicitation/create`) and on the error path (-32042, whose prerequisite
 * URL is the server's own choice). A refused request never reaches the
 * client; the server is answered in its place, so its tool ends at once.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ElicitRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';

import { startEverything } from './helpers/everything.js';
import { startTestGateway } from './helpers/gateway.js';

async function connect(t: TestContext, elicitationUrls?: Record<string, unknown>) {
  const upstream = await startEverything();
  t.after(() => upstream.stop());
  const gateway = await startTestGateway({
    everything: { url: upstream.url, ...(elicitationUrls ? { elicitationUrls } : {}) },
  });
  t.after(() => gateway.close());
  const opened: string[] = [];
  const client = new Client(
    { name: 'elicitation-urls-test', version: '1.0.0' },
    { capabilities: { elicitation: { form: {}, url: {} } } },
  );
  client.setRequestHandler(ElicitRequestSchema, (request) => {
    const params = request.params as { url?: string };
    opened.push(params.url ?? '');
    return { action: 'accept' };
  });
  await client.connect(new StreamableHTTPClientTransport(new URL(gateway.urlFor('everything'))));
  t.after(() => client.close());
  const trigger = (args: Record<string, unknown>) =>
    client.callTool({ name: 'trigger-url-elicitation', arguments: args }).then(
      (r) => JSON.stringify(r.content),
      (e: unknown) => e,
    );
  return { opened, trigger };
}

test('a public https URL reaches the client; local, metadata, credentialed and http URLs never do', async (t) => {
  const { opened, trigger } = await connect(t);
  assert.match(
    String(await trigger({ url: 'https://auth.example.com/connect?e=1' })),
    /User completed/,
  );
  for (const url of [
    'http://auth.example.com/connect',
    'https://localhost:8443/admin/delete-account',
    'https://169.254.169.254/latest/meta-data/',
    'https://user:secret@auth.example.com/',
    'https://0x7f000001/',
  ]) {
    const outcome = await trigger({ url });
    // The tool fails at once with the refusal its server was answered with.
    const text = outcome instanceof Error ? outcome.message : String(outcome);
    assert.match(text, /open a URL the gateway refuses/, url);
  }
  assert.deepEqual(
    opened,
    ['https://auth.example.com/connect?e=1'],
    'only the public URL was shown',
  );
});

test('the -32042 error path: its prerequisite URL is checked too, with the server’s own settings', async (t) => {
  // The default settings admit the server's prerequisite (https://modelcontextprotocol.io).
  const open = await connect(t);
  const passed = await open.trigger({ url: 'https://auth.example.com/a', errorPath: true });
  assert.ok(passed instanceof McpError, String(passed));
  assert.equal(passed.code, -32042);
  // Only these hosts: the prerequisite is refused, and the client gets the gateway's error.
  const strict = await connect(t, { hosts: ['auth.example.com'] });
  const refused = await strict.trigger({ url: 'https://auth.example.com/b', errorPath: true });
  assert.ok(refused instanceof McpError, String(refused));
  assert.equal(refused.code, -32601);
  const data = refused.data as { code: string; rule: string };
  assert.equal(data.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
  assert.equal(data.rule, 'servers.everything.elicitationUrls');
  assert.match(refused.message, /'modelcontextprotocol\.io' is not in the allowlist/);
  // A development login page on localhost, when the operator says so.
  const dev = await connect(t, { schemes: ['http', 'https'], allowPrivate: true });
  assert.match(String(await dev.trigger({ url: 'http://localhost:3000/login' })), /User completed/);
  assert.deepEqual(dev.opened, ['http://localhost:3000/login']);
});
