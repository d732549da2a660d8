/**
 * Warm processes: a few sandboxed processes of a stdio server started ahead
 * of need, so a new session gets one that has already booted (a Node server
 * takes a few hundred milliseconds to load). Each is still one session's
 * only: it is handed over once, and the MCP `initialize` it answers first is
 * the client's own. Its credential is written when it is handed over.
 *
 * Rules, in order of precedence:
 * 1. A pooled process is never handed to a second session: `take` removes it.
 * 2. A process that dies in the pool is a crash the gateway saw without a
 *    session: refilling waits a backoff that doubles with each such death
 *    (so a server that exits at start is not restarted in a tight loop), and
 *    resets once one lives to be handed over.
 * 3. The pool refills in the background, after a take; the bridge takes
 *    nothing while it refuses sessions for a crash loop, so neither does
 *    the pool start anything then.
 * 4. Closing ends every process still waiting, and starts no other.
 */
import type { Logger } from 'pino';
import type { MessageChannel } from './channel.js';

/** A started process, not yet any session's. */
export interface WarmProcess {
  readonly channel: MessageChannel;
  /** Makes it the session's: its credential (from the request's headers) written, renewals passed on. */
  handOver(headers: Readonly<Record<string, string>>): void;
}

export interface WarmPoolOptions {
  readonly server: string;
  /** How many processes wait; 0 disables the pool. */
  readonly size: number;
  /** Starts one process (synchronously spawned; it boots meanwhile). */
  readonly start: () => WarmProcess;
  /** Whether starting makes sense now (e.g. the server can start at all). */
  readonly canStart: () => boolean;
  readonly log: Logger;
}

const IDLE_DEATH_BACKOFF_FIRST_MS = 1_000;
const IDLE_DEATH_BACKOFF_MAX_MS = 60_000;

export class WarmPool {
  private readonly idle: WarmProcess[] = [];
  private closed = false;
  private backoffMs = IDLE_DEATH_BACKOFF_FIRST_MS;
  private backoffUntil = 0;
  private refillTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: WarmPoolOptions) {
    this.fill();
  }

  /** A booted process for a new session, or undefined (the caller starts one itself). */
  take(): WarmProcess | undefined {
    let taken: WarmProcess | undefined;
    while (taken === undefined && this.idle.length > 0) {
      const next = this.idle.shift() as WarmProcess;
      if (!next.channel.closed) taken = next;
    }
    if (taken !== undefined) this.backoffMs = IDLE_DEATH_BACKOFF_FIRST_MS;
    // In the background: the session does not wait for its replacement to spawn.
    setImmediate(() => this.fill()).unref();
    return taken;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.refillTimer);
    await Promise.all(this.idle.splice(0).map((p) => p.channel.close()));
  }

  private fill(): void {
    if (this.closed || !this.options.canStart()) return;
    const wait = this.backoffUntil - Date.now();
    if (wait > 0) {
      if (this.refillTimer === undefined) {
        this.refillTimer = setTimeout(() => {
          this.refillTimer = undefined;
          this.fill();
        }, wait);
        this.refillTimer.unref();
      }
      return;
    }
    while (this.idle.length < this.options.size) {
      let started: WarmProcess;
      try {
        started = this.options.start();
      } catch (err) {
        this.options.log.warn(
          { server: this.options.server, err: (err as Error).message },
          'could not start a warm stdio process',
        );
        return;
      }
      this.idle.push(started);
      started.channel.onClose((reason) => this.onIdleClose(started, reason));
    }
  }

  private onIdleClose(idle: WarmProcess, reason: Error | undefined): void {
    const at = this.idle.indexOf(idle);
    // Handed over (not ours any more), or closed by us.
    if (at === -1 || this.closed) return;
    this.idle.splice(at, 1);
    this.options.log.warn(
      { server: this.options.server, err: reason?.message, backoffMs: this.backoffMs },
      'a warm stdio process ended before any session used it; refilling after a backoff',
    );
    this.backoffUntil = Date.now() + this.backoffMs;
    this.backoffMs = Math.min(IDLE_DEATH_BACKOFF_MAX_MS, this.backoffMs * 2);
    this.fill();
  }
}
