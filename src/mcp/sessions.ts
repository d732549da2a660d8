/**
 * Legacy-era sessions (protocol 2025-11-25 and before). The gateway issues its
 * own session ids: random, never derived from the upstream's, bound to the
 * principal that created them and never accepted as authentication (a session
 * id presented by anyone else is simply unknown). Each maps to the upstream's
 * session id, which never leaves the gateway.
 *
 * spec/2025-11-25/basic/transports.mdx, "Session Management": the id SHOULD be
 * globally unique and cryptographically secure and MUST only contain visible
 * ASCII; requests for an ended session MUST get 404.
 *
 * Any replica serves any session. A session lives in the shared store (Redis
 * with many replicas, the in-process store with one), and each replica keeps
 * the sessions it has served in memory: a request for one of those costs the
 * store nothing. The store is read on a replica's first request of a session
 * (and when a client resumes a stream, to learn which answers it may get).
 * Why the store and not a sealed id (the mapping encrypted into the id itself,
 * needing no Redis): a session has state that changes and must be the same
 * everywhere (that it ended, when it was last used, which answers a resumed
 * stream may carry), and a sealed id cannot be taken back: ending a session
 * would still need a shared list of ended ones. Sealing would also put the
 * upstream's session id, encrypted, in the client's hands, under a key every
 * replica must hold and rotate.
 *
 * What is shared, by key:
 * - `session:<id>`: the mapping (server, owner, upstream id, negotiated
 *   version, the replica holding a stdio process, resumable request ids);
 * - `session-seen:<id>`: when it was last used, written by each replica's
 *   sweep for the sessions it served since the last one (never per request);
 * - `session-ended:<id>`: that it ended, so only one replica ends the
 *   upstream's side of an expired session;
 * - channel `sessions:ended`: every replica drops an ended session at once.
 */
import { randomBytes } from 'node:crypto';
import type { Store } from '../store/index.js';

export interface Session {
  readonly id: string;
  readonly server: string;
  /** `tenant/subject` of the principal that initialized the session. */
  readonly owner: string;
  /** The upstream's own Mcp-Session-Id, if it issued one. */
  upstreamId: string | undefined;
  /** The protocol version the upstream answered `initialize` with. */
  protocolVersion: string | undefined;
  /**
   * The internal address of the replica that holds the session's upstream
   * side (a stdio process); undefined where any replica can reach the
   * upstream itself (HTTP).
   */
  readonly home?: string | undefined;
  readonly createdAt: number;
  lastSeenAt: number;
  /** Open response streams on this replica; a session with one open is never idle. */
  streams: number;
  /** The quota share the session holds on the replica that opened it, released when it ends. */
  lease?: { release(): void } | undefined;
  /**
   * Requests whose stream the upstream closed to be resumed (Last-Event-ID):
   * their answers may come on a later stream of the session, and only theirs.
   */
  resumable?: Set<string | number>;
  /** Shares what changed (`protocolVersion`, `resumable`) with the other replicas. */
  save?: () => void;
}

export interface SessionStore {
  /**
   * A new session, shared before this resolves (the client's next request
   * may reach any replica); undefined if this replica holds `max` sessions.
   * Rejects with StoreUnavailableError when the store cannot take it.
   */
  create(
    server: string,
    owner: string,
    upstreamId: string | undefined,
    id?: string,
    home?: string,
  ): Promise<Session | undefined>;
  /**
   * The session, if it exists, belongs to `server` and to `owner`; marks it
   * used. `fresh` reads the store even when this replica holds it (a stream
   * being resumed, which may have been closed on another replica). Rejects
   * with StoreUnavailableError when the store must be read and cannot be.
   */
  get(id: string, server: string, owner: string, fresh?: boolean): Promise<Session | undefined>;
  /** Ends the session on every replica; the shared part is best effort (logged). */
  delete(id: string): Session | undefined;
  /** The session with this id as this replica holds it, without marking it used (operator use). */
  peek(id: string): Session | undefined;
  /** Shares which sessions were used, and ends those idle longer than the timeout. */
  sweep(now?: number): Promise<void>;
  /** The sessions this replica holds. */
  all(): Iterable<Session>;
  /** Sessions opened on this replica and not ended: what `max` bounds. */
  readonly size: number;
}

