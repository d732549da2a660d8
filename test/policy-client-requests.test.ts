/**
 * What a server may ask a tenant's clients for — sampling, elicitation (form
 * and URL mode), roots — is the tenant's grant to give, in both eras: the
 * official SDK 1.x client through a JWT gateway to the SDK 1.x conformance
 * fixture (server→client requests on the session's streams), and raw
 * 2026-07-28 POSTs to the SDK 2.x conformance fixture (requests inside an
 * `InputRequiredResult`). A refused request never reaches the client; the
 * server is answered in the client's place, so its tool does not hang.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

import { startConformanceServer } from './fixtures/conformance-server.js';
import { startConformanceModernServer } from './fixtures/conformance-modern-server.js';
import { startKeyedGateway, type KeyedGateway } from './helpers/auth-gateway.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';

let gw: KeyedGateway;
let legacy: { url: string; close(): Promise<void> };
let modern: { url: string; close(): Promise<void> };
const tokens: Record<string, string> = {};

before(async () => {
  legacy = await startConformanceServer();
  modern = await startConformanceModernServer();
  const all = { tools: ['*'] };
  gw = await startKeyedGateway(
    { legacy: legacy.url, modern: modern.url },
    {
      tenants: {
        // Grants nothing a server may ask for.
        closed: { servers: { legacy: all, modern: all } },
        // Sampling, and form elicitation only.
        open: {
          servers: {
            legacy: { ...all, sampling: true, elicitation: ['form'] },
            modern: { ...all, sampling: true, elicitation: ['form'] },
          },
        },
      },
    },
  );
  for (const tenant of ['closed', 'open'])
    tokens[tenant] = await gw.token(tenant, `${tenant}-agent`);
});

after(async () => {
  await gw.close();
  await legacy.close();
  await modern.close();
});

/** An SDK client of `tenant` that answers sampling and elicitation, counting what it was asked. */
async function client(tenant: string) {
  const asked: string[] = [];
  const c = new Client(
    { name: 'client-requests', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: { form: {} } } },
  );
  c.setRequestHandler(CreateMessageRequestSchema, () => {
    asked.push('sampling');
    return { role: 'assistant', content: { type: 'text', text: 'Paris' }, model: 'test' };
  });
  c.setRequestHandler(ElicitRequestSchema, () => {
    asked.push('elicitation');
    return { action: 'accept', content: { username: 'ada', email: 'ada@example.com' } };
  });
  await c.connect(
    new StreamableHTTPClientTransport(new URL(gw.gw.urlFor('legacy')), {
      requestInit: { headers: { authorization: `Bearer ${tokens[tenant] as string}` } },
    }),
  );
  return { c, asked };
}

const textOf = (result: unknown) =>
  JSON.stringify((result as { content?: unknown }).content ?? result);

test('2025-11-25: a refused sampling or elicitation request never reaches the client, and the tool ends', async (t) => {
  const { c, asked } = await client('closed');
  t.after(() => c.close());
  for (const [tool, args, rule] of [
    ['test_sampling', { prompt: 'Capital of France?' }, 'tenants.closed.servers.legacy.sampling'],
    ['test_elicitation', { message: 'Who are you?' }, 'tenants.closed.servers.legacy.elicitation'],
  ] as const) {
    // The server's request is answered with the refusal in the client's place: the tool
    // fails at once instead of waiting for an answer that would never come.
    const outcome = await c.callTool({ name: tool, arguments: args }).then(
      (r) => textOf(r),
      (err: unknown) => String(err),
    );
    assert.doesNotMatch(outcome, /Paris|ada/, tool);
    // The fixture's tool fails with the refusal the server got back.
    assert.match(outcome, /-32601.*is not granted to this tenant/, tool);
    const denial = gw.gw.logs.find((l) => l.event === 'policy.deny' && l.rule === rule);
    assert.ok(denial, `the refusal is logged with its rule (${rule})`);
  }
  assert.deepEqual(asked, [], 'the client was asked nothing');
});

test('2025-11-25: what is granted is asked as before', async (t) => {
  const { c, asked } = await client('open');
  t.after(() => c.close());
  const sampled = await c.callTool({ name: 'test_sampling', arguments: { prompt: 'Capital?' } });
  assert.match(textOf(sampled), /Paris/);
  const elicited = await c.callTool({ name: 'test_elicitation', arguments: { message: 'Who?' } });
  assert.match(textOf(elicited), /ada/);
  assert.deepEqual(asked, ['sampling', 'elicitation']);
});

test('2026-07-28: an InputRequiredResult asking for what is not granted reaches the client as a refusal', async () => {
  const call = (tenant: string) =>
    post(
      gw.gw.urlFor('modern'),
      modernCall('test_input_required_result_sampling', {}, 7, { sampling: {} }),
      {
        ...modernHeaders('test_input_required_result_sampling'),
        authorization: `Bearer ${tokens[tenant] as string}`,
      },
    );
  const refused = await call('closed');
  assert.equal(refused.status, 200);
  const body = (await refused.json()) as {
    id: number;
    error?: { code: number; data: { code: string; rule: string } };
  };
  assert.equal(body.id, 7);
  assert.equal(body.error?.code, -32601);
  assert.equal(body.error?.data.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
  assert.equal(body.error?.data.rule, 'tenants.closed.servers.modern.sampling');

  const granted = (await (await call('open')).json()) as { result?: { resultType?: string } };
  assert.equal(
    granted.result?.resultType,
    'input_required',
    'the open tenant gets the input request',
  );
});

test('2026-07-28: a retry carrying inputResponses is decided by the same grants, before the server sees it', async () => {
  const retry = (tenant: string, tool: string, inputResponses: Record<string, unknown>) => {
    const body = modernCall(tool, {}, 8, { sampling: {}, roots: {} }) as {
      params: Record<string, unknown>;
    };
    body.params.inputResponses = inputResponses;
    return post(gw.gw.urlFor('modern'), body, {
      ...modernHeaders(tool),
      authorization: `Bearer ${tokens[tenant] as string}`,
    }).then(
      (r) =>
        r.json() as Promise<{
          result?: { content?: Array<{ text: string }> };
          error?: { code: number; data: { code: string; rule: string } };
        }>,
    );
  };
  const sampled = { role: 'assistant', content: { type: 'text', text: 'Paris' }, model: 'test' };
  const roots = { roots: [{ uri: 'file:///srv', name: 'srv' }] };

  // Granted sampling: the server takes the answer and finishes.
  const done = await retry('open', 'test_input_required_result_sampling', {
    capital_question: sampled,
  });
  assert.equal(done.result?.content?.[0]?.text, 'The model said: Paris');

  // Not granted roots: refused at the gateway, so the tool never lists them.
  const noRoots = await retry('open', 'test_input_required_result_list_roots', {
    client_roots: roots,
  });
  assert.equal(noRoots.error?.data.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
  assert.equal(noRoots.error?.data.rule, 'tenants.open.servers.modern.roots');

  // Granted nothing a server may ask: no inputResponses pass at all.
  const closed = await retry('closed', 'test_input_required_result_sampling', {
    capital_question: sampled,
  });
  assert.equal(closed.error?.code, -32601);
  assert.equal(closed.error?.data.rule, 'tenants.closed.servers.modern.inputResponses');
});
