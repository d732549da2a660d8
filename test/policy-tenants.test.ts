/**
 * Tenant isolation end to end, on every transport: the official SDK clients
 * (1.x over Streamable HTTP and the legacy SSE client, 2.x in the 2026-07-28
 * era) through a JWT gateway to real servers: server-everything over
 * Streamable HTTP, over the legacy HTTP+SSE transport and over stdio (in the
 * sandbox), and the SDK 2.x modern fixture. A tenant lists, calls, reads,
 * gets and subscribes to what it is granted and to nothing else; a tenant
 * with no grant, or none at all, finds no server.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startKeyedGateway, type KeyedGateway } from './helpers/auth-gateway.js';
import { everythingStdio, startEverything } from './helpers/everything.js';
import { connectModernClient } from './helpers/modern-client.js';
import type { DemoUpstream } from '../src/demo/everything.js';

const EVERYTHING_GRANT = {
  tools: ['echo', 'get-sum'],
  prompts: ['simple-prompt'],
  resources: ['demo://resource/static/document/*'],
  resourceTemplates: ['demo://resource/dynamic/text/{resourceId}'],
};

const EVERYTHING_SERVERS = ['http', 'sse', 'stdio'] as const;

let gw: KeyedGateway;
let http: DemoUpstream;
let sse: DemoUpstream;
let modern: ModernServer;
const tokens: Record<string, string> = {};

before(async () => {
  http = await startEverything();
  sse = await startEverything(undefined, 'sse');
  modern = await startModernServer();
  gw = await startKeyedGateway(
    {
      http: http.url,
      sse: { transport: 'sse', url: sse.url },
      stdio: everythingStdio({ warmPool: 0 }),
      modern: modern.url,
    },
    {
      tenants: {
        acme: {
          servers: {
            http: EVERYTHING_GRANT,
            sse: EVERYTHING_GRANT,
            stdio: EVERYTHING_GRANT,
            modern: { tools: ['echo'] },
          },
        },
        globex: { servers: {} },
      },
    },
  );
  for (const tenant of ['acme', 'globex', 'umbrella'])
    tokens[tenant] = await gw.token(tenant, `${tenant}-agent`);
});

after(async () => {
  await gw.close();
  await http.stop();
  await sse.stop();
  await modern.close();
});

type Kind = 'streamable-http' | 'legacy-sse';

async function connect(server: string, tenant: string, kind: Kind = 'streamable-http') {
  const client = new Client({ name: 'tenant-test', version: '1.0.0' });
  const url = gw.gw.urlFor(server);
  const headers = { authorization: `Bearer ${tokens[tenant] as string}` };
  const transport =
    kind === 'legacy-sse'
      ? new SSEClientTransport(new URL(`${url}/sse`), {
          requestInit: { headers },
          eventSourceInit: {
            fetch: (u, init) =>
              fetch(u, {
                ...init,
                headers: { ...(init?.headers as Record<string, string>), ...headers },
              }),
          },
        })
      : new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  await client.connect(transport);
  return client;
}

async function rpcError(promise: Promise<unknown>): Promise<McpError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof McpError, `expected a JSON-RPC error, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the request to be refused');
}

const names = (list: Array<{ name: string; uriTemplate?: string }>) =>
  list.map((e) => e.uriTemplate ?? e.name).sort();

for (const server of EVERYTHING_SERVERS) {
  for (const kind of ['streamable-http', 'legacy-sse'] as const) {
    if (kind === 'legacy-sse' && server !== 'http') continue;
    describe(`tenant acme, server-everything over ${server}, ${kind} client`, () => {
      let client: Client;
      before(async () => {
        client = await connect(server, 'acme', kind);
      });
      after(() => client.close());

      test('tools: only the granted ones are listed and callable', async () => {
        assert.deepEqual(names((await client.listTools()).tools), ['echo', 'get-sum']);
        const echoed = await client.callTool({ name: 'echo', arguments: { message: 'hi' } });
        assert.match(JSON.stringify(echoed.content), /hi/);
        const err = await rpcError(client.callTool({ name: 'get-env', arguments: {} }));
        assert.equal(err.code, -32602);
        assert.match(err.message, /Tool not found: get-env/);
        assert.equal((err.data as { rule?: string }).rule, `tenants.acme.servers.${server}.tools`);
      });

      test('prompts: only the granted ones are listed and can be got', async () => {
        assert.deepEqual(names((await client.listPrompts()).prompts), ['simple-prompt']);
        await client.getPrompt({ name: 'simple-prompt' });
        const err = await rpcError(
          client.getPrompt({ name: 'args-prompt', arguments: { city: 'x' } }),
        );
        assert.equal(err.code, -32602);
      });

      test('resources: lists, templates, reads and subscriptions follow the grant', async () => {
        const { resources } = await client.listResources();
        assert.ok(resources.length > 0);
        assert.ok(resources.every((r) => r.uri.startsWith('demo://resource/static/document/')));
        assert.deepEqual(names((await client.listResourceTemplates()).resourceTemplates), [
          'demo://resource/dynamic/text/{resourceId}',
        ]);
        await client.readResource({ uri: 'demo://resource/dynamic/text/1' });
        const read = await rpcError(client.readResource({ uri: 'demo://resource/dynamic/blob/1' }));
        assert.equal(read.code, -32002);
        const sub = await rpcError(
          client.subscribeResource({ uri: 'demo://resource/dynamic/blob/1' }),
        );
        assert.equal(sub.code, -32002);
      });
    });
  }
}

test('2026-07-28 era: the modern client lists and calls only what is granted', async (t) => {
  const client = await connectModernClient(gw.gw.urlFor('modern'), {
    headers: { authorization: `Bearer ${tokens.acme as string}` },
  });
  t.after(() => client.close());
  assert.deepEqual(
    (await client.listTools()).tools.map((tool) => tool.name),
    ['echo'],
  );
  await client.callTool({ name: 'echo', arguments: { text: 'hi' } });
  await assert.rejects(
    client.callTool({ name: 'slow', arguments: { ms: 1 } }),
    /Tool not found: slow/,
  );
  assert.equal(
    modern.events.requestsFor('tools/call', 'slow').length,
    0,
    'the upstream never saw it',
  );
});

test('a tenant with no grant, and a tenant not configured, find no server at all', async () => {
  for (const tenant of ['globex', 'umbrella']) {
    for (const server of ['http', 'stdio', 'modern']) {
      const res = await fetch(gw.gw.urlFor(server), {
        method: 'POST',
        headers: {
          authorization: `Bearer ${tokens[tenant] as string}`,
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
        },
        body: JSON.stringify({
          jsonrpc: '2.0',
          id: 1,
          method: 'initialize',
          params: {
            protocolVersion: '2025-11-25',
            capabilities: {},
            clientInfo: { name: 'x', version: '1' },
          },
        }),
      });
      assert.equal(res.status, 404, `${tenant} → ${server}`);
      const body = (await res.json()) as { error: { data: { code: string } } };
      assert.equal(body.error.data.code, 'PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER');
      assert.deepEqual(Object.keys(body.error.data), ['code'], 'nothing says the server exists');
    }
    const stream = await fetch(`${gw.gw.urlFor('http')}/sse`, {
      headers: { authorization: `Bearer ${tokens[tenant] as string}`, accept: 'text/event-stream' },
    });
    assert.equal(stream.status, 404, `${tenant}: legacy SSE`);
    await stream.body?.cancel();
  }
  const denials = gw.gw.logs.filter((l) => l.event === 'policy.deny' && l.tenant === 'umbrella');
  assert.ok(denials.length > 0 && denials.every((l) => l.rule === 'tenants'));
});
