/**
 * The links one replica keeps to the others' internal listeners: one pool per
 * home's origin, at most 64, the one used longest ago dropped first, so a
 * cluster whose replicas come and go (new pod addresses) does not cut the
 * links still in use. No request is sent: undici connects on first use only.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { startReplicaLink } from '../src/server/replicas.js';

const BOOT = 'AAAAAAAAAAAAAAAA';

test('the links to homes are dropped least recently used first, and a home in use keeps its link', async (t) => {
  const link = await startReplicaLink(
    {
      host: '127.0.0.1',
      port: 0,
      secret: 's'.repeat(48),
      maxRequestBytes: 1024 * 1024,
      maxConnections: 16,
    },
    () => undefined,
    { maxResponseBytes: 1024 * 1024, idleMs: 1_000 },
    pino({ level: 'silent' }),
  );
  t.after(() => link.close());
  const homeAt = (i: number) => `http://10.0.${Math.floor(i / 250)}.${(i % 250) + 1}:9091#${BOOT}`;
  assert.equal(link.toHome(link.home, 'everything'), undefined, 'its own home is no link');
  const first = link.toHome(homeAt(0), 'everything');
  const second = link.toHome(homeAt(1), 'everything');
  for (let i = 2; i < 64; i++) link.toHome(homeAt(i), 'everything');
  // The first home is used again, then new homes push the oldest out.
  assert.equal(link.toHome(homeAt(0), 'everything'), first, 'the same link while it is kept');
  for (let i = 64; i < 70; i++) link.toHome(homeAt(i), 'everything');
  assert.equal(link.toHome(homeAt(0), 'everything'), first, 'used recently: kept');
  assert.notEqual(link.toHome(homeAt(1), 'everything'), second, 'used longest ago: dropped');
});
