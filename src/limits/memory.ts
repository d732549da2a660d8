/**
 * The memory limiters: one gateway process, nothing shared, the arithmetic
 * of ./index.ts on a clock of the caller's choice (monotonic by default).
 * Atomic because JavaScript is single-threaded and nothing here awaits.
 *
 * Bounded: a bucket that is full after a take is not kept (absent is full),
 * and at `maxBuckets` a sweep drops the buckets that have refilled since.
 * A bucket still refilling is never dropped: dropping it would hand its key
 * a full bucket, so a caller able to mint keys could refill its own bucket at
 * will. When the sweep frees too little, a call that would add buckets is
 * refused (the table is full; retry when the soonest bucket is full), while
 * calls on buckets already held go on. Each group (a tenant) holds at most
 * its own share of the table (`maxEntriesPerGroup`), so one tenant that mints
 * subjects exhausts its share and never another tenant's room. Leases likewise: at `maxLeases` the
 * expired ones are dropped, live ones never, and new leases are refused.
 */
import { randomBytes } from 'node:crypto';
import {
  DEFAULT_MEMORY_MAX_BUCKETS,
  DEFAULT_MEMORY_MAX_BUCKETS_PER_GROUP,
  DEFAULT_MEMORY_MAX_LEASES,
  checkAcquire,
  checkLeaseTtl,
  checkTakes,
  fullInMs,
  refilled,
  retryAfterMs,
  single,
  summarize,
  type AcquireResult,
  type Bucket,
  type BucketTake,
  type ConcurrencyLimiter,
  type Lease,
  type RateLimiter,
  type TakeAllResult,
  type TakeResult,
} from './index.js';

export interface MemoryLimiterInit {
  /** Milliseconds on a clock that never runs backwards; `performance.now` unless a test says. */
  readonly now?: () => number;
  /** `DEFAULT_MEMORY_MAX_BUCKETS` or `DEFAULT_MEMORY_MAX_LEASES`. */
  readonly maxEntries?: number;
  /** Buckets one group may hold (rate limiter only): `DEFAULT_MEMORY_MAX_BUCKETS_PER_GROUP`. */
  readonly maxEntriesPerGroup?: number;
}

interface Slot {
  tokens: number;
  atUs: number;
  /** The size at the last take, for the sweep: the caller's size of the moment governs a take. */
  capacity: number;
  refillPerSecond: number;
  group: string;
}

/** A `RateLimiter` for one process. */
export class MemoryRateLimiter implements RateLimiter {
  readonly kind = 'memory' as const;
  private readonly slots = new Map<string, Slot>();
  private readonly clock: () => number;
  private readonly maxBuckets: number;
  private readonly maxPerGroup: number;
  /** Buckets held per group; a group holding none is not kept. */
  private readonly held = new Map<string, number>();
  /** No bucket is full before this (µs): a lower bound, so a sweep before it would free nothing. */
  private nextFullUs = 0;
  private refusedForRoom = 0;

  constructor(init: MemoryLimiterInit = {}) {
    this.clock = init.now ?? (() => performance.now());
    this.maxBuckets = checkMax(init.maxEntries ?? DEFAULT_MEMORY_MAX_BUCKETS);
    this.maxPerGroup = Math.min(
      this.maxBuckets,
      checkMax(init.maxEntriesPerGroup ?? DEFAULT_MEMORY_MAX_BUCKETS_PER_GROUP),
    );
  }

  /** Buckets held now (full ones are not). */
  get size(): number {
    return this.slots.size;
  }

  /** Calls refused because they would have added a bucket to a full table: for a metric. */
  get overflowRefusals(): number {
    return this.refusedForRoom;
  }

  async take(key: string, bucket: Bucket, cost = 1): Promise<TakeResult> {
    const { capacity, refillPerSecond } = bucket; // not a spread: a BucketTake's own key must not win
    return single(await this.takeAll([{ key, capacity, refillPerSecond, cost }]));
  }

