/**
 * The policy's decisions as pure functions: compiled from a configuration,
 * asked about framed messages, no sockets. What a tenant is not granted does
 * not exist for it; lists lose what is not granted; rules deny by name;
 * shadow mode reports and changes nothing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readFile } from 'node:fs/promises';

import { buildConfig, ConfigError, parseConfig } from '../src/config/load.js';
import type { Principal } from '../src/auth/principal.js';
import { toFrame, type Frame } from '../src/mcp/frame.js';
import { compilePolicy, type DecisionContext, type Policy } from '../src/policy/policy.js';
import { ALLOW } from '../src/policy/decision.js';
import { compilePatterns, compileTemplates } from '../src/policy/match.js';
import { buildManifest } from '../src/policy/manifest.js';
import { compileServerTools, MAX_PINS_PER_SERVER, MemoryPinBook } from '../src/policy/tools.js';

const SERVERS = { db: { url: 'http://127.0.0.1:1/mcp' }, files: { url: 'http://127.0.0.1:2/mcp' } };

const configOf = (tenants: Record<string, unknown> | undefined) =>
  buildConfig({ auth: { mode: 'none' }, servers: SERVERS, ...(tenants ? { tenants } : {}) });

const policyOf = (tenants: Record<string, unknown> | undefined): Policy =>
  compilePolicy(configOf(tenants));

const who = (tenant: string, scopes: string[] = []): Principal => ({
  tenant,
  subject: 'agent-1',
  scopes,
});

const ctx = (
  tenant: string,
  server = 'db',
  era: 'legacy' | 'modern' = 'legacy',
): DecisionContext => ({
  principal: who(tenant),
  server,
  era,
});

let nextId = 1;
const request = (method: string, params: Record<string, unknown> = {}): Frame =>
  toFrame({ jsonrpc: '2.0', id: nextId++, method, params }, 'client-to-server');
const call = (name: string, args: Record<string, unknown> = {}) =>
  request('tools/call', { name, arguments: args });
/** A tools/list entry. */
const tool = (name: string) => ({ name, inputSchema: { type: 'object' } });
const answer = (id: number, result: Record<string, unknown>): Frame =>
  toFrame({ jsonrpc: '2.0', id, result }, 'server-to-client');

const TENANTS = {
  acme: {
    servers: {
      db: {
        tools: ['query', 'list_*'],
        prompts: ['summarize'],
        resources: ['db://schema/*'],
        resourceTemplates: ['db://table/{name}/rows'],
      },
    },
  },
  globex: { servers: {} },
  initech: { servers: { db: { tools: ['*'] } } },
};

test('without tenants the policy is off and allows everything', () => {
  const policy = policyOf(undefined);
  assert.deepEqual(policy.tenants, []);
  assert.equal(policy.route(who('anyone'), 'db'), ALLOW);
  assert.equal(policy.inbound(call('drop_everything'), ctx('anyone')), ALLOW);
});

test('route: a tenant not listed, or a server not granted, gets the unknown-server answer', () => {
  const policy = policyOf(TENANTS);
  assert.equal(policy.route(who('acme'), 'db'), ALLOW);
  for (const [tenant, server, rule] of [
    ['acme', 'files', 'tenants.acme.servers'],
    ['globex', 'db', 'tenants.globex.servers'],
    ['umbrella', 'db', 'tenants'],
  ] as const) {
    const d = policy.route(who(tenant), server);
    assert.equal(d.kind, 'deny', `${tenant} → ${server}`);
    assert.ok(d.kind === 'deny');
    assert.equal(d.rule, rule);
    assert.equal(d.error.code, 'PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER');
    assert.equal(d.error.status, 404);
    assert.deepEqual(d.error.data, {}, 'the answer names no rule: it is indistinguishable');
  }
});

test('inbound: a tool not granted is answered as a tool that does not exist', () => {
  const policy = policyOf(TENANTS);
  assert.equal(policy.inbound(call('query'), ctx('acme')), ALLOW);
  assert.equal(policy.inbound(call('list_tables'), ctx('acme')), ALLOW, 'globs match');
  assert.equal(policy.inbound(call('anything'), ctx('initech')), ALLOW, '"*" grants all');
  const d = policy.inbound(call('drop_table'), ctx('acme'));
  assert.ok(d.kind === 'deny');
  assert.equal(d.rule, 'tenants.acme.servers.db.tools');
  assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND');
  assert.equal(d.error.rpcCode, -32602);
  assert.equal(d.error.status, 200);
  assert.match(d.error.message, /drop_table/);
  assert.equal(d.error.toJsonRpc().data.rule, 'tenants.acme.servers.db.tools');
});

