/**
 * No token passthrough: what each upstream receives instead of the agent's
 * token. A credential the gateway mints (verified with the gateway's own
 * published keys), a static one from a file, one obtained by RFC 8693 token
 * exchange at a real authorization server (oidc-provider), and none.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';
import { generateSigningKey } from '../src/auth/keys.js';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, TEST_ADMIN_TOKEN, type AuthGateway } from './helpers/auth-gateway.js';
import {
  clientCredentialsToken,
  GATEWAY_CLIENT_ID,
  GATEWAY_CLIENT_SECRET,
  startAuthorizationServer,
  type AuthorizationServer,
} from './helpers/oidc.js';
import {
  initializeBody,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

const ADMIN_TOKEN = TEST_ADMIN_TOKEN;
/** A stdio server of the project's that reports the credential file it was handed. */
const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));

let upstream: FaultUpstream;
let as: AuthorizationServer;
let dir: string;
let issuerKey: SigningKey;
let gw: AuthGateway;

before(async () => {
  [upstream, as] = await Promise.all([
    startFaultUpstream(),
    startAuthorizationServer({ tokenExchange: true, scopes: 'mcp docs:read docs:write tickets' }),
  ]);
  dir = await mkdtemp(join(tmpdir(), 'portcullis-cred-'));
  issuerKey = await newKey('ES256');
  const signingFile = join(dir, 'gateway-signing.json');
  await writeFile(
    signingFile,
    JSON.stringify({ keys: [await generateSigningKey('EdDSA', 'gw-1')] }),
  );
  const secretFile = join(dir, 'search-key');
  await writeFile(secretFile, 'search-api-key-from-file\n');
  gw = await startAuthGateway(
    {
      docs: {
        url: upstream.url('/ok'),
        credential: {
          mode: 'mint',
          audience: 'https://docs.internal.example',
          scopes: ['docs:read', 'docs:write'],
        },
      },
      legacy: { url: upstream.url('/legacy'), credential: { mode: 'mint' } },
      search: {
        url: upstream.url('/ok'),
        credential: { mode: 'static', header: 'X-Api-Key', file: secretFile },
      },
      tickets: { url: upstream.url('/ok'), credential: exchangeAt('https://tickets.example/mcp') },
      plain: upstream.url('/ok'),
      local: {
        transport: 'stdio',
        command: process.execPath,
        args: [HOSTILE],
        sandbox: { mode: 'required' },
        // The shortest life: renewed 2 s before it ends, 8 s after it was minted.
        credential: { mode: 'mint', ttlMs: 10_000 },
      },
    },
    // Two issuers would need two gateways; the local test issuer is enough here,
    // and the exchange test brings an authorization-server token of its own.
    { jwt: { jwksFile: await writeJwks(dir, issuerKey) } },
    {
      signing: { keysFile: signingFile },
      admin: { token: ADMIN_TOKEN },
      // The stdio fixture hands its credential file back in a tool result, which
      // redaction would rightly replace: these tests read the token itself.
      redaction: { mode: 'off' },
    },
  );
});

after(async () => {
  await gw.close();
  await Promise.all([upstream.close(), as.close()]);
  await rm(dir, { recursive: true, force: true });
});

/** A token-exchange credential at the test authorization server, for `resource`. */
function exchangeAt(resource: string) {
  return {
    mode: 'token-exchange',
    tokenEndpoint: as.tokenUrl,
    clientId: GATEWAY_CLIENT_ID,
    clientSecret: GATEWAY_CLIENT_SECRET,
    resource,
    scope: 'tickets',
  };
}