  async takeAll(takes: readonly BucketTake[]): Promise<TakeAllResult> {
    checkTakes(takes);
    const nowUs = Math.floor(this.clock() * 1000);
    const have: number[] = [];
    const retry: number[] = [];
    let refused = false;
    for (const t of takes) {
      const slot = this.slots.get(t.key);
      const cost = t.cost ?? 1;
      const tokens = slot
        ? refilled(slot.tokens, slot.atUs, nowUs, t.capacity, t.refillPerSecond)
        : t.capacity;
      have.push(tokens);
      if (tokens >= cost) retry.push(0);
      else {
        retry.push(retryAfterMs(tokens, cost, t.capacity, t.refillPerSecond));
        refused = true;
      }
    }
    if (refused) return summarize(takes, have, retry);

    const left = takes.map((t, i) => (have[i] ?? 0) - (t.cost ?? 1));
    const added = takes.filter((t, i) => !this.slots.has(t.key) && (left[i] ?? 0) < t.capacity);
    if (added.length > 0 && !this.room(added, nowUs)) {
      this.refusedForRoom += 1;
      const wait = Math.max(1, Math.ceil((this.nextFullUs - nowUs) / 1000));
      return summarize(
        takes,
        have,
        takes.map((t) => (added.includes(t) ? wait : 0)),
      );
    }
    takes.forEach((t, i) => {
      const tokens = left[i] ?? 0;
      if (tokens >= t.capacity) {
        this.drop(t.key);
        return;
      }
      const slot = this.slots.get(t.key);
      if (slot) {
        slot.tokens = tokens;
        slot.atUs = nowUs;
        slot.capacity = t.capacity;
        slot.refillPerSecond = t.refillPerSecond;
      } else {
        const group = t.group ?? '';
        this.slots.set(t.key, {
          tokens,
          atUs: nowUs,
          capacity: t.capacity,
          refillPerSecond: t.refillPerSecond,
          group,
        });
        this.held.set(group, (this.held.get(group) ?? 0) + 1);
      }
      const fullUs = nowUs + fullInMs(tokens, t.capacity, t.refillPerSecond) * 1000;
      if (fullUs < this.nextFullUs) this.nextFullUs = fullUs;
    });
    return summarize(takes, left, retry);
  }

  /** Buckets one group holds now: for tests and a metric. */
  heldBy(group: string): number {
    return this.held.get(group) ?? 0;
  }

  private drop(key: string): void {
    const slot = this.slots.get(key);
    if (!slot) return;
    this.slots.delete(key);
    const n = (this.held.get(slot.group) ?? 0) - 1;
    if (n > 0) this.held.set(slot.group, n);
    else this.held.delete(slot.group);
  }

  /** True once the `added` buckets fit, in the table and in their groups' shares, sweeping the full ones if need be. */
  private room(added: readonly BucketTake[], nowUs: number): boolean {
    if (this.fits(added)) return true;
    // Refused calls at the cap cost O(1) until some bucket can be full.
    if (nowUs < this.nextFullUs) return false;
    let soonest = Number.POSITIVE_INFINITY;
    for (const [key, s] of this.slots) {
      if (refilled(s.tokens, s.atUs, nowUs, s.capacity, s.refillPerSecond) >= s.capacity) {
        this.drop(key);
      } else {
        const fullUs = s.atUs + fullInMs(s.tokens, s.capacity, s.refillPerSecond) * 1000;
        if (fullUs < soonest) soonest = fullUs;
      }
    }
    this.nextFullUs = soonest;
    return this.fits(added);
  }

  private fits(added: readonly BucketTake[]): boolean {
    if (this.slots.size + added.length > this.maxBuckets) return false;
    const adding = new Map<string, number>();
    for (const t of added) adding.set(t.group ?? '', (adding.get(t.group ?? '') ?? 0) + 1);
    for (const [group, n] of adding) if (this.heldBy(group) + n > this.maxPerGroup) return false;
    return true;
  }
}

/** A `ConcurrencyLimiter` for one process. */
export class MemoryConcurrencyLimiter implements ConcurrencyLimiter {
  readonly kind = 'memory' as const;
  /** Lease id → expiry (µs), per key. */
  private readonly sets = new Map<string, Map<string, number>>();
  private readonly clock: () => number;
  private readonly maxLeases: number;
  private held = 0;
  /** No lease expires before this (µs): a lower bound, as `nextFullUs` above. */
  private nextExpiryUs = 0;
  private refusedForRoom = 0;
  private readonly idPrefix = randomBytes(6).toString('hex');
  private issued = 0;

