/**
 * Any replica serves any session: two gateways sharing one real Redis, behind
 * a real nginx that spreads requests round-robin with no affinity. The
 * official SDK client's whole feature list passes with a Streamable HTTP
 * upstream; a stream closed on one replica is resumed on the other
 * (Last-Event-ID); an answer to a server's request may come back through the
 * other replica; a replica that goes away leaves its sessions to the other.
 */
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { Redis } from 'ioredis';
import { readAuditFiles } from '../src/audit/verify.js';
import type { AuditRecord } from '../src/audit/types.js';
import { startConformanceServer, type ConformanceServer } from './fixtures/conformance-server.js';
import { everythingFeatures } from './helpers/everything-features.js';
import { everythingStdio, startEverything } from './helpers/everything.js';
import { SeenFrames, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { startBalancer, type Balancer } from './helpers/nginx.js';
import { dropKeys, freePort, SHARED_REDIS, startRedisServer } from './helpers/redis.js';
import { initializeBody, post } from './helpers/requests.js';

const INITIALIZE = initializeBody(1);
const LIST_TOOLS = { jsonrpc: '2.0', id: 2, method: 'tools/list' };

function portOf(url: string): number {
  return Number(new URL(url).port);
}

function replicaOptions(
  prefix: string,
  url = SHARED_REDIS,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    store: { kind: 'redis', url, keyPrefix: prefix, commandTimeoutMs: 300, connectTimeoutMs: 500 },
    admin: { port: 0 },
    ...extra,
  };
}

/** The cluster section every replica of a test shares: the internal listener on a free port. */
const CLUSTER = {
  cluster: { host: '127.0.0.1', port: 0, secret: 'a-test-cluster-secret-of-32-chars!' },
};

