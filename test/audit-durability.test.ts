/**
 * The audit trail survives a SIEM outage and a restart. A real gateway (the
 * built CLI, `start --config`) with the file sink and the http sink takes
 * 5,000 tool calls while the collector goes away and comes back; the
 * collector is down again at SIGTERM, so the http sink's spool keeps what it
 * could not deliver; a second start on the same directories drains it. Then
 * every call has its inbound and outbound records in both sinks, the
 * collector holds exactly the records the files hold (duplicates, which
 * at-least-once delivery allows, are counted and must be byte-identical), and
 * both trails verify, signatures included, from their genesis.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import { Agent, request, type Dispatcher } from 'undici';
import { stringify } from 'yaml';
import { startModernServer } from './fixtures/modern-server.js';
import { CLI, startChildGateway, type ChildGateway } from './helpers/child-gateway.js';
import { Receiver } from './helpers/receiver.js';
import { ACCEPT_BOTH, modernCall, modernHeaders } from './helpers/requests.js';
import { writeKeys } from '../src/cli/dev.js';
import { argsHash } from '../src/audit/record.js';
import { readAuditFiles, verifyLines, type VerifyReport } from '../src/audit/verify.js';
import type { AuditRecord } from '../src/audit/types.js';

const run = promisify(execFile);

const CALLS = 5_000;
const CONCURRENCY = 16;
/** `audit.checkpointRecords`: several signed checkpoints in the run, each checked by verify. */
const CHECKPOINT_RECORDS = 1_000;
/** The gateway's `shutdown.drainTimeoutMs`: with the collector down, close waits all of it. */
const DRAIN_TIMEOUT_MS = 2_000;
/** From SIGTERM to exit: the drain bound, plus the process's own start of shutdown and exit. */
const EXIT_BOUND_MS = DRAIN_TIMEOUT_MS + 1_500;
/** A backlog shipped after the collector came back. */
const WAIT_MS = 15_000;

/**
 * A SIEM's collector (a JSON webhook, the sink's `format: json`) on the
 * shared receiver: each POSTed array of records taken with a 200. A POST cut
 * off by a stop is not counted; one it answered whose answer was lost on the
 * way is sent again, and counted twice.
 */
class Collector extends Receiver {
  /** Every record it acknowledged, with the line the gateway sealed, in arrival order. */
  get records(): Array<{ readonly line: string; readonly record: AuditRecord }> {
    // Records are canonical JSON with no integer-like keys: stringify gives the sealed bytes back.
    return this.accepted
      .flatMap((r) => JSON.parse(r.body) as AuditRecord[])
      .map((record) => ({ line: JSON.stringify(record), record }));
  }
}

/** `portcullis start --config FILE` in a child process, once it listens; `url` is its echo server. */
async function startGateway(t: TestContext, config: string): Promise<ChildGateway> {
  const gw = await startChildGateway(t, config);
  return { ...gw, url: `${gw.url}/mcp/echo`, stop: () => gw.stop() };
}

const idOf = (call: number): number => call + 1;
const textOf = (call: number): string => `durable call ${call} of ${CALLS}`;

/**
 * Calls `from`..`to-1`, CONCURRENCY at a time; each must succeed. Through
 * undici's `request` rather than `fetch` (the `post` helper): with the
 * upstream in this process too, fetch's overhead halves the calls per second.
 */
