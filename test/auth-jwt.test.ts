/**
 * JWT authentication at the door: a good token reaches the upstream (which
 * never sees it), and every bad one is refused with the right status, a
 * `WWW-Authenticate` challenge pointing at the protected-resource metadata, a
 * JSON-RPC error, a log record for the audit trail, and nothing sent
 * upstream. Tokens are signed with real keys (jose); the ones no issuer would
 * issue are made on purpose.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { SignJWT } from 'jose';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { openSse } from './helpers/sse.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';
import {
  ISSUER,
  jwks,
  mint,
  newKey,
  segment,
  spkiPem,
  startJwksServer,
  unsecuredToken,
  writeJwks,
  type SigningKey,
} from './helpers/tokens.js';

let upstream: FaultUpstream;
let dir: string;
let es256: SigningKey;
let eddsa: SigningKey;
let rs256: SigningKey;
let gw: AuthGateway;

before(async () => {
  upstream = await startFaultUpstream();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-auth-'));
  [es256, eddsa, rs256] = await Promise.all([newKey('ES256'), newKey('EdDSA'), newKey('RS256')]);
  gw = await startAuthGateway(
    { docs: upstream.url('/ok'), admin: { url: upstream.url('/ok'), requiredScopes: ['admin'] } },
    { jwt: { jwksFile: await writeJwks(dir, es256, eddsa, rs256) } },
  );
});

after(async () => {
  await gw.close();
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

/** The gateway's resource identifier: its own origin (auth.resource left out). */
const resource = () => gw.url;
const docs = () => gw.urlFor('docs');

function call(url: string, token?: string, headers: Record<string, string> = {}) {
  return post(url, modernCall('echo', { text: 'hi' }, 7), {
    ...modernHeaders('echo'),
    ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
    ...headers,
  });
}

/** Parses `WWW-Authenticate: Scheme k="v", …` into its scheme and parameters. */
function challenge(res: Response): { scheme: string; params: Record<string, string> } {
  const value = res.headers.get('www-authenticate');
  assert.ok(value, 'a WWW-Authenticate header');
  const scheme = value.slice(0, value.indexOf(' '));
  const params: Record<string, string> = {};
  for (const m of value.matchAll(/([a-z_]+)="([^"]*)"/g)) params[m[1] as string] = m[2] as string;
  return { scheme, params };
}

/**
 * Asserts a refusal: status, JSON-RPC error with the gateway's code and the
 * request's id left null (the body was never read), the challenge, a log
 * record, and no upstream request.
 */
async function refused(
  res: Response,
  status: number,
  code: string,
  error: string | undefined,
  reason?: string,
): Promise<RpcError> {
  const hitsBefore = upstream.hits.get('/ok') ?? 0;
  assert.equal(res.status, status);
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, code);
  assert.equal(body.id, null);
  if (error !== undefined) {
    const c = challenge(res);
    assert.equal(
      c.params.resource_metadata,
      `${resource()}/.well-known/oauth-protected-resource/mcp/docs`,
    );
    if (error === '') assert.equal(c.params.error, undefined);
    else assert.equal(c.params.error, error);
  }
  if (reason !== undefined) assert.equal(body.error.data.reason, reason);
  const record = gw.logs.findLast((l) => l.event === 'auth.refused');
  assert.ok(record, 'the refusal is logged');
  assert.equal(record.code, code);
  assert.equal(record.status, status);
  assert.equal((record.path as string).startsWith('/mcp/'), true);
  assert.equal(upstream.hits.get('/ok') ?? 0, hitsBefore, 'nothing reached the upstream');
  return body;
}

test('a valid token reaches the upstream, which never sees it; a second use is a cache hit', async () => {
  const token = await mint(es256, resource());
  const before = upstream.bodies.length;
  const res = await call(docs(), token);
  assert.equal(res.status, 200);
  assert.equal(((await res.json()) as { id: number }).id, 7);
  const seen = upstream.bodies.slice(before);
  assert.equal(seen.length, 1);
  assert.equal(seen[0]?.headers.authorization, undefined);

  const metrics = async () => (await fetch(`${gw.adminUrl}/metrics`)).text();
  const hits = (text: string) =>
    Number(/portcullis_token_verifications_total\{result="hit"\} (\d+)/.exec(text)?.[1] ?? 0);
  const hitsBefore = hits(await metrics());
  assert.equal((await call(docs(), token)).status, 200);
  assert.equal(hits(await metrics()), hitsBefore + 1);
});

