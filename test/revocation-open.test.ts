/**
 * Revocation ends what is open, not only what comes next: revoking a subject,
 * a session or a token id cuts the streams it holds (GET streams, streams of
 * requests still pending, legacy HTTP+SSE connections) at once, answers what
 * was pending with the revocation, and ends the upstream side (a stdio
 * server's process stops). Against real stdio processes (the project's own
 * hostile server, sandboxed as any other) and the admin API.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import {
  startKeyedGateway,
  TEST_ADMIN_TOKEN,
  type AuthGateway,
  type KeyedGateway,
} from './helpers/auth-gateway.js';
import { openSse } from './helpers/sse.js';
import {
  ACCEPT_BOTH,
  initializeBody,
  LEGACY,
  modernCall,
  modernHeaders,
  post,
} from './helpers/requests.js';

const HOSTILE = fileURLToPath(new URL('./fixtures/hostile-stdio.mjs', import.meta.url));

let keyed: KeyedGateway;
let gw: AuthGateway;

before(async () => {
  keyed = await startKeyedGateway(
    // No warm pool: the process gauge then counts the callers' processes only.
    { tools: { transport: 'stdio', command: process.execPath, args: [HOSTILE], warmPool: 0 } },
    { admin: { token: TEST_ADMIN_TOKEN } },
  );
  gw = keyed.gw;
});

after(() => keyed.close());

const auth = (token: string) => ({ authorization: `Bearer ${token}` });

async function revoke(body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await fetch(`${gw.adminUrl}/admin/revocations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...auth(TEST_ADMIN_TOKEN) },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 201);
  return (await res.json()) as Record<string, unknown>;
}

/** Tokens verified so far (every result), from the gateway's own counter. */
async function verifications(): Promise<number> {
  const text = await (
    await fetch(`${gw.adminUrl}/metrics`, { headers: auth(TEST_ADMIN_TOKEN) })
  ).text();
  let total = 0;
  for (const m of text.matchAll(/^portcullis_token_verifications_total\{[^}]*\} (\d+)/gm))
    total += Number(m[1]);
  return total;
}

/** Open stdio processes of the server, from the gateway's own gauge. */
async function channels(): Promise<number> {
  const text = await (
    await fetch(`${gw.adminUrl}/metrics`, { headers: auth(TEST_ADMIN_TOKEN) })
  ).text();
  return Number(/^portcullis_upstream_channels\{server="tools"\} (\d+)/m.exec(text)?.[1] ?? 0);
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A legacy session: its id, an open GET stream, and a reader of that stream's bytes. */
async function openSession(token: string) {
  const init = await post(gw.urlFor('tools'), initializeBody(), auth(token));
  assert.equal(init.status, 200);
  await init.text();
  const session = init.headers.get('mcp-session-id') as string;
  const headers = { ...auth(token), 'mcp-session-id': session, 'mcp-protocol-version': LEGACY };
  const initialized = await post(
    gw.urlFor('tools'),
    { jsonrpc: '2.0', method: 'notifications/initialized' },
    headers,
  );
  assert.equal(initialized.status, 202);
  const get = await fetch(gw.urlFor('tools'), {
    headers: { ...headers, accept: 'text/event-stream' },
  });
  assert.equal(get.status, 200);
  const stream = get.body as ReadableStream<Uint8Array>;
  return { session, headers, stream };
}

/** Reads a stream to its end, which must come within 5 s; the text it carried. */
async function readToEnd(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = '';
  const decoder = new TextDecoder();
  const reader = stream.getReader();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('the stream is still open after 5 s')), 5_000);
  });
  try {
    for (;;) {
      const { value, done } = await Promise.race([reader.read(), late]);
      if (done) return text;
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
}

/** Calls the `hang` tool (never answered); resolves once the server has it, with the answer to come. */
async function hang(headers: Record<string, string>): Promise<{ answer: Promise<Response> }> {
  const seen = gw.logs.length;
  const answer = fetch(gw.urlFor('tools'), {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json', accept: ACCEPT_BOTH },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 9,
      method: 'tools/call',
      params: { name: 'hang', arguments: {} },
    }),
  });
  await until(
    async () => gw.logs.slice(seen).some((l) => l.stderr === 'hang started'),
    'the server to get the request',
  );
  // Wrapped: an async function returning a promise would wait for it.
  return { answer };
}

