/**
 * Typed virtual tools: the quoting checked against the real parsers it
 * writes for (PostgreSQL through psql, with standard_conforming_strings on
 * and off; POSIX sh), the templates' load-time checks, and the policy's
 * handling: the list shows the virtual tool and not the hidden real one, a
 * call becomes the real call, and the real tool's guards judge the rendered
 * text.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

import { buildConfig, ConfigError } from '../src/config/load.js';
import { toFrame } from '../src/mcp/frame.js';
import { compilePolicy, type DecisionContext } from '../src/policy/policy.js';
import { quotePgIdentifier, quotePgLiteral, QuoteError, quoteShell } from '../src/policy/quote.js';
import { startModernServer } from './fixtures/modern-server.js';
import { startTestGateway } from './helpers/gateway.js';
import { connectModernClient } from './helpers/modern-client.js';

const NASTY: readonly string[] = [
  "'; DROP TABLE users; --",
  "O'Brien",
  "''",
  '\\',
  "\\'; DROP TABLE users; --",
  "a\\'b",
  '$$; DELETE FROM users; $$',
  '"quoted"',
  '\n--\n',
  'tab\there',
  'é 日本語 🎉',
  '',
  "E'x'",
  '*/ SELECT 1 /*',
];

function psql(sql: string): string {
  return execFileSync(
    'psql',
    ['-h', '127.0.0.1', '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-Atq'],
    { input: sql, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] },
  );
}

test('quotePgLiteral: PostgreSQL reads each literal back as exactly the value, whatever standard_conforming_strings says', () => {
  for (const scs of ['on', 'off']) {
    const script = [
      `SET standard_conforming_strings = ${scs};`,
      ...NASTY.map(
        (v) => `SELECT 'v:' || encode(convert_to(${quotePgLiteral(v)}, 'UTF8'), 'base64');`,
      ),
    ].join('\n');
    const lines = psql(script)
      .split('\n')
      .filter((l) => l.startsWith('v:'));
    // encode(…, 'base64') wraps at 76 characters; each value here is short enough for one line.
    assert.equal(lines.length, NASTY.length, `one answer per value (scs ${scs})`);
    lines.forEach((line, i) =>
      assert.equal(Buffer.from(line.slice(2), 'base64').toString('utf8'), NASTY[i], `scs ${scs}`),
    );
  }
  assert.throws(() => quotePgLiteral('a\0b'), QuoteError);
});

test('quotePgIdentifier: PostgreSQL names the column exactly the value; empty, NUL and over-long are refused', () => {
  const names = NASTY.filter((v) => v !== '' && Buffer.byteLength(v) <= 63);
  const script = names
    .map(
      (v) =>
        `SELECT 'k:' || encode(convert_to(json_object_keys(row_to_json(x)), 'UTF8'), 'base64') FROM (SELECT 1 AS ${quotePgIdentifier(v)}) x;`,
    )
    .join('\n');
  const keys = psql(script)
    .split('\n')
    .filter((l) => l.startsWith('k:'))
    .map((l) => Buffer.from(l.slice(2), 'base64').toString('utf8'));
  assert.deepEqual(keys, names);
  assert.throws(() => quotePgIdentifier(''), QuoteError);
  assert.throws(() => quotePgIdentifier('x'.repeat(64)), /at most 63 bytes/);
  assert.throws(() => quotePgIdentifier('é'.repeat(32)), /at most 63 bytes/);
});

test('quoteShell: sh reads each word back as exactly the value', () => {
  for (const v of NASTY) {
    const out = execFileSync('sh', ['-c', `printf '%s' ${quoteShell(v)}`], { encoding: 'utf8' });
    assert.equal(out, v);
  }
});

const SERVER = { url: 'http://127.0.0.1:1/mcp' };
const findUser = {
  tool: 'query',
  description: 'Find users by exact name.',
  inputSchema: {
    type: 'object',
    properties: { name: { type: 'string', maxLength: 100 }, limit: { type: 'integer' } },
    required: ['name', 'limit'],
    additionalProperties: false,
  },
  arguments: {
    sql: 'SELECT id, name FROM users WHERE name = {{name:literal}} LIMIT 5 - {{limit:number}}',
  },
};

function policyWith(virtualTools: Record<string, unknown>, tools?: Record<string, unknown>) {
  return compilePolicy(
    buildConfig({
      auth: { mode: 'none' },
      servers: { db: { ...SERVER, virtualTools, ...(tools ? { tools } : {}) } },
    }),
  );
}

const ctx: DecisionContext = {
  principal: { tenant: 'default', subject: 'agent', scopes: [] },
  server: 'db',
  era: 'legacy',
};
const call = (name: string, args: unknown) =>
  toFrame(
    { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } },
    'client-to-server',
  );

test('a call of the virtual tool becomes the real call, with every placeholder quoted for its target', () => {
  const policy = policyWith({ find_user: findUser });
  const d = policy.inbound(call('find_user', { name: "'; DROP TABLE users; --", limit: -1 }), ctx);
  assert.equal(d.kind, 'replace');
  if (d.kind !== 'replace') return;
  assert.equal(d.rule, 'servers.db.virtualTools.find_user');
  assert.deepEqual(d.message.params, {
    name: 'query',
    arguments: {
      sql: "SELECT id, name FROM users WHERE name = '''; DROP TABLE users; --' LIMIT 5 - (-1)",
    },
  });
  // Arguments that do not match the virtual tool's schema never reach a template.
  for (const [args, path] of [
    [{ name: 'x' }, '/limit'],
    [{ name: 'x', limit: '1; DROP' }, '/limit'],
    [{ name: 'x', limit: 1, extra: true }, '/'],
    [{ name: 'x'.repeat(101), limit: 1 }, '/name'],
  ] as const) {
    const bad = policy.inbound(call('find_user', args), ctx);
    assert.ok(bad.kind === 'deny', JSON.stringify(args));
    assert.equal(bad.error.code, 'PORTCULLIS_ERR_POLICY_INVALID_ARGUMENTS');
    assert.equal(bad.error.data.path, path, JSON.stringify(args));
  }
  const nul = policy.inbound(call('find_user', { name: 'a\0b', limit: 1 }), ctx);
  assert.ok(nul.kind === 'deny');
  assert.match(nul.error.message, /NUL/);
});

test('the hidden real tool is neither listed nor callable; the virtual one is listed on the last page', () => {
  const policy = policyWith({ find_user: findUser });
  const hidden = policy.inbound(call('query', { sql: 'SELECT 1' }), ctx);
  assert.ok(hidden.kind === 'deny');
  assert.equal(hidden.error.code, 'PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND');
  const tool = (name: string) => ({ name, inputSchema: { type: 'object' } });
  const list = (nextCursor?: string) =>
    toFrame(
      {
        jsonrpc: '2.0',
        id: 2,
        result: { tools: [tool('query'), tool('other')], ...(nextCursor ? { nextCursor } : {}) },
      },
      'server-to-client',
    );
  const names = (frame: ReturnType<typeof list>) => {
    const d = policy.outbound(frame, 'tools/list', ctx);
    const message = d.kind === 'replace' ? d.message : frame.message;
    return (message.result as { tools: Array<{ name: string }> }).tools.map((t) => t.name);
  };
  assert.deepEqual(names(list()), ['other', 'find_user']);
  assert.deepEqual(names(list('page-2')), ['other'], 'not on a page with more to come');
  // hideTool: false keeps the real tool.
  const open = policyWith({ find_user: { ...findUser, hideTool: false } });
  assert.equal(open.inbound(call('query', { sql: 'SELECT 1' }), ctx).kind, 'allow');
});

test("the real tool's guards judge the rendered text", () => {
  const policy = policyWith(
    {
      by_table: {
        tool: 'query',
        description: 'Count the rows of a table.',
        inputSchema: {
          type: 'object',
          properties: { table: { type: 'string' } },
          required: ['table'],
        },
        arguments: { sql: 'SELECT count(*) FROM {{table:ident}}' },
      },
    },
    { query: { guards: [{ kind: 'sql', argument: 'sql', tables: ['users'] }] } },
  );
  assert.equal(policy.inbound(call('by_table', { table: 'users' }), ctx).kind, 'replace');
  const d = policy.inbound(call('by_table', { table: 'pg_authid' }), ctx);
  assert.ok(d.kind === 'deny');
  assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_GUARD');
  assert.match(d.error.message, /the table pg_authid/);
});

test('templates that could concatenate raw input, or name what the schema does not promise, refuse the config', () => {
  const problems = (args: Record<string, unknown>, schema?: Record<string, unknown>) => {
    try {
      policyWith({
        v: { ...findUser, ...(schema ? { inputSchema: schema } : {}), arguments: args },
      });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.map((p) => `${p.path}: ${p.message}`).join('\n');
    }
    return '';
  };
  assert.match(
    problems({ sql: 'SELECT {{name}}' }),
    /needs a type .*raw input is never concatenated/,
  );
  assert.match(problems({ sql: 'SELECT {{name:raw}}' }), /'raw' is not a placeholder type/);
  assert.match(problems({ sql: 'SELECT {{nope:literal}}' }), /names no property/);
  assert.match(problems({ sql: 'SELECT {{limit:ident}}' }), /ident.*string/);
  assert.match(problems({ sql: 'SELECT {{ name:literal' }), /`\{\{` or `\}\}`/);
  assert.match(
    problems(
      { sql: 'SELECT {{name:literal}}' },
      { type: 'object', properties: { name: { type: 'string' } } },
    ),
    /must be a required property/,
  );
  assert.match(problems({ sql: 'x' }, { type: 'array' }), /must be of type object/);
  assert.equal(problems({ sql: 'SELECT 1', limit: '{{limit}}', fixed: 3 }), '');
});

test("2026-07-28, end to end: the real call carries the real tool's Mcp-Name and its Mcp-Param-* from the rendered arguments", async (t) => {
  const server = await startModernServer();
  t.after(() => server.close());
  const gateway = await startTestGateway({
    modern: {
      url: server.url,
      virtualTools: {
        ask_europe: {
          tool: 'region_query',
          description: 'Ask in the EU region.',
          inputSchema: {
            type: 'object',
            properties: { question: { type: 'string' } },
            required: ['question'],
          },
          arguments: { region: 'eu-west1', query: '{{question}}' },
        },
      },
    },
  });
  t.after(() => gateway.close());
  const client = await connectModernClient(gateway.urlFor('modern'));
  t.after(() => client.close());
  const names = (await client.listTools()).tools.map((tool) => tool.name);
  assert.ok(names.includes('ask_europe') && !names.includes('region_query'), names.join(','));
  const result = await client.callTool({ name: 'ask_europe', arguments: { question: 'où ? 🎉' } });
  const content = (result as { content: Array<{ text?: string }> }).content;
  assert.equal(content[0]?.text, 'region=eu-west1 query=où ? 🎉');
  const seen = server.events.requestsFor('tools/call', 'region_query');
  assert.equal(seen.length, 1, 'the upstream saw the real tool');
  assert.equal(seen[0]?.mcpHeaders['mcp-name'], 'region_query');
  assert.equal(seen[0]?.mcpHeaders['mcp-param-region'], 'eu-west1');
});