/** The requests a replica's public listener answered, from its own /metrics. */
async function requestsServed(gw: TestGateway): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl as string}/metrics`)).text();
  let n = 0;
  for (const line of text.split('\n'))
    if (line.startsWith('portcullis_requests_total{')) n += Number(line.split(' ').pop());
  return n;
}

/** The commands a replica sent to the store so far, from its own /metrics. */
async function storeOperations(gw: TestGateway): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl as string}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('portcullis_store_operations_total '));
  return Number(line?.split(' ').pop());
}

/**
 * A fetch for the SDK's transport that sends each request to the replica
 * `pick` names, so a test decides which replica sees what.
 */
function steeredFetch(
  pick: (method: string, body: string | undefined) => string,
  path: string,
): typeof fetch {
  return (input, init) => {
    const body = typeof init?.body === 'string' ? init.body : undefined;
    const url = `${pick(init?.method ?? 'GET', body)}${path}`;
    void input;
    return fetch(url, init);
  };
}

/** The SDK client's feature list, through the balancer. */
function featuresThrough(lb: () => Balancer, frames: SeenFrames): void {
  const balanced = {
    urlFor: (server: string) => `${lb().url}/mcp/${server}`,
  } as unknown as TestGateway;
  everythingFeatures({
    gateway: () => balanced,
    server: 'everything',
    client: 'streamable-http',
    frames,
  });
}

describe('two replicas behind nginx round-robin, Streamable HTTP upstream', () => {
  const frames = new SeenFrames();
  const prefix = `portcullis-test:${randomUUID()}:`;
  let upstream: Awaited<ReturnType<typeof startEverything>>;
  let a: TestGateway;
  let b: TestGateway;
  let lb: Balancer;
  let aClosed = false;

  before(async () => {
    upstream = await startEverything();
    a = await startTestGateway({ everything: upstream.url }, replicaOptions(prefix), frames);
    b = await startTestGateway({ everything: upstream.url }, replicaOptions(prefix), frames);
    lb = await startBalancer([portOf(a.url), portOf(b.url)]);
  });
  after(async () => {
    await lb?.stop();
    if (!aClosed) await a?.close();
    await b?.close();
    await upstream?.stop();
    await dropKeys(prefix);
  });

  featuresThrough(() => lb, frames);

  test('both replicas served the feature list', async () => {
    const [onA, onB] = await Promise.all([requestsServed(a), requestsServed(b)]);
    assert.ok(onA >= 5 && onB >= 5, `requests on each replica: ${onA} and ${onB}`);
  });

  test("a sampling answer reaches the server through the replica that did not relay the server's request", async (t) => {
    const steer = steeredFetch((method, body) => {
      // The client's answer (a JSON-RPC response: no method) goes to B; everything else to A.
      const answer = method === 'POST' && body !== undefined && !body.includes('"method"');
      return answer ? b.url : a.url;
    }, '/mcp/everything');
    const answersViaB = frames.length;
    const client = new Client(
      { name: 'steered', version: '1.0.0' },
      { capabilities: { sampling: {} } },
    );
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${a.url}/mcp/everything`), { fetch: steer }),
    );
    t.after(() => client.close());
    client.setRequestHandler(CreateMessageRequestSchema, async () => ({
      model: 'test-model',
      role: 'assistant',
      content: { type: 'text', text: 'answered through the other replica' },
    }));
    const result = await client.callTool({
      name: 'trigger-sampling-request',
      arguments: { prompt: 'Which replica?', maxTokens: 20 },
    });
    assert.match(JSON.stringify(result.content), /answered through the other replica/);
    assert.ok(
      frames
        .slice(answersViaB)
        .some((f) => f.direction === 'client-to-server' && f.kind === 'response'),
      'the answer was framed on its way up',
    );
  });

  test('a session a replica holds costs the store nothing per request', async () => {
    const init = await post(`${a.url}/mcp/everything`, INITIALIZE);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();
    const ping = (id: number) => ({ jsonrpc: '2.0', id, method: 'ping' });
    // B's first request of the session reads it from the store; the rest do not.
    const first = await post(`${b.url}/mcp/everything`, ping(1), { 'mcp-session-id': sid });
    assert.equal(first.status, 200);
    await first.body?.cancel();
    const before = await storeOperations(b);
    for (let i = 2; i < 22; i++) {
      const res = await post(`${b.url}/mcp/everything`, ping(i), { 'mcp-session-id': sid });
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    assert.equal(await storeOperations(b), before, '20 requests, 0 store operations');
  });

  test('what a session negotiated holds on the other replica: batches in a 2025-03-26 session only', async () => {
    const pings = [
      { jsonrpc: '2.0', id: 11, method: 'ping' },
      { jsonrpc: '2.0', id: 12, method: 'ping' },
    ];
    const open = async (version: string): Promise<string> => {
      const init = await post(`${a.url}/mcp/everything`, initializeBody(1, version));
      assert.equal(init.status, 200);
      assert.match(await init.text(), new RegExp(`"protocolVersion":"${version}"`));
      return init.headers.get('mcp-session-id') as string;
    };
    const old = await open('2025-03-26');
    const batch = await post(`${b.url}/mcp/everything`, pings, {
      'mcp-session-id': old,
      'mcp-protocol-version': '2025-03-26',
    });
    assert.equal(batch.status, 200, 'B knows the session negotiated batching');
    const text = await batch.text();
    assert.match(text, /"id":11/);
    assert.match(text, /"id":12/);

    const current = await open('2025-06-18');
    // The header claims the old version; the session's own, read from the store, decides.
    const refused = await post(`${b.url}/mcp/everything`, pings, {
      'mcp-session-id': current,
      'mcp-protocol-version': '2025-03-26',
    });
    assert.equal(refused.status, 400);
    const body = (await refused.json()) as { error: { data: { code: string } } };
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_JSONRPC_BATCH');
  });

  test('a session opened on one replica is ended by a DELETE on the other: 404 on both', async () => {
    const init = await post(`${a.url}/mcp/everything`, INITIALIZE);
    assert.equal(init.status, 200);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();
    const onB = await post(`${b.url}/mcp/everything`, LIST_TOOLS, { 'mcp-session-id': sid });
    assert.equal(onB.status, 200, 'B serves the session A opened');
    await onB.body?.cancel();
    const del = await fetch(`${b.url}/mcp/everything`, {
      method: 'DELETE',
      headers: { 'mcp-session-id': sid },
    });
    assert.equal(del.status, 200);
    // A held the session; the end reaches it through the store's broadcast.
    let status = 0;
    for (let i = 0; i < 50 && status !== 404; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 20));
      const res = await post(`${a.url}/mcp/everything`, LIST_TOOLS, { 'mcp-session-id': sid });
      status = res.status;
      await res.body?.cancel();
    }
    assert.equal(status, 404, 'A no longer serves the ended session');
  });

  test('a replica goes away; the client carries on through the other with the same session', async () => {
    const client = new Client({ name: 'survivor', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`${lb.url}/mcp/everything`));
    await client.connect(transport);
    const sid = transport.sessionId;
    const first = await client.callTool({ name: 'echo', arguments: { message: 'before' } });
    assert.match(JSON.stringify(first.content), /before/);
    aClosed = true;
    await a.close();
    for (let i = 0; i < 4; i++) {
      const res = await client.callTool({ name: 'echo', arguments: { message: `after ${i}` } });
      assert.match(JSON.stringify(res.content), new RegExp(`after ${i}`));
    }
    assert.equal(transport.sessionId, sid, 'no new session was needed');
    await client.close();
  });
});