/** 32 random bytes, base64url: 43 visible ASCII characters. */
export function newSessionId(): string {
  return randomBytes(32).toString('base64url');
}

export const SESSION_KEY = 'session:';
export const SESSION_SEEN_KEY = 'session-seen:';
export const SESSION_ENDED_KEY = 'session-ended:';
export const SESSIONS_ENDED_CHANNEL = 'sessions:ended';
/** Request ids a session remembers for resumption, at most (a hostile upstream cannot grow it). */
export const MAX_RESUMABLE = 1_024;
/** Ended ids remembered on a replica, so a read racing the end cannot bring one back. */
const MAX_RECENTLY_ENDED = 10_000;
/** A resumable request id's longest string form (JSON-RPC ids are the client's, bounded here). */
const MAX_RESUMABLE_ID_LENGTH = 256;
/** The shape of a home: the replica's internal URL and its boot id (src/server/replicas.ts). */
export const HOME = /^https?:\/\/[A-Za-z0-9._\-:[\]]+#[A-Za-z0-9_-]{16}$/;

/**
 * Seals a session's record to the cluster: what never changes in it (whose
 * it is, the upstream's session id, the home another replica will forward
 * to with the client's request and the credentials issued for it) is what a
 * replica wrote, not what anyone with write access to the store made up:
 * another owner, to take the session over, or an address of their own.
 */
export interface RecordSeal {
  seal(id: string, fields: string): string;
  check(id: string, fields: string, seal: string): boolean;
}

export interface SharedSessionOptions {
  readonly idleTimeoutMs: number;
  /** Sessions this replica may open; those it only serves are held besides, up to as many. */
  readonly max: number;
  /** How often `sweep` runs: the shared life of a session is the idle timeout plus two of these. */
  readonly sweepIntervalMs: number;
  /**
   * Told, on every replica that held it, of a session that ends however it
   * ends (DELETE, idle expiry, the upstream forgetting it, another replica
   * ending it), so what was issued for it here can be revoked.
   */
  readonly onEnd?: (session: Session) => void;
  /** Told, on the one replica that ended it, of a session that expired idle: end its upstream side. */
  readonly onExpire?: (session: Session) => void;
  /** A store operation that failed outside a request (sharing a change, the sweep). */
  readonly onStoreError?: (what: string, err: unknown) => void;
  /**
   * With a cluster: how records are sealed; a record without a good seal is no
   * session. Without, records are not sealed, and one naming a home is no session.
   */
  readonly seal?: RecordSeal | undefined;
  /** A callback (`onEnd`, `onExpire`) that threw: logged, never the sweep's or a request's failure. */
  readonly onCallbackError?: (what: string, err: unknown) => void;
}

interface Held extends Session {
  /** Opened here: counts against `max` and holds the lease. */
  readonly mine: boolean;
  /** `lastSeenAt` as last shared by this replica's sweep. */
  sharedSeenAt: number;
}

interface SharedRecord {
  readonly server: string;
  readonly owner: string;
  readonly upstreamId?: string;
  readonly protocolVersion?: string;
  readonly home?: string;
  /** The seal (`RecordSeal`) over what never changes, with a cluster. */
  readonly seal?: string;
  readonly createdAt: number;
  readonly resumable?: Array<string | number>;
}

/** What a record's seal covers: the fields that never change. */
function sealed(
  r: Pick<SharedRecord, 'server' | 'owner' | 'upstreamId' | 'home' | 'createdAt'>,
): string {
  return JSON.stringify([r.server, r.owner, r.upstreamId ?? null, r.home ?? null, r.createdAt]);
}

function encode(s: Session, seal: RecordSeal | undefined): string {
  const record: SharedRecord = {
    server: s.server,
    owner: s.owner,
    createdAt: s.createdAt,
    ...(s.upstreamId !== undefined ? { upstreamId: s.upstreamId } : {}),
    ...(s.protocolVersion !== undefined ? { protocolVersion: s.protocolVersion } : {}),
    ...(s.home !== undefined && seal !== undefined ? { home: s.home } : {}),
    ...(s.resumable && s.resumable.size > 0 ? { resumable: [...s.resumable] } : {}),
  };
  return JSON.stringify(
    seal === undefined ? record : { ...record, seal: seal.seal(s.id, sealed(record)) },
  );
}