/** The live revocations, from the admin API. */
async function revocations(): Promise<Array<{ kind: string; id: string }>> {
  const res = await fetch(`${gw.adminUrl}/admin/revocations`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  return ((await res.json()) as { revocations: Array<{ kind: string; id: string }> }).revocations;
}

/** Calls `server` with the agent's token; returns the headers the upstream received. */
async function through(server: string, token: string, extra: Record<string, string> = {}) {
  const before = upstream.bodies.length;
  const res = await post(gw.urlFor(server), modernCall('echo', {}, 5), {
    ...modernHeaders('echo'),
    authorization: `Bearer ${token}`,
    cookie: 'session=agent-cookie',
    ...extra,
  });
  assert.equal(res.status, 200, await res.clone().text());
  const seen = upstream.bodies.slice(before);
  assert.equal(seen.length, 1);
  const headers = seen[0]?.headers ?? {};
  // The agent's own credentials never leave the gateway, whatever the mode.
  assert.notEqual(headers.authorization, `Bearer ${token}`);
  assert.equal(headers.cookie, undefined);
  return headers;
}

test('mint: the upstream gets a token the gateway signed for it alone, narrowed, naming the agent', async () => {
  const agent = await mint(issuerKey, gw.url, {
    claims: { sub: 'agent-7', scope: 'mcp docs:read', client_id: 'research-bot' },
  });
  const headers = await through('docs', agent);
  const minted = /^Bearer (.+)$/.exec(headers.authorization ?? '')?.[1];
  assert.ok(minted, 'a bearer credential');

  // Verified with what the gateway publishes, as an upstream would.
  const published = (await (await fetch(`${gw.url}/.well-known/jwks.json`)).json()) as {
    keys: Array<Record<string, unknown>>;
  };
  assert.equal(published.keys[0]?.d, undefined, 'no private part is published');
  const { payload, protectedHeader } = await jwtVerify(
    minted,
    createLocalJWKSet(published as never),
    {
      issuer: gw.url,
      audience: 'https://docs.internal.example',
    },
  );
  assert.equal(protectedHeader.kid, 'gw-1');
  assert.equal(protectedHeader.typ, 'at+jwt');
  assert.equal(payload.sub, 'agent-7');
  assert.equal(payload.tenant, 'acme');
  assert.equal(payload.scope, 'docs:read', 'only what the agent holds and the server allows');
  assert.deepEqual(payload.act, { sub: 'research-bot', iss: 'https://issuer.test' });
  assert.equal((payload.exp as number) - (payload.iat as number), 300);

  // Reused while fresh: no signature per request.
  const again = await through('docs', agent);
  assert.equal(again.authorization, headers.authorization);
  // Another agent gets its own.
  const other = await through(
    'docs',
    await mint(issuerKey, gw.url, { claims: { sub: 'agent-8' } }),
  );
  assert.notEqual(other.authorization, headers.authorization);
});

test('mint: a credential minted for a session is revoked when the session ends', async () => {
  const agent = await mint(issuerKey, gw.url, { claims: { sub: 'session-agent' } });
  const init = await post(gw.urlFor('legacy'), initializeBody(), {
    authorization: `Bearer ${agent}`,
  });
  assert.equal(init.status, 200);
  const sessionId = init.headers.get('mcp-session-id') as string;
  const before = upstream.bodies.length;
  const ping = await post(
    gw.urlFor('legacy'),
    { jsonrpc: '2.0', id: 2, method: 'ping' },
    {
      authorization: `Bearer ${agent}`,
      'mcp-session-id': sessionId,
      'mcp-protocol-version': '2025-11-25',
    },
  );
  assert.equal(ping.status, 200);
  const minted = /^Bearer (.+)$/.exec(upstream.bodies[before]?.headers.authorization ?? '')?.[1];
  assert.ok(minted);
  const jti = decodeJwt(minted).jti;

  const del = await fetch(gw.urlFor('legacy'), {
    method: 'DELETE',
    headers: { authorization: `Bearer ${agent}`, 'mcp-session-id': sessionId },
  });
  assert.ok(del.status < 300);
  assert.ok(
    (await revocations()).some((r) => r.kind === 'jti' && r.id === jti),
    'the session credential is revoked',
  );
});

test('mint for a stdio server: a private file the process reads, renewed in place, revoked with the session', async () => {
  const agent = await mint(issuerKey, gw.url, { claims: { sub: 'stdio-agent' } });
  const init = await post(gw.urlFor('local'), initializeBody(), {
    authorization: `Bearer ${agent}`,
  });
  assert.equal(init.status, 200, await init.clone().text());
  const sessionId = init.headers.get('mcp-session-id') as string;
  const read = async (id: number) => {
    const res = await post(
      gw.urlFor('local'),
      { jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'credential', arguments: {} } },
      {
        authorization: `Bearer ${agent}`,
        'mcp-session-id': sessionId,
        'mcp-protocol-version': '2025-11-25',
      },
    );
    assert.equal(res.status, 200);
    const body = (await res.json()) as { result: { content: Array<{ text: string }> } };
    return JSON.parse(body.result.content[0]?.text as string) as { file: string; value: string };
  };
  const first = await read(2);
  assert.equal(first.file, '/tmp/.portcullis/credential');
  const claims = decodeJwt(first.value);
  assert.equal(claims.aud, 'urn:portcullis:server:local', 'minted for this server');
  assert.equal(claims.sub, 'stdio-agent', 'naming the agent');
  await new Promise((r) => setTimeout(r, 8_200));
  const second = await read(3);
  assert.notEqual(second.value, first.value, 'the renewed credential reached the running process');

  const del = await fetch(gw.urlFor('local'), {
    method: 'DELETE',
    headers: { authorization: `Bearer ${agent}`, 'mcp-session-id': sessionId },
  });
  assert.ok(del.status < 300);
  const ids = new Set((await revocations()).map((r) => r.id));
  assert.ok(
    ids.has(String(decodeJwt(second.value).jti)) || ids.has(sessionId),
    'what was minted for the session is revoked',
  );
});

