/**
 * Revocations by token id (`jti`), by subject, and by gateway session, shared
 * by every replica through the store. Each replica keeps a local mirror, so
 * the check on every request is a few map lookups: no network on the hot path.
 * The mirror is loaded from the store at start, kept current by the store's
 * broadcast channel, and reloaded whenever the store comes back after an
 * outage (broadcasts sent meanwhile were lost). While the store is unhealthy
 * the mirror may be missing revocations, so the check answers `unavailable`
 * and the caller fails closed unless configured otherwise.
 */
import type { Store } from '../store/index.js';
import { compositeKey } from './principal.js';

export type RevocationKind = 'jti' | 'sub' | 'session';

export interface Revocation {
  readonly kind: RevocationKind;
  /** The token id, the subject (`tenant`+`subject`, see `subjectKey`), or the session id. */
  readonly id: string;
  /** Epoch ms after which the revocation no longer matters (the token or session is dead by then). */
  readonly expiresAt: number;
  readonly reason?: string;
}

export type RevocationCheck = 'ok' | 'revoked' | 'unavailable';

const KEY_PREFIX = 'revoked:';
const CHANNEL = 'revocations';
/** How often expired entries are dropped from the mirror. */
const PRUNE_INTERVAL_MS = 60_000;

/** The subject a subject revocation names: subjects are only unique within a tenant. */
export function subjectKey(tenant: string, subject: string): string {
  return compositeKey(tenant, subject);
}

/** The tenant and subject a subject revocation's id names, or undefined for one that names none. */
export function parseSubjectKey(id: string): { tenant: string; subject: string } | undefined {
  try {
    const parts = JSON.parse(id) as unknown;
    if (Array.isArray(parts) && parts.length === 2 && parts.every((p) => typeof p === 'string'))
      return { tenant: parts[0] as string, subject: parts[1] as string };
  } catch {
    // Not a key this gateway made.
  }
  return undefined;
}

function storeKey(kind: RevocationKind, id: string): string {
  return `${KEY_PREFIX}${kind}:${id}`;
}

/**
 * A subject revocation recorded by an earlier release, as `tenant\0subject`,
 * read as the key this one makes, so a revocation in the shared store is
 * not lost by an upgrade. Split at the first NUL, as that release meant it.
 */
function upgradedSubjectKey(id: string): string {
  if (id.startsWith('[')) return id;
  const nul = id.indexOf('\u0000');
  return nul < 0 ? id : subjectKey(id.slice(0, nul), id.slice(nul + 1));
}

function parse(value: string): Revocation | undefined {
  try {
    const r = JSON.parse(value) as Partial<Revocation>;
    if (
      (r.kind === 'jti' || r.kind === 'sub' || r.kind === 'session') &&
      typeof r.id === 'string' &&
      typeof r.expiresAt === 'number'
    ) {
      return {
        kind: r.kind,
        id: r.kind === 'sub' ? upgradedSubjectKey(r.id) : r.id,
        expiresAt: r.expiresAt,
        ...(r.reason ? { reason: r.reason } : {}),
      };
    }
  } catch {
    // a foreign or corrupt value: ignored
  }
  return undefined;
}

export class Revocations {
  private readonly mirror: Record<RevocationKind, Map<string, number>> = {
    jti: new Map(),
    sub: new Map(),
    session: new Map(),
  };
  private loaded = false;
  private loading: Promise<void> | undefined;
  private readonly pruner: NodeJS.Timeout;
  private readonly listeners: Array<(r: Revocation) => void> = [];

  constructor(
    private readonly store: Store,
    private readonly onError: (err: unknown, what: string) => void = () => undefined,
  ) {
    store.subscribe(CHANNEL, (message) => {
      const r = parse(message);
      if (r) this.remember(r);
    });
    store.onHealth((healthy) => {
      if (healthy) void this.reload();
      else this.loaded = false;
    });
    this.pruner = setInterval(() => this.prune(Date.now()), PRUNE_INTERVAL_MS);
    this.pruner.unref();
  }

  /** Loads the mirror; resolves even if the store is down (checks then answer `unavailable`). */
  start(): Promise<void> {
    return this.reload();
  }

  /** True when checks can be trusted: the mirror is loaded and the store is healthy. */
  get current(): boolean {
    return this.loaded && this.store.healthy;
  }

  /**
   * The request's standing: `revoked` if its token id, its subject or its
   * session is revoked; `unavailable` if the mirror cannot be trusted.
   */
  check(jti: string | undefined, subject: string, sessionId?: string): RevocationCheck {
    if (!this.current) return 'unavailable';
    const now = Date.now();
    if (jti !== undefined && this.live(this.mirror.jti, jti, now)) return 'revoked';
    if (this.live(this.mirror.sub, subject, now)) return 'revoked';
    if (sessionId !== undefined && this.live(this.mirror.session, sessionId, now)) return 'revoked';
    return 'ok';
  }

  /** Records a revocation in the store and tells every replica; rejects if the store cannot. */
  async revoke(r: Revocation): Promise<void> {
    const ttlMs = Math.max(1, r.expiresAt - Date.now());
    const value = JSON.stringify(r);
    await this.store.set(storeKey(r.kind, r.id), value, ttlMs);
    this.remember(r);
    await this.store.publish(CHANNEL, value);
  }

  /** Live revocations, for the admin API. */
  list(): Revocation[] {
    const now = Date.now();
    const out: Revocation[] = [];
    for (const kind of ['jti', 'sub', 'session'] as const) {
      for (const [id, expiresAt] of this.mirror[kind]) {
        if (expiresAt > now) out.push({ kind, id, expiresAt });
      }
    }
    return out;
  }

  /** Called for every revocation this replica learns of (its own and other replicas'). */
  onRevoked(listener: (r: Revocation) => void): void {
    this.listeners.push(listener);
  }

  close(): void {
    clearInterval(this.pruner);
  }

  private live(map: Map<string, number>, id: string, now: number): boolean {
    const expiresAt = map.get(id);
    return expiresAt !== undefined && expiresAt > now;
  }

  private remember(r: Revocation): void {
    const map = this.mirror[r.kind];
    const known = map.get(r.id);
    if (known !== undefined && known >= r.expiresAt) return;
    map.set(r.id, r.expiresAt);
    for (const l of this.listeners) l(r);
  }

  private prune(now: number): void {
    for (const map of Object.values(this.mirror)) {
      for (const [id, expiresAt] of map) if (expiresAt <= now) map.delete(id);
    }
  }

  private reload(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const entries = await this.store.entries(KEY_PREFIX);
        for (const e of entries) {
          const r = parse(e.value);
          if (r) this.remember(r);
        }
        this.loaded = true;
      } catch (err) {
        this.loaded = false;
        this.onError(err, 'loading revocations');
      } finally {
        this.loading = undefined;
      }
    })();
    return this.loading;
  }
}
