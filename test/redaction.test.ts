/**
 * Response redaction through the gateway: a secret in a tool result is
 * replaced before the agent sees it (the SDK 2.x modern fixture's `echo`
 * hands back what it is given, so the secret comes from the server's
 * answer), including one split across the network reads of its SSE event
 * (the fault upstream writes it in pieces); `redaction.mode: off` passes
 * results as sent; a tenant's `maxResultBytes` refuses a larger answer.
 * The rules and the corpora are tested in process in test/redact.test.ts.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';

import { buildConfig, ConfigError } from '../src/config/load.js';
import { SECRET_IN_PIECES, startFaultUpstream } from './fixtures/fault-upstream.js';
import { startModernServer } from './fixtures/modern-server.js';
import { startKeyedGateway } from './helpers/auth-gateway.js';
import { startTestGateway, type SeenFrame } from './helpers/gateway.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';

const GITHUB_PAT = `ghp_${'Ab3De6Gh9Jk2Mn5Pq8St1Vw4Yz7Bc0Ef3Hi6'.slice(0, 36)}`;

async function echo(url: string, text: string, headers: Record<string, string> = {}) {
  const res = await post(url, modernCall('echo', { text }, 4), {
    ...modernHeaders('echo'),
    ...headers,
  });
  const body = (await res.json()) as {
    result?: { content: Array<{ text: string }> };
    error?: { code: number; data: Record<string, unknown> };
  };
  return { status: res.status, body };
}

async function modern(
  t: TestContext,
  overrides: Record<string, unknown> = {},
  frames?: SeenFrame[],
) {
  const upstream = await startModernServer();
  t.after(() => upstream.close());
  const gw = await startTestGateway({ modern: upstream.url }, overrides, frames);
  t.after(() => gw.close());
  return gw.urlFor('modern');
}

test('a secret in a tool result is redacted before the agent sees it, and the decision names the rule', async (t) => {
  const frames: SeenFrame[] = [];
  const url = await modern(t, {}, frames);
  const { body } = await echo(
    url,
    `token: ${GITHUB_PAT} and a uuid 6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b`,
  );
  const text = body.result?.content[0]?.text ?? '';
  assert.doesNotMatch(text, /ghp_/);
  assert.match(text, /\[REDACTED:github-pat\]/);
  assert.match(text, /6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b/, 'what is not a secret is untouched');
  const answer = frames.find((f) => f.direction === 'server-to-client' && f.kind === 'response');
  assert.equal(answer?.outcome, 'replace');
  assert.equal(answer?.rule, 'redaction.github-pat');
  // A benign answer goes on as it came.
  const plain = await echo(url, 'nothing to see: 42, sha 3f786850e387550fdab836ed7e6dc881de23001b');
  assert.equal(
    plain.body.result?.content[0]?.text,
    'nothing to see: 42, sha 3f786850e387550fdab836ed7e6dc881de23001b',
  );
});

test('a secret split across the network reads of its SSE event is still found', async (t) => {
  const upstream = await startFaultUpstream();
  t.after(() => upstream.close());
  const gw = await startTestGateway({ split: upstream.url('/secret-split') });
  t.after(() => gw.close());
  const res = await post(
    gw.urlFor('split'),
    modernCall('anything', {}, 6),
    modernHeaders('anything'),
  );
  const text = await res.text();
  assert.doesNotMatch(text, new RegExp(SECRET_IN_PIECES.slice(4)));
  assert.match(text, /the key is \[REDACTED:aws-access-token\] \(prod\)/);
});

test('redaction.mode off passes results as sent', async (t) => {
  const url = await modern(t, { redaction: { mode: 'off' } });
  const { body } = await echo(url, `token: ${GITHUB_PAT}`);
  assert.equal(body.result?.content[0]?.text, `token: ${GITHUB_PAT}`);
});

test("a tenant's maxResultBytes refuses a larger answer with an error in its place", async (t) => {
  const upstream = await startModernServer();
  t.after(() => upstream.close());
  const all = { servers: { modern: { tools: ['*'] } } };
  const gw = await startKeyedGateway(
    { modern: upstream.url },
    { tenants: { small: { ...all, maxResultBytes: 2048 }, big: all } },
  );
  t.after(() => gw.close());
  const url = gw.gw.urlFor('modern');
  const as = async (tenant: string) => ({ authorization: `Bearer ${await gw.token(tenant, 'a')}` });
  const long = 'x'.repeat(4096);
  const refused = await echo(url, long, await as('small'));
  assert.equal(refused.body.error?.data.code, 'PORTCULLIS_ERR_POLICY_RESULT_TOO_LARGE');
  assert.equal(refused.body.error?.data.rule, 'tenants.small.maxResultBytes');
  assert.equal(
    (await echo(url, 'short', await as('small'))).body.result?.content[0]?.text,
    'short',
  );
  assert.equal((await echo(url, long, await as('big'))).body.result?.content[0]?.text, long);
});

test('a redaction rule id that does not exist refuses the configuration', () => {
  assert.throws(
    () =>
      buildConfig({
        auth: { mode: 'none' },
        redaction: { disable: ['github-pat', 'github-patt'] },
        servers: { a: { url: 'http://127.0.0.1:1/mcp' } },
      }),
    (err: unknown) =>
      err instanceof ConfigError &&
      err.problems.length === 1 &&
      err.problems[0]?.path === 'redaction.disable[1]',
  );
});
