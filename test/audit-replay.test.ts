/**
 * Capture mode and `portcullis audit replay` end to end: a JWT gateway with
 * `audit.file` and `audit.capture` in front of the modern (2026-07-28) SDK
 * fixture and of server-everything (legacy, through the SDK 1.x client).
 * The capture holds no plaintext; a replay of the recorded calls, straight
 * to the upstream or through a fresh gateway, gives the same answers (exit
 * 0); against an upstream that answers differently it names the call and
 * the path (exit 1); a capture entry flipped, moved, or kept beside an
 * altered record is refused, never sent; a bad key file stops the start.
 */
import assert from 'node:assert/strict';
import { chmod, cp, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import * as z from 'zod';
import { auditReplay } from '../src/cli/audit-replay.js';
import { writeKeys } from '../src/cli/dev.js';
import { captureFiles, loadCaptureKey, parseCaptureLine } from '../src/audit/capture.js';
import { sealRecord } from '../src/audit/record.js';
import { auditFiles } from '../src/audit/sinks/file.js';
import type { AuditRecord } from '../src/audit/types.js';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { writeWebResponse } from './fixtures/web-response.js';
import { startAuthGateway, type AuthGateway } from './helpers/auth-gateway.js';
import { startEverything } from './helpers/everything.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';
import { mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
/** In every argument sent: it must be nowhere in the capture files. */
const CANARY = 'canary-7c1e';

let dir: string;
let issuer: SigningKey;
let jwksFile: string;
let keyFile: string;
let signingFile: string;
/** The gateway's public keys, which sign the trail's checkpoints. */
let publicJwks: string;
let modern: ModernServer;
let everything: Awaited<ReturnType<typeof startEverything>>;
const auditDir = () => join(dir, 'audit');
const captureDir = () => join(dir, 'capture');
let legacySession: string;

function gatewayConfig(audit: Record<string, unknown> | undefined): Record<string, unknown> {
  return {
    signing: { keysFile: signingFile },
    ...(audit === undefined ? {} : { audit }),
    tenants: {
      acme: {
        servers: {
          everything: { tools: ['echo', 'region_query'] },
          legacy: { tools: ['echo'] },
        },
        rules: [
          {
            id: 'no-secrets',
            when: 'arguments.text.contains("secret")',
            servers: ['everything'],
            targets: ['echo'],
          },
        ],
      },
    },
  };
}

async function startGw(audit?: Record<string, unknown>): Promise<AuthGateway> {
  return startAuthGateway(
    { everything: modern.url, legacy: everything.url },
    { jwt: { jwksFile } },
    gatewayConfig(audit),
  );
}

const token = (gw: AuthGateway) =>
  mint(issuer, gw.url, { claims: { tenant: 'acme', sub: 'alice', client_id: 'agent-7' } });

/** A modern call as an agent sends it, in the one trace the replay selects. */
async function call(gw: AuthGateway, bearer: string, tool: string, args: object, id: number) {
  const headers: Record<string, string> = {
    ...modernHeaders(tool),
    authorization: `Bearer ${bearer}`,
    traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01`,
  };
  if (tool === 'region_query') headers['mcp-param-region'] = (args as { region: string }).region;
  const res = await post(gw.urlFor('everything'), modernCall(tool, { ...args }, id), headers);
  assert.equal(res.status, 200);
  return (await res.json()) as { result?: unknown; error?: unknown };
}

class UsageError extends Error {}

/** `portcullis audit replay …`, in process: its exit status and what it printed. */
async function replayCli(...args: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    await auditReplay(
      args,
      (message) => {
        throw new UsageError(message);
      },
      { write: (text: string) => (out += text) },
    );
    return { code: Number(process.exitCode ?? 0), out };
  } catch (err) {
    if (err instanceof UsageError) return { code: 2, out: err.message };
    throw err;
  } finally {
    process.exitCode = before;
  }
}

/** The replay's sources: the run's trail, capture and key unless one is named. */
const sources = (
  over: { from?: string; capture?: string; key?: string },
  ...extra: string[]
): string[] => [
  '--from',
  over.from ?? auditDir(),
  '--capture',
  over.capture ?? captureDir(),
  '--key-file',
  over.key ?? keyFile,
  ...extra,
];
const base = (...extra: string[]) => sources({}, ...extra);

/** A modern upstream on the SDK whose echo answers in capitals: the same calls, other answers. */
async function startShoutingServer(): Promise<{ url: string; close(): Promise<void> }> {
  const handler = createMcpHandler(
    () => {
      const server = new McpServer({ name: 'portcullis-modern-fixture', version: '1.0.0' });
      server.registerTool(
        'echo',
        { description: 'Echo the text back.', inputSchema: z.object({ text: z.string() }) },
        ({ text }) => ({ content: [{ type: 'text', text: text.toUpperCase() }] }),
      );
      server.registerTool(
        'region_query',
        {
          inputSchema: z.object({
            region: z.string().meta({ 'x-mcp-header': 'Region' }),
            query: z.string(),
          }),
        },
        ({ region, query }) => ({
          content: [{ type: 'text', text: `region=${region} query=${query}` }],
        }),
      );
      return server;
    },
    { legacy: 'reject', keepAliveMs: 0 },
  );
  const http = createServer((req: IncomingMessage, res) => {
    void (async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
      const headers = new Headers();
      for (const [k, v] of Object.entries(req.headers))
        if (typeof v === 'string') headers.set(k, v);
      const request = new Request(`http://127.0.0.1${req.url ?? '/'}`, {
        method: req.method ?? 'GET',
        headers,
        ...(chunks.length > 0 ? { body: Buffer.concat(chunks) } : {}),
      });
      await writeWebResponse(res, await handler.fetch(request), new AbortController().signal);
    })().catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    close: async () => {
      await handler.close();
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

async function recordsIn(where: string): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for (const file of await auditFiles(where))
    for (const line of (await readFile(file, 'utf8')).split('\n'))
      if (line !== '') out.push(JSON.parse(line) as AuditRecord);
  return out;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-replay-'));
  issuer = await newKey('ES256');
  jwksFile = await writeJwks(dir, issuer);
  signingFile = join(dir, 'gateway-keys.json');
  publicJwks = (await writeKeys(signingFile, 'ES256')).publicFile;
  keyFile = join(dir, 'capture.key');
  await writeFile(keyFile, Buffer.alloc(32, 7).toString('base64') + '\n', { mode: 0o600 });
  [modern, everything] = await Promise.all([startModernServer(), startEverything()]);

  // The recorded run.
  const gw = await startGw({ file: { dir: auditDir() }, capture: { dir: captureDir(), keyFile } });
  try {
    const bearer = await token(gw);
    await call(gw, bearer, 'echo', { text: `${CANARY} one` }, 1);
    // Refused by the rule: recorded, and skipped by the replay (never sent).
    const denied = await call(gw, bearer, 'echo', { text: `${CANARY} secret` }, 2);
    assert.ok(denied.error, 'the rule refused it');
    await call(gw, bearer, 'region_query', { region: 'eu-west', query: `${CANARY} q` }, 1);
    await call(gw, bearer, 'echo', { text: `${CANARY} two` }, 3);

    const client = new Client({ name: 'replay-test', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(gw.urlFor('legacy')), {
      requestInit: { headers: { authorization: `Bearer ${bearer}` } },
    });
    await client.connect(transport);
    legacySession = transport.sessionId as string;
    const echoed = await client.callTool({ name: 'echo', arguments: { message: `${CANARY} L` } });
    assert.match(JSON.stringify(echoed), new RegExp(CANARY));
    await client.callTool({ name: 'echo', arguments: { message: `${CANARY} M` } });
    await client.close();
  } finally {
    await gw.close();
  }
});

