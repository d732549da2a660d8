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
 */
import { randomBytes } from 'node:crypto';

export interface Session {
  readonly id: string;
  readonly server: string;
  /** `tenant/subject` of the principal that initialized the session. */
  readonly owner: string;
  /** The upstream's own Mcp-Session-Id, if it issued one. */
  upstreamId: string | undefined;
  /** The protocol version the upstream answered `initialize` with. */
  protocolVersion: string | undefined;
  readonly createdAt: number;
  lastSeenAt: number;
  /** Open response streams; a session with one open is never idle. */
  streams: number;
  /** The quota share the session holds, released when it ends. */
  lease?: { release(): void } | undefined;
  /**
   * Requests whose stream the upstream closed to be resumed (Last-Event-ID):
   * their answers may come on a later stream of the session, and only theirs.
   */
  resumable?: Set<string | number>;
}

export interface SessionStore {
  /** A new session; `id` is one chosen before the upstream answered (see newSessionId). */
  create(
    server: string,
    owner: string,
    upstreamId: string | undefined,
    id?: string,
  ): Session | undefined;
  /** The session, if it exists, belongs to `server` and to `owner`; refreshes its idle timer. */
  get(id: string, server: string, owner: string): Session | undefined;
  delete(id: string): Session | undefined;
  /** The session with this id, whoever owns it, without touching its idle timer (operator use). */
  peek(id: string): Session | undefined;
  /** Sessions idle longer than the timeout, removed from the store. */
  sweep(now: number): Session[];
  all(): Iterable<Session>;
  readonly size: number;
}

/** 32 random bytes, base64url: 43 visible ASCII characters. */
export function newSessionId(): string {
  return randomBytes(32).toString('base64url');
}

export class MemorySessionStore implements SessionStore {
  private readonly sessions = new Map<string, Session>();
  /**
   * @param onEnd told of every session that ends, however it ends (DELETE,
   *   idle expiry, the upstream forgetting it), so what was issued for it can
   *   be revoked.
   */
  constructor(
    private readonly idleTimeoutMs: number,
    private readonly max: number,
    private readonly onEnd: (session: Session) => void = () => undefined,
  ) {}

  private ended(session: Session): void {
    session.lease?.release();
    this.onEnd(session);
  }

  get size(): number {
    return this.sessions.size;
  }

  create(
    server: string,
    owner: string,
    upstreamId: string | undefined,
    id: string = newSessionId(),
  ): Session | undefined {
    if (this.sessions.size >= this.max || this.sessions.has(id)) return undefined;
    const now = Date.now();
    const session: Session = {
      id,
      server,
      owner,
      upstreamId,
      protocolVersion: undefined,
      createdAt: now,
      lastSeenAt: now,
      streams: 0,
    };
    this.sessions.set(session.id, session);
    return session;
  }

  get(id: string, server: string, owner: string): Session | undefined {
    const session = this.sessions.get(id);
    if (!session || session.server !== server || session.owner !== owner) return undefined;
    const now = Date.now();
    if (this.isIdle(session, now)) {
      this.sessions.delete(id);
      this.ended(session);
      return undefined;
    }
    session.lastSeenAt = now;
    return session;
  }

  peek(id: string): Session | undefined {
    return this.sessions.get(id);
  }

  delete(id: string): Session | undefined {
    const session = this.sessions.get(id);
    if (session === undefined) return undefined;
    this.sessions.delete(id);
    this.ended(session);
    return session;
  }

  sweep(now: number): Session[] {
    const expired: Session[] = [];
    for (const session of this.sessions.values()) {
      if (this.isIdle(session, now)) {
        this.sessions.delete(session.id);
        this.ended(session);
        expired.push(session);
      }
    }
    return expired;
  }

  all(): Iterable<Session> {
    return this.sessions.values();
  }

  private isIdle(session: Session, now: number): boolean {
    return session.streams === 0 && now - session.lastSeenAt > this.idleTimeoutMs;
  }
}