test('EdDSA and RS256 tokens verify too, and a per-server audience is accepted for its server only', async () => {
  assert.equal((await call(docs(), await mint(eddsa, resource()))).status, 200);
  assert.equal((await call(docs(), await mint(rs256, resource()))).status, 200);
  const forDocs = await mint(es256, `${resource()}/mcp/docs`, { claims: { scope: 'mcp admin' } });
  assert.equal((await call(docs(), forDocs)).status, 200);
  await refused(
    await call(gw.urlFor('admin'), forDocs),
    401,
    'PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE',
    undefined,
    'aud',
  );
});

test('missing token: 401 with a challenge that names the metadata and no error', async () => {
  await refused(await call(docs()), 401, 'PORTCULLIS_ERR_AUTH_MISSING', '');
  await refused(
    await call(docs(), undefined, { authorization: 'Basic dXNlcjpwYXNz' }),
    401,
    'PORTCULLIS_ERR_AUTH_MISSING',
    '',
    'scheme',
  );
});

test('a malformed token is invalid_token', async () => {
  for (const bad of ['not-a-jwt', 'a.b', `${segment({ alg: 'ES256' })}.%%%.sig`]) {
    await refused(
      await call(docs(), bad),
      401,
      'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
      'invalid_token',
      'malformed',
    );
  }
});

test('alg none is never accepted', async () => {
  await refused(
    await call(docs(), unsecuredToken(resource())),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'alg',
  );
});

test('HMAC signed with the RSA public key (algorithm confusion) is refused', async () => {
  const pem = await spkiPem(rs256);
  const now = Math.floor(Date.now() / 1000);
  const forged = await new SignJWT({
    iss: ISSUER,
    sub: 'attacker',
    aud: resource(),
    iat: now,
    exp: now + 300,
    tenant: 'acme',
  })
    .setProtectedHeader({ alg: 'HS256', kid: rs256.kid })
    .sign(new TextEncoder().encode(pem));
  await refused(
    await call(docs(), forged),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'alg',
  );
});

test('a token signed by an unknown key is refused', async () => {
  const stranger = await newKey('ES256', 'unknown-kid');
  await refused(
    await call(docs(), await mint(stranger, resource())),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'kid',
  );
  // Same kid as a real key, different key material: the signature fails.
  const impostor = await newKey('ES256', es256.kid);
  await refused(
    await call(docs(), await mint(impostor, resource())),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'signature',
  );
});

test('expired, not yet valid, issued in the future, or living too long: refused', async () => {
  const expired = await mint(es256, resource(), { iatOffsetS: -600, ttlS: 300 });
  const body = await refused(
    await call(docs(), expired),
    401,
    'PORTCULLIS_ERR_AUTH_TOKEN_EXPIRED',
    'invalid_token',
    'exp',
  );
  assert.match(body.error.message, /expired/);
  const future = Math.floor(Date.now() / 1000) + 600;
  await refused(
    await call(docs(), await mint(es256, resource(), { claims: { nbf: future } })),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'nbf',
  );
  await refused(
    await call(docs(), await mint(es256, resource(), { iatOffsetS: 600 })),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'iat',
  );
  const longLived = await mint(es256, resource(), { ttlS: 16 * 60 });
  const lifetime = await refused(
    await call(docs(), longLived),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'lifetime',
  );
  assert.match(lifetime.error.message, /960 s is longer than the 900 s allowed/);
  // Just inside the skew (30 s) is still fine.
  assert.equal((await call(docs(), await mint(es256, resource(), { iatOffsetS: 20 }))).status, 200);
});