after(async () => {
  await Promise.all([modern?.close(), everything?.stop()]);
  await rm(dir, { recursive: true, force: true });
});

describe('the capture', () => {
  test('one entry per message record, private files, no plaintext of the arguments', async () => {
    const files = await captureFiles(captureDir());
    assert.ok(files.length >= 1);
    assert.equal((await stat(captureDir())).mode & 0o777, 0o700);
    const entries = [];
    for (const file of files) {
      assert.equal((await stat(file)).mode & 0o777, 0o600);
      const text = await readFile(file, 'utf8');
      assert.ok(!text.includes(CANARY), 'no argument in the clear');
      assert.ok(!text.includes(Buffer.from(CANARY).toString('base64').slice(0, 12)));
      for (const line of text.trimEnd().split('\n')) {
        const entry = parseCaptureLine(line);
        assert.ok(entry, line);
        assert.deepEqual(Object.keys(JSON.parse(line) as object), [
          'chain',
          'seq',
          'iv',
          'ct',
          'tag',
        ]);
        entries.push(entry);
      }
    }
    const messages = (await recordsIn(auditDir())).filter((r) => r.kind === 'message');
    assert.deepEqual(
      entries.map((e) => `${e.chain}:${e.seq}`).sort(),
      messages.map((r) => `${r.chain}:${r.seq}`).sort(),
      'an entry for every message record, and for nothing else',
    );
    // The records are what they were: no field of capture's.
    for (const r of messages) assert.ok(!('captured' in r));
  });

  test('a key file missing, of the wrong size, or open to others stops the start', async () => {
    await assert.rejects(loadCaptureKey(join(dir, 'none.key')), /does not exist; make one with/);
    const short = join(dir, 'short.key');
    await writeFile(short, Buffer.alloc(16).toString('hex'), { mode: 0o600 });
    await assert.rejects(loadCaptureKey(short), /does not hold a 32-byte key as base64 or hex/);
    const open = join(dir, 'open.key');
    await writeFile(open, Buffer.alloc(32, 1).toString('hex'));
    await chmod(open, 0o644);
    await assert.rejects(
      startGw({ file: { dir: join(dir, 'a2') }, capture: { dir: join(dir, 'c2'), keyFile: open } }),
      /readable or writable by group or others \(mode 0644\); chmod 600/,
    );
  });
});

