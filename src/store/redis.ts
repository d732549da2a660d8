/**
 * The Redis store: state shared by every replica. Two connections, one for
 * commands and one subscriber, because a subscribed connection cannot run
 * commands under RESP2 and pub/sub traffic should not queue behind them.
 *
 * Never hangs a request: commands fail at once while a connection is down
 * (no offline queue) and are bounded by a timeout while it is up; both
 * connections reconnect forever. `healthy` follows the connections' events,
 * so an outage is visible before the next command, and it turns true again
 * only once every channel is subscribed on the new subscriber connection.
 */
import { Redis, type RedisOptions } from 'ioredis';
import {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
  DEFAULT_STORE_KEY_PREFIX,
  StoreUnavailableError,
  type RedisStoreOptions,
  type Store,
  type StoreEntry,
  type StoreEventListener,
} from './index.js';

const RECONNECT_STEP_MS = 100;
const RECONNECT_MAX_DELAY_MS = 2_000;
const ERROR_EVENT_INTERVAL_MS = 1_000;
/** How often each connection is pinged, to catch a peer that vanished without closing the socket. */
const HEARTBEAT_INTERVAL_MS = 1_000;
/** SCAN's COUNT hint, and so the size of one GET/PTTL pipeline. */
const SCAN_BATCH = 500;

type Role = 'command' | 'subscriber';
type Listener = (message: string) => void;

/**
 * Opens a Redis store and waits for the first connection attempt: resolves
 * healthy once connected, or unhealthy (and still reconnecting) once that
 * attempt failed. Never rejects because Redis is down.
 */
export async function openRedisStore(
  options: RedisStoreOptions,
  onEvent?: StoreEventListener,
): Promise<RedisStore> {
  const store = new RedisStore(options, onEvent);
  await store.firstAttempt;
  return store;
}