test('wrong issuer, wrong audience, missing claims: refused', async () => {
  await refused(
    await call(docs(), await mint(es256, resource(), { claims: { iss: 'https://evil.test' } })),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'iss',
  );
  // RFC 8707: a token minted for another resource is refused.
  await refused(
    await call(docs(), await mint(es256, 'https://other-resource.example/mcp')),
    401,
    'PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE',
    'invalid_token',
    'aud',
  );
  await refused(
    await call(docs(), await mint(es256, resource(), { omit: ['tenant'] })),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'missing_claim',
  );
  for (const claim of ['sub', 'exp', 'iat']) {
    await refused(
      await call(docs(), await mint(es256, resource(), { omit: [claim] })),
      401,
      'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
      'invalid_token',
      'missing_claim',
    );
  }
});

test('a token in the query string is refused with 400 invalid_request, even with a header', async () => {
  const token = await mint(es256, resource());
  await refused(
    await call(`${docs()}?access_token=${token}`, token),
    400,
    'PORTCULLIS_ERR_AUTH_BAD_REQUEST',
    'invalid_request',
    'query',
  );
});

test('an oversized token is refused before it is parsed', async () => {
  await refused(
    await call(docs(), `${'a'.repeat(9000)}.b.c`),
    401,
    'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
    'invalid_token',
    'too_large',
  );
});

test('a missing scope is 403 insufficient_scope naming the scope needed', async () => {
  const res = await call(gw.urlFor('admin'), await mint(es256, resource()));
  assert.equal(res.status, 403);
  const c = challenge(res);
  assert.equal(c.params.error, 'insufficient_scope');
  assert.equal(c.params.scope, 'admin');
  assert.equal(
    c.params.resource_metadata,
    `${resource()}/.well-known/oauth-protected-resource/mcp/admin`,
  );
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_AUTH_INSUFFICIENT_SCOPE');
  const ok = await mint(es256, resource(), { claims: { scope: 'admin' } });
  assert.equal((await call(gw.urlFor('admin'), ok)).status, 200);
});

test('an unknown server is 401 before authentication and 404 after, naming nothing', async () => {
  const anonymous = await call(gw.urlFor('nope'));
  assert.equal(anonymous.status, 401);
  // The same challenge as a configured server's: it tells nothing about which exist.
  assert.equal(
    challenge(anonymous).params.resource_metadata,
    `${resource()}/.well-known/oauth-protected-resource/mcp/nope`,
  );
  const res = await call(gw.urlFor('nope'), await mint(es256, resource()));
  assert.equal(res.status, 404);
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER');
  assert.doesNotMatch(JSON.stringify(body), /docs|admin/);
});

test('protected-resource metadata (RFC 9728) for the gateway and for each server', async () => {
  const root = await fetch(`${gw.url}/.well-known/oauth-protected-resource`);
  assert.equal(root.status, 200);
  const doc = (await root.json()) as Record<string, unknown>;
  assert.equal(doc.resource, resource());
  assert.deepEqual(doc.authorization_servers, [ISSUER]);
  assert.deepEqual(doc.bearer_methods_supported, ['header']);
  assert.ok(Array.isArray(doc.dpop_signing_alg_values_supported));
  const perServer = (await (
    await fetch(`${gw.url}/.well-known/oauth-protected-resource/mcp/admin`)
  ).json()) as Record<string, unknown>;
  assert.equal(perServer.resource, `${resource()}/mcp/admin`);
  assert.deepEqual(perServer.scopes_supported, ['admin']);
  // Every well-formed name gets a document of the same shape, configured or not.
  const unknown = await fetch(`${gw.url}/.well-known/oauth-protected-resource/mcp/nope`);
  assert.equal(unknown.status, 200);
  const unknownDoc = (await unknown.json()) as Record<string, unknown>;
  assert.deepEqual({ ...unknownDoc, resource: undefined }, { ...perServer, resource: undefined });
  const malformed = await fetch(`${gw.url}/.well-known/oauth-protected-resource/mcp/-x`);
  assert.equal(malformed.status, 404);
});