test('inbound: prompts, resources, templates and completion refs follow their grants', () => {
  const policy = policyOf(TENANTS);
  const allowed = [
    request('prompts/get', { name: 'summarize' }),
    request('resources/read', { uri: 'db://schema/users' }),
    request('resources/read', { uri: 'db://table/users/rows' }),
    request('resources/subscribe', { uri: 'db://schema/orders' }),
    request('completion/complete', { ref: { type: 'ref/prompt', name: 'summarize' } }),
    request('completion/complete', {
      ref: { type: 'ref/resource', uri: 'db://table/{name}/rows' },
    }),
    request('tools/list'),
    request('ping'),
  ];
  for (const f of allowed) assert.equal(policy.inbound(f, ctx('acme')), ALLOW, f.method);

  const denied: Array<[Frame, string]> = [
    [request('prompts/get', { name: 'leak' }), 'PORTCULLIS_ERR_POLICY_PROMPT_NOT_FOUND'],
    [
      request('resources/read', { uri: 'db://secrets' }),
      'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025',
    ],
    // A template expression matches one path segment, not a traversal past it.
    [
      request('resources/read', { uri: 'db://table/users/../secrets/rows' }),
      'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025',
    ],
    [
      request('resources/unsubscribe', { uri: 'file:///etc/passwd' }),
      'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025',
    ],
    [
      request('completion/complete', { ref: { type: 'ref/prompt', name: 'leak' } }),
      'PORTCULLIS_ERR_POLICY_PROMPT_NOT_FOUND',
    ],
  ];
  for (const [f, code] of denied) {
    const d = policy.inbound(f, ctx('acme'));
    assert.ok(d.kind === 'deny', `${f.method} ${f.target ?? ''}`);
    assert.equal(d.error.code, code);
  }
  // In the 2026-07-28 era a missing resource is -32602, as there.
  const modern = policy.inbound(
    request('resources/read', { uri: 'db://secrets' }),
    ctx('acme', 'db', 'modern'),
  );
  assert.ok(modern.kind === 'deny');
  assert.equal(modern.error.code, 'PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND');
  assert.equal(modern.error.rpcCode, -32602);
});

test('outbound: lists lose what is not granted; a list with nothing to hide passes as it is', () => {
  const policy = policyOf(TENANTS);
  const list = request('tools/list');
  const result = answer(list.id as number, {
    tools: [tool('query'), tool('drop_table'), tool('list_tables')],
    nextCursor: 'c2',
  });
  const d = policy.outbound(result, 'tools/list', ctx('acme'));
  assert.ok(d.kind === 'replace');
  assert.equal(d.rule, 'tenants.acme.servers.db.tools');
  assert.deepEqual(d.message.result, {
    tools: [tool('query'), tool('list_tables')],
    nextCursor: 'c2',
  });

  const clean = answer(7, { tools: [tool('query')] });
  assert.equal(policy.outbound(clean, 'tools/list', ctx('acme')), ALLOW);

  const cases: Array<[string, Record<string, unknown>, unknown]> = [
    [
      'prompts/list',
      { prompts: [{ name: 'summarize' }, { name: 'leak' }] },
      { prompts: [{ name: 'summarize' }] },
    ],
    [
      'resources/list',
      {
        resources: [
          { uri: 'db://schema/users' },
          { uri: 'db://secrets' },
          { uri: 'db://table/t/rows' },
        ],
      },
      { resources: [{ uri: 'db://schema/users' }, { uri: 'db://table/t/rows' }] },
    ],
    [
      'resources/templates/list',
      {
        resourceTemplates: [
          { uriTemplate: 'db://table/{name}/rows' },
          { uriTemplate: 'db://raw/{sql}' },
        ],
      },
      { resourceTemplates: [{ uriTemplate: 'db://table/{name}/rows' }] },
    ],
  ];
  for (const [method, given, kept] of cases) {
    const out = policy.outbound(answer(9, given), method, ctx('acme'));
    assert.ok(out.kind === 'replace', method);
    assert.deepEqual(out.message.result, kept, method);
  }
  // An answer to anything else, and an error, pass untouched.
  assert.equal(policy.outbound(answer(3, { content: [] }), 'tools/call', ctx('acme')), ALLOW);
});