/** A `Store` on Redis; most callers want `openRedisStore` or `openStore`. */
export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  operations = 0;
  /** Settles once the store is healthy or a connection's attempt failed; never rejects. */
  readonly firstAttempt: Promise<void>;
  private readonly prefix: string;
  private readonly commands: Redis;
  private readonly subscriber: Redis;
  private readonly channels = new Map<string, Set<Listener>>();
  /** Channels whose SUBSCRIBE was answered on the subscriber's current connection. */
  private confirmed = new Set<string>();
  /** Bumped whenever the subscriber connects or drops, so replies meant for an old connection are ignored. */
  private subscriberEpoch = 0;
  private readonly readyCount: Record<Role, number> = { command: 0, subscriber: 0 };
  private readonly connected: Record<Role, boolean> = { command: false, subscriber: false };
  private readonly healthListeners: Array<(healthy: boolean) => void> = [];
  private isHealthy = false;
  private closed = false;
  private readonly heartbeat: NodeJS.Timeout;
  private settleFirstAttempt: (() => void) | undefined;
  private lastErrorAt = Number.NEGATIVE_INFINITY;
  private suppressedErrors = 0;

  /** Starts connecting at once. */
  constructor(
    options: RedisStoreOptions,
    private readonly onEvent?: StoreEventListener,
  ) {
    this.prefix = options.keyPrefix ?? DEFAULT_STORE_KEY_PREFIX;
    const commandTimeout = options.commandTimeoutMs ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS;
    const connectTimeout = options.connectTimeoutMs ?? DEFAULT_REDIS_CONNECT_TIMEOUT_MS;
    const common: RedisOptions = {
      lazyConnect: true, // listeners first, then connect
      enableOfflineQueue: false, // a command while down fails now instead of waiting for Redis
      commandTimeout,
      connectTimeout,
      // How long a closing socket may linger before it is destroyed: also bounds
      // how long a dead peer found by the heartbeat keeps the store "healthy".
      disconnectTimeout: commandTimeout,
      // Commands in flight when the connection drops are rejected at once, and
      // never resent after reconnecting: the caller was already told they failed.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      retryStrategy: (times) => Math.min(times * RECONNECT_STEP_MS, RECONNECT_MAX_DELAY_MS),
    };
    this.commands = new Redis(options.url, { ...common, connectionName: 'portcullis-commands' });
    // Resubscribing is ours (see `onReady`), so health can wait for the replies.
    this.subscriber = new Redis(options.url, {
      ...common,
      connectionName: 'portcullis-subscriber',
      autoResubscribe: false,
    });

    this.firstAttempt = new Promise((resolve) => {
      // Backstop for a peer that accepts TCP but never answers the handshake
      // (HELLO, then INFO, each bounded by the command timeout).
      const backstop = setTimeout(
        () => this.settleFirstAttempt?.(),
        connectTimeout + 3 * commandTimeout,
      );
      backstop.unref();
      this.settleFirstAttempt = () => {
        clearTimeout(backstop);
        this.settleFirstAttempt = undefined;
        resolve();
      };
    });

    this.watch(this.commands, 'command');
    this.watch(this.subscriber, 'subscriber');
    this.subscriber.on('message', (channel: string, message: string) =>
      this.deliver(channel, message),
    );
    this.heartbeat = setInterval(() => {
      this.probe(this.commands, 'command');
      this.probe(this.subscriber, 'subscriber');
    }, HEARTBEAT_INTERVAL_MS);
    this.heartbeat.unref();

    // Failures surface as 'error' and 'close' events; reconnection carries on regardless.
    this.commands.connect().catch(() => undefined);
    this.subscriber.connect().catch(() => undefined);
  }

  get healthy(): boolean {
    return this.isHealthy;
  }

  /**
   * The command connection and key prefix, for a module that runs its own
   * scripts on it (src/limits): it inherits this store's timeouts and fail-fast
   * behaviour, and must put `keyPrefix` before every key it touches.
   */
  get connection(): { readonly client: Redis; readonly keyPrefix: string } {
    return { client: this.commands, keyPrefix: this.prefix };
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const px = checkTtl(ttlMs);
    return this.run('SET NX', async () => {
      return (await this.commands.set(this.prefix + key, value, 'PX', px, 'NX')) === 'OK';
    });
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    const px = checkTtl(ttlMs);
    return this.run('SET', async () => {
      await this.commands.set(this.prefix + key, value, 'PX', px);
    });
  }

  async replace(key: string, value: string, ttlMs: number): Promise<boolean> {
    const px = checkTtl(ttlMs);
    return this.run('SET XX', async () => {
      return (await this.commands.set(this.prefix + key, value, 'PX', px, 'XX')) === 'OK';
    });
  }

  get(key: string): Promise<string | undefined> {
    return this.run('GET', async () => (await this.commands.get(this.prefix + key)) ?? undefined);
  }

  touch(key: string, ttlMs: number): Promise<boolean> {
    const px = checkTtl(ttlMs);
    return this.run(
      'PEXPIRE',
      async () => (await this.commands.pexpire(this.prefix + key, px)) === 1,
    );
  }

  delete(key: string): Promise<void> {
    return this.run('DEL', async () => {
      await this.commands.del(this.prefix + key);
    });
  }

  entries(prefix: string): Promise<StoreEntry[]> {
    return this.run('SCAN', async () => {
      const pattern = `${globEscape(this.prefix + prefix)}*`;
      // SCAN may return a key more than once while the keyspace is rehashed.
      const seen = new Set<string>();
      const out: StoreEntry[] = [];
      let cursor = '0';
      do {
        const [next, keys] = await this.commands.scan(
          cursor,
          'MATCH',
          pattern,
          'COUNT',
          SCAN_BATCH,
        );
        cursor = next;
        const fresh = keys.filter((k) => !seen.has(k));
        for (const k of fresh) seen.add(k);
        if (fresh.length > 0) out.push(...(await this.read(fresh)));
      } while (cursor !== '0');
      return out;
    });
  }

  publish(channel: string, message: string): Promise<void> {
    return this.run('PUBLISH', async () => {
      await this.commands.publish(this.prefix + channel, message);
    });
  }

  /**
   * Registers a subscriber. A new channel on a live connection makes the store
   * unhealthy until Redis confirms the subscription, so a caller that rebuilds
   * a mirror on `onHealth(true)` cannot miss a message sent in between.
   */
  subscribe(channel: string, onMessage: (message: string) => void): void {
    if (this.closed) return;
    let listeners = this.channels.get(channel);
    if (!listeners) {
      this.channels.set(channel, (listeners = new Set()));
      if (this.subscriber.status === 'ready') this.confirm(this.subscriberEpoch, [channel]);
      this.updateHealth();
    }
    listeners.add(onMessage);
  }

  onHealth(listener: (healthy: boolean) => void): void {
    this.healthListeners.push(listener);
  }

  /** Quits both connections; resolves even while Redis is down (then within the command timeout). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.settleFirstAttempt?.();
    this.updateHealth();
    await Promise.all([quit(this.commands), quit(this.subscriber)]);
  }

  private async run<T>(op: string, command: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreUnavailableError('the store is closed');
    this.operations++;
    try {
      return await command();
    } catch (err) {
      // While unhealthy every command fails; the 'disconnected' event already said why.
      if (this.isHealthy) this.reportError('command', err);
      throw new StoreUnavailableError(`redis ${op} failed: ${describe(err)}`, { cause: err });
    }
  }

  /** GET and PTTL for one SCAN batch, in one round trip; keys gone meanwhile are left out. */
  private async read(keys: readonly string[]): Promise<StoreEntry[]> {
    const pipeline = this.commands.pipeline();
    for (const k of keys) pipeline.get(k).pttl(k);
    const replies = await pipeline.exec();
    if (!replies) throw new Error('pipeline discarded');
    const out: StoreEntry[] = [];
    keys.forEach((k, i) => {
      const [getError, value] = replies[2 * i] ?? [new Error('missing GET reply'), null];
      const [ttlError, ttl] = replies[2 * i + 1] ?? [new Error('missing PTTL reply'), null];
      // A non-string key under our prefix is not one of ours: skipped, not fatal.
      if (getError && !getError.message.startsWith('WRONGTYPE')) throw getError;
      if (ttlError) throw ttlError;
      if (typeof value !== 'string' || typeof ttl !== 'number' || ttl === -2) return;
      out.push({
        key: k.slice(this.prefix.length),
        value,
        // -1: no expiry, which this store never writes but another writer might.
        ttlMs: ttl === -1 ? Number.POSITIVE_INFINITY : ttl,
      });
    });
    return out;
  }

  private watch(client: Redis, role: Role): void {
    client.on('ready', () => this.onReady(client, role));
    for (const event of ['close', 'end', 'reconnecting']) {
      client.on(event, () => this.onDown(role));
    }
    client.on('error', (err: unknown) => {
      this.reportError(role, err);
      this.updateHealth();
    });
  }

  private onReady(client: Redis, role: Role): void {
    // Events arrive a tick late: the connection may already be gone again.
    if (client.status !== 'ready') return;
    this.readyCount[role] += 1;
    if (role === 'subscriber') {
      const epoch = ++this.subscriberEpoch;
      this.confirmed = new Set();
      if (this.channels.size > 0) this.confirm(epoch, [...this.channels.keys()]);
    }
    if (!this.connected[role]) {
      this.connected[role] = true;
      if (!this.closed) this.onEvent?.('connected', { connection: role });
    }
    this.updateHealth();
  }

  private onDown(role: Role): void {
    if (role === 'subscriber') {
      this.subscriberEpoch += 1;
      this.confirmed = new Set();
    }
    if (this.connected[role]) {
      this.connected[role] = false;
      if (!this.closed) this.onEvent?.('disconnected', { connection: role });
    }
    this.updateHealth();
    // A failed attempt ends the wait in `openRedisStore`: the store starts unhealthy.
    this.settleFirstAttempt?.();
  }

  private confirm(epoch: number, channels: readonly string[]): void {
    this.subscriber.subscribe(...channels.map((c) => this.prefix + c)).then(
      () => {
        if (epoch !== this.subscriberEpoch) return;
        for (const c of channels) this.confirmed.add(c);
        this.updateHealth();
      },
      (err: unknown) => {
        if (epoch !== this.subscriberEpoch || this.closed) return;
        this.reportError('subscriber', err);
        // Reconnecting subscribes every channel afresh on the new connection.
        if (this.subscriber.status === 'ready') this.subscriber.disconnect(true);
      },
    );
  }

  private deliver(channel: string, message: string): void {
    if (!channel.startsWith(this.prefix)) return;
    const listeners = this.channels.get(channel.slice(this.prefix.length));
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(message);
      } catch (err) {
        this.reportError({ source: 'subscriber', channel: channel.slice(this.prefix.length) }, err);
      }
    }
  }

  private probe(client: Redis, role: Role): void {
    if (client.status !== 'ready') return;
    const connection = this.readyCount[role];
    client.ping().catch((err: unknown) => {
      if (this.closed || client.status !== 'ready' || connection !== this.readyCount[role]) return;
      this.reportError(role, err);
      // Without this, a peer gone without a FIN or RST looks ready until TCP
      // keepalive gives up, minutes later; the reconnect makes the loss visible.
      client.disconnect(true);
    });
  }

  private updateHealth(): void {
    const healthy =
      !this.closed &&
      this.commands.status === 'ready' &&
      this.subscriber.status === 'ready' &&
      [...this.channels.keys()].every((c) => this.confirmed.has(c));
    if (healthy) this.settleFirstAttempt?.();
    if (healthy === this.isHealthy) return;
    this.isHealthy = healthy;
    for (const listener of [...this.healthListeners]) {
      try {
        listener(healthy);
      } catch (err) {
        this.reportError({ source: 'health listener' }, err);
      }
    }
  }

  private reportError(where: Role | Record<string, unknown>, err: unknown): void {
    if (this.closed) return;
    const now = performance.now();
    if (now - this.lastErrorAt < ERROR_EVENT_INTERVAL_MS) {
      this.suppressedErrors += 1;
      return;
    }
    this.lastErrorAt = now;
    const code = (err as { code?: unknown } | null)?.code;
    this.onEvent?.('error', {
      ...(typeof where === 'string' ? { connection: where } : where),
      error: describe(err),
      ...(typeof code === 'string' ? { code } : {}),
      suppressed: this.suppressedErrors,
    });
    this.suppressedErrors = 0;
  }
}

/** QUIT when connected, so replies in flight arrive; otherwise just stop reconnecting. */
async function quit(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  if (client.status === 'ready') {
    try {
      await client.quit();
      return;
    } catch {
      // timed out or dropped: disconnect below
    }
  }
  client.disconnect();
}

/** Redis PX takes whole milliseconds; rounded up so a key never lives shorter than asked. */
function checkTtl(ttlMs: number): number {
  if (!(ttlMs > 0 && Number.isFinite(ttlMs))) {
    throw new RangeError(`store ttlMs must be a positive finite number, got ${ttlMs}`);
  }
  return Math.ceil(ttlMs);
}

/** Makes every glob metacharacter of SCAN MATCH literal. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
