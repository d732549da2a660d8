/**
 * Guards on tool arguments as the policy runs them (src/policy/guards/index.ts),
 * pure, no sockets: which argument a guard reads (a name or a JSON pointer),
 * arrays checked element by element, absent arguments left alone, the order
 * against the schema and the tenant's rules, shadow mode, the error the agent
 * gets, the guards that wait on the host, and config errors at load.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { buildConfig, ConfigError } from '../src/config/load.js';
import { toFrame, type Frame } from '../src/mcp/frame.js';
import { ALLOW } from '../src/policy/decision.js';
import { compilePolicy, type DecisionContext, type Policy } from '../src/policy/policy.js';

let nextId = 1;
const call = (name: string, args: Record<string, unknown>): Frame =>
  toFrame(
    { jsonrpc: '2.0', id: nextId++, method: 'tools/call', params: { name, arguments: args } },
    'client-to-server',
  );
const ctx = (tenant = 'acme'): DecisionContext => ({
  principal: { tenant, subject: 'agent-1', scopes: [] },
  server: 'db',
  era: 'legacy',
});

const configWith = (tools: Record<string, unknown>, tenants?: Record<string, unknown>) =>
  buildConfig({
    auth: { mode: 'none' },
    servers: { db: { url: 'http://127.0.0.1:1/mcp', tools } },
    ...(tenants ? { tenants } : {}),
  });
const policyWith = (tools: Record<string, unknown>, tenants?: Record<string, unknown>): Policy =>
  compilePolicy(configWith(tools, tenants));

function denied(policy: Policy, frame: Frame) {
  const d = policy.inbound(frame, ctx());
  assert.equal(d.kind, 'deny', `expected a denial, got ${JSON.stringify(d)}`);
  if (d.kind !== 'deny') throw new Error('unreachable');
  return d;
}

test('a refused argument is a -32602 naming the guard, its kind and the argument path; nothing else is refused', () => {
  const policy = policyWith({
    query: { guards: [{ kind: 'sql', argument: 'sql', readOnly: true }] },
  });
  assert.equal(policy.inbound(call('query', { sql: 'SELECT 1' }), ctx()), ALLOW);
  assert.equal(policy.inbound(call('other', { sql: 'DROP TABLE users' }), ctx()), ALLOW);
  const d = denied(policy, call('query', { sql: 'COMMIT; DROP TABLE users CASCADE;' }));
  assert.equal(d.rule, 'servers.db.tools.query.guards.0');
  assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_GUARD');
  assert.equal(d.error.rpcCode, -32602);
  assert.equal(d.error.status, 200);
  const rpc = d.error.toJsonRpc();
  assert.deepEqual(
    { rule: rpc.data.rule, guard: rpc.data.guard, path: rpc.data.path, tool: rpc.data.tool },
    { rule: 'servers.db.tools.query.guards.0', guard: 'sql', path: '/sql', tool: 'query' },
  );
  assert.match(
    d.error.message,
    /guard 'servers\.db\.tools\.query\.guards\.0' \(sql\) refused \/sql: a second statement \(DROP\) after the first$/,
  );
});

test('the argument is a name or a JSON pointer; an absent one is not checked', () => {
  const policy = policyWith({
    search: {
      guards: [
        { kind: 'pattern', argument: '/filter/a~1b/0', deny: ['secret'] },
        { kind: 'size', argument: 'q', maxLength: 5 },
      ],
    },
  });
  assert.equal(policy.inbound(call('search', {}), ctx()), ALLOW, 'absent: not checked');
  assert.equal(policy.inbound(call('search', { filter: { 'a/b': ['public'] } }), ctx()), ALLOW);
  const d = denied(policy, call('search', { filter: { 'a/b': ['top secret'] } }));
  assert.equal(d.error.toJsonRpc().data.path, '/filter/a~1b/0');
  assert.equal(d.rule, 'servers.db.tools.search.guards.0');
  const long = denied(policy, call('search', { q: 'sixsix' }));
  assert.equal(long.rule, 'servers.db.tools.search.guards.1');
  assert.equal(long.error.toJsonRpc().data.path, '/q');
  // An inherited property is not an argument.
  assert.equal(
    policy.inbound(call('search', JSON.parse('{"__proto__": {"q": "toolong"}}')), ctx()),
    ALLOW,
  );
});

test('an array is checked element by element, and the path names the element; size judges the whole', () => {
  const policy = policyWith({
    read: {
      guards: [
        { kind: 'pattern', argument: 'paths', allow: '/srv/[a-z/]+' },
        { kind: 'size', argument: 'paths', maxItems: 3 },
      ],
    },
  });
  assert.equal(policy.inbound(call('read', { paths: ['/srv/a', '/srv/b/c'] }), ctx()), ALLOW);
  const d = denied(policy, call('read', { paths: ['/srv/a', '/etc/passwd'] }));
  assert.equal(d.error.toJsonRpc().data.path, '/paths/1');
  const many = denied(policy, call('read', { paths: ['/srv/a', '/srv/b', '/srv/c', '/srv/d'] }));
  assert.equal(many.rule, 'servers.db.tools.read.guards.1');
  assert.equal(many.error.toJsonRpc().data.path, '/paths');
  // Not a string where a string guard expects one: refused, not passed.
  assert.equal(
    denied(policy, call('read', { paths: [42] })).error.toJsonRpc().data.path,
    '/paths/0',
  );
});

test('guards run before the tenant rules and after the grant; their own id names them', () => {
  const tenants = {
    acme: {
      servers: { db: { tools: ['query'] } },
      rules: [{ id: 'no-users', when: 'arguments.sql.contains("users")' }],
    },
  };
  const policy = policyWith(
    { query: { guards: [{ kind: 'sql', argument: 'sql', id: 'db-read-only' }] } },
    tenants,
  );
  assert.equal(denied(policy, call('query', { sql: 'DELETE FROM users' })).rule, 'db-read-only');
  assert.equal(denied(policy, call('query', { sql: 'SELECT * FROM users' })).rule, 'no-users');
  assert.equal(policy.inbound(call('query', { sql: 'SELECT 1' }), ctx()), ALLOW);
  // Not granted: the tool does not exist for the tenant, whatever its guards would say.
  const other = policy.inbound(call('query', { sql: 'DELETE FROM x' }), ctx('globex'));
  assert.equal(other.kind, 'deny');
});

test('a guard in shadow mode reports what it would refuse and refuses nothing', () => {
  const policy = policyWith({
    query: {
      guards: [
        { kind: 'sql', argument: 'sql', mode: 'shadow' },
        { kind: 'size', argument: 'sql', maxLength: 100 },
      ],
    },
  });
  const d = policy.inbound(call('query', { sql: 'DROP TABLE users' }), ctx());
  assert.equal(d.kind, 'allow');
  if (d.kind !== 'allow') return;
  assert.equal(d.shadowed?.length, 1);
  assert.equal(d.shadowed?.[0]?.rule, 'servers.db.tools.query.guards.0');
  assert.equal(d.shadowed?.[0]?.would, 'deny');
  assert.match(d.shadowed?.[0]?.reason ?? '', /\(sql\) refused \/sql/);
  // The shadow hit travels with a denial that follows it.
  const both = denied(policy, call('query', { sql: `DROP TABLE users -- ${'x'.repeat(100)}` }));
  assert.equal(both.rule, 'servers.db.tools.query.guards.1');
  assert.equal(both.shadowed?.[0]?.rule, 'servers.db.tools.query.guards.0');
});

test('a guard that asks the host makes the decision pending; the others never wait', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'portcullis-guards-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  await mkdir(root);
  await symlink(tmpdir(), path.join(root, 'out'));
  const policy = policyWith({
    read: { guards: [{ kind: 'path', argument: 'path', root, resolveSymlinks: true }] },
    peek: { guards: [{ kind: 'path', argument: 'path', root }] },
  });
  const inside = policy.inbound(call('read', { path: 'a/b.txt' }), ctx());
  assert.equal(inside.kind, 'pending');
  if (inside.kind === 'pending') assert.equal(await inside.decision, ALLOW);
  const escaped = policy.inbound(call('read', { path: 'out/secret' }), ctx());
  assert.equal(escaped.kind, 'pending');
  if (escaped.kind === 'pending') {
    const d = await escaped.decision;
    assert.equal(d.kind, 'deny');
    if (d.kind === 'deny') assert.equal(d.error.code, 'PORTCULLIS_ERR_POLICY_GUARD');
  }
  // Without symlink resolution the same guard is synchronous (and cannot see the link).
  assert.equal(policy.inbound(call('peek', { path: 'out/secret' }), ctx()), ALLOW);
  assert.equal(policy.inbound(call('peek', { path: '../x' }), ctx()).kind, 'deny');
});

test('guard options that cannot work refuse the config, each at its path', () => {
  const problems = (tools: Record<string, unknown>) => {
    try {
      configWith(tools);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.map((p) => `${p.path}: ${p.message}`);
    }
    return [];
  };
  const found = problems({
    a: {
      guards: [
        { kind: 'pattern', argument: 'x', deny: ['(unclosed'] },
        { kind: 'pattern', argument: 'x' },
        { kind: 'size', argument: 'x' },
        { kind: 'path', argument: 'x', root: 'relative/dir' },
        { kind: 'sql', argument: 'x', statements: ['select', 'detonate'] },
        { kind: 'sql', argument: 'x', id: 'same' },
        { kind: 'shell', argument: 'x', id: 'same' },
      ],
    },
  });
  // What the schema refuses is reported before any guard is compiled.
  const shapes = problems({
    a: {
      guards: [
        { kind: 'nuke', argument: 'x' },
        { kind: 'url', argument: 'x', extra: true },
      ],
    },
  });
  const at = (i: number) => found.filter((p) => p.startsWith(`servers.db.tools.a.guards[${i}]`));
  for (let i = 0; i <= 4; i++) assert.equal(at(i).length, 1, `guard ${i}: ${found.join('\n')}`);
  assert.match(at(0)[0] ?? '', /deny\[0\]/);
  assert.match(at(4)[0] ?? '', /detonate/);
  assert.match(at(6)[0] ?? '', /'same' is also the id of servers\.db\.tools\.a\.guards\[5\]/);
  const shapeAt = (i: number) =>
    shapes.filter((p) => p.startsWith(`servers.db.tools.a.guards[${i}]`));
  assert.ok(
    shapeAt(0).some((p) => /kind/.test(p)),
    shapes.join('\n'),
  );
  assert.ok(
    shapeAt(1).some((p) => /extra: unknown key/.test(p)),
    shapes.join('\n'),
  );
  assert.equal(at(5).length, 0, 'the first holder of an id is not the problem');
});
