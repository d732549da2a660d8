/**
 * Trust on first use across replicas: the pins of tools first seen on
 * servers without a manifest, kept in the shared store so every replica
 * trusts the same definition, and forgotten there when an operator approves
 * a changed tool (`portcullis pins reset`).
 *
 * The pin book is asked on the relay's hot path, synchronously, so each
 * replica answers from a local mirror; the store is written behind it. In
 * order:
 * 1. at start the mirror is loaded from the store (`pins:` keys) before the
 *    gateway serves;
 * 2. a tool seen for the first time is trusted in the mirror at once and
 *    offered to the store with `setIfAbsent`; the replica that sets it first
 *    wins: a replica that loses takes the winner's pin (the tool is then
 *    blocked on its next list if the definitions differ);
 * 3. every trust and every forget is broadcast, so other mirrors learn it
 *    within a pub/sub round trip;
 * 4. while the store is down the mirror goes on answering (logged once);
 *    when it is back the mirror is rebuilt from the store (broadcasts sent
 *    in between were lost), and pins trusted meanwhile are offered again
 *    with `setIfAbsent`: the store's pin wins;
 * 5. a forget leaves a tombstone (`pins-forgotten:`, holding the pin it
 *    forgot), so a replica that missed the broadcast tells a reset from a
 *    store that lost its data (restarted empty): a pin of its mirror the
 *    store lacks is dropped only when a tombstone names that pin, and
 *    offered again otherwise. Losing data never loosens a pin.
 *
 * The store has no keys without expiry: pins and tombstones are written
 * with `PIN_TTL_MS` (ten years), in effect until a reset.
 */
import type { Logger } from 'pino';
import { compositeKey } from '../auth/principal.js';
import { MAX_PINS_PER_SERVER, type PinBook } from '../policy/tools.js';
import type { Store } from '../store/index.js';

const KEY_PREFIX = 'pins:';
/** Not under `pins:`: a scan of the pins never reads a tombstone. */
const FORGOTTEN_PREFIX = 'pins-forgotten:';
const CHANNEL = 'pins';
/** How long a pin lives in the store: the store keeps nothing forever, so ten years. */
export const PIN_TTL_MS = 10 * 365 * 24 * 60 * 60 * 1000;
/** How often one offer retries when the key vanished (a reset) between `setIfAbsent` and `get`. */
const OFFER_ATTEMPTS = 3;

/** A pin as the admin API lists it. */
export interface PinEntry {
  readonly server: string;
  readonly tool: string;
  readonly pin: string;
}

/** What a replica broadcasts: a pin it set first, or one an operator forgot. */
type PinMessage =
  | { readonly op: 'trust'; readonly server: string; readonly tool: string; readonly pin: string }
  | { readonly op: 'forget'; readonly server: string; readonly tool: string };

function pinKey(server: string, tool: string): string {
  return compositeKey(server, tool);
}

function parseKey(key: string): { server: string; tool: string } | undefined {
  try {
    const parts = JSON.parse(key) as unknown;
    if (Array.isArray(parts) && parts.length === 2 && parts.every((p) => typeof p === 'string'))
      return { server: parts[0] as string, tool: parts[1] as string };
  } catch {
    // not a key this gateway made
  }
  return undefined;
}

function parseMessage(text: string): PinMessage | undefined {
  try {
    const m = JSON.parse(text) as Partial<Record<string, unknown>>;
    if (typeof m.server !== 'string' || typeof m.tool !== 'string') return undefined;
    if (m.op === 'trust' && typeof m.pin === 'string' && m.pin !== '')
      return { op: 'trust', server: m.server, tool: m.tool, pin: m.pin };
    if (m.op === 'forget') return { op: 'forget', server: m.server, tool: m.tool };
  } catch {
    // a foreign or corrupt message: ignored
  }
  return undefined;
}

/** The pin book of a gateway: a mirror of the store's pins, answered synchronously. */
export class StorePinBook implements PinBook {
  /** compositeKey(server, tool) → pin: what `trusted` answers. */
  private mirror = new Map<string, string>();
  /** Pins trusted here that the store has not answered for yet (in flight, or the store was down). */
  private readonly pending = new Map<string, string>();
  /** Servers whose pins reached MAX_PINS_PER_SERVER (logged once each). */
  private readonly full = new Set<string>();
  /** Broadcasts received while a reload reads the store, applied again over what it read. */
  private replay: PinMessage[] | undefined;
  private loading: Promise<void> | undefined;
  private reloadAgain = false;
  private readonly offers = new Set<Promise<void>>();
  private readonly forgetListeners: Array<(server: string, tool: string) => void> = [];
  /** Whether this outage was logged already. */
  private outageLogged = false;
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {
    store.subscribe(CHANNEL, (text) => {
      const m = parseMessage(text);
      if (m === undefined) return;
      this.replay?.push(m);
      this.apply(m);
    });
    store.onHealth((healthy) => {
      if (healthy) {
        this.outageLogged = false;
        void this.reload();
      } else this.noteOutage();
    });
  }

