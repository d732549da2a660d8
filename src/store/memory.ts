/**
 * The in-memory store: one gateway process, nothing shared. Keys expire on
 * read and in a periodic sweep; broadcasts reach this process's subscribers
 * only. It cannot become unavailable, so it is always healthy.
 */
import {
  DEFAULT_MEMORY_SWEEP_INTERVAL_MS,
  type Store,
  type StoreEntry,
  type StoreEventListener,
} from './index.js';

interface Slot {
  readonly value: string;
  /** On the monotonic clock, so a wall-clock step neither revives nor kills keys. */
  readonly expiresAt: number;
}

export interface MemoryStoreInit {
  readonly sweepIntervalMs?: number;
  /** Receives an `error` event when a subscriber throws. */
  readonly onEvent?: StoreEventListener;
}

/** A `Store` for one process; `setIfAbsent` is atomic because JavaScript is single-threaded. */
export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly healthy = true;
  operations = 0;
  private readonly slots = new Map<string, Slot>();
  private readonly channels = new Map<string, Set<(message: string) => void>>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly onEvent: StoreEventListener | undefined;

  constructor(init: MemoryStoreInit = {}) {
    this.onEvent = init.onEvent;
    this.sweeper = setInterval(
      () => this.sweep(),
      init.sweepIntervalMs ?? DEFAULT_MEMORY_SWEEP_INTERVAL_MS,
    );
    this.sweeper.unref();
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.operations++;
    checkTtl(ttlMs);
    if (this.live(key, performance.now())) return false;
    this.slots.set(key, { value, expiresAt: performance.now() + ttlMs });
    return true;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.operations++;
    checkTtl(ttlMs);
    this.slots.set(key, { value, expiresAt: performance.now() + ttlMs });
  }

  async replace(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.operations++;
    checkTtl(ttlMs);
    if (!this.live(key, performance.now())) return false;
    this.slots.set(key, { value, expiresAt: performance.now() + ttlMs });
    return true;
  }

  async get(key: string): Promise<string | undefined> {
    this.operations++;
    return this.live(key, performance.now())?.value;
  }

  async touch(key: string, ttlMs: number): Promise<boolean> {
    this.operations++;
    checkTtl(ttlMs);
    const slot = this.live(key, performance.now());
    if (slot === undefined) return false;
    this.slots.set(key, { value: slot.value, expiresAt: performance.now() + ttlMs });
    return true;
  }

  async delete(key: string): Promise<void> {
    this.operations++;
    this.slots.delete(key);
  }

  async entries(prefix: string): Promise<StoreEntry[]> {
    this.operations++;
    const now = performance.now();
    const out: StoreEntry[] = [];
    for (const key of this.slots.keys()) {
      if (!key.startsWith(prefix)) continue;
      const slot = this.live(key, now);
      // Rounded up like Redis PTTL rounds: a live key never reports 0 ms left.
      if (slot) out.push({ key, value: slot.value, ttlMs: Math.ceil(slot.expiresAt - now) });
    }
    return out;
  }

  async publish(channel: string, message: string): Promise<void> {
    this.operations++;
    const listeners = this.channels.get(channel);
    if (!listeners) return;
    // A snapshot, delivered after the caller's turn: a subscriber that publishes
    // or subscribes in turn cannot re-enter this loop or the caller.
    for (const listener of [...listeners]) {
      queueMicrotask(() => {
        try {
          listener(message);
        } catch (err) {
          const error = err instanceof Error ? err.message : String(err);
          this.onEvent?.('error', { source: 'subscriber', channel, error });
        }
      });
    }
  }

  subscribe(channel: string, onMessage: (message: string) => void): void {
    let listeners = this.channels.get(channel);
    if (!listeners) this.channels.set(channel, (listeners = new Set()));
    listeners.add(onMessage);
  }

  onHealth(_listener: (healthy: boolean) => void): void {
    // Never changes: nothing to call.
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }

  private live(key: string, now: number): Slot | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    if (slot.expiresAt > now) return slot;
    this.slots.delete(key);
    return undefined;
  }

  private sweep(): void {
    const now = performance.now();
    for (const [key, slot] of this.slots) if (slot.expiresAt <= now) this.slots.delete(key);
  }
}

function checkTtl(ttlMs: number): void {
  if (!(ttlMs > 0 && Number.isFinite(ttlMs))) {
    throw new RangeError(`store ttlMs must be a positive finite number, got ${ttlMs}`);
  }
}