test('outbound: an update about a resource not granted is dropped', () => {
  const policy = policyOf(TENANTS);
  const note = (uri: string) =>
    toFrame(
      { jsonrpc: '2.0', method: 'notifications/resources/updated', params: { uri } },
      'server-to-client',
    );
  assert.equal(policy.outbound(note('db://schema/users'), undefined, ctx('acme')), ALLOW);
  const d = policy.outbound(note('db://secrets'), undefined, ctx('acme'));
  assert.equal(d.kind, 'drop');
});

test('shadow mode: the grants report what they would deny and hide, and allow', () => {
  const policy = policyOf({ acme: { mode: 'shadow', servers: { db: { tools: ['query'] } } } });
  const d = policy.inbound(call('drop_table'), ctx('acme'));
  assert.equal(d.kind, 'allow');
  assert.deepEqual(
    d.shadowed?.map((h) => [h.rule, h.would]),
    [['tenants.acme.servers.db.tools', 'deny']],
  );
  const list = policy.outbound(
    answer(1, { tools: [tool('query'), tool('drop_table')] }),
    'tools/list',
    ctx('acme'),
  );
  assert.equal(list.kind, 'allow');
  assert.equal(list.shadowed?.[0]?.would, 'replace');
  const route = policy.route(who('acme'), 'files');
  assert.equal(route.kind, 'allow');
  assert.equal(route.shadowed?.[0]?.rule, 'tenants.acme.servers');
});

test('config: grants naming an unknown server and duplicate rule ids are refused with their paths', () => {
  assert.throws(
    () =>
      configOf({
        acme: {
          servers: { nope: { tools: ['*'] } },
          rules: [
            { id: 'r1', when: 'true' },
            { id: 'r1', when: 'true', servers: ['files'] },
          ],
        },
      }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const paths = err.problems.map((p) => p.path);
      assert.ok(paths.includes('tenants.acme.servers.nope'), paths.join(', '));
      assert.ok(paths.includes('tenants.acme.rules[1].id'), paths.join(', '));
      assert.ok(paths.includes('tenants.acme.rules[1].servers'), paths.join(', '));
      return true;
    },
  );
  assert.throws(
    () => configOf({ acme: { servers: { db: { tool: ['x'] } } } }),
    /tenants\.acme\.servers\.db/,
    'a misspelt grant key is an error, not a silent grant of nothing',
  );
});

test('matchers: globs and templates are literal where they are not wildcards', () => {
  const m = compilePatterns(['a*b*c', 'exact', 'pre*']);
  for (const yes of ['abc', 'a-b-c', 'aXbYbZc', 'exact', 'prefix', 'pre'])
    assert.equal(m(yes), true, yes);
  for (const no of ['ab', 'acb', 'exactly', 'xpre', 'a-c']) assert.equal(m(no), false, no);
  const t = compileTemplates(['file:///{+path}', 'db://t/{id}/rows{?limit}']);
  assert.equal(t('file:///a/b/c'), true);
  assert.equal(t('db://t/42/rows'), false, 'a query expression needs its text');
  assert.equal(t('db://t/42/rows?limit=1'), true);
  assert.equal(t('db://t/4/2/rows?limit=1'), false);
});

test('rules: the first enforcing rule whose CEL condition holds denies, naming itself', () => {
  const policy = policyOf({
    acme: {
      servers: { db: { tools: ['*'] } },
      rules: [
        {
          id: 'watch-exports',
          when: 'arguments.format == "csv"',
          targets: ['export_*'],
          mode: 'shadow',
        },
        {
          id: 'writes-need-scope',
          when: '!principal.scopes.exists(s, s == "db:write") && arguments.sql.startsWith("INSERT")',
          methods: ['tools/call'],
          targets: ['query'],
          message: 'writing needs the db:write scope',
        },
        { id: 'no-raw-tool', when: 'target == "raw"' },
      ],
    },
  });
  const reader = { ...ctx('acme'), principal: who('acme') };
  const writer = { ...ctx('acme'), principal: who('acme', ['db:write']) };

  const denied = policy.inbound(call('query', { sql: 'INSERT INTO t VALUES (1)' }), reader);
  assert.ok(denied.kind === 'deny');
  assert.equal(denied.rule, 'writes-need-scope');
  assert.equal(denied.error.code, 'PORTCULLIS_ERR_POLICY_DENIED');
  assert.equal(denied.error.toJsonRpc().data.rule, 'writes-need-scope');
  assert.match(denied.error.message, /writing needs the db:write scope/);

  assert.equal(policy.inbound(call('query', { sql: 'INSERT INTO t VALUES (1)' }), writer), ALLOW);
  assert.equal(policy.inbound(call('query', { sql: 'SELECT 1' }), reader), ALLOW);
  assert.equal(policy.inbound(call('raw'), reader).kind, 'deny');

  const shadowed = policy.inbound(call('export_rows', { format: 'csv' }), reader);
  assert.equal(shadowed.kind, 'allow');
  assert.deepEqual(
    shadowed.shadowed?.map((h) => h.rule),
    ['watch-exports'],
  );
});

