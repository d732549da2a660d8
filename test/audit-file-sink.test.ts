/**
 * The `file` sink when the disk misbehaves. A batch whose write or fdatasync
 * failed is written again; what the failed attempt left in the file (all of
 * the batch, unsynced, or part of it) must not stay there, or the trail holds
 * those records twice, or a torn line, and `audit verify` refuses a trail
 * nobody altered. A short write (a regular file may take less than asked) is
 * finished, not counted as the whole batch.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import { AuditLog } from '../src/audit/log.js';
import { FileSink } from '../src/audit/sinks/file.js';
import { readAuditFiles, verifyLines } from '../src/audit/verify.js';

const RECORDS = 200;

type FileHandleMethods = Record<'write' | 'datasync', (...args: unknown[]) => Promise<unknown>>;

/** The prototype every `FileHandle` shares, to make one of its calls fail or fall short. */
async function fileHandlePrototype(dir: string): Promise<FileHandleMethods> {
  const probe = await open(join(dir, 'probe'), 'w');
  await probe.close();
  return Object.getPrototypeOf(probe) as FileHandleMethods;
}

/** Replaces `method` of every FileHandle for the first `times` calls, then restores it. */
function interpose(
  t: TestContext,
  proto: FileHandleMethods,
  method: keyof FileHandleMethods,
  times: number,
  replacement: (
    original: (...args: unknown[]) => Promise<unknown>,
    self: unknown,
    args: unknown[],
  ) => Promise<unknown>,
): { readonly calls: number } {
  const original = proto[method];
  const seen = { calls: 0 };
  proto[method] = function (this: unknown, ...args: unknown[]) {
    if (seen.calls >= times) return original.apply(this, args);
    seen.calls++;
    return replacement(original, this, args);
  };
  t.after(() => {
    proto[method] = original;
  });
  return seen;
}

/** A log on a file sink in `dir`; RECORDS records appended a few at a time, then closed. */
async function writeTrail(dir: string, errors: Error[]): Promise<void> {
  // The sink's retry timers are unref'd (they never hold a gateway open); here nothing else would.
  const keepAlive = setInterval(() => {}, 1_000);
  try {
    await writeRecords(dir, errors);
  } finally {
    clearInterval(keepAlive);
  }
}

async function writeRecords(dir: string, errors: Error[]): Promise<void> {
  const sink = new FileSink({ name: 'file', dir, onError: (err) => errors.push(err) });
  const log = await AuditLog.open({ sinks: [sink], log: pino({ level: 'silent' }) });
  for (let i = 0; i < RECORDS; i++) {
    log.append('message', { direction: 'in', method: 'tools/call', tool: 'echo', rpcId: i });
    // Several batches: the sink writes what arrived while the previous write was on its way.
    if (i % 20 === 19) await new Promise((resolve) => setImmediate(resolve));
  }
  await log.flush(Date.now() + 10_000);
  await log.close(Date.now() + 10_000);
  assert.equal(sink.stats().queued, 0, 'everything written');
}

async function verified(dir: string) {
  const report = await verifyLines(readAuditFiles([dir]), { fromGenesis: true });
  assert.deepEqual(report.problems, []);
  assert.equal(report.chains.length, 1);
  // The start checkpoint, the records, the closing checkpoint: each once.
  assert.equal(report.records, RECORDS + 2);
  assert.equal(report.chains[0]?.closed, true);
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-file-sink-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a failed fdatasync is retried without leaving the batch twice in the trail', async (t) => {
  const dir = await tempDir(t);
  const proto = await fileHandlePrototype(dir);
  const errors: Error[] = [];
  // The second batch's bytes reach the file, then its fdatasync fails (EIO), as on a bad disk.
  let syncs = 0;
  interpose(t, proto, 'datasync', 2, (original, self, args) => {
    if (++syncs === 1) return original.apply(self, args);
    return Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
  });
  await writeTrail(join(dir, 'audit'), errors);
  assert.equal(errors.length, 1, 'the failure was reported');
  await verified(join(dir, 'audit'));
});

test('a failed write that left part of its batch is retried without a torn line', async (t) => {
  const dir = await tempDir(t);
  const proto = await fileHandlePrototype(dir);
  const errors: Error[] = [];
  // The second batch: half of it lands, then the write fails (ENOSPC), as when a disk fills.
  let writes = 0;
  interpose(t, proto, 'write', 2, async (original, self, args) => {
    if (++writes === 1) return original.apply(self, args);
    const [buffer, offset, length, position] = args as [Buffer, number, number, null];
    await original.call(self, buffer, offset, Math.floor(length / 2), position);
    throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  });
  await writeTrail(join(dir, 'audit'), errors);
  assert.equal(errors.length, 1, 'the failure was reported');
  await verified(join(dir, 'audit'));
});

test('a short write is finished, not counted as the whole batch', async (t) => {
  const dir = await tempDir(t);
  const proto = await fileHandlePrototype(dir);
  const errors: Error[] = [];
  // Every write takes at most a third of what it is asked: no error, just less.
  const short = interpose(t, proto, 'write', Infinity, (original, self, args) => {
    const [buffer, offset, length, position] = args as [Buffer, number, number, null];
    return original.call(self, buffer, offset, Math.max(1, Math.floor(length / 3)), position);
  });
  await writeTrail(join(dir, 'audit'), errors);
  assert.ok(short.calls > 1);
  assert.deepEqual(errors, []);
  await verified(join(dir, 'audit'));
});
