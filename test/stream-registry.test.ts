/**
 * The stream registry's pending calls and open streams, kept as lists threaded
 * through the items: order-independent removal, nothing lost or ended twice,
 * and a removed item keeps no link to its former neighbours (a stale link is
 * what kept whole requests alive through young-generation collections).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GatewayError } from '../src/errors/index.js';
import {
  newLinks,
  StreamRegistry,
  type ClientStream,
  type PendingCall,
} from '../src/server/streams.js';

function call(owner: string): PendingCall & { cancelled: number } {
  return {
    owner,
    jti: undefined,
    sessionId: () => undefined,
    cancelled: 0,
    cancel() {
      this.cancelled++;
    },
    callLinks: newLinks(),
  };
}

function stream(owner: string): ClientStream & { terminated: number } {
  return {
    open: true,
    write: () => undefined,
    end: () => undefined,
    pending: new Set(),
    lastWriteAt: Date.now(),
    identity: { owner, jti: undefined, sessionId: () => undefined },
    terminated: 0,
    terminate() {
      this.terminated++;
    },
    streamLinks: newLinks(),
  };
}

const REVOKED = new GatewayError('PORTCULLIS_ERR_AUTH_TOKEN_REVOKED');

test('calls: removed from the head, the middle and the tail, the rest still found; links cleared', (t) => {
  const registry = new StreamRegistry(60_000, 1_000);
  t.after(() => registry.close());
  const calls = ['a', 'b', 'c', 'd', 'e'].map(call);
  for (const c of calls) registry.addCall(c);
  registry.addCall(calls[0] as PendingCall); // twice: still one entry
  const [a, b, c, d, e] = calls as [
    ReturnType<typeof call>,
    ReturnType<typeof call>,
    ReturnType<typeof call>,
    ReturnType<typeof call>,
    ReturnType<typeof call>,
  ];
  registry.removeCall(c); // middle
  registry.removeCall(e); // head (newest first)
  registry.removeCall(a); // tail
  registry.removeCall(a); // twice: nothing
  for (const gone of [a, c, e]) {
    assert.equal(gone.callLinks.prev, undefined);
    assert.equal(gone.callLinks.next, undefined);
    assert.equal(gone.callLinks.listed, false);
  }
  assert.equal(
    registry.terminateWhere(() => true, REVOKED),
    2,
  );
  assert.deepEqual(
    calls.map((x) => x.cancelled),
    [0, 1, 0, 1, 0],
  );
  // Ended calls left the list: a second revocation finds nothing.
  assert.equal(
    registry.terminateWhere(() => true, REVOKED),
    0,
  );
  assert.equal(b.callLinks.next, undefined);
  assert.equal(d.callLinks.prev, undefined);
});

test('streams: counted, matched by whom they serve, and unlinked when removed', (t) => {
  const registry = new StreamRegistry(60_000, 1_000);
  t.after(() => registry.close());
  const streams = ['x', 'y', 'x', 'z'].map(stream);
  for (const s of streams) registry.add(s);
  registry.add(streams[0] as ClientStream);
  assert.equal(registry.size, 4);
  registry.remove(streams[1] as ClientStream);
  assert.equal(registry.size, 3);
  assert.equal(streams[1]?.streamLinks.prev, undefined);
  assert.equal(streams[1]?.streamLinks.next, undefined);
  assert.equal(
    registry.terminateWhere((who) => who.owner === 'x', REVOKED),
    2,
  );
  assert.deepEqual(
    streams.map((s) => s.terminated),
    [1, 0, 1, 0],
  );
  for (const s of streams) registry.remove(s);
  assert.equal(registry.size, 0);
});