test('rules: a condition that cannot be evaluated denies (fail closed)', () => {
  const policy = policyOf({
    acme: {
      servers: { db: { tools: ['*'] } },
      rules: [{ id: 'limit-rows', when: 'arguments.limit > 100', targets: ['query'] }],
    },
  });
  // No `limit` at all: the field lookup fails, and the deny rule holds.
  const d = policy.inbound(call('query', {}), ctx('acme'));
  assert.ok(d.kind === 'deny');
  assert.equal(d.rule, 'limit-rows');
  assert.match(d.error.message, /condition failed/);
  assert.equal(policy.inbound(call('query', { limit: 5 }), ctx('acme')), ALLOW);
  assert.equal(policy.inbound(call('query', { limit: 500.5 }), ctx('acme')).kind, 'deny');
});

test('config: a rule condition that does not compile is refused with its path', () => {
  assert.throws(
    () =>
      configOf({
        acme: {
          servers: { db: {} },
          rules: [{ id: 'typo', when: 'principal.scopez.exists(s, s == "x")' }],
        },
        globex: { servers: {}, rules: [{ id: 'unknown-var', when: 'tenant == "x"' }] },
      }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const paths = err.problems.map((p) => p.path);
      assert.ok(paths.includes('tenants.globex.rules[0].when'), paths.join(', '));
      return true;
    },
  );
});

test('outbound: what a server may ask the client for is the grant’s: sampling, elicitation by mode, roots', () => {
  const policy = policyOf({
    acme: { servers: { db: { tools: ['*'], sampling: true, elicitation: ['form'] } } },
  });
  const ask = (method: string, params: Record<string, unknown> = {}) =>
    toFrame({ jsonrpc: '2.0', id: 'srv-1', method, params }, 'server-to-client');
  assert.equal(policy.outbound(ask('sampling/createMessage'), undefined, ctx('acme')), ALLOW);
  assert.equal(
    policy.outbound(ask('elicitation/create', { message: 'x' }), undefined, ctx('acme')),
    ALLOW,
  );
  for (const [frame, rule] of [
    [
      ask('elicitation/create', { mode: 'url', url: 'https://x.example/connect' }),
      'tenants.acme.servers.db.elicitation',
    ],
    [ask('roots/list'), 'tenants.acme.servers.db.roots'],
  ] as const) {
    const d = policy.outbound(frame, undefined, ctx('acme'));
    assert.ok(d.kind === 'deny', frame.method);
    assert.equal(d.rule, rule);
    assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
  }
  const inputRequired = answer(4, {
    resultType: 'input_required',
    inputRequests: { where: { method: 'roots/list', params: {} } },
  });
  const d = policy.outbound(inputRequired, 'tools/call', ctx('acme', 'db', 'modern'));
  assert.ok(d.kind === 'deny');
  assert.equal(d.rule, 'tenants.acme.servers.db.roots');
});