const resumableId = (id: unknown): id is string | number =>
  (typeof id === 'string' && id.length <= MAX_RESUMABLE_ID_LENGTH) ||
  (typeof id === 'number' && Number.isFinite(id));

const optionalString = (v: unknown): v is string | undefined =>
  v === undefined || typeof v === 'string';

/**
 * The record, if it has the shape this module writes (and its home, if any,
 * is sealed); anything else is no session.
 */
function decode(id: string, raw: string, seal: RecordSeal | undefined): SharedRecord | undefined {
  let r: unknown;
  try {
    r = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null) return undefined;
  const o = r as Record<string, unknown>;
  if (typeof o.server !== 'string' || typeof o.owner !== 'string') return undefined;
  if (typeof o.createdAt !== 'number') return undefined;
  if (!optionalString(o.upstreamId) || !optionalString(o.protocolVersion)) return undefined;
  if (o.home !== undefined && (typeof o.home !== 'string' || !HOME.test(o.home))) return undefined;
  if (seal === undefined) {
    if (o.home !== undefined) return undefined;
  } else if (
    typeof o.seal !== 'string' ||
    !seal.check(id, sealed(o as unknown as SharedRecord), o.seal)
  ) {
    return undefined;
  }
  if (o.resumable !== undefined) {
    if (!Array.isArray(o.resumable) || o.resumable.length > MAX_RESUMABLE) return undefined;
    if (!o.resumable.every(resumableId)) return undefined;
  }
  return o as unknown as SharedRecord;
}

export class SharedSessionStore implements SessionStore {
  private readonly held = new Map<string, Held>();
  /** Ended ids, by when they ended (insertion order is age order). */
  private readonly recentlyEnded = new Map<string, number>();
  private opened = 0;
  private readonly ttlMs: number;
  /**
   * How late another replica's use of a session may reach the store (its
   * sweep shares it): none with the in-process store, where there is no other.
   */
  private readonly shareLagMs: number;

  constructor(
    private readonly store: Store,
    private readonly options: SharedSessionOptions,
  ) {
    this.ttlMs = options.idleTimeoutMs + 2 * options.sweepIntervalMs;
    this.shareLagMs = store.kind === 'memory' ? 0 : options.sweepIntervalMs;
    store.subscribe(SESSIONS_ENDED_CHANNEL, (id) => this.endHere(id));
    // Ends published while the store was away were not delivered: ask it about
    // every held session at once rather than serve a stale one until the next sweep.
    store.onHealth((healthy) => {
      if (!healthy) return;
      for (const s of this.held.values()) s.sharedSeenAt = -1;
      void this.sweep();
    });
  }

  get size(): number {
    return this.opened;
  }

  async create(
    server: string,
    owner: string,
    upstreamId: string | undefined,
    id: string = newSessionId(),
    home?: string,
  ): Promise<Session | undefined> {
    if (this.opened >= this.options.max || this.held.has(id)) return undefined;
    const now = Date.now();
    const session = this.hold(
      {
        id,
        server,
        owner,
        upstreamId,
        protocolVersion: undefined,
        home,
        createdAt: now,
        lastSeenAt: now,
        streams: 0,
      },
      true,
      now,
    );
    // Counted before the store answers, so a burst cannot get past `max`.
    this.opened++;
    try {
      const [fresh] = await Promise.all([
        this.store.setIfAbsent(SESSION_KEY + id, this.encode(session), this.ttlMs),
        this.store.set(SESSION_SEEN_KEY + id, String(now), this.ttlMs),
      ]);
      if (!fresh) throw new Error('session id already in use');
    } catch (err) {
      this.opened--;
      this.held.delete(id);
      throw err;
    }
    return session;
  }

