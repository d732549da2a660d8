/**
 * Shared state behind one interface: an in-memory store for a single gateway
 * (the embedded default) and a Redis store for many replicas. The store knows
 * nothing of the domain: string keys and values with expiry, and broadcast
 * channels. Domain modules (revocations, DPoP replay, …) build on it.
 *
 * Failure contract: an operation on an unreachable store rejects with
 * `StoreUnavailableError` within a bounded time; it never hangs a request.
 */

export interface Store {
  readonly kind: 'memory' | 'redis';
  /** Sets `key` unless it exists; resolves true if this call set it. Atomic across replicas. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /** Sets `key` only if it exists; resolves false if it does not (a change never revives a key). */
  replace(key: string, value: string, ttlMs: number): Promise<boolean>;
  get(key: string): Promise<string | undefined>;
  /** Gives `key` a new life of `ttlMs`; resolves false if it does not exist (expired or deleted). */
  touch(key: string, ttlMs: number): Promise<boolean>;
  delete(key: string): Promise<void>;
  /** Every live key starting with `prefix`, with its value and remaining life in ms. */
  entries(prefix: string): Promise<StoreEntry[]>;
  /** Delivers `message` to every subscriber of `channel` on every replica, this one included. */
  publish(channel: string, message: string): Promise<void>;
  /** Registers a subscriber; messages published while unhealthy may be lost (see `onHealth`). */
  subscribe(channel: string, onMessage: (message: string) => void): void;
  /**
   * True while commands succeed and subscriptions are live. A mirror built from
   * `entries` + `subscribe` must be rebuilt after the store turns healthy again:
   * messages published in between were not delivered.
   */
  readonly healthy: boolean;
  /** Called on every change of `healthy`. */
  onHealth(listener: (healthy: boolean) => void): void;
  close(): Promise<void>;
  /** Commands sent so far (subscriptions not counted): what a request costs the store. */
  readonly operations: number;
}

export interface StoreEntry {
  readonly key: string;
  readonly value: string;
  readonly ttlMs: number;
}

/** The store cannot answer (Redis down, timed out, or closed). */
export class StoreUnavailableError extends Error {
  readonly code = 'PORTCULLIS_STORE_UNAVAILABLE';
  constructor(detail: string, options?: { cause?: unknown }) {
    super(`shared store unavailable: ${detail}`, options);
    this.name = 'StoreUnavailableError';
  }
}

/** Put before every Redis key and channel, so one Redis can also serve other applications. */
export const DEFAULT_STORE_KEY_PREFIX = 'portcullis:';
/** Bound on one Redis command, from send to reply. */
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 500;
/** Bound on one TCP connection attempt to Redis. */
export const DEFAULT_REDIS_CONNECT_TIMEOUT_MS = 2_000;
/** How often the memory store drops expired keys that nobody read. */
export const DEFAULT_MEMORY_SWEEP_INTERVAL_MS = 10_000;

/** One process, no sharing: the embedded default. */
export interface MemoryStoreOptions {
  readonly kind: 'memory';
}

/** Shared by every replica that points at the same Redis with the same `keyPrefix`. */
export interface RedisStoreOptions {
  readonly kind: 'redis';
  /** `redis://` or `rediss://`, credentials included; never logged. */
  readonly url: string;
  readonly keyPrefix?: string;
  readonly commandTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
}

export type StoreOptions = MemoryStoreOptions | RedisStoreOptions;

/**
 * What a store reports for the operator's log: a Redis connection became
 * ready (`connected`) or was lost (`disconnected`), or something failed
 * (`error`: a connection or command, or a subscriber that threw). Redis
 * reports at most one `error` a second; `suppressed` counts the ones left out.
 */
export type StoreEvent = 'connected' | 'disconnected' | 'error';
export type StoreEventListener = (event: StoreEvent, detail?: Record<string, unknown>) => void;

/**
 * Opens the configured store. A Redis store resolves once it is connected or
 * its first attempt failed: it then reports `healthy === false` and keeps
 * reconnecting, so the gateway can start while Redis is down and fail closed.
 */
export async function openStore(
  options: StoreOptions,
  onEvent?: StoreEventListener,
): Promise<Store> {
  // Loaded on demand: the implementations import this module (no cycle), and
  // a memory-only gateway never loads ioredis.
  switch (options.kind) {
    case 'memory': {
      const { MemoryStore } = await import('./memory.js');
      return new MemoryStore({ onEvent });
    }
    case 'redis': {
      const { openRedisStore } = await import('./redis.js');
      return openRedisStore(options, onEvent);
    }
  }
}
