/**
 * Intent-bound upstream credentials (`credential.mode: mint`, `perCall`):
 * one credential per tool call, scoped by the verb class the manifest gives
 * the tool, living 30 s, naming the tool, verified by the upstream with the
 * gateway's published keys (test/fixtures/verifying-server.ts), which also
 * refuses a token that was not minted for the tool it calls.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { createCredential, type CredentialDeps } from '../src/auth/credentials.js';
import { generateSigningKey } from '../src/auth/keys.js';
import type { CredentialConfig } from '../src/config/schema.js';
import { buildConfig, ConfigError } from '../src/config/load.js';
import { buildManifest, writeManifest, type ToolDefinition } from '../src/policy/manifest.js';
import { startVerifyingServer } from './fixtures/verifying-server.js';
import { startAuthGateway } from './helpers/auth-gateway.js';
import { mint, newKey, writeJwks } from './helpers/tokens.js';

const AUDIENCE = 'https://notes.internal.example';

test('perCall: each tool call gets its own credential, scoped by its verb class, for 30 s, verified by the upstream', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-percall-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let gatewayUrl = '';
  const upstream = await startVerifyingServer({
    jwksUrl: () => `${gatewayUrl}/.well-known/jwks.json`,
    issuer: () => gatewayUrl,
    audience: AUDIENCE,
  });
  t.after(() => upstream.close());

  // The manifest, pulled from the server itself (it lists its tools without a token).
  const puller = new Client({ name: 'pull', version: '1.0.0' });
  await puller.connect(new StreamableHTTPClientTransport(new URL(upstream.url)));
  const live = (await puller.listTools()).tools as unknown as ToolDefinition[];
  await puller.close();
  const { manifest } = buildManifest(live, { server: 'notes', now: new Date().toISOString() });
  assert.deepEqual(
    manifest.tools.map((tool) => [tool.name, tool.verb]),
    [
      ['delete_note', 'destructive'],
      ['read_note', 'read'],
      ['write_note', 'write'],
    ],
  );
  const manifestFile = join(dir, 'notes.manifest.json');
  writeManifest(manifestFile, manifest);

  const issuerKey = await newKey('ES256');
  const signingFile = join(dir, 'gateway-signing.json');
  await writeFile(
    signingFile,
    JSON.stringify({ keys: [await generateSigningKey('EdDSA', 'gw-1')] }),
  );
  const gw = await startAuthGateway(
    {
      notes: {
        url: upstream.url,
        manifest: manifestFile,
        credential: { mode: 'mint', audience: AUDIENCE, perCall: true },
      },
    },
    { jwt: { jwksFile: await writeJwks(dir, issuerKey) } },
    { signing: { keysFile: signingFile } },
  );
  t.after(() => gw.close());
  gatewayUrl = gw.url;

  const agent = await mint(issuerKey, gw.url, { claims: { sub: 'agent-9', tenant: 'acme' } });
  const client = new Client({ name: 'per-call', version: '1.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(gw.urlFor('notes')), {
      requestInit: { headers: { authorization: `Bearer ${agent}` } },
    }),
  );
  t.after(() => client.close());
  await client.listTools();

  const claimsOf = async (name: string): Promise<Record<string, unknown>> => {
    const result = await client.callTool({ name, arguments: { id: 'n1' } });
    const content = result.content as Array<{ text: string }>;
    assert.notEqual(result.isError, true, content[0]?.text);
    return JSON.parse(content[0]?.text ?? 'null') as Record<string, unknown>;
  };
  const read = await claimsOf('read_note');
  assert.equal(read.scope, 'read', 'a read tool gets a read-only scope');
  assert.equal(read.mcp_tool, 'read_note');
  assert.equal(read.mcp_verb, 'read');
  assert.equal(read.aud, AUDIENCE);
  assert.equal(read.sub, 'agent-9');
  assert.equal((read.exp as number) - (read.iat as number), 30, 'lives 30 s');
  const write = await claimsOf('write_note');
  assert.equal(write.scope, 'read write');
  const del = await claimsOf('delete_note');
  assert.equal(del.scope, 'read write destructive');
  const again = await claimsOf('read_note');
  assert.notEqual(again.jti, read.jti, 'a credential per call, never reused');

  // Everything else went with the cached credential, scoped as a read and naming no tool.
  const others = upstream.seen.filter((s) => s.method !== 'tools/call');
  assert.ok(others.length >= 2, 'initialize and tools/list carried a token');
  for (const s of others) {
    assert.equal(s.claims.scope, 'read', s.method);
    assert.equal(s.claims.mcp_tool, undefined, s.method);
  }
});

test('perCall needs the manifest that classes the tools', () => {
  assert.throws(
    () =>
      buildConfig({
        auth: { jwt: { issuer: 'https://issuer.test', jwksUrl: 'https://issuer.test/jwks' } },
        signing: { keysFile: '/etc/portcullis/signing.json' },
        servers: {
          notes: { url: 'http://127.0.0.1:1/mcp', credential: { mode: 'mint', perCall: true } },
        },
      }),
    (err: unknown) =>
      err instanceof ConfigError &&
      err.problems.some(
        (p) =>
          p.path === 'servers.notes.credential.perCall' &&
          /needs servers\.notes\.manifest/.test(p.message),
      ),
  );
});

test('only a perCall credential asks the gateway to work out the tools a request calls', () => {
  // Nothing is signed here: the providers are only built, so keys and revocations are never read.
  const deps = {
    server: 'notes',
    serverUrl: 'http://127.0.0.1:1/mcp',
    keys: {},
    revocations: {},
    signingIssuer: 'https://gateway.test',
    onIssued: () => undefined,
  } as unknown as CredentialDeps;
  const build = (c: object) => createCredential(c as CredentialConfig, deps);
  const minted = {
    mode: 'mint',
    scopes: [],
    ttlMs: 300_000,
    header: 'authorization',
    timeoutMs: 1,
  };
  assert.equal(build(minted).readsCalls, false);
  assert.equal(build({ ...minted, perCall: true }).readsCalls, true);
  assert.equal(build({ mode: 'none' }).readsCalls, undefined);
});
