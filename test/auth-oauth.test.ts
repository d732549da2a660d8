/**
 * The gateway as an OAuth 2.1 resource server in front of a real
 * authorization server (oidc-provider): tokens issued for a resource
 * indicator (RFC 8707) and verified through the issuer's JWKS URL; the
 * official MCP SDK client finding the authorization server through the
 * gateway's protected-resource metadata (RFC 9728) and fetching its own
 * token; DPoP-bound tokens (RFC 9449) accepted only with a valid proof.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { randomUUID } from 'node:crypto';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { tokenHash } from '../src/auth/jwt.js';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { startEverything } from './helpers/everything.js';
import {
  clientCredentialsToken,
  startAuthorizationServer,
  type AuthorizationServer,
} from './helpers/oidc.js';
import { modernCall, modernHeaders, post, type RpcError } from './helpers/requests.js';

let as: AuthorizationServer;
let upstream: FaultUpstream;
let everything: Awaited<ReturnType<typeof startEverything>>;
let gw: AuthGateway;

before(async () => {
  [as, upstream, everything] = await Promise.all([
    startAuthorizationServer(),
    startFaultUpstream(),
    startEverything(),
  ]);
  gw = await startAuthGateway(
    { docs: upstream.url('/ok'), everything: everything.url },
    { jwt: { issuer: as.issuer, jwksUrl: as.jwksUrl } },
  );
});

after(async () => {
  await gw.close();
  await Promise.all([as.close(), upstream.close(), everything.stop()]);
});

function call(url: string, headers: Record<string, string>) {
  return post(url, modernCall('echo', { text: 'hi' }, 3), { ...modernHeaders('echo'), ...headers });
}

test("a token the authorization server issued for a server's resource passes; for another server it does not", async () => {
  const resource = gw.urlFor('docs');
  const { access_token: token, token_type: type } = await clientCredentialsToken(
    as,
    resource,
    'mcp',
  );
  assert.equal(type, 'Bearer');
  const claims = decodeJwt(token);
  assert.equal(claims.aud, resource);
  assert.equal(claims.iss, as.issuer);

  const res = await call(resource, { authorization: `Bearer ${token}` });
  assert.equal(res.status, 200);
  const other = await call(gw.urlFor('everything'), { authorization: `Bearer ${token}` });
  assert.equal(other.status, 401);
  assert.equal(
    ((await other.json()) as RpcError).error.data.code,
    'PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE',
  );

  // A token for the whole gateway (its resource is the gateway's origin) reaches every server.
  const { access_token: gatewayWide } = await clientCredentialsToken(as, gw.url, 'mcp');
  assert.equal((await call(resource, { authorization: `Bearer ${gatewayWide}` })).status, 200);
});

test('the SDK client discovers the authorization server through the metadata and gets its own token', async () => {
  const resourcesBefore = as.resources.length;
  const serverUrl = gw.urlFor('everything');
  const authProvider = new ClientCredentialsProvider({
    clientId: as.clientId,
    clientSecret: as.clientSecret,
    scope: 'mcp',
    expectedIssuer: as.issuer,
  });
  const client = new Client({ name: 'oauth-agent', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider }));
  try {
    const tools = await client.listTools();
    assert.ok(tools.tools.some((t) => t.name === 'echo'));
    const result = await client.callTool({ name: 'echo', arguments: { message: 'through OAuth' } });
    assert.match(JSON.stringify(result.content), /through OAuth/);
  } finally {
    await client.close();
  }
  // The client asked the authorization server for a token for exactly the resource the
  // gateway's metadata named: it learned both from the gateway.
  assert.deepEqual(as.resources.slice(resourcesBefore), [serverUrl]);
  const saved = authProvider.tokens();
  assert.ok(saved?.access_token);
  assert.equal(decodeJwt(saved.access_token).aud, serverUrl);
});

/** A DPoP key pair, and proofs signed with it (RFC 9449 §4.2). */
async function dpopKey() {
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const jwk = await exportJWK(publicKey);
  return {
    jkt: await calculateJwkThumbprint(jwk, 'sha256'),
    proof: (htm: string, htu: string, accessToken?: string, jti = randomUUID()) =>
      new SignJWT({
        jti,
        htm,
        htu,
        iat: Math.floor(Date.now() / 1000),
        ...(accessToken === undefined ? {} : { ath: tokenHash(accessToken) }),
      })
        .setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk })
        .sign(privateKey),
  };
}

test('a DPoP-bound token needs a fresh proof for this request: missing, replayed, other URL or method are refused', async () => {
  const url = gw.urlFor('docs');
  const key = await dpopKey();
  const issued = await clientCredentialsToken(as, url, 'mcp', await key.proof('POST', as.tokenUrl));
  assert.equal(issued.token_type, 'DPoP');
  const token = issued.access_token;
  assert.deepEqual(decodeJwt(token).cnf, { jkt: key.jkt });
  const hitsBefore = upstream.hits.get('/ok') ?? 0;

  const refusedWith = async (res: Response, reason: string) => {
    assert.equal(res.status, 401);
    const challenge = res.headers.get('www-authenticate') ?? '';
    assert.match(challenge, /^DPoP /);
    assert.match(challenge, /error="invalid_dpop_proof"/);
    assert.match(challenge, /algs="[^"]*ES256/);
    const body = (await res.json()) as RpcError;
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_AUTH_DPOP_INVALID');
    assert.equal(body.error.data.reason, reason);
    const record = gw.logs.findLast((l) => l.event === 'auth.refused');
    assert.equal(record?.code, 'PORTCULLIS_ERR_AUTH_DPOP_INVALID', 'the refusal is logged');
    assert.equal(record?.reason, reason);
  };

  // As a bearer token, or with the DPoP scheme but no proof.
  await refusedWith(
    await call(url, { authorization: `Bearer ${token}` }),
    'bearer_for_bound_token',
  );
  await refusedWith(await call(url, { authorization: `DPoP ${token}` }), 'missing');
  // A proof for another URL, another method, or another token.
  await refusedWith(
    await call(url, {
      authorization: `DPoP ${token}`,
      dpop: await key.proof('POST', gw.urlFor('everything'), token),
    }),
    'htu',
  );
  await refusedWith(
    await call(url, { authorization: `DPoP ${token}`, dpop: await key.proof('GET', url, token) }),
    'htm',
  );
  await refusedWith(
    await call(url, {
      authorization: `DPoP ${token}`,
      dpop: await key.proof('POST', url, 'other'),
    }),
    'ath',
  );
  // A proof by another key.
  const thief = await dpopKey();
  await refusedWith(
    await call(url, {
      authorization: `DPoP ${token}`,
      dpop: await thief.proof('POST', url, token),
    }),
    'jkt',
  );
  assert.equal(upstream.hits.get('/ok') ?? 0, hitsBefore, 'nothing reached the upstream');

  // A good proof passes, once.
  const proof = await key.proof('POST', url, token);
  assert.equal((await call(url, { authorization: `DPoP ${token}`, dpop: proof })).status, 200);
  await refusedWith(await call(url, { authorization: `DPoP ${token}`, dpop: proof }), 'replay');
  // The next request, with its own proof, passes again.
  const next = await key.proof('POST', url, token);
  assert.equal((await call(url, { authorization: `DPoP ${token}`, dpop: next })).status, 200);
});