  /** Loads the mirror; resolves even if the store is down (the mirror then starts empty). */
  start(): Promise<void> {
    return this.reload();
  }

  trusted(server: string, tool: string): string | undefined {
    return this.mirror.get(pinKey(server, tool));
  }

  trust(server: string, tool: string, pin: string): boolean {
    // Counted on first sight only (rare): a scan of the mirror, not a counter to keep in step.
    const prefix = `${compositeKey(server).slice(0, -1)},`;
    let count = 0;
    for (const key of this.mirror.keys()) if (key.startsWith(prefix)) count++;
    if (count >= MAX_PINS_PER_SERVER) {
      if (!this.full.has(server)) {
        this.full.add(server);
        this.log.warn(
          { event: 'pins.full', server, max: MAX_PINS_PER_SERVER },
          `pins: server ${server} has ${MAX_PINS_PER_SERVER} tools first seen; new ones are held`,
        );
      }
      return false;
    }
    const key = pinKey(server, tool);
    this.mirror.set(key, pin);
    this.pending.set(key, pin);
    if (!this.closed) this.track(this.offer(server, tool, pin));
    return true;
  }

  /** Every pin this replica knows, of one server or of all, sorted by server and tool. */
  list(server?: string): PinEntry[] {
    const out: PinEntry[] = [];
    for (const [key, pin] of this.mirror) {
      const named = parseKey(key);
      if (named && (server === undefined || named.server === server)) out.push({ ...named, pin });
    }
    return out.sort((a, b) => a.server.localeCompare(b.server) || a.tool.localeCompare(b.tool));
  }

  /**
   * Forgets a tool's pin on every replica, so the definition it next shows is
   * trusted. Resolves whether a pin was known; rejects if the store cannot
   * record it (nothing is forgotten then).
   */
  async forget(server: string, tool: string): Promise<boolean> {
    const key = pinKey(server, tool);
    const pin = (await this.store.get(KEY_PREFIX + key)) ?? this.mirror.get(key);
    if (pin === undefined) return false;
    // The tombstone first: a replica that reloads between the two sees a pin, never a loss.
    await this.store.set(FORGOTTEN_PREFIX + key, pin, PIN_TTL_MS);
    await this.store.delete(KEY_PREFIX + key);
    this.apply({ op: 'forget', server, tool });
    try {
      await this.store.publish(CHANNEL, JSON.stringify({ op: 'forget', server, tool }));
    } catch (err) {
      // The store has forgotten it: other replicas learn it on their next reload.
      this.log.warn(
        { event: 'pins.publish_failed', server, tool, err: (err as Error).message },
        'pins: a forgotten pin could not be broadcast; other replicas learn it when they reload',
      );
    }
    return true;
  }

  /** Called for each pin forgotten here or on another replica (to drop verdicts made with it). */
  onForget(listener: (server: string, tool: string) => void): void {
    this.forgetListeners.push(listener);
  }

  /** Stops offering; waits for the offers in flight (each bounded by the store's timeout). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.offers]);
  }

  private track(p: Promise<void>): void {
    this.offers.add(p);
    void p.finally(() => this.offers.delete(p));
  }

  private apply(m: PinMessage): void {
    const key = pinKey(m.server, m.tool);
    if (m.op === 'trust') {
      // The sender set it first in the store: its pin is the one every replica keeps.
      this.mirror.set(key, m.pin);
      if (this.pending.get(key) === m.pin) this.pending.delete(key);
      return;
    }
    const had = this.mirror.delete(key);
    this.pending.delete(key);
    if (had) this.forgotten(m.server, m.tool);
  }

  private forgotten(server: string, tool: string): void {
    for (const listener of this.forgetListeners) {
      try {
        listener(server, tool);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'pins: a forget listener failed');
      }
    }
  }

  /** Offers a pin to the store; on losing the race, the mirror takes the store's pin. */
  private async offer(server: string, tool: string, pin: string): Promise<void> {
    const key = pinKey(server, tool);
    try {
      for (let attempt = 0; attempt < OFFER_ATTEMPTS; attempt++) {
        if (await this.store.setIfAbsent(KEY_PREFIX + key, pin, PIN_TTL_MS)) {
          if (this.pending.get(key) === pin) this.pending.delete(key);
          await this.store.publish(CHANNEL, JSON.stringify({ op: 'trust', server, tool, pin }));
          return;
        }
        const stored = await this.store.get(KEY_PREFIX + key);
        if (stored === undefined) continue; // reset in between: offer again
        if (this.pending.get(key) === pin) this.pending.delete(key);
        // Forgotten here meanwhile (a reset): the store's pin is older than that.
        if (!this.mirror.has(key)) return;
        if (stored !== pin) {
          this.mirror.set(key, stored);
          this.conflict(key);
        }
        return;
      }
    } catch (err) {
      // Kept in `pending`: offered again when the store is back.
      this.noteOutage(err);
    }
  }

