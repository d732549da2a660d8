/**
 * The audit trail end to end: a JWT gateway with tenants and rules in front
 * of a modern (2026-07-28) MCP server built on the official SDK, the file sink, checkpoints signed
 * with the gateway's key. Every message in each direction, every denial,
 * shadow denial and refused request has its record with the contract's
 * fields; `portcullis audit verify` (the built CLI) passes on the files the
 * gateway wrote and names the first bad record of an altered, a removed, a
 * swapped and a re-hashed one; a second start continues the same chain.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';
import { writeKeys } from '../src/cli/dev.js';
import { argsHash, sealRecord } from '../src/audit/record.js';
import { auditFiles } from '../src/audit/sinks/file.js';
import { readAuditFiles, verifyLines } from '../src/audit/verify.js';
import type { AuditRecord } from '../src/audit/types.js';
import { ACME_TENANT } from './fixtures/audit-tenants.js';

const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);

/** `portcullis audit verify …`: its exit status and output. */
async function verifyCli(...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await run(process.execPath, [CLI, 'audit', 'verify', ...args]);
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, out: e.stdout + e.stderr };
  }
}

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';

let upstream: ModernServer;
let dir: string;
let issuer: SigningKey;
let signingFile: string;
let publicJwks: string;

function gatewayConfig(auditDir: string): Record<string, unknown> {
  return {
    signing: { keysFile: signingFile },
    audit: { file: { dir: auditDir }, checkpointRecords: 5 },
    tenants: { acme: ACME_TENANT },
  };
}

async function startAudited(auditDir: string): Promise<AuthGateway> {
  return startAuthGateway(
    { everything: upstream.url },
    { jwt: { jwksFile: await writeJwks(dir, issuer) } },
    gatewayConfig(auditDir),
  );
}

const token = (gw: AuthGateway, tenant = 'acme', sub = 'alice') =>
  mint(issuer, gw.url, { claims: { tenant, sub, client_id: 'agent-7' } });