test('inbound, 2026-07-28: inputResponses answering what the grant would not let a server ask are refused', () => {
  const policy = policyOf({
    acme: { servers: { db: { tools: ['*'], sampling: true, elicitation: ['form'] } } },
    closed: { servers: { db: { tools: ['*'] } } },
  });
  const retry = (inputResponses: Record<string, unknown>) =>
    toFrame(
      {
        jsonrpc: '2.0',
        id: 7,
        method: 'tools/call',
        params: { name: 'query', arguments: {}, inputResponses },
      },
      'client-to-server',
    );
  const modern = (tenant: string) => ctx(tenant, 'db', 'modern');
  const sampled = { role: 'assistant', content: { type: 'text', text: 'Paris' }, model: 'm' };
  const elicited = { action: 'accept', content: { name: 'a' } };
  const roots = { roots: [{ uri: 'file:///srv' }] };
  assert.equal(policy.inbound(retry({ a: sampled, b: elicited }), modern('acme')), ALLOW);
  const d = policy.inbound(retry({ a: sampled, where: roots }), modern('acme'));
  assert.ok(d.kind === 'deny');
  assert.equal(d.rule, 'tenants.acme.servers.db.roots');
  assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
  // Granted none of the three: no entry passes, whatever its shape.
  for (const entry of [sampled, elicited, roots, { anything: 1 }]) {
    const refused = policy.inbound(retry({ x: entry }), modern('closed'));
    assert.ok(refused.kind === 'deny', JSON.stringify(entry));
    assert.equal(refused.rule, 'tenants.closed.servers.db.inputResponses');
  }
  // The legacy era has no inputResponses: a param of that name is the server's business.
  assert.equal(policy.inbound(retry({ x: roots }), ctx('closed')), ALLOW);
});

test('docs/policy.md: the complete example is a valid configuration and decides as the text says', async () => {
  const docs = await readFile(new URL('../docs/policy.md', import.meta.url), 'utf8');
  const section = docs.slice(docs.indexOf('## A complete example'));
  const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(yaml, 'the section holds a YAML block');
  const config = parseConfig(yaml, 'docs/policy.md');
  const policy = compilePolicy(config);
  const acme = (scopes: string[] = []): DecisionContext => ({
    principal: { tenant: 'acme', subject: 'a', scopes },
    server: 'db',
    era: 'legacy',
  });
  const del = call('query', { sql: 'DELETE FROM users' });
  const denied = policy.inbound(del, acme());
  assert.ok(denied.kind === 'deny');
  assert.equal(denied.rule, 'db-writes-need-scope');
  assert.equal(policy.inbound(del, acme(['db:write'])), ALLOW);
  assert.equal(policy.inbound(call('query', { sql: '  Select 1' }), acme()), ALLOW);
  assert.equal(policy.route(who('globex'), 'db').kind, 'deny');
  assert.equal(policy.route(who('initech'), 'wiki').kind, 'deny');
  const bulk = policy.inbound(call('search', { limit: 1000 }), {
    ...ctx('globex'),
    server: 'wiki',
  });
  assert.equal(bulk.kind, 'allow');
  assert.equal(bulk.shadowed?.[0]?.rule, 'no-bulk-export');
});

test('outbound: structuredContent is checked against the manifest’s output schema (warn, block, off)', () => {
  const outputSchema = {
    type: 'object',
    properties: { temperature: { type: 'number' } },
    required: ['temperature'],
  };
  const { manifest } = buildManifest(
    [{ name: 'weather', inputSchema: { type: 'object' }, outputSchema }],
    { server: 'db', now: new Date().toISOString() },
  );
  const policyWith = (outputValidation: string) =>
    compilePolicy(
      buildConfig({
        auth: { mode: 'none' },
        servers: { db: { url: 'http://127.0.0.1:1/mcp', outputValidation } },
      }),
      new Map([['db', { manifest, file: 'db.json' }]]),
    );
  const result = (structuredContent: unknown) =>
    answer(5, { content: [], ...(structuredContent === undefined ? {} : { structuredContent }) });
  const at = ctx('local');

  const block = policyWith('block');
  assert.equal(block.outbound(result({ temperature: 21 }), 'tools/call', at, 'weather'), ALLOW);
  const bad = block.outbound(result({ temperature: 'warm' }), 'tools/call', at, 'weather');
  assert.ok(bad.kind === 'deny');
  assert.equal(bad.error.code, 'PORTCULLIS_ERR_POLICY_INVALID_OUTPUT');
  assert.equal(bad.error.data.path, '/structuredContent/temperature');
  const missing = block.outbound(result(undefined), 'tools/call', at, 'weather');
  assert.ok(missing.kind === 'deny');
  assert.equal(missing.error.data.path, '/structuredContent');

  const warn = policyWith('warn').outbound(result({}), 'tools/call', at, 'weather');
  assert.equal(warn.kind, 'allow');
  assert.equal(warn.findings?.[0]?.effect, 'flagged');
  assert.equal(policyWith('off').outbound(result({}), 'tools/call', at, 'weather'), ALLOW);
});