  async get(
    id: string,
    server: string,
    owner: string,
    fresh = false,
  ): Promise<Session | undefined> {
    const now = Date.now();
    let s = this.held.get(id);
    if (s !== undefined && (s.server !== server || s.owner !== owner)) return undefined;
    if (s !== undefined && !fresh && !this.idle(s, now)) {
      s.lastSeenAt = now;
      return s;
    }
    if (this.recentlyEnded.has(id)) return undefined;
    const idleHere = s !== undefined && this.idle(s, now);
    // The end is read with the record: a record brought back by a race with the
    // end (a change shared as it ended) is no session, even past `recentlyEnded`.
    const [raw, seen, ended] = await Promise.all([
      this.store.get(SESSION_KEY + id),
      idleHere ? this.store.get(SESSION_SEEN_KEY + id) : undefined,
      this.store.get(SESSION_ENDED_KEY + id),
    ]);
    // It may have ended while the store answered.
    if (this.recentlyEnded.has(id)) return undefined;
    if (ended !== undefined) {
      this.endHere(id);
      return undefined;
    }
    if (raw === undefined && s !== undefined && !idleHere) {
      // Held and in use here, yet not in the store: ended elsewhere, or lost by it.
      if (!(await this.offerAgain(s))) return undefined;
      s.lastSeenAt = now;
      return s;
    }
    const record = raw === undefined ? undefined : decode(id, raw, this.options.seal);
    if (record === undefined || record.server !== server || record.owner !== owner) {
      if (s !== undefined && raw === undefined) this.endHere(id);
      return undefined;
    }
    if (idleHere && s !== undefined && this.unusedSince(seen, now)) {
      // Unused everywhere for longer than the timeout: it ends now, not at the next sweep.
      await this.expire(s);
      return undefined;
    }
    s ??= this.hold(
      {
        id,
        server,
        owner,
        upstreamId: record.upstreamId,
        protocolVersion: undefined,
        home: record.home,
        createdAt: record.createdAt,
        lastSeenAt: now,
        streams: 0,
      },
      false,
      now,
    );
    s.protocolVersion ??= record.protocolVersion;
    if (record.resumable !== undefined) {
      s.resumable ??= new Set();
      for (const r of record.resumable) {
        if (s.resumable.size >= MAX_RESUMABLE) break;
        s.resumable.add(r);
      }
    } else if (fresh) {
      s.resumable?.clear();
    }
    s.lastSeenAt = now;
    return s;
  }

  peek(id: string): Session | undefined {
    return this.held.get(id);
  }

  all(): Iterable<Session> {
    return this.held.values();
  }

  delete(id: string): Session | undefined {
    const s = this.endHere(id);
    // The end is recorded before the record goes: a replica that finds no
    // record then always finds the end, and does not offer the session again.
    this.share(
      'end a session',
      this.store
        .set(SESSION_ENDED_KEY + id, '1', this.ttlMs)
        // Gone from the store even if its end could not be recorded.
        .catch((err: unknown) => this.options.onStoreError?.('record that a session ended', err))
        .then(() => this.store.delete(SESSION_KEY + id))
        .then(() => this.store.publish(SESSIONS_ENDED_CHANNEL, id)),
    );
    return s;
  }

  async sweep(now = Date.now()): Promise<void> {
    for (const [id, at] of this.recentlyEnded) {
      if (now - at <= this.ttlMs && this.recentlyEnded.size <= MAX_RECENTLY_ENDED) break;
      this.recentlyEnded.delete(id);
    }
    const work: Array<Promise<void>> = [];
    for (const s of this.held.values()) {
      if (s.streams > 0) s.lastSeenAt = now;
      if (s.lastSeenAt > s.sharedSeenAt) work.push(this.shareSeen(s));
      else if (this.idle(s, now)) work.push(this.checkIdle(s, now));
    }
    await Promise.all(work);
  }

  /** Tells the store this replica used the session; ends it here if the store no longer has it. */
  private async shareSeen(s: Held): Promise<void> {
    const seenAt = s.lastSeenAt;
    try {
      const [alive] = await Promise.all([
        this.store.touch(SESSION_KEY + s.id, this.ttlMs),
        this.store.set(SESSION_SEEN_KEY + s.id, String(seenAt), this.ttlMs),
      ]);
      if (!alive && !(await this.offerAgain(s))) {
        await this.store.delete(SESSION_SEEN_KEY + s.id);
        return;
      }
      s.sharedSeenAt = seenAt;
    } catch (err) {
      this.options.onStoreError?.('share that a session was used', err);
    }
  }

