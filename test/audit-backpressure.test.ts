/**
 * `overflow: block`: when the SIEM is down and the HTTP sink holds more than
 * `queueMax` unacknowledged records, new requests are refused with 503
 * PORTCULLIS_ERR_AUDIT_UNAVAILABLE and `/readyz` says why; once the SIEM is
 * back the spool drains, requests pass again, and the refused requests are
 * in the trail as one refusal with their count. The SIEM is a small HTTP
 * server in the test standing in for a collector endpoint.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';
import { freePort } from './helpers/redis.js';
import type { AuditRecord } from '../src/audit/types.js';

let upstream: ModernServer;
let dir: string;

before(async () => {
  upstream = await startModernServer();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-backpressure-'));
});

after(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

async function echo(gw: TestGateway, id: number) {
  const res = await post(
    gw.urlFor('docs'),
    modernCall('echo', { text: `call ${id}` }, id),
    modernHeaders('echo'),
  );
  return { status: res.status, body: await res.text(), retryAfter: res.headers.get('retry-after') };
}

test('a SIEM that is down refuses new requests (503) until its spool drains, and the refusals are recorded', async () => {
  const port = await freePort();
  const gw = await startTestGateway(
    { docs: upstream.url },
    {
      audit: {
        http: {
          url: `http://127.0.0.1:${port}/collect`,
          spoolDir: join(dir, 'spool'),
          overflow: 'block',
          queueMax: 3,
          flushIntervalMs: 20,
          timeoutMs: 1000,
        },
      },
    },
  );
  const received: AuditRecord[] = [];
  const passed = new Set([1, 2]);
  const refusedIds: number[] = [];
  let siem: Server | undefined;
  try {
    // The start checkpoint and two calls' records: over the bound of 3. The bound is
    // checked as records reach the audit thread, a few milliseconds after their call
    // ended, so a call or two more may pass before the refusals begin.
    assert.equal((await echo(gw, 1)).status, 200);
    assert.equal((await echo(gw, 2)).status, 200);
    let refused = await echo(gw, 3);
    for (let id = 4; refused.status === 200 && id < 10; id++) {
      passed.add(id - 1);
      await sleep(20);
      refused = await echo(gw, id);
    }
    assert.equal(refused.status, 503, refused.body);
    assert.match(refused.body, /PORTCULLIS_ERR_AUDIT_UNAVAILABLE/);
    assert.equal(refused.retryAfter, '1');
    refusedIds.push(Math.max(...passed) + 1, 50);
    assert.equal((await echo(gw, 50)).status, 503);
    const ready = await fetch(`${gw.adminUrl}/readyz`);
    assert.equal(ready.status, 503);
    assert.match(await ready.text(), /audit sink is behind/);

    siem = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push(...(JSON.parse(Buffer.concat(chunks).toString()) as AuditRecord[]));
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => siem?.listen(port, '127.0.0.1', resolve));
    let status = 0;
    for (let i = 0; i < 200 && status !== 200; i++) {
      await sleep(100);
      status = (await echo(gw, 100 + i)).status;
    }
    assert.equal(status, 200, 'requests pass again once the SIEM has the records');
  } finally {
    await gw.close();
    await new Promise((resolve) => (siem ? siem.close(resolve) : resolve(undefined)));
  }
  const ids = new Set(received.filter((r) => r.kind === 'message').map((r) => r.rpcId));
  for (const id of passed)
    assert.ok(ids.has(id), `call ${id}, made before the bound, reached the SIEM`);
  for (const id of refusedIds) assert.ok(!ids.has(id), `the refused call ${id} never ran`);
  const summary = received.find((r) => r.error === 'PORTCULLIS_ERR_AUDIT_UNAVAILABLE');
  assert.ok(summary, 'one refusal stands for the requests refused while the trail was full');
  assert.equal(summary.kind, 'refusal');
  assert.ok((summary.count ?? 0) >= 2, `count ${summary.count}`);
  const seqs = received.map((r) => r.seq).sort((a, b) => a - b);
  assert.deepEqual(
    seqs,
    seqs.map((_, i) => i),
    'every record from seq 0 on, none missing',
  );
});
