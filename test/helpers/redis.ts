/**
 * A real `redis-server` child on a port of the test's choosing, to kill and
 * start again: outages are real lost connections, not mocks. A missing binary
 * fails the test that asked for a server.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createConnection, createServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestContext } from 'node:test';
import { Redis } from 'ioredis';

const START_TIMEOUT_MS = 10_000;

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** SIGKILL, like a crash: sockets are reset, nothing is flushed. Resolves once it exited. */
  kill(): Promise<void>;
  /** SIGSTOP: sockets stay open and nothing answers, like a peer lost without a FIN. */
  freeze(): void;
  /** SIGCONT after `freeze`. */
  thaw(): void;
}

/** The path of `redis-server`; throws (failing the test) if it is not installed. */
export function redisServerBinary(): string {
  try {
    return execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('redis-server is not installed (apt-get install redis-server)');
  }
}

/** A TCP port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return address.port;
}

const running = new Set<ChildProcess>();
// A test that dies half-way must not leave servers behind.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Starts `redis-server` on `port` (no persistence) and resolves once it accepts connections. */
export async function startRedisServer(port: number): Promise<RedisServer> {
  const child = spawn(
    redisServerBinary(),
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  let output = '';
  const collect = (chunk: Buffer): void => {
    output = (output + chunk.toString()).slice(-4_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = once(child, 'exit');
  exited.then(() => running.delete(child)).catch(() => undefined);

  const kill = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server on port ${port} exited at start:\n${output}`);
    }
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`redis-server on port ${port} did not start:\n${output}`);
    }
    await sleep(20);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    freeze: () => child.kill('SIGSTOP'),
    thaw: () => child.kill('SIGCONT'),
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * A TCP relay in front of a port that a test can cut and restore: the one
 * way to lose the gateway's connection to Redis while Redis itself stays up
 * and other clients keep writing to it (a fault injected on purpose).
 */
export interface CuttableLink {
  readonly port: number;
  /** Drops every relayed connection and refuses new ones. */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function cuttableLink(targetPort: number): Promise<CuttableLink> {
  let open = true;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    if (!open) return client.destroy();
    const upstream = createConnection(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return {
    port: address.port,
    cut: () => {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore: () => {
      open = true;
    },
    close: async () => {
      open = false;
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

/** The Redis every test machine runs (CI starts one when none answers). */
export const SHARED_REDIS = 'redis://127.0.0.1:6379';

/** A key prefix of the test's own in the shared Redis, its keys deleted afterwards. */
export function isolatedPrefix(t: TestContext): string {
  const prefix = `portcullis-test:${randomUUID()}:`;
  t.after(() => dropKeys(prefix));
  return prefix;
}

/** Deletes every key under `prefix` in the shared Redis (what a test left there). */
export async function dropKeys(prefix: string): Promise<void> {
  const redis = new Redis(SHARED_REDIS);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
}