  /**
   * A session in use here that the store does not have. Ended elsewhere (its
   * end is recorded): it ends here too, and this resolves false. Else the
   * store lost it (a Redis restarted empty), or let it expire while this
   * replica could not reach it: it is offered again, as this replica holds it.
   */
  private async offerAgain(s: Held): Promise<boolean> {
    if ((await this.store.get(SESSION_ENDED_KEY + s.id)) !== undefined) {
      this.endHere(s.id);
      return false;
    }
    const offered = await this.store.setIfAbsent(SESSION_KEY + s.id, this.encode(s), this.ttlMs);
    // It may have ended between the two: then what was offered is taken back.
    if (offered && (await this.store.get(SESSION_ENDED_KEY + s.id)) !== undefined) {
      await this.store.delete(SESSION_KEY + s.id);
      this.endHere(s.id);
      return false;
    }
    return true;
  }

  /** A session idle here: ended if idle everywhere, else only no longer held (unless opened here). */
  private async checkIdle(s: Held, now: number): Promise<void> {
    try {
      const [raw, seen] = await Promise.all([
        this.store.get(SESSION_KEY + s.id),
        this.store.get(SESSION_SEEN_KEY + s.id),
      ]);
      if (raw === undefined || this.unusedSince(seen, now)) return await this.expire(s);
      if (!s.mine && this.held.get(s.id) === s) this.held.delete(s.id);
    } catch (err) {
      this.options.onStoreError?.('check an idle session', err);
    }
  }

  /** Ends an expired session; the replica that claims it first ends the upstream's side. */
  private async expire(s: Held): Promise<void> {
    let claimed = false;
    try {
      claimed = await this.store.setIfAbsent(SESSION_ENDED_KEY + s.id, '1', this.ttlMs);
    } catch (err) {
      this.options.onStoreError?.('end an expired session', err);
      return;
    }
    // The replica that claimed the end ends it, held here or not (it may have
    // been let go meanwhile): no other replica will end its upstream side.
    if (!claimed && this.held.get(s.id) !== s) return;
    this.delete(s.id);
    if (claimed) this.callback('end an expired session upstream', () => this.options.onExpire?.(s));
  }

  /** Drops the session on this replica; what was issued for it here is revoked. */
  private endHere(id: string): Session | undefined {
    this.recentlyEnded.delete(id);
    this.recentlyEnded.set(id, Date.now());
    const s = this.held.get(id);
    if (s === undefined) return undefined;
    this.held.delete(id);
    if (s.mine) this.opened--;
    s.lease?.release();
    this.callback('end what was issued for a session', () => this.options.onEnd?.(s));
    return s;
  }

  private callback(what: string, run: () => void): void {
    try {
      run();
    } catch (err) {
      this.options.onCallbackError?.(what, err);
    }
  }

  private encode(s: Session): string {
    return encode(s, this.options.seal);
  }

  private hold(session: Session, mine: boolean, now: number): Held {
    const s: Held = { ...session, mine, sharedSeenAt: mine ? now : now - 1 };
    // A change replaces the record, never writes one back: a session that ended
    // meanwhile stays ended (one the store lost is offered again).
    s.save = () => {
      if (this.held.get(s.id) === s)
        this.share(
          'share a session change',
          this.store
            .replace(SESSION_KEY + s.id, this.encode(s), this.ttlMs)
            .then((kept) => kept || this.offerAgain(s)),
        );
    };
    if (!mine) this.makeRoom();
    this.held.set(s.id, s);
    return s;
  }

  /** Sessions served but not opened here are held up to `max`: the one held longest goes. */
  private makeRoom(): void {
    let foreign = this.held.size - this.opened;
    if (foreign < this.options.max) return;
    for (const s of this.held.values()) {
      if (s.mine || s.streams > 0) continue;
      this.held.delete(s.id);
      if (--foreign < this.options.max) return;
    }
  }

  /** Whether the shared last use (`seen`, ms) is older than the timeout, allowing for sharing's lag. */
  private unusedSince(seen: string | undefined, now: number): boolean {
    return !(Number(seen) > now - this.options.idleTimeoutMs - this.shareLagMs);
  }

  private idle(s: Held, now: number): boolean {
    return s.streams === 0 && now - s.lastSeenAt > this.options.idleTimeoutMs;
  }

  private share(what: string, op: Promise<unknown>): void {
    op.catch((err: unknown) => this.options.onStoreError?.(what, err));
  }
}