/** A modern tools/call of echo, as an agent with a token sends it. */
async function echo(gw: AuthGateway, message: string, id: number, bearer?: string) {
  return post(gw.urlFor('everything'), modernCall('echo', { text: message }, id), {
    ...modernHeaders('echo'),
    ...(bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }),
    traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01`,
  });
}

async function recordsIn(auditDir: string): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const { line } of readAuditFiles([auditDir]))
    out.push(JSON.parse(line) as AuditRecord);
  return out;
}

before(async () => {
  upstream = await startModernServer();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-audit-'));
  issuer = await newKey('ES256');
  signingFile = join(dir, 'gateway-keys.json');
  publicJwks = (await writeKeys(signingFile, 'ES256')).publicFile;
});

after(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

/** A tool name and a JSON-RPC id far longer than a record keeps. */
const LONG_TOOL = 't'.repeat(2_000);
const LONG_ID = 'i'.repeat(2_000);

describe('records of a run', () => {
  const auditDir = () => join(dir, 'run');
  let records: AuditRecord[];
  let bearer: string;

  before(async () => {
    const gw = await startAudited(auditDir());
    bearer = await token(gw);
    try {
      assert.equal((await echo(gw, 'hi', 7, bearer)).status, 200);
      // A policy denial is a JSON-RPC error in a 200 (the transport carried it fine).
      const denied = await echo(gw, 'tell me the secret', 8, bearer);
      assert.equal(denied.status, 200);
      assert.match(await denied.text(), /PORTCULLIS_ERR_POLICY_DENIED/);
      assert.equal(
        (await echo(gw, 'a message well over twenty characters', 9, bearer)).status,
        200,
      );
      assert.equal((await echo(gw, 'hi', 10)).status, 401);
      assert.equal((await echo(gw, 'hi', 11, 'not.a.token')).status, 401);
      const bad = await post(gw.urlFor('everything'), '{"jsonrpc":"2.0",', {
        authorization: `Bearer ${bearer}`,
      });
      assert.equal(bad.status, 400);
      await bad.text();
      const long = await post(
        gw.urlFor('everything'),
        modernCall(LONG_TOOL, { text: 'hi' }, LONG_ID),
        { ...modernHeaders(LONG_TOOL), authorization: `Bearer ${bearer}` },
      );
      await long.text();
    } finally {
      await gw.close();
    }
    records = await recordsIn(auditDir());
  });

  test("a client's long tool name and string id are cut to 256 characters in the record", () => {
    const long = records.filter((r) => r.kind === 'message' && r.tool?.startsWith('t'.repeat(10)));
    assert.ok(long.length > 0, 'the long call has its records');
    for (const r of long) {
      assert.equal(r.tool, LONG_TOOL.slice(0, 256));
      assert.equal(r.rpcId, LONG_ID.slice(0, 256));
    }
  });

  const messages = (rpcId: number) =>
    records.filter((r) => r.kind === 'message' && r.rpcId === rpcId);

  test('an allowed call has one record in and one out, with the contract fields', () => {
    const [inbound, outbound] = messages(7);
    assert.ok(inbound && outbound, 'two records for the call');
    assert.deepEqual(
      {
        direction: inbound.direction,
        method: inbound.method,
        tool: inbound.tool,
        tenant: inbound.tenant,
        subject: inbound.subject,
        client: inbound.client,
        server: inbound.server,
        era: inbound.era,
        decision: inbound.decision,
        action: inbound.action,
        status: inbound.status,
        traceId: inbound.traceId,
        credentialMode: inbound.credentialMode,
      },
      {
        direction: 'in',
        method: 'tools/call',
        tool: 'echo',
        tenant: 'acme',
        subject: 'alice',
        client: 'agent-7',
        server: 'everything',
        era: 'modern',
        decision: 'allow',
        action: 'forward',
        status: 200,
        traceId: TRACE_ID,
        credentialMode: 'none',
      },
    );
    // The brief's prompt hash: of the canonical arguments, whatever their key order.
    assert.equal(inbound.argsHash, argsHash({ text: 'hi' }));
    assert.equal(outbound.direction, 'out');
    assert.equal(outbound.method, 'tools/call');
    assert.equal(outbound.tool, 'echo');
    assert.equal(outbound.isError, false);
    for (const r of [inbound, outbound]) {
      assert.ok(typeof r.bytesIn === 'number' && r.bytesIn > 0, 'bytesIn');
      assert.ok(typeof r.bytesOut === 'number' && r.bytesOut > 0, 'bytesOut');
      assert.ok(typeof r.gatewayMs === 'number' && r.gatewayMs >= 0, 'gatewayMs');
      assert.ok(typeof r.upstreamMs === 'number' && r.upstreamMs >= 0, 'upstreamMs');
      assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    assert.equal(outbound.seq, inbound.seq + 1);
    assert.equal(outbound.prevHash, inbound.hash);
  });

  test('a denial has its record: decision deny, the rule, the status and error sent', () => {
    const [denied, ...rest] = messages(8);
    assert.equal(rest.length, 0, 'nothing went upstream, so nothing came back');
    assert.equal(denied?.decision, 'deny');
    assert.equal(denied?.action, 'refuse');
    assert.equal(denied?.rule, 'no-secrets');
    assert.equal(denied?.status, 200);
    assert.equal(denied?.error, 'PORTCULLIS_ERR_POLICY_DENIED');
  });

  test('a shadow denial is recorded as such, and the call went through', () => {
    const [inbound, outbound] = messages(9);
    assert.equal(inbound?.decision, 'shadow-deny');
    assert.equal(inbound?.rule, 'watch-long-echo');
    assert.equal(inbound?.action, 'forward');
    assert.equal(outbound?.decision, 'allow');
  });

  test('authentication failures and a malformed body are refusals', () => {
    const refusals = records.filter((r) => r.kind === 'refusal');
    assert.deepEqual(
      refusals.map((r) => [r.status, r.error, r.path, r.decision]),
      [
        [401, 'PORTCULLIS_ERR_AUTH_MISSING', '/mcp/everything', 'deny'],
        [401, 'PORTCULLIS_ERR_AUTH_INVALID_TOKEN', '/mcp/everything', 'deny'],
        [400, 'PORTCULLIS_ERR_JSONRPC_PARSE', '/mcp/everything', 'deny'],
      ],
    );
    // Before authentication nobody is known; the malformed body's sender is.
    assert.equal(refusals[0]?.subject, 'anonymous');
    assert.equal(refusals[2]?.subject, 'alice');
  });

  test('no record holds a credential', async () => {
    const files = await auditFiles(auditDir());
    const text = (await Promise.all(files.map((f) => readFile(f, 'utf8')))).join('');
    assert.ok(!text.includes(bearer), "the agent's token is nowhere");
    assert.doesNotMatch(text, /not\.a\.token/);
    assert.doesNotMatch(text, /authorization/i);
    // The only JWTs are the checkpoints' signatures, by the gateway's own key.
    for (const r of records.filter((r) => r.kind !== 'checkpoint'))
      assert.doesNotMatch(JSON.stringify(r), /eyJ/);
  });

  test('checkpoints: at start, every 5 records, and at close, each signed', () => {
    const checkpoints = records.filter((r) => r.kind === 'checkpoint');
    assert.equal(checkpoints[0]?.reason, 'start');
    assert.equal(checkpoints.at(-1)?.reason, 'close');
    assert.ok(checkpoints.some((c) => c.reason === 'periodic'));
    for (const c of checkpoints.slice(1)) assert.match(c.sig ?? '', /^eyJ/);
    assert.equal(records.at(-1)?.kind, 'checkpoint', 'the close checkpoint is the last record');
  });

  test('audit verify passes on the directory, checking the signatures', async () => {
    const { code, out } = await verifyCli('--jwks', publicJwks, auditDir());
    assert.equal(code, 0, out);
    assert.match(out, new RegExp(`ok: ${records.length} records verified`));
    assert.match(out, /checkpoints \(\d+ signed\)/);
  });

  describe('tampering', () => {
    /** The run's lines with `edit` applied, written to a file of their own; verify's output. */
    async function tampered(edit: (lines: string[]) => void) {
      const [file] = await auditFiles(auditDir());
      const lines = (await readFile(file as string, 'utf8')).trimEnd().split('\n');
      edit(lines);
      const copy = join(dir, `tampered-${Math.random().toString(36).slice(2)}.jsonl`);
      await writeFile(copy, lines.join('\n') + '\n');
      const result = await verifyCli('--jwks', publicJwks, copy);
      return { ...result, copy };
    }
    const seqOf = (line: string) => (JSON.parse(line) as AuditRecord).seq;

    test('an altered record is named', async () => {
      const { code, out, copy } = await tampered((lines) => {
        lines[4] = (lines[4] as string).replace('"subject":"alice"', '"subject":"mallory"');
      });
      assert.equal(code, 1, out);
      assert.match(out, new RegExp(`BAD ${copy}:5 \\(seq \\d+\\): altered`));
    });

    test('a removed record is named by the one after the gap', async () => {
      let removed = -1;
      const { code, out, copy } = await tampered((lines) => {
        removed = seqOf(lines[3] as string);
        lines.splice(3, 1);
      });
      assert.equal(code, 1, out);
      assert.match(
        out,
        new RegExp(`BAD ${copy}:4 \\(seq ${removed + 1}\\): .*seq ${removed} is missing`),
      );
    });

    test('two swapped records are named', async () => {
      const { code, out, copy } = await tampered((lines) => {
        const a = lines[3] as string;
        lines[3] = lines[4] as string;
        lines[4] = a;
      });
      assert.equal(code, 1, out);
      assert.match(out, new RegExp(`BAD ${copy}:4 \\(seq \\d+\\): .*missing or out of order`));
    });

    test('a record altered and re-hashed breaks the chain at the next one', async () => {
      const { code, out, copy } = await tampered((lines) => {
        const record = JSON.parse(lines[4] as string) as AuditRecord;
        record.subject = 'mallory';
        lines[4] = sealRecord(record);
      });
      assert.equal(code, 1, out);
      assert.match(out, new RegExp(`BAD ${copy}:6 \\(seq \\d+\\): its prevHash is not the hash`));
    });

    test('the whole chain re-hashed after an edit is caught by a signed checkpoint', async () => {
      const { code, out } = await tampered((lines) => {
        let prev: string | undefined;
        for (let i = 0; i < lines.length; i++) {
          const record = JSON.parse(lines[i] as string) as AuditRecord;
          if (i === 4) record.subject = 'mallory';
          if (prev !== undefined) record.prevHash = prev;
          if (
            i >= 4 &&
            record.kind === 'checkpoint' &&
            record.signedSeq !== undefined &&
            record.signedSeq >= 4
          )
            record.signedHash = '0'.repeat(64);
          lines[i] = sealRecord(record);
          prev = record.hash;
        }
      });
      assert.equal(code, 1, out);
      assert.match(out, /BAD .*: a checkpoint/);
    });
  });
});

test('W3C traceparent: a well-formed one goes upstream with its tracestate, a malformed one does not', async () => {
  const gw = await startAudited(join(dir, 'trace'));
  const seen: Array<Record<string, string>> = [];
  const listener = (r: { headers: Record<string, string> }) => seen.push(r.headers);
  upstream.events.on('request', listener);
  try {
    const bearer = await token(gw);
    const send = (traceparent: string) =>
      post(gw.urlFor('everything'), modernCall('echo', { text: 'trace' }, 1), {
        ...modernHeaders('echo'),
        authorization: `Bearer ${bearer}`,
        traceparent,
        tracestate: 'vendor=abc',
      }).then((r) => r.text());
    await send(`00-${TRACE_ID}-00f067aa0ba902b7-01`);
    await send(`00-${'0'.repeat(32)}-00f067aa0ba902b7-01`);
    await send('not-a-traceparent');
  } finally {
    upstream.events.off('request', listener);
    await gw.close();
  }
  assert.equal(seen.length, 3);
  assert.equal(seen[0]?.traceparent, `00-${TRACE_ID}-00f067aa0ba902b7-01`);
  assert.equal(seen[0]?.tracestate, 'vendor=abc');
  for (const headers of seen.slice(1)) {
    assert.equal(headers.traceparent, undefined);
    assert.equal(headers.tracestate, undefined);
  }
});

test('a second start continues the chain: one chain across both files, verified whole', async () => {
  const auditDir = join(dir, 'restart');
  for (let round = 0; round < 2; round++) {
    const gw = await startAudited(auditDir);
    try {
      assert.equal((await echo(gw, `round ${round}`, round, await token(gw))).status, 200);
    } finally {
      await gw.close();
    }
  }
  const files = await auditFiles(auditDir);
  assert.equal(files.length, 2);
  const report = await verifyLines(readAuditFiles([auditDir]), {
    jwks: JSON.parse(await readFile(publicJwks, 'utf8')),
    fromGenesis: true,
  });
  assert.deepEqual(report.problems, []);
  assert.equal(report.chains.length, 1);
  assert.equal(report.chains[0]?.firstSeq, 0);
  assert.equal(report.chains[0]?.lastSeq, report.records - 1);
  assert.equal(report.chains[0]?.closed, true);
});
