/**
 * Quotas per tenant and per principal, and the global in-flight cap: a burst
 * from one caller is refused with 429 (503 for the global cap), Retry-After
 * and a JSON-RPC error naming the quota, and never locks out another tenant.
 * Shares come back when what held them ends.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startFaultUpstream, type FaultUpstream } from './fixtures/fault-upstream.js';
import { startKeyedGateway, type AuthGateway, type KeyedGateway } from './helpers/auth-gateway.js';
import {
  initializeBody,
  LEGACY,
  modernCall,
  modernHeaders,
  post,
  type RpcError,
} from './helpers/requests.js';
import { inflightCap } from '../src/server/quotas.js';
import { fileURLToPath } from 'node:url';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));

let upstream: FaultUpstream;
let keyed: KeyedGateway;
let gw: AuthGateway;

before(async () => {
  upstream = await startFaultUpstream();
  keyed = await startKeyedGateway(
    { legacy: upstream.url('/legacy'), slow: upstream.url('/slow') },
    {
      quotas: {
        perPrincipal: { sessions: 2, legacyConnections: 1, inflight: 3 },
        perTenant: { sessions: 3, inflight: 5 },
        global: { inflight: 8 },
      },
    },
  );
  gw = keyed.gw;
});

after(async () => {
  await keyed.close();
  await upstream.close();
});

const token = (tenant: string, sub: string) => keyed.token(tenant, sub);
const auth = (t: string) => ({ authorization: `Bearer ${t}` });

async function initialize(t: string): Promise<Response> {
  return post(gw.urlFor('legacy'), initializeBody(), auth(t));
}

async function expectQuota(res: Response, status: number, code: string, quota: string) {
  assert.equal(res.status, status);
  assert.equal(res.headers.get('retry-after'), '1');
  const body = (await res.json()) as RpcError;
  assert.equal(body.error.data.code, code);
  assert.equal(body.error.data.quota, quota);
  assert.match(body.error.message, new RegExp(quota.replace('.', '\\.')));
}

async function close(t: string, session: string): Promise<void> {
  const res = await fetch(gw.urlFor('legacy'), {
    method: 'DELETE',
    headers: { ...auth(t), 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
  });
  await res.text();
}

test('a burst of initializes from one principal gets its session quota, no more, and 429 naming it', async () => {
  const alice = await token('acme', 'alice');
  const burst = await Promise.all(Array.from({ length: 10 }, () => initialize(alice)));
  const opened = burst.filter((r) => r.status === 200);
  assert.equal(opened.length, 2, 'exactly the quota, even in parallel');
  const refused = burst.filter((r) => r.status !== 200);
  await expectQuota(
    refused[0] as Response,
    429,
    'PORTCULLIS_ERR_QUOTA_EXCEEDED',
    'perPrincipal.sessions',
  );
  for (const r of refused.slice(1)) await r.text();
  const ids = opened.map((r) => r.headers.get('mcp-session-id') as string);
  for (const r of opened) await r.text();
  // Someone else in the tenant still gets one; the tenant's quota then stops the next.
  const bob = await token('acme', 'bob');
  const bobs = await initialize(bob);
  assert.equal(bobs.status, 200);
  await bobs.text();
  await expectQuota(
    await initialize(bob),
    429,
    'PORTCULLIS_ERR_QUOTA_EXCEEDED',
    'perTenant.sessions',
  );
  // Another tenant is untouched.
  const other = await initialize(await token('globex', 'alice'));
  assert.equal(other.status, 200);
  await other.text();
  // Ending a session gives its share back.
  await close(alice, ids[0] as string);
  const again = await initialize(alice);
  assert.equal(again.status, 200);
  await again.text();
});

test('legacy SSE connections have a quota per principal, released when the stream closes', async () => {
  const carol = await token('initech', 'carol');
  const first = new AbortController();
  const open = await fetch(`${gw.urlFor('legacy')}/sse`, {
    headers: { ...auth(carol), accept: 'text/event-stream' },
    signal: first.signal,
  });
  assert.equal(open.status, 200);
  await expectQuota(
    await fetch(`${gw.urlFor('legacy')}/sse`, {
      headers: { ...auth(carol), accept: 'text/event-stream' },
    }),
    429,
    'PORTCULLIS_ERR_QUOTA_EXCEEDED',
    'perPrincipal.legacyConnections',
  );
  first.abort();
  await open.body?.cancel().catch(() => undefined);
  const deadline = Date.now() + 5_000;
  for (;;) {
    const controller = new AbortController();
    const res = await fetch(`${gw.urlFor('legacy')}/sse`, {
      headers: { ...auth(carol), accept: 'text/event-stream' },
      signal: controller.signal,
    });
    const status = res.status;
    controller.abort();
    if (status === 200) break;
    await res.text().catch(() => undefined);
    assert.ok(Date.now() < deadline, 'the share comes back once the stream is closed');
    await new Promise((r) => setTimeout(r, 20));
  }
});

test('requests in flight have a quota per principal and per tenant, and a global cap that answers 503', async () => {
  const slow = (t: string) => {
    const controller = new AbortController();
    const answer = post(
      gw.urlFor('slow'),
      modernCall('echo', {}, 1),
      {
        ...modernHeaders('echo'),
        ...auth(t),
      },
      controller.signal,
    ).catch(() => undefined);
    return { controller, answer };
  };
  const arrived = async (n: number) => {
    const deadline = Date.now() + 5_000;
    while ((upstream.hits.get('/slow') ?? 0) < n) {
      assert.ok(Date.now() < deadline, `${n} requests at the upstream`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const held: Array<{ controller: AbortController }> = [];
  const base = upstream.hits.get('/slow') ?? 0;
  const dave = await token('umbrella', 'dave');
  for (let i = 0; i < 3; i++) held.push(slow(dave));
  await arrived(base + 3);
  const daveOver = await post(gw.urlFor('slow'), modernCall('echo', {}, 2), {
    ...modernHeaders('echo'),
    ...auth(dave),
  });
  await expectQuota(daveOver, 429, 'PORTCULLIS_ERR_QUOTA_EXCEEDED', 'perPrincipal.inflight');
  const erin = await token('umbrella', 'erin');
  for (let i = 0; i < 2; i++) held.push(slow(erin));
  await arrived(base + 5);
  const erinOver = await post(gw.urlFor('slow'), modernCall('echo', {}, 3), {
    ...modernHeaders('echo'),
    ...auth(erin),
  });
  await expectQuota(erinOver, 429, 'PORTCULLIS_ERR_QUOTA_EXCEEDED', 'perTenant.inflight');
  // Three more from other tenants reach the global cap of 8; the ninth is 503.
  for (const tenant of ['t1', 't2', 't3']) held.push(slow(await token(tenant, 'x')));
  await arrived(base + 8);
  const full = await post(gw.urlFor('slow'), modernCall('echo', {}, 4), {
    ...modernHeaders('echo'),
    ...auth(await token('t4', 'x')),
  });
  await expectQuota(full, 503, 'PORTCULLIS_ERR_QUOTA_GATEWAY_FULL', 'global.inflight');
  for (const h of held) h.controller.abort();
  // Once they are gone, the shares are back.
  const deadline = Date.now() + 5_000;
  for (;;) {
    const res = await post(gw.urlFor('legacy'), initializeBody(), auth(dave));
    await res.text();
    if (res.status === 200) break;
    assert.ok(Date.now() < deadline, 'in-flight shares released');
    await new Promise((r) => setTimeout(r, 20));
  }
});

test('the global in-flight cap fits the open-file limit', () => {
  assert.equal(inflightCap(8192, 1024), 384);
  assert.equal(inflightCap(100, 1024), 100);
  assert.equal(inflightCap(8192, undefined), 8192);
  assert.equal(inflightCap(8192, 100), 1);
});

test('stdio processes have a quota per principal: a session or a stateless caller past it gets 429, a process that ends gives its share back', async (t) => {
  const stdio = await startKeyedGateway(
    {
      tools: { transport: 'stdio', command: process.execPath, args: [HOSTILE], warmPool: 0 },
    },
    { quotas: { perPrincipal: { stdioProcesses: 1 } } },
  );
  t.after(() => stdio.close());
  const gateway = stdio.gw;
  const mintFor = (sub: string) => stdio.token('hooli', sub);
  const frank = await mintFor('frank');
  const open = () => post(gateway.urlFor('tools'), initializeBody(), auth(frank));
  const first = await open();
  assert.equal(first.status, 200);
  await first.text();
  const session = first.headers.get('mcp-session-id') as string;
  await expectQuota(
    await open(),
    429,
    'PORTCULLIS_ERR_QUOTA_EXCEEDED',
    'perPrincipal.stdioProcesses',
  );
  // A stateless (2026-07-28) call would start a process for frank as a caller: refused too.
  const stateless = await post(gateway.urlFor('tools'), modernCall('whoami', {}, 2), {
    ...modernHeaders('whoami'),
    ...auth(frank),
  });
  await expectQuota(stateless, 429, 'PORTCULLIS_ERR_QUOTA_EXCEEDED', 'perPrincipal.stdioProcesses');
  // Someone else is not affected.
  const grace = await post(gateway.urlFor('tools'), initializeBody(), auth(await mintFor('grace')));
  assert.equal(grace.status, 200);
  await grace.text();
  const ended = await fetch(gateway.urlFor('tools'), {
    method: 'DELETE',
    headers: { ...auth(frank), 'mcp-session-id': session, 'mcp-protocol-version': LEGACY },
  });
  await ended.text();
  const again = await open();
  assert.equal(again.status, 200);
  await again.text();
});
