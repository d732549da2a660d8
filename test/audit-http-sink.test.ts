/**
 * The `http` audit sink against a real HTTP receiver: each wire format
 * delivers every record once and in order; a receiver that goes away, fails
 * or hangs costs retries, never records; close leaves the backlog in the
 * spool for the next start; a torn line left by a crash is cut off; `full`
 * follows the configured bound.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test, type TestContext } from 'node:test';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import {
  HttpSink,
  HttpSinkError,
  MAX_ANSWER_BYTES,
  type HttpSinkOptions,
} from '../src/audit/sinks/http.js';
import { Spool } from '../src/audit/spool.js';
import { AUDIT_SCHEMA_VERSION, type AuditRecord } from '../src/audit/types.js';
import { Receiver, type Answer } from './helpers/receiver.js';

/** Base of the records' `time`: each record is one ms after the one before. */
const BASE_TIME_MS = Date.parse('2026-12-03T10:00:00.000Z');
const FLUSH_MS = 10_000;
const CRASH_WRITER = fileURLToPath(new URL('./fixtures/spool-crash-writer.ts', import.meta.url));

function record(seq: number): { record: AuditRecord; line: string } {
  const record: AuditRecord = {
    v: AUDIT_SCHEMA_VERSION,
    kind: 'message',
    chain: 'chain-under-test',
    seq,
    prevHash: '0'.repeat(64),
    hash: seq.toString(16).padStart(64, '0'),
    time: new Date(BASE_TIME_MS + seq).toISOString(),
    tenant: 'acme',
    direction: 'in',
    method: 'tools/call',
    tool: 'query',
    // Non-ASCII and an escaped newline: the bytes must travel as they are.
    args: { sql: `select ${seq}`, note: 'ünïcødé ✓ "quoted"\nsecond line' },
    decision: 'allow',
    action: 'forward',
  };
  return { record, line: JSON.stringify(record) };
}