  private conflict(key: string): void {
    const named = parseKey(key);
    this.log.warn(
      { event: 'pins.conflict', server: named?.server, tool: named?.tool },
      `pins: another replica first trusted another definition of ${named?.tool} on ${named?.server}; this replica now trusts that one`,
    );
  }

  private noteOutage(err?: unknown): void {
    if (this.outageLogged || this.closed) return;
    this.outageLogged = true;
    this.log.warn(
      {
        event: 'pins.store_unavailable',
        pending: this.pending.size,
        ...(err === undefined ? {} : { err: (err as Error).message }),
      },
      'pins: the shared store is unavailable; tools first seen now are trusted by this replica alone until it is back',
    );
  }

  /** Rebuilds the mirror from the store and offers what was trusted here meanwhile. */
  private reload(): Promise<void> {
    if (this.loading) {
      this.reloadAgain = true;
      return this.loading;
    }
    this.loading = (async () => {
      do {
        this.reloadAgain = false;
        await this.reloadOnce();
      } while (this.reloadAgain && !this.closed);
    })().finally(() => {
      this.loading = undefined;
    });
    return this.loading;
  }

  private async reloadOnce(): Promise<void> {
    this.replay = [];
    let entries;
    let tombstones;
    try {
      entries = await this.store.entries(KEY_PREFIX);
      tombstones = await this.store.entries(FORGOTTEN_PREFIX);
    } catch (err) {
      this.replay = undefined;
      this.noteOutage(err);
      return;
    }
    const next = new Map<string, string>();
    for (const e of entries) {
      const key = e.key.slice(KEY_PREFIX.length);
      if (parseKey(key) !== undefined && e.value !== '') next.set(key, e.value);
    }
    const forgotten = new Map(
      tombstones.map((e) => [e.key.slice(FORGOTTEN_PREFIX.length), e.value]),
    );
    const replay = this.replay;
    this.replay = undefined;
    // The mirror as it is now: forgets broadcast while the store was read are out of it already.
    const previous = this.mirror;
    this.mirror = next;
    for (const m of replay) this.apply(m);
    let lost = 0;
    for (const [key, pin] of previous) {
      if (this.mirror.has(key) || this.pending.has(key)) continue;
      if (forgotten.get(key) === pin) {
        // Forgotten on another replica while this one could not hear it.
        const named = parseKey(key);
        if (named) this.forgotten(named.server, named.tool);
        continue;
      }
      // The store lost it (restarted empty, or evicted): trusted still, and offered again.
      this.pending.set(key, pin);
      lost += 1;
    }
    // Trusted here while the store could not say: offered now; the store's pin wins.
    const offered: Array<[string, string]> = [];
    for (const [key, pin] of this.pending) {
      const stored = this.mirror.get(key);
      if (stored !== undefined) {
        this.pending.delete(key);
        if (stored !== pin) this.conflict(key);
        continue;
      }
      this.mirror.set(key, pin);
      offered.push([key, pin]);
    }
    for (const [key, pin] of offered) {
      const named = parseKey(key);
      if (named && !this.closed) this.track(this.offer(named.server, named.tool, pin));
    }
    if (lost > 0)
      this.log.warn(
        { event: 'pins.store_lost', pins: lost },
        'pins: the shared store had lost pins this replica trusted (restarted empty?); offered again',
      );
    this.log.info(
      { event: 'pins.loaded', pins: this.mirror.size, offered: offered.length },
      'pins loaded from the shared store',
    );
  }
}
