/**
 * Certificate-bound tokens (RFC 8705): with listen.tls.clientCa the listener
 * asks for a client certificate, and a token carrying `cnf.x5t#S256` is
 * accepted only over a connection that presented that very certificate,
 * issued by the configured CA. Unbound tokens keep working without one.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Agent, request } from 'undici';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { selfSigned, signedBy, thumbprint, type CertFiles } from './helpers/certs.js';
import { ACCEPT_BOTH, modernCall, modernHeaders, type RpcError } from './helpers/requests.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

let dir: string;
let upstream: FaultUpstream;
let key: SigningKey;
let ca: CertFiles;
let alice: CertFiles;
let bob: CertFiles;
let stranger: CertFiles;
/** The CA of the gateway's own certificate, which clients trust. */
let serverCa: CertFiles;
let gw: AuthGateway;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'portcullis-mtls-'));
  ca = selfSigned(dir, 'clients-ca', ['-addext', 'basicConstraints=critical,CA:TRUE']);
  serverCa = selfSigned(dir, 'server-ca', ['-addext', 'basicConstraints=critical,CA:TRUE']);
  const server = signedBy(dir, serverCa, 'gateway', 'subjectAltName=IP:127.0.0.1,DNS:localhost');
  alice = signedBy(dir, ca, 'alice');
  bob = signedBy(dir, ca, 'bob');
  stranger = selfSigned(dir, 'stranger');
  upstream = await startFaultUpstream();
  key = await newKey('ES256');
  gw = await startAuthGateway(
    { docs: upstream.url('/ok') },
    { jwt: { jwksFile: await writeJwks(dir, key) } },
    { listen: { tls: { cert: server.cert, key: server.key, clientCa: ca.cert } } },
  );
});

after(async () => {
  await gw.close();
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

async function call(token: string, client?: CertFiles): Promise<{ status: number; body: unknown }> {
  const dispatcher = new Agent({
    connect: {
      ca: readFileSync(serverCa.cert),
      ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}),
    },
  });
  try {
    const res = await request(gw.urlFor('docs'), {
      method: 'POST',
      dispatcher,
      headers: {
        'content-type': 'application/json',
        accept: ACCEPT_BOTH,
        authorization: `Bearer ${token}`,
        ...modernHeaders('echo'),
      },
      body: JSON.stringify(modernCall('echo', {}, 1)),
    });
    return { status: res.statusCode, body: await res.body.json() };
  } finally {
    await dispatcher.close();
  }
}

test('a certificate-bound token passes with its certificate', async () => {
  const token = await mint(key, gw.url, {
    claims: { cnf: { 'x5t#S256': thumbprint(alice.cert) } },
  });
  assert.equal((await call(token, alice)).status, 200);
});

test('without a certificate, with another one, or with one the CA did not issue: 401', async () => {
  const token = await mint(key, gw.url, {
    claims: { cnf: { 'x5t#S256': thumbprint(alice.cert) } },
  });
  for (const client of [undefined, bob, stranger]) {
    const res = await call(token, client);
    assert.equal(res.status, 401);
    assert.equal(
      (res.body as RpcError).error.data.code,
      'PORTCULLIS_ERR_AUTH_CERTIFICATE_MISMATCH',
    );
  }
  // A token bound to the stranger's own certificate does not help: the CA never issued it.
  const selfBound = await mint(key, gw.url, {
    claims: { cnf: { 'x5t#S256': thumbprint(stranger.cert) } },
  });
  assert.equal((await call(selfBound, stranger)).status, 401);
});

test('an unbound token works with or without a client certificate', async () => {
  const token = await mint(key, gw.url);
  assert.equal((await call(token)).status, 200);
  assert.equal((await call(token, bob)).status, 200);
});

test('the metadata says tokens may be certificate-bound', async () => {
  const res = await request(`${gw.url}/.well-known/oauth-protected-resource`, {
    dispatcher: new Agent({
      connect: { ca: readFileSync(serverCa.cert) },
    }),
  });
  const doc = (await res.body.json()) as Record<string, unknown>;
  assert.equal(doc.tls_client_certificate_bound_access_tokens, true);
});
