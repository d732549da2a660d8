/**
 * The audit thread (src/audit/channel.ts and worker.ts): records made on the
 * serving thread are chained, hashed and written on the other, in the order
 * they were made, with their `argsHash` computed there; and a thread that
 * dies makes the log full for good (the gateway then refuses new requests)
 * instead of letting calls go unrecorded.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Worker } from 'node:worker_threads';
import pino from 'pino';
import { AuditChannel } from '../src/audit/channel.js';
import { argsHash } from '../src/audit/record.js';
import type { AuditRecord } from '../src/audit/types.js';
import { readAuditFiles, verifyLines } from '../src/audit/verify.js';
import { buildConfig } from '../src/config/load.js';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-audit-channel-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A logger whose entries the test reads. */
function capturingLog() {
  const entries: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'info' },
    { write: (line: string) => void entries.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { log, entries };
}

async function openChannel(auditDir: string, log: pino.Logger): Promise<AuditChannel> {
  const config = buildConfig({
    servers: { docs: { url: 'http://127.0.0.1:1/mcp' } },
    auth: { mode: 'none' },
    audit: { file: { dir: auditDir } },
  });
  return AuditChannel.open({ audit: config.audit, logLevel: 'info', log });
}

async function recordsIn(auditDir: string): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const { line } of readAuditFiles([auditDir]))
    out.push(JSON.parse(line) as AuditRecord);
  return out;
}

test('records cross in the order they were made, hashed and chained on the audit thread', async () => {
  const auditDir = join(dir, 'order');
  const { log } = capturingLog();
  const channel = await openChannel(auditDir, log);
  assert.ok(Number.isInteger(channel.threadId), 'the audit thread names its kernel thread id');
  assert.notEqual(channel.threadId, process.pid, 'it is not the serving thread');
  const args = (i: number) => ({ text: `call ${i}`, nested: { b: 2, a: [i, null] } });
  for (let i = 0; i < 1_500; i++) {
    channel.append('message', { direction: 'in', method: 'tools/call', rpcId: i }, args(i));
    // Several batches, some cut by size and some by time.
    if (i % 700 === 699) await sleep(30);
  }
  await channel.close(Date.now() + 10_000);

  const records = (await recordsIn(auditDir)).filter((r) => r.kind === 'message');
  assert.deepEqual(
    records.map((r) => r.rpcId),
    Array.from({ length: 1_500 }, (_, i) => i),
  );
  for (const r of records) assert.equal(r.argsHash, argsHash(args(r.rpcId as number)));
  const report = await verifyLines(readAuditFiles([auditDir]), { fromGenesis: true });
  assert.equal(report.problems.length, 0, JSON.stringify(report.problems));
});

test('an audit thread that dies makes the log full for good, and says so', async () => {
  const auditDir = join(dir, 'dies');
  const { log, entries } = capturingLog();
  const channel = await openChannel(auditDir, log);
  channel.append('message', { direction: 'in', method: 'tools/call', rpcId: 1 });
  assert.equal(channel.full, false);
  // A fault injected on purpose: nothing in the gateway stops its own audit thread.
  await (channel as unknown as { worker: Worker }).worker.terminate();
  for (let i = 0; i < 50 && !channel.full; i++) await sleep(10);
  assert.equal(channel.full, true, 'full once the thread is gone: new requests get 503');
  assert.ok(
    entries.some((e) => e.event === 'audit.thread_failed'),
    'the failure is logged as audit.thread_failed',
  );
  // What comes after is refused by the gateway; the channel itself neither throws nor hangs.
  channel.append('message', { direction: 'in', method: 'tools/call', rpcId: 2 });
  await channel.flush(Date.now() + 1_000);
  await channel.close(Date.now() + 1_000);
  assert.equal(channel.full, true);
});