describe('two replicas behind nginx round-robin, stdio upstream (its process on one replica)', () => {
  const frames = new SeenFrames();
  const prefix = `portcullis-test:${randomUUID()}:`;
  const servers = {
    everything: everythingStdio({ sandbox: { mode: 'required' }, warmPool: 0 }),
  };
  let a: TestGateway;
  let b: TestGateway;
  let lb: Balancer;
  let aClosed = false;

  before(async () => {
    a = await startTestGateway(servers, replicaOptions(prefix, SHARED_REDIS, CLUSTER), frames);
    b = await startTestGateway(servers, replicaOptions(prefix, SHARED_REDIS, CLUSTER), frames);
    lb = await startBalancer([portOf(a.url), portOf(b.url)]);
  });
  after(async () => {
    await lb?.stop();
    if (!aClosed) await a?.close();
    await b?.close();
    await dropKeys(prefix);
  });

  featuresThrough(() => lb, frames);

  test('a request for a session reaching the replica without its process is forwarded to the owner', async () => {
    const init = await post(`${a.url}/mcp/everything`, INITIALIZE);
    assert.equal(init.status, 200);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();
    const before = await requestsServed(a);
    const onB = await post(`${b.url}/mcp/everything`, LIST_TOOLS, { 'mcp-session-id': sid });
    assert.equal(onB.status, 200);
    const text = await onB.text();
    assert.match(text, /"echo"/, 'the tools of the process on A, listed through B');
    assert.equal(
      await requestsServed(a),
      before,
      'A served it on its internal listener, not its public one',
    );
  });

  test('the internal listener refuses a request without the shared secret', async () => {
    // The internal listener of A: found from the session record B forwards to.
    const redis = new Redis(SHARED_REDIS);
    const keys = await redis.keys(`${prefix}session:*`);
    const record = JSON.parse((await redis.get(keys[0] as string)) as string) as { home: string };
    await redis.quit();
    const origin = new URL(record.home.split('#')[0] as string).origin;
    const envelope = JSON.stringify({
      server: 'everything',
      home: record.home,
      method: 'POST',
      headers: {},
      body: '{}',
    });
    const unsigned = await fetch(`${origin}/internal/v1/forward`, {
      method: 'POST',
      body: envelope,
    });
    assert.equal(unsigned.status, 401);
    const forged = await fetch(`${origin}/internal/v1/forward`, {
      method: 'POST',
      body: envelope,
      headers: {
        'x-portcullis-timestamp': String(Date.now()),
        'x-portcullis-nonce': 'n1',
        'x-portcullis-signature': '0'.repeat(64),
      },
    });
    assert.equal(forged.status, 401);
    const other = await fetch(`${origin}/anything`);
    assert.equal(other.status, 404);
  });

  test("a signed request reaches a session's process only in its owner's name, once", async () => {
    const init = await post(`${a.url}/mcp/everything`, INITIALIZE);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();
    const redis = new Redis(SHARED_REDIS);
    const record = JSON.parse((await redis.get(`${prefix}session:${sid}`)) as string) as {
      home: string;
      owner: string;
      upstreamId: string;
    };
    await redis.quit();
    const origin = new URL(record.home.split('#')[0] as string).origin;
    const send = (envelope: Record<string, unknown>, nonce = randomUUID()) => {
      const body = JSON.stringify({
        server: 'everything',
        home: record.home,
        method: 'POST',
        body: JSON.stringify(LIST_TOOLS),
        ...envelope,
      });
      const timestamp = String(Date.now());
      const signature = createHmac('sha256', CLUSTER.cluster.secret)
        .update(`${timestamp}.${nonce}.`)
        .update(body)
        .digest('hex');
      const head = createHmac('sha256', CLUSTER.cluster.secret)
        .update(`head.${timestamp}.${nonce}.${Buffer.byteLength(body)}`)
        .digest('hex');
      return fetch(`${origin}/internal/v1/forward`, {
        method: 'POST',
        body,
        headers: {
          'x-portcullis-timestamp': timestamp,
          'x-portcullis-nonce': nonce,
          'x-portcullis-signature': signature,
          'x-portcullis-head-signature': head,
        },
      });
    };
    const headers = { 'content-type': 'application/json', 'mcp-session-id': record.upstreamId };
    const nonce = randomUUID();
    const owned = await send({ headers, affinity: record.owner }, nonce);
    assert.equal(owned.status, 200);
    assert.match(await owned.text(), /"echo"/);
    const replayed = await send({ headers, affinity: record.owner }, nonce);
    assert.equal(replayed.status, 401, 'a nonce is good once');
    const someoneElse = await send({ headers, affinity: JSON.stringify(['acme', 'mallory']) });
    assert.equal(someoneElse.status, 404, "the process is the session owner's alone");
    await someoneElse.body?.cancel();
    const noSession = await send({
      headers: { 'content-type': 'application/json' },
      affinity: record.owner,
    });
    assert.equal(noSession.status, 400, 'only requests of a session are forwarded');
    await noSession.body?.cancel();
  });

  test('the internal listener refuses a stale or unsigned request before reading its body', async () => {
    const redis = new Redis(SHARED_REDIS);
    const keys = await redis.keys(`${prefix}session:*`);
    const record = JSON.parse((await redis.get(keys[0] as string)) as string) as { home: string };
    await redis.quit();
    const target = new URL(record.home.split('#')[0] as string);
    const NONCE = randomUUID();
    const refusal = (timestamp: number, length = 1024 * 1024, headSignature = '0'.repeat(64)) =>
      new Promise<{ status: number; error: string }>((resolve, reject) => {
        const req = httpRequest({
          host: target.hostname,
          port: target.port,
          method: 'POST',
          path: '/internal/v1/forward',
          headers: {
            'content-length': String(length),
            'x-portcullis-timestamp': String(timestamp),
            'x-portcullis-nonce': NONCE,
            'x-portcullis-signature': '0'.repeat(64),
            'x-portcullis-head-signature': headSignature,
          },
        });
        req.on('response', (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (d: string) => (text += d));
          res.on('end', () => {
            resolve({
              status: res.statusCode ?? 0,
              error: (JSON.parse(text) as { error: string }).error,
            });
            req.destroy();
          });
        });
        req.on('error', reject);
        // A few bytes of the megabyte announced, and then nothing: the answer must not wait for it.
        req.write('{"server":');
      });
    assert.deepEqual(await refusal(Date.now() - 10 * 60_000), { status: 401, error: 'stale' });
    // Fresh, but without the secret: its head's signature is refused, its body never read.
    assert.deepEqual(await refusal(Date.now()), { status: 401, error: 'bad signature' });
    // Signed, but larger than any forwarded request: told so (not a reset connection).
    const now = Date.now();
    const huge = 512 * 1024 * 1024;
    const head = createHmac('sha256', CLUSTER.cluster.secret)
      .update(`head.${now}.${NONCE}.${huge}`)
      .digest('hex');
    assert.deepEqual(await refusal(now, huge, head), { status: 413, error: 'too large' });
  });

  test('the owner goes away: its sessions end with 404 on the other replica, and a new one works', async () => {
    const init = await post(`${a.url}/mcp/everything`, INITIALIZE);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();
    aClosed = true;
    await a.close();
    const res = await post(`${b.url}/mcp/everything`, LIST_TOOLS, { 'mcp-session-id': sid });
    assert.equal(res.status, 404);
    const body = (await res.json()) as { id: number; error: { data: { code: string } } };
    assert.equal(body.id, 2);
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_UNKNOWN');
    // The client re-initializes, as a 404 tells it to, through the balancer.
    const client = new Client({ name: 'again', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${lb.url}/mcp/everything`)));
    const echoed = await client.callTool({ name: 'echo', arguments: { message: 'new session' } });
    assert.match(JSON.stringify(echoed.content), /new session/);
    await client.close();
  });
});

describe('Last-Event-ID across replicas', () => {
  const prefix = `portcullis-test:${randomUUID()}:`;
  let upstream: ConformanceServer;
  let a: TestGateway;
  let b: TestGateway;

  before(async () => {
    upstream = await startConformanceServer();
    a = await startTestGateway({ conf: upstream.url }, replicaOptions(prefix));
    b = await startTestGateway({ conf: upstream.url }, replicaOptions(prefix));
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await upstream?.close();
    await dropKeys(prefix);
  });

  test('a call whose stream the upstream closed on A is answered on the stream resumed on B', async (t) => {
    const resumed: string[] = [];
    const steer = steeredFetch((method) => (method === 'GET' ? b.url : a.url), '/mcp/conf');
    const client = new Client({ name: 'resumer', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`${a.url}/mcp/conf`), {
      fetch: (input, init) => {
        const last = new Headers(init?.headers).get('last-event-id');
        if (last !== null) resumed.push(last);
        return steer(input, init);
      },
      reconnectionOptions: {
        initialReconnectionDelay: 100,
        maxReconnectionDelay: 1_000,
        reconnectionDelayGrowFactor: 1.5,
        maxRetries: 5,
      },
    });
    await client.connect(transport);
    t.after(() => client.close());
    const result = await client.callTool({ name: 'test_reconnection', arguments: {} });
    assert.match(JSON.stringify(result.content), /arrived after the stream was closed/);
    assert.ok(resumed.length > 0, 'the client resumed with Last-Event-ID, on B');
  });
});

describe('sessions when the shared store is down', () => {
  test('initialize is refused with 503 and a code to act on; a session a replica holds is still served', async (t) => {
    const port = await freePort();
    const redis = await startRedisServer(port);
    t.after(() => redis.kill());
    const upstream = await startEverything();
    t.after(() => upstream.stop());
    const auditDir = await mkdtemp(path.join(tmpdir(), 'portcullis-audit-'));
    t.after(() => rm(auditDir, { recursive: true, force: true }));
    const prefix = `portcullis-test:${randomUUID()}:`;
    const gw = await startTestGateway(
      { everything: upstream.url },
      replicaOptions(prefix, redis.url, { audit: { file: { dir: auditDir } } }),
    );
    let closed = false;
    t.after(() => (closed ? undefined : gw.close()));
    const init = await post(gw.urlFor('everything'), INITIALIZE);
    assert.equal(init.status, 200);
    const sid = init.headers.get('mcp-session-id') as string;
    await init.body?.cancel();

    await redis.kill();
    const held = await post(gw.urlFor('everything'), LIST_TOOLS, { 'mcp-session-id': sid });
    assert.equal(held.status, 200, 'the replica holds it: no store needed');
    await held.body?.cancel();

    const refused = await post(gw.urlFor('everything'), INITIALIZE);
    assert.equal(refused.status, 503);
    const body = (await refused.json()) as { id: number; error: { data: { code: string } } };
    assert.equal(body.id, 1);
    assert.equal(body.error.data.code, 'PORTCULLIS_ERR_SESSION_STORE_UNAVAILABLE');

    const unknown = await post(gw.urlFor('everything'), LIST_TOOLS, {
      'mcp-session-id': 'x'.repeat(43),
    });
    assert.equal(unknown.status, 503, 'a session it does not hold cannot be looked up');
    const u = (await unknown.json()) as { error: { data: { code: string } } };
    assert.equal(u.error.data.code, 'PORTCULLIS_ERR_SESSION_STORE_UNAVAILABLE');

    // Both refusals are in the audit trail, with the status and the code: the
    // initialize as the message it was, the other as a refusal at the door
    // (its session could not be looked up, so nothing of it was decided).
    closed = true;
    await gw.close();
    const records: AuditRecord[] = [];
    for await (const { line } of readAuditFiles([auditDir]))
      records.push(JSON.parse(line) as AuditRecord);
    const refusals = records.filter((r) => r.error === 'PORTCULLIS_ERR_SESSION_STORE_UNAVAILABLE');
    assert.deepEqual(
      refusals.map((r) => [r.kind, r.status, r.server, r.method ?? r.path]),
      [
        ['message', 503, 'everything', 'initialize'],
        ['refusal', 503, 'everything', '/mcp/everything'],
      ],
    );
  });
});

describe('the cluster secret', () => {
  test('a secret file too short to be a key, or missing, stops the start with a clear error', async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'portcullis-cluster-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'secret');
    await writeFile(file, 'short-secret\n');
    const prefix = `portcullis-test:${randomUUID()}:`;
    const options = (secretFile: string) =>
      replicaOptions(prefix, SHARED_REDIS, {
        cluster: { host: '127.0.0.1', port: 0, secretFile },
      });
    await assert.rejects(
      startTestGateway({ everything: everythingStdio({ warmPool: 0 }) }, options(file)),
      /cluster\.secretFile: the cluster secret is 12 bytes; it needs at least 32/,
    );
    await assert.rejects(
      startTestGateway(
        { everything: everythingStdio({ warmPool: 0 }) },
        options(path.join(dir, 'absent')),
      ),
      /cluster\.secretFile: cannot read it: ENOENT/,
    );
    await writeFile(file, `${'k'.repeat(40)}\n`);
    const gw = await startTestGateway(
      { everything: everythingStdio({ warmPool: 0 }) },
      options(file),
    );
    await gw.close();
  });
});