describe('replay', () => {
  test('modern calls, straight to the upstream: the same answers; the refused call is skipped', async () => {
    const { code, out } = await replayCli(...base('--trace', TRACE_ID, '--target', modern.url));
    assert.equal(code, 0, out);
    assert.match(out, /replaying 4 recorded call\(s\)/);
    assert.match(out, /seq \d+ tools\/call echo \(id 1\): same/);
    assert.match(out, /seq \d+ tools\/call region_query \(id 1\): same/);
    assert.match(out, /tools\/call echo \(id 2\): skipped: refused by the gateway .*no-secrets/);
    assert.match(out, /ok: 4 call\(s\): 3 same, 0 differ, 0 cannot be replayed, 1 skipped/);
    // Each recorded call reached the upstream once more; the refused one did not.
    const texts = modern.events
      .requestsFor('tools/call', 'echo')
      .map((r) => (r.body as { params: { arguments: { text: string } } }).params.arguments.text);
    assert.equal(texts.filter((t) => t.includes('secret')).length, 0);
    assert.equal(texts.filter((t) => t === `${CANARY} one`).length, 2);
    // The tool's Mcp-Param header, learned from the upstream's tools/list as a client learns it.
    const region = modern.events.requestsFor('tools/call', 'region_query').at(-1);
    assert.equal(region?.mcpHeaders['mcp-param-region'], 'eu-west');
    assert.equal(region?.mcpHeaders['mcp-protocol-version'], '2026-07-28');
  });

  test('modern calls through a fresh gateway, with a token: the same answers', async () => {
    const gw = await startGw();
    try {
      const tokenFile = join(dir, 'token');
      await writeFile(tokenFile, await token(gw), { mode: 0o600 });
      const { code, out } = await replayCli(
        ...base(
          '--trace',
          TRACE_ID,
          '--target',
          gw.urlFor('everything'),
          '--token-file',
          tokenFile,
        ),
      );
      assert.equal(code, 0, out);
      assert.match(out, /3 same/);
    } finally {
      await gw.close();
    }
  });

  test('a legacy session through a fresh gateway: initialize and calls, the same answers', async () => {
    const gw = await startGw();
    try {
      const { code, out } = await replayCli(
        ...base(
          '--session',
          legacySession,
          '--target',
          gw.urlFor('legacy'),
          '--token',
          await token(gw),
        ),
      );
      assert.equal(code, 0, out);
      assert.match(out, /seq \d+ initialize \(id 0\): same/);
      assert.match(out, /tools\/call echo \(id 1\): same/);
      assert.match(out, /tools\/call echo \(id 2\): same/);
      assert.match(out, /ok: 3 call\(s\): 3 same/);
      // …and straight to server-everything, in a session of its own.
      const direct = await replayCli(
        ...base('--session', legacySession, '--target', everything.url, '--jwks', publicJwks),
      );
      assert.equal(direct.code, 0, direct.out);
      assert.match(direct.out, /ok: 3 call\(s\): 3 same/);
    } finally {
      await gw.close();
    }
  });

  test('an upstream that answers differently: the call and the path are named, exit 1', async () => {
    const shouting = await startShoutingServer();
    try {
      const { code, out } = await replayCli(
        ...base('--trace', TRACE_ID, '--target', shouting.url, '--json'),
      );
      assert.equal(code, 1, out);
      const report = JSON.parse(out) as {
        ok: boolean;
        calls: Array<{ method: string; tool?: string; outcome: string; differences?: unknown }>;
      };
      assert.equal(report.ok, false);
      assert.deepEqual(
        report.calls.map((c) => [c.tool, c.outcome]),
        [
          ['echo', 'differs'],
          ['echo', 'skipped'],
          ['region_query', 'same'],
          ['echo', 'differs'],
        ],
      );
      assert.deepEqual(report.calls[0]?.differences, [
        {
          path: 'result.content[0].text',
          old: `${CANARY} one`,
          new: `${CANARY} one`.toUpperCase(),
        },
      ]);
      const text = await replayCli(...base('--trace', TRACE_ID, '--target', shouting.url));
      assert.equal(text.code, 1);
      assert.match(
        text.out,
        new RegExp(
          `tools/call echo \\(id 1\\): DIFFERS\\n    result\\.content\\[0\\]\\.text: "${CANARY} one" → "${CANARY.toUpperCase()} ONE"`,
        ),
      );
      assert.match(text.out, /FAILED: 4 call\(s\): 1 same, 2 differ/);
      // …and a path the operator says may differ is not compared.
      const ignoring = await replayCli(
        ...base(
          '--trace',
          TRACE_ID,
          '--target',
          shouting.url,
          '--ignore',
          'result.content[*].text',
        ),
      );
      assert.equal(ignoring.code, 0, ignoring.out);
    } finally {
      await shouting.close();
    }
  });

  test('a target answering more than 16 MiB: the read stops there and the call is reported', async () => {
    const huge = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{"jsonrpc":"2.0","id":1,"result":{"pad":"${'x'.repeat(17 * 1024 * 1024)}"}}`);
      });
    });
    await new Promise<void>((resolve) => huge.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(huge.address() as AddressInfo).port}/mcp`;
      const { code, out } = await replayCli(...base('--trace', TRACE_ID, '--target', url));
      assert.equal(code, 1, out);
      assert.match(out, /answer larger than 16777216 bytes/);
    } finally {
      huge.closeAllConnections();
      await new Promise((resolve) => huge.close(resolve));
    }
  });

  describe('lineage', () => {
    /** The capture directory copied, with `edit` applied to its entries (as parsed objects). */
    async function tamperedCapture(
      edit: (entries: Array<Record<string, unknown>>) => void,
    ): Promise<string> {
      const copy = join(dir, `capture-${Math.random().toString(36).slice(2)}`);
      await cp(captureDir(), copy, { recursive: true });
      const entries: Array<{ file: string; entry: Record<string, unknown> }> = [];
      for (const file of await captureFiles(copy))
        for (const line of (await readFile(file, 'utf8')).trimEnd().split('\n'))
          entries.push({ file, entry: JSON.parse(line) as Record<string, unknown> });
      edit(entries.map((e) => e.entry));
      for (const file of new Set(entries.map((e) => e.file)))
        await writeFile(
          file,
          entries
            .filter((e) => e.file === file)
            .map((e) => JSON.stringify(e.entry) + '\n')
            .join(''),
        );
      return copy;
    }

    const firstEcho = async () =>
      (await recordsIn(auditDir())).find(
        (r) => r.direction === 'in' && r.tool === 'echo' && r.traceId === TRACE_ID,
      ) as AuditRecord;

    const replayWith = (capture: string) =>
      replayCli(...sources({ capture }, '--trace', TRACE_ID, '--target', modern.url));

    test('a byte of ct flipped: the entry does not decrypt, and the call is not sent', async () => {
      const { seq } = await firstEcho();
      const sentBefore = modern.events.requestsFor('tools/call', 'echo').length;
      const copy = await tamperedCapture((entries) => {
        const e = entries.find((x) => x.seq === seq) as { ct: string };
        const ct = Buffer.from(e.ct, 'base64url');
        ct[0] = (ct[0] as number) ^ 0x01;
        e.ct = ct.toString('base64url');
      });
      const { code, out } = await replayWith(copy);
      assert.equal(code, 1, out);
      assert.match(
        out,
        new RegExp(
          `seq ${seq} tools/call echo \\(id 1\\): CANNOT REPLAY: the capture entry of seq ${seq}: it does not decrypt`,
        ),
      );
      assert.match(out, /2 same, 0 differ, 1 cannot be replayed, 1 skipped/);
      // Only the two sound echo calls went out.
      assert.equal(modern.events.requestsFor('tools/call', 'echo').length, sentBefore + 1);
    });

    test("an entry moved to another record's seq does not decrypt", async () => {
      const { seq } = await firstEcho();
      const copy = await tamperedCapture((entries) => {
        const target = entries.find((x) => x.seq === seq) as Record<string, unknown>;
        const other = entries.find((x) => x.seq === seq + 1) as Record<string, unknown>;
        // The answer's entry put in place of the request's.
        for (const k of ['iv', 'ct', 'tag']) target[k] = other[k];
      });
      const { code, out } = await replayWith(copy);
      assert.equal(code, 1, out);
      assert.match(
        out,
        new RegExp(`seq ${seq} tools/call echo \\(id 1\\): CANNOT REPLAY: .*does not decrypt`),
      );
    });

    test('a record altered and the whole chain re-hashed: the trail verifies, the entry does not', async () => {
      const { seq } = await firstEcho();
      const copy = join(dir, `audit-${Math.random().toString(36).slice(2)}`);
      await cp(auditDir(), copy, { recursive: true });
      const [file] = await auditFiles(copy);
      // What someone with the files and not the key can do: edit, then re-chain everything.
      const renamed = new Map<string, string>();
      let prev: string | undefined;
      const lines = (await readFile(file as string, 'utf8'))
        .trimEnd()
        .split('\n')
        .map((line) => {
          const record = JSON.parse(line) as AuditRecord;
          const old = record.hash;
          if (record.seq === seq) record.client = 'someone-else';
          if (prev !== undefined) record.prevHash = prev;
          if (record.signedHash !== undefined)
            record.signedHash = renamed.get(record.signedHash) ?? record.signedHash;
          const sealed = sealRecord(record);
          renamed.set(old, record.hash);
          prev = record.hash;
          return sealed;
        });
      await writeFile(file as string, lines.join('\n') + '\n');
      const { code, out } = await replayCli(
        ...sources({ from: copy }, '--trace', TRACE_ID, '--target', modern.url),
      );
      assert.equal(code, 1, out);
      assert.match(out, /trail: \d+ records verified/);
      assert.match(
        out,
        new RegExp(`seq ${seq} tools/call echo \\(id 1\\): CANNOT REPLAY: .*does not decrypt`),
      );
      // With the gateway's keys, the re-chained trail is refused before anything is sent.
      const signed = await replayCli(
        ...sources({ from: copy }, '--trace', TRACE_ID, '--target', modern.url),
        ...['--jwks', publicJwks],
      );
      assert.equal(signed.code, 1, signed.out);
      assert.match(signed.out, /BAD .*checkpoint[^\n]*\n(.*\n)*.*nothing was replayed/);
    });

    test('an altered record: the trail does not verify, nothing is sent', async () => {
      const copy = join(dir, `audit-${Math.random().toString(36).slice(2)}`);
      await cp(auditDir(), copy, { recursive: true });
      const [file] = await auditFiles(copy);
      const text = await readFile(file as string, 'utf8');
      await writeFile(file as string, text.replace('"subject":"alice"', '"subject":"mallory"'));
      const sentBefore = modern.events.requests.length;
      const { code, out } = await replayCli(
        ...sources({ from: copy }, '--trace', TRACE_ID, '--target', modern.url),
      );
      assert.equal(code, 1, out);
      assert.match(out, /BAD .*altered/);
      assert.match(out, /nothing was replayed/);
      assert.equal(modern.events.requests.length, sentBefore);
    });
  });

  test('usage: one selector, the required options, a key that is sound', async () => {
    const none = await replayCli(...base('--target', modern.url));
    assert.equal(none.code, 2);
    assert.match(none.out, /exactly one of --session, --trace, --subject/);
    const two = await replayCli(
      ...base('--trace', TRACE_ID, '--session', 'x', '--target', modern.url),
    );
    assert.equal(two.code, 2);
    const noTarget = await replayCli(...base('--trace', TRACE_ID));
    assert.match(noTarget.out, /--target is required/);
    const badKey = await replayCli(
      ...sources({ key: join(dir, 'none.key') }, '--trace', TRACE_ID, '--target', modern.url),
    );
    assert.equal(badKey.code, 2);
    assert.match(badKey.out, /does not exist/);
    // A subject's calls span both servers: the target is one of them.
    const spans = await replayCli(...base('--subject', 'alice', '--target', modern.url));
    assert.equal(spans.code, 2);
    assert.match(spans.out, /spans servers everything, legacy; .*--server/);
    const nothing = await replayCli(
      ...base(
        '--subject',
        'alice',
        '--since',
        '1970-01-01T00:00:00Z',
        '--until',
        '1971-01-01',
        '--target',
        modern.url,
      ),
    );
    assert.equal(nothing.code, 1);
    assert.match(nothing.out, /nothing to replay/);
  });

  test('a subject and a time window select the modern calls too', async () => {
    const { code, out } = await replayCli(
      ...base(
        '--subject',
        'alice',
        '--server',
        'everything',
        '--since',
        '1h',
        '--target',
        modern.url,
      ),
    );
    assert.equal(code, 0, out);
    assert.match(out, /3 same, 0 differ, 0 cannot be replayed, 1 skipped/);
  });
});

test('capture without a record sink is refused at start', async () => {
  await assert.rejects(
    startGw({ capture: { dir: join(dir, 'c3'), keyFile } }),
    /audit\.capture needs an audit sink beside it/,
  );
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n === 'c3'),
    [],
  );
});
