/**
 * Identity state shared through a real Redis: two gateway replicas see each
 * other's revocations and DPoP proof ids; when Redis goes away a replica
 * fails closed (503, not ready, logged and counted) or, if configured, open
 * (counted); when Redis comes back it reloads what it missed.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { tokenHash } from '../src/auth/jwt.js';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, TEST_ADMIN_TOKEN, type AuthGateway } from './helpers/auth-gateway.js';
import { cuttableLink, freePort, startRedisServer } from './helpers/redis.js';
import { modernCall, modernHeaders, post, type RpcError } from './helpers/requests.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

/** /metrics needs the admin credential once one is configured. */
const ADMIN = { headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } };

const SHARED_REDIS = 'redis://127.0.0.1:6379';
/** Both replicas present themselves as one resource, as they would behind one address. */
const RESOURCE = 'http://gateway.test';

let upstream: FaultUpstream;
let dir: string;
let key: SigningKey;
let jwksFile: string;

before(async () => {
  upstream = await startFaultUpstream();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-redis-'));
  key = await newKey('ES256');
  jwksFile = await writeJwks(dir, key);
});

after(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

function replica(
  url: string,
  prefix: string,
  extra: Record<string, unknown> = {},
): Promise<AuthGateway> {
  return startAuthGateway(
    { docs: upstream.url('/ok') },
    { resource: RESOURCE, jwt: { jwksFile }, ...extra },
    {
      store: {
        kind: 'redis',
        url,
        keyPrefix: prefix,
        commandTimeoutMs: 300,
        connectTimeoutMs: 500,
      },
      admin: { token: TEST_ADMIN_TOKEN },
    },
  );
}

function call(gw: AuthGateway, token: string, headers: Record<string, string> = {}) {
  return post(gw.urlFor('docs'), modernCall('echo', {}, 1), {
    ...modernHeaders('echo'),
    authorization: `Bearer ${token}`,
    ...headers,
  });
}

async function revoke(gw: AuthGateway, body: Record<string, unknown>): Promise<Response> {
  return fetch(`${gw.adminUrl}/admin/revocations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TEST_ADMIN_TOKEN}` },
    body: JSON.stringify(body),
  });
}

/** Polls until `check` holds or the deadline passes; revocations travel by pub/sub. */
async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

test('a revocation made on one replica is enforced by the other', async (t) => {
  const prefix = `portcullis-test:${randomUUID()}:`;
  const a = await replica(SHARED_REDIS, prefix);
  t.after(() => a.close());
  const b = await replica(SHARED_REDIS, prefix);
  t.after(() => b.close());
  const token = await mint(key, RESOURCE, { claims: { jti: 'replicated' } });
  assert.equal((await call(b, token)).status, 200, 'valid, and cached on b');
  assert.equal((await revoke(a, { kind: 'jti', id: 'replicated' })).status, 201);
  await eventually(
    async () => (await call(b, token)).status === 401,
    'b refuses the revoked token',
  );
  const body = (await (await call(b, token)).json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_AUTH_TOKEN_REVOKED');

  // A replica started later loads it from Redis.
  const c = await replica(SHARED_REDIS, prefix);
  t.after(() => c.close());
  assert.equal((await call(c, token)).status, 401);
});

test('a DPoP proof used on one replica is a replay on the other', async (t) => {
  const prefix = `portcullis-test:${randomUUID()}:`;
  const a = await replica(SHARED_REDIS, prefix);
  t.after(() => a.close());
  const b = await replica(SHARED_REDIS, prefix);
  t.after(() => b.close());
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const jwk = await exportJWK(publicKey);
  const token = await mint(key, RESOURCE, {
    claims: { cnf: { jkt: await calculateJwkThumbprint(jwk, 'sha256') } },
  });
  const proof = await new SignJWT({
    jti: randomUUID(),
    htm: 'POST',
    htu: `${RESOURCE}/mcp/docs`,
    iat: Math.floor(Date.now() / 1000),
    ath: tokenHash(token),
  })
    .setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk })
    .sign(privateKey);
  const headers = { authorization: `DPoP ${token}`, dpop: proof };
  assert.equal((await call(a, token, headers)).status, 200);
  const replayed = await call(b, token, headers);
  assert.equal(replayed.status, 401);
  assert.equal(((await replayed.json()) as RpcError).error.data.reason, 'replay');
});