  constructor(init: MemoryLimiterInit = {}) {
    this.clock = init.now ?? (() => performance.now());
    this.maxLeases = checkMax(init.maxEntries ?? DEFAULT_MEMORY_MAX_LEASES);
  }

  /** Leases held now, expired ones not yet dropped included. */
  get size(): number {
    return this.held;
  }

  /** Acquisitions refused because the lease table was full: for a metric. */
  get overflowRefusals(): number {
    return this.refusedForRoom;
  }

  async acquire(key: string, limit: number, leaseTtlMs: number): Promise<AcquireResult> {
    const ttlMs = checkAcquire(limit, leaseTtlMs);
    const nowUs = this.nowUs();
    const leases = this.live(key, nowUs);
    if (leases && leases.size >= limit) {
      let first = Number.POSITIVE_INFINITY;
      for (const expiry of leases.values()) if (expiry < first) first = expiry;
      return { allowed: false, retryAfterMs: Math.max(1, Math.ceil((first - nowUs) / 1000)) };
    }
    if (this.held >= this.maxLeases && !this.room(nowUs)) {
      this.refusedForRoom += 1;
      return {
        allowed: false,
        retryAfterMs: Math.max(1, Math.ceil((this.nextExpiryUs - nowUs) / 1000)),
      };
    }
    const id = `${this.idPrefix}:${++this.issued}`;
    let set = this.sets.get(key);
    if (!set) this.sets.set(key, (set = new Map()));
    this.put(set, id, nowUs + ttlMs * 1000);
    this.held += 1;
    return { allowed: true, lease: new MemoryLease(this, key, id, ttlMs), retryAfterMs: 0 };
  }

  /** Drops lease `id` at `key` (MemoryLease's). */
  drop(key: string, id: string): void {
    const set = this.sets.get(key);
    if (!set?.delete(id)) return;
    this.held -= 1;
    if (set.size === 0) this.sets.delete(key);
  }

  /** Moves a live lease's expiry to `ttlMs` from now; false (and dropped) when it had expired. */
  extend(key: string, id: string, ttlMs: number): boolean {
    const nowUs = this.nowUs();
    const expiry = this.sets.get(key)?.get(id);
    if (expiry === undefined || expiry <= nowUs) {
      this.drop(key, id);
      return false;
    }
    const set = this.sets.get(key);
    if (set) this.put(set, id, nowUs + ttlMs * 1000);
    return true;
  }

  private nowUs(): number {
    return Math.floor(this.clock() * 1000);
  }

  private put(set: Map<string, number>, id: string, expiryUs: number): void {
    set.set(id, expiryUs);
    if (expiryUs < this.nextExpiryUs) this.nextExpiryUs = expiryUs;
  }

  /** The live leases at `key`, the expired ones dropped first. */
  private live(key: string, nowUs: number): Map<string, number> | undefined {
    const set = this.sets.get(key);
    if (!set) return undefined;
    for (const [id, expiry] of set) if (expiry <= nowUs) this.drop(key, id);
    return this.sets.get(key);
  }

  /** True once one more lease fits, dropping every expired one if need be. */
  private room(nowUs: number): boolean {
    if (nowUs < this.nextExpiryUs) return false;
    let soonest = Number.POSITIVE_INFINITY;
    for (const [key, set] of this.sets) {
      for (const [id, expiry] of set) {
        if (expiry <= nowUs) this.drop(key, id);
        else if (expiry < soonest) soonest = expiry;
      }
    }
    this.nextExpiryUs = soonest;
    return this.held < this.maxLeases;
  }
}

class MemoryLease implements Lease {
  private released = false;
  constructor(
    private readonly limiter: MemoryConcurrencyLimiter,
    private readonly key: string,
    readonly id: string,
    private readonly ttlMs: number,
  ) {}

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.limiter.drop(this.key, this.id);
  }

  async renew(leaseTtlMs?: number): Promise<boolean> {
    const ttlMs = leaseTtlMs === undefined ? this.ttlMs : checkLeaseTtl(leaseTtlMs);
    if (this.released) return false;
    return this.limiter.extend(this.key, this.id, ttlMs);
  }
}

function checkMax(n: number): number {
  if (!(Number.isSafeInteger(n) && n > 0)) {
    throw new RangeError(`maxEntries must be a positive integer, got ${n}`);
  }
  return n;
}