test('static: the configured header from a file, never anything from the client', async () => {
  const agent = await mint(issuerKey, gw.url);
  const headers = await through('search', agent, { 'x-api-key': 'client-supplied' });
  assert.equal(headers['x-api-key'], 'search-api-key-from-file');
  assert.equal(headers.authorization, undefined);
});

test('none: the upstream gets no credential at all', async () => {
  const headers = await through('plain', await mint(issuerKey, gw.url));
  assert.equal(headers.authorization, undefined);
});

test('token exchange: the authorization server trades the agent token for one for the upstream, cached', async (t) => {
  // The agent's token comes from the real authorization server this time.
  const exGw = await startAuthGateway(
    {
      tickets: { url: upstream.url('/ok'), credential: exchangeAt('http://127.0.0.1:9/tickets') },
    },
    { jwt: { issuer: as.issuer, jwksUrl: as.jwksUrl } },
  );
  t.after(() => exGw.close());
  const { access_token: agent } = await clientCredentialsToken(as, exGw.urlFor('tickets'), 'mcp');
  const call = async () => {
    const before = upstream.bodies.length;
    const res = await post(exGw.urlFor('tickets'), modernCall('echo', {}, 1), {
      ...modernHeaders('echo'),
      authorization: `Bearer ${agent}`,
    });
    assert.equal(res.status, 200);
    return upstream.bodies[before]?.headers.authorization;
  };
  const exchangesBefore = as.exchanges;
  const sent = await call();
  const exchanged = /^Bearer (.+)$/.exec(sent ?? '')?.[1];
  assert.ok(exchanged);
  assert.notEqual(exchanged, agent);
  const claims = decodeJwt(exchanged);
  assert.equal(claims.iss, as.issuer);
  assert.equal(claims.aud, 'http://127.0.0.1:9/tickets');
  assert.equal(claims.original_sub, decodeJwt(agent).sub);
  assert.deepEqual(claims.act, { sub: GATEWAY_CLIENT_ID });
  assert.equal(as.exchanges, exchangesBefore + 1);
  assert.equal(await call(), sent, 'cached until shortly before it expires');
  assert.equal(as.exchanges, exchangesBefore + 1);
});

test('token exchange failing is 502 naming the server, and nothing is forwarded', async () => {
  const agent = await mint(issuerKey, gw.url);
  const hits = upstream.hits.get('/ok') ?? 0;
  // The local test issuer's token is not one the authorization server accepts.
  const res = await post(gw.urlFor('tickets'), modernCall('echo', {}, 9), {
    ...modernHeaders('echo'),
    authorization: `Bearer ${agent}`,
  });
  assert.equal(res.status, 502);
  const body = (await res.json()) as RpcError;
  assert.equal(body.id, 9);
  assert.equal(body.error.data.code, 'PORTCULLIS_ERR_UPSTREAM_CREDENTIAL');
  assert.equal(body.error.data.server, 'tickets');
  assert.equal(upstream.hits.get('/ok') ?? 0, hits);
});
