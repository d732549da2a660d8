/**
 * Rate limits through the gateway, in front of the SDK 2.x modern fixture
 * (2026-07-28, stateless: each POST is one call): token buckets per tenant,
 * subject and tool, and in-flight requests per tenant; a refusal is 429 with
 * Retry-After and a JSON-RPC error naming the limit. Then two gateway
 * processes (the CLI) sharing the real Redis: the limit holds across both.
 * Then a store that goes away: `onStoreDown` allow or refuse.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { before, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startModernServer } from './fixtures/modern-server.js';
import { startKeyedGateway } from './helpers/auth-gateway.js';
import { startTestGateway } from './helpers/gateway.js';
import { freePort, isolatedPrefix, SHARED_REDIS, startRedisServer } from './helpers/redis.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
/** Refills so slowly that nothing a test spends comes back during it. */
const SLOW = 0.01;

before(() => {
  if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
});

interface Answer {
  status: number;
  retryAfter: string | null;
  body: { id?: unknown; result?: unknown; error?: { code: number; data: Record<string, unknown> } };
}

async function callTool(
  url: string,
  tool: string,
  args: Record<string, unknown>,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const res = await post(url, modernCall(tool, args, 9), { ...modernHeaders(tool), ...headers });
  const text = await res.text();
  return {
    status: res.status,
    retryAfter: res.headers.get('retry-after'),
    body: JSON.parse(text) as Answer['body'],
  };
}

function assertRefused(a: Answer, limit: string): void {
  assert.equal(a.status, 429, JSON.stringify(a.body));
  assert.equal(a.body.id, 9);
  assert.equal(a.body.error?.data.code, 'PORTCULLIS_ERR_RATE_LIMITED');
  assert.equal(a.body.error?.data.limit, limit);
  assert.ok(Number(a.retryAfter) >= 1, `Retry-After: ${String(a.retryAfter)}`);
}

test('buckets per subject, tool and tenant, and in-flight per tenant: 429 with Retry-After naming the limit', async (t) => {
  const upstream = await startModernServer();
  t.after(() => upstream.close());
  const all = { servers: { modern: { tools: ['*'] } } };
  const gw = await startKeyedGateway(
    { modern: upstream.url },
    {
      rateLimits: {
        subject: { capacity: 3, refillPerSecond: SLOW },
        tools: { 'modern/slow': { capacity: 1, refillPerSecond: SLOW } },
      },
      tenants: {
        acme: all,
        globex: {
          ...all,
          rateLimits: {
            tenant: { capacity: 2, refillPerSecond: SLOW },
            subject: { capacity: 100, refillPerSecond: 1 },
          },
        },
        calm: { ...all, rateLimits: { concurrency: 1 } },
      },
    },
  );
  t.after(() => gw.close());
  const url = gw.gw.urlFor('modern');
  const as = async (tenant: string, sub: string) => ({
    authorization: `Bearer ${await gw.token(tenant, sub)}`,
  });
  const a1 = await as('acme', 'a1');
  const a2 = await as('acme', 'a2');

  for (let i = 0; i < 3; i++)
    assert.equal((await callTool(url, 'echo', { text: 'x' }, a1)).status, 200);
  const over = await callTool(url, 'echo', { text: 'x' }, a1);
  assertRefused(over, 'subject');
  assert.ok(Number(over.retryAfter) > 60, 'one token back at 0.01/s takes 100 s');
  // Another agent of the tenant has buckets of its own.
  assert.equal((await callTool(url, 'slow', { ms: 0 }, a2)).status, 200);
  // The tool's bucket refuses; its refusal charges nothing else (all or nothing).
  assertRefused(await callTool(url, 'slow', { ms: 0 }, a2), 'tools.modern/slow');
  assert.equal((await callTool(url, 'echo', { text: 'x' }, a2)).status, 200);
  assert.equal((await callTool(url, 'echo', { text: 'x' }, a2)).status, 200);
  assertRefused(await callTool(url, 'echo', { text: 'x' }, a2), 'subject');

  // A tenant's own bucket holds for all its agents together.
  const g1 = await as('globex', 'g1');
  const g2 = await as('globex', 'g2');
  assert.equal((await callTool(url, 'echo', { text: 'x' }, g1)).status, 200);
  assert.equal((await callTool(url, 'echo', { text: 'x' }, g2)).status, 200);
  assertRefused(await callTool(url, 'echo', { text: 'x' }, g1), 'tenant');

  // One request in flight at a time for calm; the slot is back when the answer is over.
  const c1 = await as('calm', 'c1');
  const c2 = await as('calm', 'c2');
  const started = once(upstream.events, 'started');
  const long = callTool(url, 'slow', { ms: 1_500 }, c1);
  await started;
  assertRefused(await callTool(url, 'echo', { text: 'x' }, c2), 'concurrency');
  assert.equal((await long).status, 200);
  assert.equal((await callTool(url, 'echo', { text: 'x' }, c2)).status, 200);
});