/** Writes records `from`..`to-1`, yielding to the loop now and then as a gateway would. */
async function writeRange(sink: HttpSink, from: number, to: number): Promise<void> {
  for (let seq = from; seq < to; seq++) {
    const { record: r, line } = record(seq);
    sink.write(r, line);
    if (seq % 50 === 49) await yieldToLoop();
  }
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-http-sink-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

interface Opened {
  readonly sink: HttpSink;
  readonly errors: Array<{ err: Error; attempt: number }>;
}

/** An open sink with test-sized timings, closed after the test. */
async function openSink(
  t: TestContext,
  options: Partial<HttpSinkOptions> & Pick<HttpSinkOptions, 'url' | 'spoolDir'>,
): Promise<Opened> {
  const errors: Opened['errors'] = [];
  const sink = new HttpSink({
    name: 'siem',
    format: 'json',
    batchMaxRecords: 100,
    flushIntervalMs: 5,
    timeoutMs: 2_000,
    backoff: { initialMs: 5, maxMs: 40 },
    onError: (err, attempt) => errors.push({ err, attempt }),
    ...options,
  });
  t.after(() => sink.close(Date.now()));
  // The sink's timers are unref'd (they never hold a gateway's process open);
  // while the receiver is down nothing else would, so the test holds the loop.
  const keepAlive = setInterval(() => {}, 1_000);
  t.after(() => clearInterval(keepAlive));
  assert.equal(await sink.open(), undefined);
  return { sink, errors };
}

/** The record lines the receiver accepted, in order, taken back out of each format's bodies. */
function deliveredLines(receiver: Receiver, format: HttpSinkOptions['format']): string[] {
  const lines: string[] = [];
  for (const { body } of receiver.accepted) {
    if (format === 'json') {
      for (const r of JSON.parse(body) as unknown[]) lines.push(JSON.stringify(r));
    } else if (format === 'splunk-hec') {
      for (const event of body.split('\n')) {
        lines.push(JSON.stringify((JSON.parse(event) as { event: unknown }).event));
      }
    } else {
      const ndjson = body.split('\n');
      assert.equal(ndjson.pop(), '', 'a bulk body ends with a newline');
      for (let i = 0; i < ndjson.length; i += 2) {
        assert.equal(ndjson[i], '{"create":{}}');
        lines.push(ndjson[i + 1] as string);
      }
    }
  }
  return lines;
}

function linesOf(from: number, to: number): string[] {
  return Array.from({ length: to - from }, (_, i) => record(from + i).line);
}

/** Polls `condition` every 5 ms; rejects after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const FORMATS = {
  json: { path: '/ingest', contentType: 'application/json', answer: '{}' },
  'splunk-hec': {
    path: '/services/collector/event',
    contentType: 'application/json',
    answer: '{"text":"Success","code":0}',
  },
  'elastic-bulk': {
    path: '/logs-portcullis/_bulk',
    contentType: 'application/x-ndjson',
    answer: '{"took":3,"errors":false,"items":[]}',
  },
} satisfies Record<
  HttpSinkOptions['format'],
  { path: string; contentType: string; answer: string }
>;

for (const [format, wire] of Object.entries(FORMATS) as Array<
  [HttpSinkOptions['format'], (typeof FORMATS)[keyof typeof FORMATS]]
>) {
  test(`${format}: every record arrives once, in order, with the configured headers`, async (t) => {
    const receiver = await Receiver.start(t);
    receiver.answer = () => ({ status: 200, body: wire.answer });
    const { sink, errors } = await openSink(t, {
      url: receiver.url + wire.path,
      format,
      spoolDir: await tempDir(t),
      headers: { Authorization: 'Splunk 00000000-test-token' },
    });
    await writeRange(sink, 0, 1_234);
    await sink.flush(Date.now() + FLUSH_MS);

    assert.deepEqual(deliveredLines(receiver, format), linesOf(0, 1_234));
    assert.ok(receiver.accepted.length >= 13, 'batches of at most 100 records');
    for (const r of receiver.received) {
      assert.equal(r.path, wire.path);
      assert.equal(r.headers['content-type'], wire.contentType);
      assert.equal(r.headers.authorization, 'Splunk 00000000-test-token');
    }
    if (format === 'json') {
      // Not re-serialized: the array's elements are the record lines, byte for byte.
      const inner = receiver.accepted.map((r) => r.body.slice(1, -1)).join(',');
      assert.equal(inner, linesOf(0, 1_234).join(','));
    }
    if (format === 'splunk-hec') {
      const events = receiver.accepted.flatMap((r) => r.body.split('\n'));
      events.forEach((event, seq) => {
        const { line } = record(seq);
        assert.ok(event.endsWith(`,"event":${line}}`), 'the event is the record line');
        const parsed = JSON.parse(event) as { time: number; sourcetype: string };
        assert.equal(parsed.time, (BASE_TIME_MS + seq) / 1000);
        assert.equal(parsed.sourcetype, 'portcullis:audit');
      });
    }
    assert.deepEqual(sink.stats(), { written: 1_234, failed: 0, queued: 0, spoolBytes: 0 });
    assert.deepEqual(errors, []);
  });
}

test('a receiver down for part of a run of 5,000 records: all arrive, in order, once', async (t) => {
  const receiver = await Receiver.start(t);
  const spoolDir = await tempDir(t);
  const { sink, errors } = await openSink(t, {
    url: receiver.url,
    spoolDir,
    batchMaxRecords: 250,
    // Small segments, so the run rolls and reclaims many of them.
    spoolSegmentMaxBytes: 64 * 1024,
  });

  await writeRange(sink, 0, 1_500);
  await until(() => sink.stats().written >= 500, 'some records delivered');
  await receiver.stop();
  await writeRange(sink, 1_500, 3_500);
  await until(() => sink.stats().failed > 0, 'a failed attempt');
  assert.ok(sink.stats().queued > 0, 'the backlog waits in the spool');
  await receiver.start();
  await writeRange(sink, 3_500, 5_000);
  await sink.flush(Date.now() + FLUSH_MS);

  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, 5_000));
  const stats = sink.stats();
  assert.equal(stats.written, 5_000);
  assert.equal(stats.queued, 0);
  assert.equal(stats.spoolBytes, 0);
  assert.ok(stats.failed > 0);
  assert.ok(errors.length > 0);
  for (const { err } of errors) {
    assert.ok(err instanceof HttpSinkError);
    assert.equal(err.code, 'AUDIT_HTTP_UNREACHABLE');
  }
  const segments = (await readdir(spoolDir)).filter((name) => name.endsWith('.seg'));
  assert.equal(segments.length, 1, 'acknowledged segments are deleted');
});

test('close with the receiver down keeps the backlog; the next start delivers it', async (t) => {
  const receiver = await Receiver.start(t);
  const spoolDir = await tempDir(t);
  const first = await openSink(t, { url: receiver.url, spoolDir });
  await writeRange(first.sink, 0, 100);
  await first.sink.flush(Date.now() + FLUSH_MS);
  assert.equal(first.sink.stats().written, 100);

  await receiver.stop();
  await writeRange(first.sink, 100, 400);
  await first.sink.close(Date.now() + 100);
  assert.equal(first.sink.stats().queued, 300);
  assert.ok(first.sink.stats().spoolBytes > 0);
  const { record: r, line } = record(400);
  assert.throws(() => first.sink.write(r, line), { code: 'AUDIT_HTTP_NOT_OPEN' });

  await receiver.start();
  const second = await openSink(t, { url: receiver.url, spoolDir });
  assert.equal(second.sink.stats().queued, 300);
  await second.sink.flush(Date.now() + FLUSH_MS);
  // The 100 acknowledged before the restart are not sent again.
  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, 400));
  assert.deepEqual(second.sink.stats(), { written: 300, failed: 0, queued: 0, spoolBytes: 0 });
});

test('a torn last line left by a crash is cut off on open; the rest is delivered', async (t) => {
  const receiver = await Receiver.start(t);
  const spoolDir = await tempDir(t);
  await receiver.stop();
  const first = await openSink(t, { url: receiver.url, spoolDir });
  await writeRange(first.sink, 0, 50);
  await first.sink.close(Date.now() + 50);
  assert.equal(first.sink.stats().queued, 50);

  // Injected fault: a crash in the middle of a write leaves part of a line
  // with no newline at the end of the last segment.
  const segments = (await readdir(spoolDir)).filter((name) => name.endsWith('.seg')).sort();
  const torn = record(50).line.slice(0, 40);
  await appendFile(join(spoolDir, segments[segments.length - 1] as string), torn);

  const spool = await Spool.open({ dir: spoolDir });
  assert.equal(spool.discardedBytes, Buffer.byteLength(torn));
  assert.equal(spool.count, 50);
  await spool.close();

  await receiver.start();
  const second = await openSink(t, { url: receiver.url, spoolDir });
  await writeRange(second.sink, 50, 60);
  await second.sink.flush(Date.now() + FLUSH_MS);
  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, 60));
});

test('a spool writer killed mid-run keeps every durable line, in order, from its cursor', async (t) => {
  const dir = await tempDir(t);
  const child = spawn(process.execPath, ['--import', 'tsx', CRASH_WRITER, dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const promised = { durable: -1, acked: -1 };
  let pending = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (pending + chunk).split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const [what, seq] = line.split(' ') as ['durable' | 'acked', string];
      promised[what] = Number(seq);
    }
    // Kill it in full flight: writes and acks still going.
    if (promised.durable >= 3_000 && promised.acked >= 1_000) child.kill('SIGKILL');
  });
  const signal = await new Promise((resolve) =>
    child.on('exit', (_code, signal) => resolve(signal)),
  );
  assert.equal(signal, 'SIGKILL');

  const spool = await Spool.open({ dir });
  const seqs: number[] = [];
  for (;;) {
    const batch = await spool.read(1_000, 1024 * 1024);
    if (batch.lines.length === 0) break;
    for (const line of batch.lines) seqs.push((JSON.parse(line) as { seq: number }).seq);
    await spool.ack(batch);
  }
  await spool.close();
  const first = seqs[0] as number;
  assert.ok(first > promised.acked, 'nothing acknowledged comes back');
  assert.ok(first + seqs.length - 1 >= promised.durable, 'nothing durable is lost');
  assert.deepEqual(
    seqs,
    Array.from({ length: seqs.length }, (_, i) => first + i),
    'in order, once',
  );
});

test("overflow 'block': full past queueMax while the receiver fails, not once drained", async (t) => {
  const receiver = await Receiver.start(t);
  receiver.answer = () => ({ status: 503, body: '{"text":"Server is busy","code":9}' });
  const { sink, errors } = await openSink(t, {
    url: receiver.url,
    spoolDir: await tempDir(t),
    overflow: 'block',
    queueMax: 100,
  });
  await writeRange(sink, 0, 100);
  assert.equal(sink.full, false, 'at queueMax, not past it');
  await writeRange(sink, 100, 150);
  assert.equal(sink.full, true);
  await until(() => errors.length >= 3, 'three failed attempts');
  assert.deepEqual(
    errors.slice(0, 3).map(({ err, attempt }) => [(err as HttpSinkError).code, attempt]),
    [
      ['AUDIT_HTTP_UNAVAILABLE', 1],
      ['AUDIT_HTTP_UNAVAILABLE', 2],
      ['AUDIT_HTTP_UNAVAILABLE', 3],
    ],
  );
  assert.equal(sink.full, true, 'still full while nothing is delivered');

  receiver.answer = () => ({ status: 200, body: '{}' });
  await until(() => !sink.full, 'full to clear');
  await sink.flush(Date.now() + FLUSH_MS);
  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, 150));
  assert.equal(sink.stats().queued, 0);
  assert.ok(sink.stats().failed >= errors.length, 'each failed attempt counts its records');
});

test("overflow 'spool': full only once the spool holds more than spoolMaxBytes", async (t) => {
  const receiver = await Receiver.start(t);
  await receiver.stop();
  const spoolMaxBytes = 8 * 1024;
  const { sink } = await openSink(t, {
    url: receiver.url,
    spoolDir: await tempDir(t),
    overflow: 'spool',
    queueMax: 5,
    spoolMaxBytes,
  });
  let seq = 0;
  while (sink.stats().spoolBytes <= spoolMaxBytes) {
    assert.equal(sink.full, false, `not full at ${sink.stats().spoolBytes} bytes`);
    const { record: r, line } = record(seq++);
    sink.write(r, line);
  }
  assert.ok(seq > 5, 'queueMax does not apply');
  assert.equal(sink.full, true);
  await receiver.start();
  await sink.flush(Date.now() + FLUSH_MS);
  assert.equal(sink.full, false);
  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, seq));
});

test('elastic-bulk: a 200 with "errors":true fails the batch, which is sent again', async (t) => {
  const receiver = await Receiver.start(t);
  let answered = 0;
  receiver.answer = () =>
    answered++ === 0
      ? {
          status: 200,
          body: JSON.stringify({
            took: 2,
            errors: true,
            items: [
              { create: { status: 201 } },
              {
                create: {
                  status: 429,
                  error: { type: 'es_rejected_execution_exception', reason: 'queue is full' },
                },
              },
            ],
          }),
        }
      : { status: 200, body: '{"took":2,"errors":false,"items":[]}' };
  const { sink, errors } = await openSink(t, {
    url: `${receiver.url}/_bulk`,
    format: 'elastic-bulk',
    spoolDir: await tempDir(t),
  });
  await writeRange(sink, 0, 20);
  await sink.flush(Date.now() + FLUSH_MS);

  assert.equal(receiver.received.length, 2);
  assert.equal(receiver.received[0]?.body, receiver.received[1]?.body, 'the same batch again');
  assert.equal(errors.length, 1);
  const err = errors[0]?.err as HttpSinkError;
  assert.equal(err.code, 'AUDIT_HTTP_ITEMS_FAILED');
  assert.match(err.message, /1 of its 2 documents \(first: es_rejected_execution_exception/);
  assert.deepEqual(sink.stats(), { written: 20, failed: 20, queued: 0, spoolBytes: 0 });
  const documents = receiver.received[1]?.body.split('\n').filter((_, i) => i % 2 === 1);
  assert.deepEqual(documents, linesOf(0, 20));
});

test('a 4xx refusal is reported and retried; a silent receiver times out and is retried', async (t) => {
  const receiver = await Receiver.start(t);
  const script: Array<Answer | undefined> = [
    { status: 401, body: '{"text":"Invalid token","code":4}' },
    undefined,
  ];
  receiver.answer = () => (script.length > 0 ? script.shift() : { status: 200, body: '{}' });
  const { sink, errors } = await openSink(t, {
    url: receiver.url,
    spoolDir: await tempDir(t),
    timeoutMs: 200,
  });
  await writeRange(sink, 0, 10);
  await sink.flush(Date.now() + FLUSH_MS);

  assert.deepEqual(
    errors.map(({ err, attempt }) => [(err as HttpSinkError).code, attempt]),
    [
      ['AUDIT_HTTP_REFUSED', 1],
      ['AUDIT_HTTP_TIMEOUT', 2],
    ],
  );
  assert.equal((errors[0]?.err as HttpSinkError).status, 401);
  assert.deepEqual(deliveredLines(receiver, 'json'), linesOf(0, 10));
  assert.equal(sink.stats().failed, 20);
});

test('an answer past MAX_ANSWER_BYTES fails the POST instead of being held, and the batch is sent again', async (t) => {
  const receiver = await Receiver.start(t);
  const huge = { status: 200, body: `{"pad":"${'x'.repeat(MAX_ANSWER_BYTES)}"}` };
  let answered = 0;
  receiver.answer = () => (answered++ === 0 ? huge : { status: 200, body: '{}' });
  const { sink, errors } = await openSink(t, { url: receiver.url, spoolDir: await tempDir(t) });
  await writeRange(sink, 0, 10);
  await sink.flush(Date.now() + FLUSH_MS);

  assert.equal(errors.length, 1, 'one failed POST');
  assert.match((errors[0]?.err as Error).message, /answer larger than 16777216 bytes/);
  // The collector took the first copy; the sink could not know, and sent it again.
  assert.equal(receiver.accepted.length, 2);
  assert.equal(receiver.accepted[1]?.body, receiver.accepted[0]?.body);
  assert.equal(sink.stats().queued, 0);
});
