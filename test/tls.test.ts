/** HTTPS on the listener, from a certificate and key named in the config. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Agent, request } from 'undici';
import { startFaultUpstream } from './fixtures/fault-upstream.js';
import { selfSigned } from './helpers/certs.js';
import { startTestGateway } from './helpers/gateway.js';
import { ACCEPT_BOTH, modernCall, modernHeaders } from './helpers/requests.js';

test('the listener serves HTTPS with the configured certificate', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { cert, key } = selfSigned(dir, 'localhost', [
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);

  const fault = await startFaultUpstream();
  t.after(() => fault.close());
  const gateway = await startTestGateway(
    { ok: fault.url('/ok') },
    { listen: { tls: { cert, key } } },
  );
  t.after(() => gateway.close());
  assert.match(gateway.url, /^https:\/\//);

  const dispatcher = new Agent({ connect: { ca: readFileSync(cert) } });
  t.after(() => dispatcher.close());
  const res = await request(gateway.urlFor('ok'), {
    method: 'POST',
    dispatcher,
    headers: { 'content-type': 'application/json', accept: ACCEPT_BOTH, ...modernHeaders('x') },
    body: JSON.stringify(modernCall('x', {}, 1)),
  });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(await res.body.json(), { jsonrpc: '2.0', id: 1, result: { ok: true } });

  // An untrusted certificate is refused by a verifying client: the TLS is real.
  await assert.rejects(
    request(gateway.urlFor('ok'), {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    }),
  );
});
