/**
 * The project's attack corpus (test/fixtures/attack-corpus.ts) through the
 * real pipeline: the SDK 1.x client, the gateway with a guard on each tool,
 * and an upstream that records every call that reaches it
 * (test/fixtures/recording-server.ts). Every attack is refused by the guard
 * meant for it, with -32602 naming that guard and the argument, and nothing
 * of it arrives; every benign payload arrives untouched, so false positives
 * on the benign corpus are counted, and kept at zero.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

import {
  PATH_ATTACKS,
  PATH_BENIGN,
  POSTGRES_ATTACKS,
  POSTGRES_BENIGN,
  SHELL_ATTACKS,
  SHELL_BENIGN,
  URL_ATTACKS,
  URL_BENIGN_LITERALS,
} from './fixtures/attack-corpus.js';
import { startRecordingServer } from './fixtures/recording-server.js';
import { startTestGateway } from './helpers/gateway.js';

const GUARDED = {
  query: { guards: [{ kind: 'sql', argument: 'sql', readOnly: true, id: 'sql-read-only' }] },
  run: { guards: [{ kind: 'shell', argument: 'command', id: 'shell' }] },
  read: { guards: [{ kind: 'path', argument: 'path', root: '/srv/data', id: 'path' }] },
  read_many: { guards: [{ kind: 'path', argument: 'paths', root: '/srv/data', id: 'paths' }] },
  fetch: { guards: [{ kind: 'url', argument: 'url', id: 'ssrf' }] },
};

interface Case {
  tool: string;
  args: Record<string, unknown>;
  rule: string;
  path: string;
}

const attacks: Case[] = [
  ...POSTGRES_ATTACKS.map((sql) => ({
    tool: 'query',
    args: { sql },
    rule: 'sql-read-only',
    path: '/sql',
  })),
  ...SHELL_ATTACKS.map(([command]) => ({
    tool: 'run',
    args: { command },
    rule: 'shell',
    path: '/command',
  })),
  ...PATH_ATTACKS.map(([p]) => ({ tool: 'read', args: { path: p }, rule: 'path', path: '/path' })),
  ...PATH_ATTACKS.map(([p]) => ({
    tool: 'read_many',
    args: { paths: ['/srv/data/ok.txt', p] },
    rule: 'paths',
    path: '/paths/1',
  })),
  ...URL_ATTACKS.map((url) => ({ tool: 'fetch', args: { url }, rule: 'ssrf', path: '/url' })),
];

const benign: Array<{ tool: string; args: Record<string, unknown> }> = [
  ...POSTGRES_BENIGN.map((sql) => ({ tool: 'query', args: { sql } })),
  ...SHELL_BENIGN.map((command) => ({ tool: 'run', args: { command } })),
  ...PATH_BENIGN.map(([p]) => ({ tool: 'read', args: { path: p } })),
  { tool: 'read_many', args: { paths: PATH_BENIGN.map(([p]) => p) } },
  ...URL_BENIGN_LITERALS.map((url) => ({ tool: 'fetch', args: { url } })),
];

test('every attack in the corpus is stopped by its guard and none reaches the upstream; the benign corpus arrives untouched', async (t) => {
  const upstream = await startRecordingServer();
  t.after(() => upstream.close());
  const gateway = await startTestGateway({ rec: { url: upstream.url, tools: GUARDED } });
  t.after(() => gateway.close());
  const client = new Client({ name: 'guard-corpus-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(gateway.urlFor('rec'))));
  t.after(() => client.close());

  assert.ok(attacks.length > 150, `${attacks.length} attacks`);
  const passed: string[] = [];
  for (const c of attacks) {
    const what = `${c.tool} ${JSON.stringify(c.args)}`;
    const err = await client.callTool({ name: c.tool, arguments: c.args }).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (err === undefined) {
      passed.push(what);
      continue;
    }
    assert.ok(err instanceof McpError, `${what}: ${String(err)}`);
    assert.equal(err.code, -32602, what);
    const data = err.data as Record<string, unknown>;
    assert.deepEqual(
      [data.code, data.rule, data.path],
      ['PORTCULLIS_ERR_POLICY_GUARD', c.rule, c.path],
      what,
    );
  }
  assert.deepEqual(passed, [], 'attacks that got through');
  assert.deepEqual(upstream.arrived, [], 'nothing of an attack reached the upstream');

  const falsePositives: string[] = [];
  for (const c of benign) {
    const result = await client
      .callTool({ name: c.tool, arguments: c.args })
      .catch((e: unknown) => e);
    if (result instanceof Error)
      falsePositives.push(`${c.tool} ${JSON.stringify(c.args)}: ${result.message}`);
  }
  assert.deepEqual(falsePositives, [], 'false positives on the benign corpus');
  // What arrived is what was sent, byte for byte in its arguments.
  assert.deepEqual(upstream.arrived, benign);
});
