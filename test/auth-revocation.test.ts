/**
 * Revocation through the admin API and the CLI: by token id, by subject and
 * by session; the admin API's own credential; every revoked request refused
 * with 401 and nothing sent upstream.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Revocations, subjectKey } from '../src/auth/revocation.js';
import { openStore } from '../src/store/index.js';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, TEST_ADMIN_TOKEN, type AuthGateway } from './helpers/auth-gateway.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

const ADMIN_TOKEN = TEST_ADMIN_TOKEN;
const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

let upstream: FaultUpstream;
let dir: string;
let key: SigningKey;
let gw: AuthGateway;

before(async () => {
  upstream = await startFaultUpstream();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-revoke-'));
  key = await newKey('ES256');
  gw = await startAuthGateway(
    { docs: upstream.url('/ok'), legacy: upstream.url('/legacy') },
    { jwt: { jwksFile: await writeJwks(dir, key) } },
    { admin: { token: ADMIN_TOKEN } },
  );
});

after(async () => {
  await gw.close();
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

const call = (token: string) =>
  post(gw.urlFor('docs'), modernCall('echo', {}, 1), {
    ...modernHeaders('echo'),
    authorization: `Bearer ${token}`,
  });

function admin(path: string, init: RequestInit & { token?: string } = {}) {
  return fetch(`${gw.adminUrl}${path}`, {
    ...init,
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${init.token ?? ADMIN_TOKEN}`,
    },
  });
}

async function expectRevoked(res: Response): Promise<void> {
  assert.equal(res.status, 401);
  assert.match(res.headers.get('www-authenticate') ?? '', /error="invalid_token"/);
  assert.equal(
    ((await res.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_AUTH_TOKEN_REVOKED',
  );
  const record = gw.logs.findLast((l) => l.event === 'auth.refused');
  assert.equal(record?.code, 'PORTCULLIS_ERR_AUTH_TOKEN_REVOKED', 'the refusal is logged');
}

test('the admin API needs its own credential', async () => {
  const wrong = await admin('/admin/revocations', { token: 'not-the-admin-credential' });
  assert.equal(wrong.status, 401);
  // An agent's token is not an admin credential.
  const agent = await admin('/admin/revocations', { token: await mint(key, gw.url) });
  assert.equal(agent.status, 401);
  assert.equal((await admin('/admin/revocations')).status, 200);
  assert.ok(gw.logs.some((l) => l.event === 'admin.refused'));
});

test('a revoked token id is refused, its siblings are not, and the cache does not hide it', async () => {
  const token = await mint(key, gw.url, { claims: { jti: 'revoke-me' } });
  const sibling = await mint(key, gw.url, { claims: { jti: 'keep-me' } });
  assert.equal((await call(token)).status, 200, 'cached as valid first');
  const res = await admin('/admin/revocations', {
    method: 'POST',
    body: JSON.stringify({ kind: 'jti', id: 'revoke-me', reason: 'leaked in a log' }),
  });
  assert.equal(res.status, 201);
  const hitsBefore = upstream.hits.get('/ok') ?? 0;
  await expectRevoked(await call(token));
  assert.equal(upstream.hits.get('/ok') ?? 0, hitsBefore, 'nothing reached the upstream');
  assert.equal((await call(sibling)).status, 200);
  const list = (await (await admin('/admin/revocations')).json()) as {
    revocations: Array<{ kind: string; id: string }>;
  };
  assert.ok(list.revocations.some((r) => r.kind === 'jti' && r.id === 'revoke-me'));
  assert.ok(gw.logs.some((l) => l.event === 'revocation' && l.id === 'revoke-me'));
});

test('keys cannot collide: revoking subject "b\\0c" of tenant "a" leaves subject "c" of tenant "a\\0b" alone', async () => {
  const victim = await mint(key, gw.url, { claims: { sub: 'c', tenant: 'a\u0000b' } });
  const target = await mint(key, gw.url, { claims: { sub: 'b\u0000c', tenant: 'a' } });
  assert.equal((await call(victim)).status, 200);
  const res = await admin('/admin/revocations', {
    method: 'POST',
    body: JSON.stringify({ kind: 'sub', id: 'b\u0000c', tenant: 'a' }),
  });
  assert.equal(res.status, 201);
  await expectRevoked(await call(target));
  assert.equal((await call(victim)).status, 200, 'the other principal is not revoked');
  const list = (await (await admin('/admin/revocations')).json()) as {
    revocations: Array<{ kind: string; id: string; tenant?: string }>;
  };
  assert.ok(
    list.revocations.some((r) => r.kind === 'sub' && r.id === 'b\u0000c' && r.tenant === 'a'),
  );
  // A session opened by one principal is not usable by its look-alike.
  const owner = await mint(key, gw.url, { claims: { sub: 'z', tenant: 'x\u0000y' } });
  const lookalike = await mint(key, gw.url, { claims: { sub: 'y\u0000z', tenant: 'x' } });
  const init = await post(gw.urlFor('legacy'), initializeBody(), {
    authorization: `Bearer ${owner}`,
  });
  assert.equal(init.status, 200);
  await init.text();
  const session = init.headers.get('mcp-session-id') ?? '';
  const ping = { jsonrpc: '2.0', id: 2, method: 'ping' };
  const headers = (token: string) => ({
    authorization: `Bearer ${token}`,
    'mcp-session-id': session,
    'mcp-protocol-version': '2025-11-25',
  });
  const stolen = await post(gw.urlFor('legacy'), ping, headers(lookalike));
  assert.equal(stolen.status, 404);
  assert.equal(
    ((await stolen.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_SESSION_UNKNOWN',
  );
  const own = await post(gw.urlFor('legacy'), ping, headers(owner));
  assert.equal(own.status, 200);
  await own.text();
});

test('a revoked subject loses every token, in its tenant only', async () => {
  const mallory = await mint(key, gw.url, { claims: { sub: 'mallory', tenant: 'acme' } });
  const namesake = await mint(key, gw.url, { claims: { sub: 'mallory', tenant: 'other' } });
  const res = await admin('/admin/revocations', {
    method: 'POST',
    body: JSON.stringify({ kind: 'sub', id: 'mallory', tenant: 'acme' }),
  });
  assert.equal(res.status, 201);
  await expectRevoked(await call(mallory));
  await expectRevoked(
    await call(await mint(key, gw.url, { claims: { sub: 'mallory', tenant: 'acme' } })),
  );
  assert.equal((await call(namesake)).status, 200);
});

test('revoking a session ends it: its requests are refused and it is gone', async () => {
  const token = await mint(key, gw.url, { claims: { sub: 'session-owner' } });
  const init = await post(gw.urlFor('legacy'), initializeBody(), {
    authorization: `Bearer ${token}`,
  });
  assert.equal(init.status, 200);
  const sessionId = init.headers.get('mcp-session-id') as string;
  const res = await admin('/admin/revocations', {
    method: 'POST',
    body: JSON.stringify({ kind: 'session', id: sessionId }),
  });
  assert.equal(res.status, 201);
  assert.equal(((await res.json()) as { sessionEnded: boolean }).sessionEnded, true);
  const after = await post(
    gw.urlFor('legacy'),
    { jsonrpc: '2.0', id: 2, method: 'ping' },
    {
      authorization: `Bearer ${token}`,
      'mcp-session-id': sessionId,
      'mcp-protocol-version': '2025-11-25',
    },
  );
  await expectRevoked(after);
});

test('bad revocation requests are refused with a reason', async () => {
  for (const body of [{ kind: 'token', id: 'x' }, { kind: 'jti' }, { kind: 'sub', id: 'x' }]) {
    const res = await admin('/admin/revocations', { method: 'POST', body: JSON.stringify(body) });
    assert.equal(res.status, 400);
    assert.ok(((await res.json()) as { error: string }).error);
  }
});

test('portcullis revoke talks to the admin API with the credential from a file', async () => {
  const tokenFile = join(dir, 'admin-token');
  await writeFile(tokenFile, `${ADMIN_TOKEN}\n`);
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'revoke', ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  const token = await mint(key, gw.url, { claims: { jti: 'cli-revoked' } });
  assert.equal((await call(token)).status, 200);
  const r = await run([
    '--jti',
    'cli-revoked',
    '--reason',
    'test',
    '--admin-url',
    gw.adminUrl as string,
    '--admin-token-file',
    tokenFile,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /cli-revoked/);
  await expectRevoked(await call(token));
  const listed = await run([
    '--list',
    '--admin-url',
    gw.adminUrl as string,
    '--admin-token-file',
    tokenFile,
  ]);
  assert.match(listed.stdout, /cli-revoked/);
  const denied = await run(['--jti', 'x', '--admin-url', gw.adminUrl as string]);
  assert.equal(denied.code, 2);
  assert.match(denied.stderr, /PORTCULLIS_ADMIN_TOKEN/);
});

test('without an admin credential configured, the admin API is off', async (t) => {
  const plain = await startAuthGateway(
    { docs: upstream.url('/ok') },
    { jwt: { jwksFile: join(dir, 'issuer.jwks.json') } },
  );
  t.after(() => plain.close());
  const res = await fetch(`${plain.adminUrl}/admin/revocations`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert.equal(res.status, 404);
  assert.equal((await fetch(`${plain.adminUrl}/readyz`)).status, 200);
});

test('a subject revocation recorded by an earlier release (tenant\\0subject) is still honoured after the upgrade', async () => {
  const store = await openStore({ kind: 'memory' });
  const expiresAt = Date.now() + 60_000;
  const old = 'acme\u0000mallory';
  await store.set(
    `revoked:sub:${old}`,
    JSON.stringify({ kind: 'sub', id: old, expiresAt }),
    60_000,
  );
  const revocations = new Revocations(store);
  await revocations.start();
  try {
    assert.equal(revocations.check(undefined, subjectKey('acme', 'mallory')), 'revoked');
    assert.equal(revocations.check(undefined, subjectKey('acme', 'alice')), 'ok');
  } finally {
    revocations.close();
    await store.close();
  }
});