/** A gateway process started by the CLI with `config`; resolves with its URL. */
async function cliGateway(t: TestContext, config: Record<string, unknown>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-rate-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'portcullis.json');
  await writeFile(file, JSON.stringify(config));
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child: ChildProcess = spawn(process.execPath, [CLI, 'start', '--config', file], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  for await (const line of createInterface({ input: child.stdout! })) {
    if (line.includes('"msg":"gateway listening"')) {
      child.stdout?.resume();
      return (JSON.parse(line) as { url: string }).url;
    }
  }
  throw new Error(`the gateway did not start: ${stderr}`);
}

test('two gateway processes sharing the real Redis hold one limit between them', async (t) => {
  const upstream = await startModernServer();
  t.after(() => upstream.close());
  const config = {
    listen: { port: 0 },
    admin: { enabled: false },
    auth: { mode: 'none' },
    store: { kind: 'redis', url: SHARED_REDIS, keyPrefix: isolatedPrefix(t) },
    rateLimits: { tenant: { capacity: 10, refillPerSecond: SLOW } },
    servers: { modern: { url: upstream.url } },
  };
  const [one, two] = await Promise.all([cliGateway(t, config), cliGateway(t, config)]);
  const urls = [`${one}/mcp/modern`, `${two}/mcp/modern`];
  // 30 calls, in parallel, alternating between the replicas: exactly the bucket's 10 pass.
  const answers = await Promise.all(
    Array.from({ length: 30 }, (_, i) => callTool(urls[i % 2] as string, 'echo', { text: `${i}` })),
  );
  const statuses = answers.map((a) => a.status);
  assert.equal(statuses.filter((s) => s === 200).length, 10, statuses.join(','));
  assert.equal(statuses.filter((s) => s === 429).length, 20, statuses.join(','));
  for (const a of answers.filter((x) => x.status === 429)) assertRefused(a, 'tenant');
  assert.equal(
    upstream.events.requestsFor('tools/call', 'echo').length,
    10,
    'refused calls reached nobody',
  );
});

test('the store gone: onStoreDown allow admits and logs, refuse answers 503 with Retry-After', async (t) => {
  const port = await freePort();
  const redis = await startRedisServer(port);
  t.after(() => redis.kill());
  const upstream = await startModernServer();
  t.after(() => upstream.close());
  const gateway = async (onStoreDown: string) => {
    const gw = await startTestGateway(
      { modern: upstream.url },
      {
        store: {
          kind: 'redis',
          url: `redis://127.0.0.1:${port}`,
          commandTimeoutMs: 200,
          connectTimeoutMs: 200,
        },
        rateLimits: { tenant: { capacity: 100, refillPerSecond: 1 }, onStoreDown },
      },
    );
    t.after(() => gw.close());
    return gw.urlFor('modern');
  };
  const allow = await gateway('allow');
  const refuse = await gateway('refuse');
  assert.equal((await callTool(allow, 'echo', { text: 'x' })).status, 200);
  assert.equal((await callTool(refuse, 'echo', { text: 'x' })).status, 200);
  await redis.kill();
  assert.equal((await callTool(allow, 'echo', { text: 'x' })).status, 200);
  const refused = await callTool(refuse, 'echo', { text: 'x' });
  assert.equal(refused.status, 503);
  assert.equal(refused.body.error?.data.code, 'PORTCULLIS_ERR_RATE_LIMIT_UNAVAILABLE');
  assert.ok(Number(refused.retryAfter) >= 1);
});