test('outbound: a server’s instructions are cleaned of hidden characters like its descriptions', () => {
  const policy = policyOf(undefined);
  const init = answer(1, {
    protocolVersion: '2025-11-25',
    capabilities: {},
    serverInfo: { name: 's', version: '1' },
    instructions: `Use the tools.\u200b${String.fromCodePoint(0xe0049, 0xe0047)}\u001b[2K`,
  });
  const d = policy.outbound(init, 'initialize', ctx('local'));
  assert.ok(d.kind === 'replace');
  assert.equal((d.message.result as { instructions: string }).instructions, 'Use the tools.');
  const clean = answer(2, { instructions: 'Plain.' });
  assert.equal(policy.outbound(clean, 'server/discover', ctx('local')), ALLOW);
});

test('rules: scoped and unscoped rules keep their order on every server and method (rules indexed at load)', () => {
  const policy = policyOf({
    acme: {
      servers: { db: { tools: ['*'], prompts: ['*'] }, files: { tools: ['*'] } },
      rules: [
        { id: 'files-shadow', when: 'true', servers: ['files'], mode: 'shadow' },
        { id: 'any-shadow', when: 'target == "t"', mode: 'shadow' },
        { id: 'call-shadow', when: 'target == "t"', methods: ['tools/call'], mode: 'shadow' },
        { id: 'files-call', when: 'target == "t"', servers: ['files'], methods: ['tools/call'] },
        { id: 'prompt', when: 'target == "t"', methods: ['prompts/get'] },
        { id: 'any', when: 'target == "t"' },
        { id: 'call-after', when: 'target == "t"', methods: ['tools/call'] },
        { id: 'bad-after', when: 'arguments.missing > 1', methods: ['tools/call'], targets: ['u'] },
      ],
    },
  });
  const on = (server: string) => ({ ...ctx('acme'), server });
  const shadows = (d: { shadowed?: readonly { rule: string }[] }) => d.shadowed?.map((h) => h.rule);

  // files: the server's own rule comes first; shadow hits are reported in rule order.
  const onFiles = policy.inbound(call('t'), on('files'));
  assert.ok(onFiles.kind === 'deny');
  assert.equal(onFiles.rule, 'files-call');
  assert.deepEqual(shadows(onFiles), ['files-shadow', 'any-shadow', 'call-shadow']);
  // db: not a files rule; the first enforcing rule that holds is the unscoped one.
  const onDb = policy.inbound(call('t'), on('db'));
  assert.ok(onDb.kind === 'deny');
  assert.equal(onDb.rule, 'any');
  assert.deepEqual(shadows(onDb), ['any-shadow', 'call-shadow']);
  // Another method: its own rule, then the unscoped ones; tools/call rules never apply.
  const prompt = policy.inbound(request('prompts/get', { name: 't' }), on('db'));
  assert.ok(prompt.kind === 'deny');
  assert.equal(prompt.rule, 'prompt');
  assert.deepEqual(shadows(prompt), ['any-shadow']);
  // A method no rule names: only the unscoped rules.
  const read = policy.inbound(request('resources/list'), on('db'));
  assert.equal(read.kind, 'allow');
  assert.equal(read.shadowed, undefined);
  // A condition that cannot be evaluated still denies, in its place.
  const bad = policy.inbound(call('u'), on('db'));
  assert.ok(bad.kind === 'deny');
  assert.equal(bad.rule, 'bad-after');
});

test('trust on first use is bounded: a server that keeps inventing tools gets no more pins than the cap', () => {
  const tools = compileServerTools('db', { pinning: 'block' });
  const pins = new MemoryPinBook();
  const entries = Array.from({ length: MAX_PINS_PER_SERVER + 2 }, (_, i) => tool(`t${i}`));
  const review = tools.reviewList(entries, pins);
  assert.equal(review.blocked.length, 2);
  assert.deepEqual(
    review.blocked.map((b) => [b.tool, b.code]),
    [
      [`t${MAX_PINS_PER_SERVER}`, 'PORTCULLIS_ERR_POLICY_TOOL_HELD'],
      [`t${MAX_PINS_PER_SERVER + 1}`, 'PORTCULLIS_ERR_POLICY_TOOL_HELD'],
    ],
  );
  assert.equal(pins.trusted('db', `t${MAX_PINS_PER_SERVER}`), undefined);
  assert.ok(pins.trusted('db', 't0'));
  // Another server has a cap of its own.
  assert.equal(pins.trust('files', 'x', 'sha256:00'), true);
});

