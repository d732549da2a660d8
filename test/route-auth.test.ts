/**
 * Authentication by route, deny by default: every route of the public and the
 * admin listener needs its credential unless it is on the one public list,
 * and no spelling of a path (percent-encoding, absolute-form targets, dot
 * segments, doubled slashes, case) reaches a route without the check its
 * canonical spelling gets. Requests are written byte for byte on a socket:
 * fetch would normalise every one of these spellings away.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import {
  startKeyedGateway,
  TEST_ADMIN_TOKEN,
  type AuthGateway,
  type KeyedGateway,
} from './helpers/auth-gateway.js';
import { rawRequest } from './helpers/raw-http.js';
import { ACCEPT_BOTH, initializeBody, modernCall, modernHeaders } from './helpers/requests.js';
import { PUBLIC_ROUTES } from '../src/server/app.js';
import { PUBLIC_ADMIN_ROUTES } from '../src/server/admin.js';

let upstream: FaultUpstream;
let keyed: KeyedGateway;
let gw: AuthGateway;

before(async () => {
  upstream = await startFaultUpstream();
  keyed = await startKeyedGateway(
    { docs: upstream.url('/ok'), secret: { url: upstream.url('/ok'), requiredScopes: ['s'] } },
    { admin: { token: TEST_ADMIN_TOKEN } },
  );
  gw = keyed.gw;
});

after(async () => {
  await keyed.close();
  await upstream.close();
});

const hits = () => upstream.hits.get('/ok') ?? 0;
const body = JSON.stringify(modernCall('echo', { text: 'hi' }, 1));
const mcpHeaders = {
  'content-type': 'application/json',
  accept: ACCEPT_BOTH,
  ...modernHeaders('echo'),
};

test('the public lists are exactly the metadata, the JWKS and health', () => {
  assert.deepEqual(
    [...PUBLIC_ROUTES].sort(),
    [
      'GET /.well-known/jwks.json',
      'GET /.well-known/oauth-protected-resource',
      'GET /.well-known/oauth-protected-resource/mcp/:server',
    ].sort(),
  );
  assert.deepEqual([...PUBLIC_ADMIN_ROUTES].sort(), ['GET /livez', 'GET /readyz']);
});

test('no spelling of /mcp/<name> reaches the upstream without a token (percent-encoding, absolute form, dot segments, slashes, case)', async () => {
  const before = hits();
  const targets = [
    '/mcp/docs',
    '/%6dcp/docs',
    '/m%63p/docs',
    '/%6D%63%70/docs',
    '/mcp/%64ocs',
    '/mcp/%64%6f%63%73',
    'http://anything/mcp/docs',
    'http://anything/%6dcp/docs',
    'https://127.0.0.1/mcp/docs?x=1',
    '/mcp/./docs',
    '/mcp/../mcp/docs',
    '/./mcp/docs',
    '//mcp/docs',
    '/mcp//docs',
    '/MCP/docs',
    '/Mcp/Docs',
    '/mcp/docs/',
    '/mcp/docs;x',
    '/mcp/docs%00',
  ];
  for (const target of targets) {
    const res = await rawRequest(gw.url, 'POST', target, mcpHeaders, body);
    assert.equal(res.status, 401, `${target} → ${res.status} ${res.body}`);
    assert.match(res.headers['www-authenticate'] ?? '', /^Bearer /, target);
  }
  assert.equal(hits(), before, 'nothing reached the upstream');
});

test('every method and sub-route of a server needs a token, and so does a path no route matches', async () => {
  const cases: Array<[string, string]> = [
    ['GET', '/mcp/docs'],
    ['DELETE', '/mcp/docs'],
    ['PUT', '/mcp/docs'],
    ['OPTIONS', '/mcp/docs'],
    ['GET', '/mcp/docs/sse'],
    ['GET', '/mcp/docs/%73se'],
    ['GET', 'http://x/mcp/docs/sse'],
    ['POST', '/mcp/docs/messages?sessionId=x'],
    ['POST', '/mcp/docs/%6d%65ssages?sessionId=x'],
    ['GET', '/nothing-here'],
    ['GET', '/mcp/nope'],
  ];
  const before = hits();
  for (const [method, target] of cases) {
    const res = await rawRequest(gw.url, method, target, {
      accept: 'text/event-stream, application/json',
    });
    assert.equal(res.status, 401, `${method} ${target} → ${res.status} ${res.body}`);
  }
  assert.equal(hits(), before);
});

test('a spelled-out path with a good token is served like its canonical spelling', async () => {
  const token = await keyed.token('acme', 'alice');
  const res = await rawRequest(
    gw.url,
    'POST',
    '/%6dcp/docs',
    { ...mcpHeaders, authorization: `Bearer ${token}` },
    body,
  );
  assert.equal(res.status, 200, res.body);
  // Scopes are checked on the decoded name too.
  const secret = await rawRequest(
    gw.url,
    'POST',
    '/mcp/%73ecret',
    { ...mcpHeaders, authorization: `Bearer ${token}` },
    body,
  );
  assert.equal(secret.status, 403, secret.body);
});

test('public routes answer without a token, under any spelling', async () => {
  for (const target of [
    '/.well-known/oauth-protected-resource',
    '/.well-known/%6fauth-protected-resource',
    '/.well-known/oauth-protected-resource/mcp/docs',
  ]) {
    const res = await rawRequest(gw.url, 'GET', target);
    assert.equal(res.status, 200, `${target} → ${res.status}`);
  }
});

test('an unauthenticated caller cannot tell configured servers from unknown names by metadata or challenge', async () => {
  const seen = new Map<string, { challenge: string; doc: Record<string, unknown> }>();
  for (const name of ['docs', 'secret', 'nope']) {
    const res = await rawRequest(gw.url, 'POST', `/mcp/${name}`, mcpHeaders, body);
    assert.equal(res.status, 401);
    const meta = await rawRequest(
      gw.url,
      'GET',
      `/.well-known/oauth-protected-resource/mcp/${name}`,
    );
    assert.equal(meta.status, 200, `metadata for ${name}`);
    const doc = JSON.parse(meta.body) as Record<string, unknown>;
    assert.equal(doc.resource, `${gw.url}/mcp/${name}`);
    seen.set(name, {
      challenge: (res.headers['www-authenticate'] ?? '').replace(name, 'NAME'),
      doc: { ...doc, resource: undefined },
    });
  }
  const [docs, secret, nope] = ['docs', 'secret', 'nope'].map((n) => seen.get(n));
  assert.deepEqual(docs, nope);
  assert.deepEqual(secret, nope);
  // A challenge after authentication may name what is missing: the caller is known then.
  const token = await keyed.token('acme', 'alice');
  const refused = await rawRequest(
    gw.url,
    'POST',
    '/mcp/secret',
    { ...mcpHeaders, authorization: `Bearer ${token}` },
    body,
  );
  assert.match(refused.headers['www-authenticate'] ?? '', /scope="s"/);
});

test('a malformed percent-escape is refused, never thrown', async () => {
  const res = await rawRequest(gw.url, 'POST', '/mcp/%E0%A4%A', mcpHeaders, body);
  assert.ok(res.status === 400 || res.status === 401, `${res.status} ${res.body}`);
  const ok = await rawRequest(gw.url, 'GET', '/.well-known/oauth-protected-resource');
  assert.equal(ok.status, 200);
});

test('initialize under an absolute-form target without a token is refused', async () => {
  const before = hits();
  const res = await rawRequest(
    gw.url,
    'POST',
    `${gw.url}/mcp/docs`,
    { 'content-type': 'application/json', accept: ACCEPT_BOTH },
    JSON.stringify(initializeBody()),
  );
  assert.equal(res.status, 401);
  assert.equal(hits(), before);
});

const admin = () => gw.adminUrl as string;
const adminAuth = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

test('no spelling of an admin route skips the admin credential', async () => {
  for (const target of [
    '/admin/revocations',
    '/%61dmin/revocations',
    '/admin/%72evocations',
    'http://127.0.0.1/admin/revocations',
    '/admin/../admin/revocations',
    '//admin/revocations',
    '/ADMIN/revocations',
    '/metrics',
    '/%6detrics',
    '/nothing-here',
  ]) {
    const res = await rawRequest(admin(), 'GET', target);
    assert.equal(res.status, 401, `${target} → ${res.status} ${res.body}`);
  }
  const created = await rawRequest(
    admin(),
    'POST',
    '/%61dmin/revocations',
    { 'content-type': 'application/json' },
    JSON.stringify({ kind: 'jti', id: 'x' }),
  );
  assert.equal(created.status, 401);
  const listed = await rawRequest(admin(), 'GET', '/admin/revocations', adminAuth);
  assert.equal(listed.status, 200);
  assert.deepEqual((JSON.parse(listed.body) as { revocations: unknown[] }).revocations, []);
  const metrics = await rawRequest(admin(), 'GET', '/metrics', adminAuth);
  assert.equal(metrics.status, 200);
  // The process metrics carry the product's prefix once.
  assert.match(metrics.body, /^portcullis_process_cpu_user_seconds_total /m);
  assert.match(metrics.body, /^portcullis_nodejs_heap_size_used_bytes /m);
  assert.doesNotMatch(metrics.body, /portcullis_process_process_|portcullis_process_nodejs_/);
  for (const target of ['/livez', '/readyz', '/%6civez']) {
    assert.equal((await rawRequest(admin(), 'GET', target)).status, 200, target);
  }
});

test('the admin listener refuses a Host not on its allowlist (DNS rebinding)', async () => {
  for (const host of ['evil.example', 'evil.example:9090', '127.0.0.1.evil.example']) {
    const res = await rawRequest(admin(), 'GET', '/admin/revocations', { ...adminAuth, host });
    assert.equal(res.status, 403, host);
    assert.equal((await rawRequest(admin(), 'GET', '/livez', { host })).status, 403, host);
  }
  const local = await rawRequest(admin(), 'GET', '/admin/revocations', {
    ...adminAuth,
    host: 'localhost',
  });
  assert.equal(local.status, 200);
});

test('the admin listener refuses cross-origin browser requests', async () => {
  const browsers: Array<Record<string, string>> = [
    { origin: 'http://evil.example' },
    { origin: 'null' },
    { origin: admin() },
    { 'sec-fetch-site': 'cross-site' },
    { 'sec-fetch-site': 'same-site' },
  ];
  for (const headers of browsers) {
    const res = await rawRequest(
      admin(),
      'POST',
      '/admin/revocations',
      {
        ...adminAuth,
        'content-type': 'application/json',
        ...headers,
      },
      JSON.stringify({ kind: 'jti', id: 'x' }),
    );
    assert.equal(res.status, 403, JSON.stringify(headers));
  }
  const typed = await rawRequest(admin(), 'GET', '/livez', { 'sec-fetch-site': 'none' });
  assert.equal(typed.status, 200);
});