test("a legacy SSE connection is bound to its caller: anyone else's POST is 404, none without a token", async (t) => {
  const alice = await mint(es256, resource(), { claims: { sub: 'alice' } });
  const mallory = await mint(es256, resource(), { claims: { sub: 'mallory' } });
  const stream = await openSse(`${docs()}/sse`, alice);
  t.after(stream.close);
  const endpoint = await stream.next();
  assert.equal(endpoint.event, 'endpoint');
  assert.match(endpoint.data, /^\/mcp\/docs\/messages\?sessionId=[A-Za-z0-9_-]{32}$/);
  const url = new URL(endpoint.data, gw.url).href;
  const send = (body: unknown, token?: string) =>
    fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const ping = { jsonrpc: '2.0', id: 7, method: 'ping' };

  const stolen = await send(ping, mallory);
  assert.equal(stolen.status, 404);
  assert.equal(
    ((await stolen.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_SESSION_UNKNOWN',
  );
  assert.equal((await send(ping)).status, 401);
  const unknown = await fetch(url.replace(/sessionId=[^&]+/, 'sessionId=nope'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${alice}` },
    body: JSON.stringify(ping),
  });
  assert.equal(unknown.status, 404);
  const garbled = await send('{"jsonrpc": "2.0", "id": ', alice);
  assert.equal(garbled.status, 400);
  assert.equal(
    ((await garbled.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_JSONRPC_PARSE',
  );

  const init = await send(initializeBody(1, '2024-11-05'), alice);
  assert.equal(init.status, 202);
  const answer = JSON.parse((await stream.next()).data) as { id: number; result?: unknown };
  assert.equal(answer.id, 1, "the answer came on the caller's stream");
  assert.ok(answer.result);
});

test("a legacy session used with another principal's token is unknown (404), nothing leaked", async () => {
  const alice = await mint(es256, resource(), { claims: { sub: 'alice' } });
  const mallory = await mint(es256, resource(), { claims: { sub: 'mallory' } });
  const init = await post(docs(), initializeBody(1), { authorization: `Bearer ${alice}` });
  // The /ok upstream answers initialize with a result and no session id of its own.
  assert.equal(init.status, 200);
  const sessionId = init.headers.get('mcp-session-id');
  assert.ok(sessionId);
  const ping = { jsonrpc: '2.0', id: 2, method: 'ping' };
  const own = await post(docs(), ping, {
    authorization: `Bearer ${alice}`,
    'mcp-session-id': sessionId,
    'mcp-protocol-version': '2025-11-25',
  });
  assert.equal(own.status, 200);
  const stolen = await post(docs(), ping, {
    authorization: `Bearer ${mallory}`,
    'mcp-session-id': sessionId,
    'mcp-protocol-version': '2025-11-25',
  });
  assert.equal(stolen.status, 404);
  const body = (await stolen.json()) as RpcError;
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
  assert.doesNotMatch(JSON.stringify(body), /alice/);
});

test('keys from a PEM file work like a JWKS', async (t) => {
  const pemFile = join(dir, 'issuer.pem');
  await writeFile(pemFile, await spkiPem(es256));
  const pemGw = await startAuthGateway(
    { docs: upstream.url('/ok') },
    { jwt: { jwksFile: pemFile } },
  );
  t.after(() => pemGw.close());
  const ok = await call(pemGw.urlFor('docs'), await mint(es256, pemGw.url));
  assert.equal(ok.status, 200);
  const other = await call(pemGw.urlFor('docs'), await mint(eddsa, pemGw.url));
  assert.equal(other.status, 401);
});

test('JWKS from a URL: fetched once, no fetch on a cache hit, and an outage keeps cached keys working', async (t) => {
  const server = await startJwksServer(jwks(es256));
  t.after(() => server.close());
  const remote = await startAuthGateway(
    { docs: upstream.url('/ok') },
    {
      jwt: { jwksUrl: server.url, jwksCooldownMs: 0, jwksRefreshIntervalMs: 0, jwksTimeoutMs: 300 },
    },
  );
  t.after(() => remote.close());
  assert.equal(server.fetches, 1, 'fetched at start-up');
  const token = await mint(es256, remote.url);
  for (let i = 0; i < 3; i++) assert.equal((await call(remote.urlFor('docs'), token)).status, 200);
  assert.equal(server.fetches, 1, 'no JWKS fetch on the request path');

  for (const mode of ['down', 'slow', 'garbage'] as const) {
    server.mode = mode;
    // A fresh token needs a signature check with the cached key: still fine.
    const fresh = await mint(es256, remote.url);
    assert.equal(
      (await call(remote.urlFor('docs'), fresh)).status,
      200,
      `cached key works while ${mode}`,
    );
    // A token naming an unknown key triggers a refetch, which fails: refused, not hung.
    const rotated = await newKey('ES256', `rotated-${mode}`);
    const started = Date.now();
    const res = await call(remote.urlFor('docs'), await mint(rotated, remote.url));
    assert.equal(res.status, 401);
    assert.equal(((await res.json()) as RpcError).error.data.reason, 'kid');
    assert.ok(Date.now() - started < 3000, 'bounded by jwksTimeoutMs');
  }
  assert.ok(remote.logs.some((l) => l.msg === 'JWKS fetch failed; cached keys kept'));

  // The issuer rotates: a token with the new key triggers a refetch that finds it.
  server.mode = 'ok';
  const next = await newKey('ES256', 'next');
  server.keys = jwks(es256, next);
  assert.equal((await call(remote.urlFor('docs'), await mint(next, remote.url))).status, 200);
});

/** A gateway whose issuer's JWKS endpoint answers 503 from the start (until `server.mode` changes). */
async function gatewayWithJwksDown(t: TestContext) {
  const server = await startJwksServer(jwks(es256));
  server.mode = 'down';
  t.after(() => server.close());
  const remote = await startAuthGateway(
    { docs: upstream.url('/ok') },
    {
      jwt: { jwksUrl: server.url, jwksCooldownMs: 0, jwksRefreshIntervalMs: 0, jwksTimeoutMs: 300 },
    },
  );
  t.after(() => remote.close());
  return { server, remote };
}

test("JWKS down from the start: 503 (not the client's fault), then fine once it answers", async (t) => {
  const { server, remote } = await gatewayWithJwksDown(t);
  const token = await mint(es256, remote.url);
  const res = await call(remote.urlFor('docs'), token);
  assert.equal(res.status, 503);
  assert.equal(
    ((await res.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_AUTH_KEYS_UNAVAILABLE',
  );
  server.mode = 'ok';
  assert.equal((await call(remote.urlFor('docs'), token)).status, 200);
});

test('/readyz is not ready while the JWKS was never fetched, and ready once a probe finds it', async (t) => {
  const { server, remote } = await gatewayWithJwksDown(t);
  const ready = () => fetch(`${remote.adminUrl}/readyz`);
  const down = await ready();
  assert.equal(down.status, 503);
  assert.deepEqual(await down.json(), { status: 'issuer keys (JWKS) not fetched yet' });
  // No token reaches a replica out of rotation: the probe's own retry loads the keys.
  server.mode = 'ok';
  const fetchesBefore = server.fetches;
  await (await ready()).body?.cancel();
  assert.ok(server.fetches > fetchesBefore, 'the probe retried the fetch');
  const deadline = Date.now() + 5_000;
  while (!remote.logs.some((l) => l.msg === 'JWKS fetched') && Date.now() < deadline)
    await new Promise((r) => setImmediate(r));
  const up = await ready();
  assert.equal(up.status, 200, JSON.stringify(await up.clone().json()));
  assert.deepEqual(await up.json(), { status: 'ready' });
});

test('HMAC tokens verify only with a configured secret, beside the asymmetric keys', async (t) => {
  const secret = 'a-shared-secret-of-at-least-32-characters';
  const hmacGw = await startAuthGateway(
    { docs: upstream.url('/ok') },
    { jwt: { jwksFile: join(dir, 'issuer.jwks.json'), hmacSecret: secret } },
  );
  t.after(() => hmacGw.close());
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: ISSUER,
    sub: 'svc',
    aud: hmacGw.url,
    iat: now,
    exp: now + 300,
    tenant: 'acme',
  };
  const good = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(secret));
  assert.equal((await call(hmacGw.urlFor('docs'), good)).status, 200);
  const wrongSecret = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode('another-secret-of-at-least-32-characters!'));
  assert.equal((await call(hmacGw.urlFor('docs'), wrongSecret)).status, 401);
  assert.equal((await call(hmacGw.urlFor('docs'), await mint(es256, hmacGw.url))).status, 200);
});