test("revoking a subject closes its GET, pending and legacy SSE streams at once, stops its processes, and leaves others' alone", async () => {
  const alice = await keyed.token('t1', 'alice');
  const bob = await keyed.token('t1', 'bob');
  const mine = await openSession(alice);
  const pending = await hang(mine.headers);
  const legacy = await openSse(`${gw.urlFor('tools')}/sse`, alice);
  assert.equal((await legacy.next()).event, 'endpoint');
  // A stateless (2026-07-28) call starts a process for alice as a caller, outside any session.
  const modern = await post(gw.urlFor('tools'), modernCall('whoami', {}, 3), {
    ...modernHeaders('whoami'),
    ...auth(alice),
  });
  assert.equal(modern.status, 200);
  await modern.text();
  const theirs = await openSession(bob);
  const before = await channels();
  assert.ok(before >= 3, `processes for alice's session, her stateless calls and bob (${before})`);

  await revoke({ kind: 'sub', id: 'alice', tenant: 't1' });

  const [getText, answer] = await Promise.all([readToEnd(mine.stream), pending.answer]);
  assert.doesNotMatch(getText, /"result"/);
  // The request still pending is answered with the revocation, not left to time out.
  assert.equal(answer.status, 401);
  const pendingText = await answer.text();
  assert.match(pendingText, /"id":9/);
  assert.match(pendingText, /PORTCULLIS_ERR_AUTH_TOKEN_REVOKED/);
  await assert.rejects(legacy.next(), /stream ended/);
  // Alice's session process and her stateless process stop; bob's goes on.
  await until(async () => (await channels()) === 1, "alice's processes to stop");
  const ping = await post(
    gw.urlFor('tools'),
    { jsonrpc: '2.0', id: 4, method: 'ping' },
    theirs.headers,
  );
  assert.equal(ping.status, 200);
  await ping.text();
  await theirs.stream.cancel();
});

test('revoking a session closes its streams but not another session of the same subject', async () => {
  const carol = await keyed.token('t2', 'carol');
  const first = await openSession(carol);
  const second = await openSession(carol);
  const result = await revoke({ kind: 'session', id: first.session });
  assert.equal(result.sessionEnded, true);
  assert.doesNotMatch(await readToEnd(first.stream), /"result"/);
  const again = await post(
    gw.urlFor('tools'),
    { jsonrpc: '2.0', id: 5, method: 'ping' },
    first.headers,
  );
  assert.equal(again.status, 401);
  await again.text();
  const ping = await post(
    gw.urlFor('tools'),
    { jsonrpc: '2.0', id: 6, method: 'ping' },
    second.headers,
  );
  assert.equal(ping.status, 200);
  await ping.text();
  await second.stream.cancel();
});

test('revoking a token id closes the streams opened with it', async () => {
  const token = await keyed.token('t3', 'dave', { jti: 'leaked' });
  const other = await keyed.token('t3', 'dave', { jti: 'fine' });
  const leaked = await openSession(token);
  const kept = await openSession(other);
  await revoke({ kind: 'jti', id: 'leaked' });
  assert.doesNotMatch(await readToEnd(leaked.stream), /"result"/);
  const ping = await post(
    gw.urlFor('tools'),
    { jsonrpc: '2.0', id: 7, method: 'ping' },
    kept.headers,
  );
  assert.equal(ping.status, 200);
  await ping.text();
  await kept.stream.cancel();
});

test('a request whose body comes after its subject was revoked is refused, not let through', async () => {
  // The door's check can still be running when the verification count moves; then the
  // revocation is caught at the door (id null), which is not what this test is about. Such a
  // try is made again with a new subject, a few times at most.
  for (let attempt = 1; attempt <= 5; attempt++) {
    const text = await bodyAfterRevocation(`slowpoke-${attempt}`);
    assert.match(text, /^HTTP\/1\.1 401/);
    assert.match(text, /PORTCULLIS_ERR_AUTH_TOKEN_REVOKED/);
    if (/"id":null/.test(text)) continue;
    assert.match(text, /"id":8/);
    return;
  }
  assert.fail('every try was refused at the door: the body-after-revocation path never ran');
});

/** Sends the head of a call for `subject`, revokes the subject, then sends the body; the answer. */
async function bodyAfterRevocation(subject: string): Promise<string> {
  const token = await keyed.token('t4', subject);
  const body = JSON.stringify(modernCall('whoami', {}, 8));
  const { hostname, port } = new URL(gw.url);
  const socket = connect(Number(port), hostname);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const answer = new Promise<string>((resolve) => {
    let text = '';
    socket.on('data', (c: Buffer) => (text += c.toString()));
    socket.once('close', () => resolve(text));
  });
  // The head now (authenticated at the door), the body only after the revocation.
  const headers = Object.entries({
    ...modernHeaders('whoami'),
    host: `${hostname}:${port}`,
    authorization: `Bearer ${token}`,
    'content-type': 'application/json',
    accept: ACCEPT_BOTH,
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
  }).map(([k, v]) => `${k}: ${v}`);
  const verified = await verifications();
  socket.write(`POST /mcp/tools HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n`);
  await until(
    async () => (await verifications()) > verified,
    'the token to be verified at the door',
  );
  await revoke({ kind: 'sub', id: subject, tenant: 't4' });
  socket.write(body);
  return answer;
}