async function callRange(
  dispatcher: Dispatcher,
  url: string,
  from: number,
  to: number,
): Promise<void> {
  let next = from;
  const worker = async (): Promise<void> => {
    while (next < to) {
      const call = next++;
      const res = await request(url, {
        method: 'POST',
        dispatcher,
        headers: {
          'content-type': 'application/json',
          accept: ACCEPT_BOTH,
          ...modernHeaders('echo'),
        },
        body: JSON.stringify(modernCall('echo', { text: textOf(call) }, idOf(call))),
      });
      const body = await res.body.text();
      assert.equal(res.statusCode, 200, `call ${call}: ${body}`);
      assert.ok(body.includes(textOf(call)), `call ${call} echoed its text: ${body}`);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

/** Polls `condition` every 20 ms; rejects after WAIT_MS. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > WAIT_MS) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const keyOf = (r: AuditRecord): string => `${r.chain}:${r.seq}`;

/** Asserts every call has one inbound and one outbound tools/call record among `records`. */
function assertEveryCall(records: readonly AuditRecord[], where: string): void {
  const seen = new Map<unknown, { in: number; out: number; argsHash?: string }>();
  for (const r of records) {
    if (r.kind !== 'message' || r.method !== 'tools/call') continue;
    const entry = seen.get(r.rpcId) ?? { in: 0, out: 0 };
    if (r.direction === 'in') {
      entry.in++;
      entry.argsHash = r.argsHash;
    } else if (r.direction === 'out') entry.out++;
    seen.set(r.rpcId, entry);
  }
  for (let call = 0; call < CALLS; call++) {
    const entry = seen.get(idOf(call));
    assert.ok(
      entry?.in === 1 && entry.out === 1,
      `${where}: call ${call}: ${JSON.stringify(entry)}`,
    );
    // The records are this call's, not merely some call's with its id.
    assert.equal(entry.argsHash, argsHash({ text: textOf(call) }), `${where}: call ${call}`);
  }
}

test(
  '5,000 calls through a SIEM outage and a restart: every record in both sinks, both trails verify',
  { timeout: 120_000 },
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'portcullis-audit-durability-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const upstream = await startModernServer();
    t.after(() => upstream.close());
    const client = new Agent({ connections: CONCURRENCY });
    t.after(() => client.close());
    const collector = new Collector();
    await collector.start();
    t.after(() => collector.stop());

    const keysFile = join(dir, 'signing.json');
    const { publicFile } = await writeKeys(keysFile, 'ES256');
    const auditDir = join(dir, 'audit');
    const config = join(dir, 'portcullis.yaml');
    await writeFile(
      config,
      stringify({
        auth: { mode: 'none' },
        servers: { echo: { url: upstream.url } },
        signing: { keysFile },
        audit: {
          checkpointRecords: CHECKPOINT_RECORDS,
          file: { dir: auditDir },
          http: {
            url: `${collector.url}/audit`,
            format: 'json',
            spoolDir: join(dir, 'spool'),
            flushIntervalMs: 20,
            timeoutMs: 2_000,
          },
        },
        shutdown: { drainTimeoutMs: DRAIN_TIMEOUT_MS },
      }),
    );

    // First run: the collector goes away for the third fifth of the calls, comes
    // back for the fourth (long enough to take some of the backlog), and is gone
    // again for the last fifth and the SIGTERM.
    const first = await startGateway(t, config);
    await callRange(client, first.url, 0, 2_000);
    await collector.stop();
    await callRange(client, first.url, 2_000, 3_000);
    await collector.start();
    await callRange(client, first.url, 3_000, 4_000);
    await until(() => collector.acceptedSinceStart > 0, 'the collector to take a batch again');
    await collector.stop();
    await callRange(client, first.url, 4_000, CALLS);
    const firstExit = await first.stop();
    assert.equal(firstExit.code, 0);
    assert.ok(firstExit.ms < EXIT_BOUND_MS, `exited in ${firstExit.ms} ms`);
    assert.ok(
      first.logs.some((l) => l.event === 'audit.sink_error' && l.sink === 'http'),
      'the http sink saw the outage',
    );
    const left = first.logs.find((l) => l.event === 'audit.undelivered' && l.sink === 'http');
    assert.ok(typeof left?.records === 'number' && left.records > 0, 'records left in the spool');
    const deliveredInFirstRun = new Set(collector.records.map((r) => keyOf(r.record))).size;

    // Second run, on the same file and spool directories, with the collector back.
    const lastOfFirstRun = (await linesIn(auditDir)).at(-1);
    assert.ok(lastOfFirstRun !== undefined);
    const { seq: lastSeqOfFirstRun, reason } = JSON.parse(lastOfFirstRun) as AuditRecord;
    assert.equal(reason, 'close', 'the first run closed its chain');
    await collector.start();
    const second = await startGateway(t, config);
    // The spool ships in order: once the second run's start checkpoint is in, so is all before it.
    await until(
      () =>
        collector.records.some(
          ({ record: r }) =>
            r.kind === 'checkpoint' && r.reason === 'start' && r.seq > lastSeqOfFirstRun,
        ),
      'the collector to get the spool of the first run',
    );
    const secondExit = await second.stop();
    assert.equal(secondExit.code, 0);
    assert.ok(secondExit.ms < EXIT_BOUND_MS, `exited in ${secondExit.ms} ms`);
    assert.ok(!second.logs.some((l) => l.event === 'audit.undelivered'), 'nothing left behind');

    // The files: exactly once, in order, every call.
    const fileLines = await linesIn(auditDir);
    const fileRecords = fileLines.map((l) => JSON.parse(l) as AuditRecord);
    assertEveryCall(fileRecords, 'file sink');

    // The collector: at least once. A copy must be the same bytes; the set must be the files'.
    const delivered = new Map<string, string>();
    let duplicates = 0;
    for (const { line, record } of collector.records) {
      const key = keyOf(record);
      const before = delivered.get(key);
      if (before === undefined) delivered.set(key, line);
      else {
        duplicates++;
        assert.equal(line, before, `the copy of ${key} is the same record`);
      }
    }
    t.diagnostic(
      `${fileLines.length} records; ${deliveredInFirstRun} delivered before the restart, ` +
        `${left.records as number} left in the spool; ${duplicates} delivered twice`,
    );
    assert.ok(deliveredInFirstRun < fileLines.length, 'the first run did not deliver everything');
    assert.equal(
      delivered.size,
      fileLines.length,
      'the collector has as many records as the files',
    );
    for (const [i, line] of fileLines.entries()) {
      const key = keyOf(fileRecords[i] as AuditRecord);
      assert.equal(delivered.get(key), line, `the collector has ${key} as the file does`);
    }
    const collected = [...delivered.values()]
      .map((line) => ({ line, record: JSON.parse(line) as AuditRecord }))
      .sort((a, b) => a.record.seq - b.record.seq);
    assertEveryCall(
      collected.map((c) => c.record),
      'http sink',
    );

    // The files verify with the CLI: one chain from its genesis across both runs, every checkpoint signed.
    const cli = await run(process.execPath, [
      CLI,
      'audit',
      'verify',
      '--from-genesis',
      '--jwks',
      publicFile,
      '--json',
      auditDir,
    ]);
    // One source, so one report: under `sources` since verify reads several at once, bare before.
    const json = JSON.parse(cli.stdout) as VerifyReport | { ok: boolean; sources: VerifyReport[] };
    assert.equal(json.ok, true, cli.stdout);
    const report = 'sources' in json ? (json.sources[0] as VerifyReport) : json;
    assert.equal(report.ok, true, cli.stdout);
    assert.equal(report.records, fileLines.length);
    assert.equal(report.chains.length, 1);
    const [chain] = report.chains;
    assert.ok(chain?.closed, 'the chain ends with the second run closing');
    assert.ok(chain.checkpoints >= (2 * CALLS) / CHECKPOINT_RECORDS, `${chain.checkpoints}`);
    // All but the chain's very first, which has no head to sign.
    assert.equal(chain.signedCheckpoints, chain.checkpoints - 1);

    // So does what the collector got, in seq order.
    const collectedFile = join(dir, 'collected.jsonl');
    await writeFile(collectedFile, collected.map((c) => c.line).join('\n') + '\n');
    const jwks = JSON.parse(await readFile(publicFile, 'utf8')) as JSONWebKeySet;
    const collectedReport = await verifyLines(readAuditFiles([collectedFile]), {
      jwks,
      fromGenesis: true,
    });
    assert.deepEqual(collectedReport.problems, []);
    assert.deepEqual(collectedReport.chains, report.chains);
  },
);

async function linesIn(auditDir: string): Promise<string[]> {
  const lines: string[] = [];
  for await (const { line } of readAuditFiles([auditDir])) lines.push(line);
  return lines;
}