test('Redis unreachable: fail closed with 503 and not ready; reachable again: what was missed is loaded', async (t) => {
  // The gateway reaches the shared Redis through a link the test cuts: Redis stays up
  // and another replica keeps writing to it, as in a network partition.
  const link = await cuttableLink(6379);
  t.after(() => link.close());
  const prefix = `portcullis-test:${randomUUID()}:`;
  const gw = await replica(`redis://127.0.0.1:${link.port}`, prefix);
  t.after(() => gw.close());
  const other = await replica(SHARED_REDIS, prefix);
  t.after(() => other.close());
  const token = await mint(key, RESOURCE, { claims: { jti: 'missed-while-cut-off' } });
  assert.equal((await call(gw, token)).status, 200);
  assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 200);

  link.cut();
  await eventually(
    async () => (await call(gw, token)).status === 503,
    'requests refused while the store is unreachable',
  );
  const refused = await call(gw, token);
  const body = (await refused.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_AUTH_STORE_UNAVAILABLE');
  assert.equal(
    refused.headers.get('www-authenticate'),
    null,
    "not the client's fault: no challenge",
  );
  const ready = await fetch(`${gw.adminUrl}/readyz`);
  assert.equal(ready.status, 503);
  assert.deepEqual(await ready.json(), { status: 'store unavailable' });
  assert.ok(gw.logs.some((l) => l.msg === 'store disconnected'));
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`, ADMIN)).text();
  assert.match(metrics, /portcullis_store_healthy 0/);
  assert.match(
    metrics,
    /portcullis_auth_refusals_total\{code="PORTCULLIS_ERR_AUTH_STORE_UNAVAILABLE"/,
  );
  // A revocation cannot be recorded through a replica that lost the store: said so, not lost silently.
  assert.equal((await revoke(gw, { kind: 'jti', id: 'x' })).status, 503);

  // Meanwhile the other replica revokes the token; its broadcast never reaches this one.
  assert.equal((await revoke(other, { kind: 'jti', id: 'missed-while-cut-off' })).status, 201);
  link.restore();
  await eventually(
    async () => (await call(gw, token)).status === 401,
    'reloaded after the outage',
    10_000,
  );
  assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 200);
});

test('Redis restarted empty: the gateway reconnects and serves again', async (t) => {
  const port = await freePort();
  let redis = await startRedisServer(port);
  t.after(() => redis.kill());
  const gw = await replica(`redis://127.0.0.1:${port}`, 'portcullis-restart:');
  t.after(() => gw.close());
  const token = await mint(key, RESOURCE);
  assert.equal((await call(gw, token)).status, 200);
  await redis.kill();
  await eventually(async () => (await call(gw, token)).status === 503, 'refused while down');
  redis = await startRedisServer(port);
  await eventually(async () => (await call(gw, token)).status === 200, 'serves again', 10_000);
});

test('Redis down with failClosed: false lets requests through unchecked, and counts them', async (t) => {
  const port = await freePort();
  const redis = await startRedisServer(port);
  t.after(() => redis.kill());
  const gw = await replica(`redis://127.0.0.1:${port}`, 'portcullis-open:', {
    revocation: { failClosed: false },
  });
  t.after(() => gw.close());
  const token = await mint(key, RESOURCE);
  await redis.kill();
  await eventually(
    async () =>
      /portcullis_store_healthy 0/.test(
        await (await fetch(`${gw.adminUrl}/metrics`, ADMIN)).text(),
      ),
    'the store reported down',
  );
  assert.equal((await call(gw, token)).status, 200);
  assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 200, 'still ready: failing open');
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`, ADMIN)).text();
  assert.match(metrics, /portcullis_revocation_unchecked_total [1-9]/);
});

test('a gateway starts while Redis is down, refuses until it is up, then serves', async (t) => {
  const port = await freePort();
  const gw = await replica(`redis://127.0.0.1:${port}`, 'portcullis-late:');
  t.after(() => gw.close());
  const token = await mint(key, RESOURCE);
  assert.equal((await call(gw, token)).status, 503);
  const redis = await startRedisServer(port);
  t.after(() => redis.kill());
  await eventually(
    async () => (await call(gw, token)).status === 200,
    'serves once Redis is up',
    10_000,
  );
});