test('rules scoped by targets: the right rules for every target, past the per-target memory’s bound', () => {
  const policy = policyOf({
    acme: {
      servers: { db: { tools: ['*'] } },
      rules: [
        { id: 'no-drop-on-q', targets: ['q_*'], when: 'arguments.sql == "drop"' },
        { id: 'no-x-anywhere', when: 'has(arguments.x)' },
      ],
    },
  });
  // More distinct targets than one list remembers (4,096): decisions are the same before and after it is emptied.
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 5_000; i++) {
      const scoped = policy.inbound(call(`q_${i}`, { sql: 'drop' }), ctx('acme'));
      assert.ok(scoped.kind === 'deny' && scoped.rule === 'no-drop-on-q', `q_${i}`);
      assert.equal(policy.inbound(call(`r_${i}`, { sql: 'drop' }), ctx('acme')), ALLOW, `r_${i}`);
      const any = policy.inbound(call(`r_${i}`, { x: 1 }), ctx('acme'));
      assert.ok(any.kind === 'deny' && any.rule === 'no-x-anywhere', `r_${i} x`);
    }
  }
});

test('outbound: a URL-mode elicitation URL is checked in every shape a server can send it, tenants or not', () => {
  const open = compilePolicy(
    buildConfig({ auth: { mode: 'none' }, servers: { db: { url: 'http://127.0.0.1:1/mcp' } } }),
  );
  const custom = compilePolicy(
    buildConfig({
      auth: { mode: 'none' },
      servers: {
        db: {
          url: 'http://127.0.0.1:1/mcp',
          elicitationUrls: {
            schemes: ['http', 'https'],
            allowPrivate: true,
            hosts: ['localhost', '*.example.com'],
          },
        },
      },
    }),
  );
  const elicit = (url: unknown) => ({ mode: 'url', message: 'Connect', elicitationId: 'e1', url });
  const shapes = (url: unknown): Frame[] => [
    toFrame(
      { jsonrpc: '2.0', id: 'srv-1', method: 'elicitation/create', params: elicit(url) },
      'server-to-client',
    ),
    answer(5, {
      resultType: 'input_required',
      inputRequests: { connect: { method: 'elicitation/create', params: elicit(url) } },
    }),
    toFrame(
      {
        jsonrpc: '2.0',
        id: 6,
        error: { code: -32042, message: 'Connect first', data: { elicitations: [elicit(url)] } },
      },
      'server-to-client',
    ),
  ];
  const modern = ctx('default', 'db', 'modern');
  for (const frame of shapes('https://auth.example.com/connect?elicitationId=e1'))
    assert.equal(open.outbound(frame, 'tools/call', modern), ALLOW, frame.kind);
  const refused: Array<[unknown, RegExp]> = [
    ['http://auth.example.com/connect', /scheme 'http' is not allowed/],
    ['https://localhost:8080/admin/delete', /local host name/],
    ['https://169.254.169.254/latest/meta-data/', /link-local|metadata/],
    ['https://user:pass@auth.example.com/', /credentials/],
    ['https://2130706433/', /non-canonical/],
    ['javascript:alert(1)', /scheme/],
    [42, /not a string/],
  ];
  for (const [url, reason] of refused)
    for (const frame of shapes(url)) {
      const d = open.outbound(frame, 'tools/call', modern);
      assert.ok(d.kind === 'deny', `${String(url)} in a ${frame.kind}`);
      assert.equal(d.rule, 'servers.db.elicitationUrls');
      assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED');
      assert.match(d.error.message, reason, String(url));
    }
  // Form mode carries no URL; other servers' settings are their own.
  const form = toFrame(
    {
      jsonrpc: '2.0',
      id: 'srv-2',
      method: 'elicitation/create',
      params: { message: 'x', requestedSchema: { type: 'object' } },
    },
    'server-to-client',
  );
  assert.equal(open.outbound(form, undefined, ctx('default')), ALLOW);
  for (const frame of shapes('http://localhost:3000/login'))
    assert.equal(custom.outbound(frame, 'tools/call', modern), ALLOW, frame.kind);
  for (const frame of shapes('https://evil.example.net/'))
    assert.match(
      (custom.outbound(frame, 'tools/call', modern) as { error: Error }).error.message,
      /not in the allowlist/,
    );
});
