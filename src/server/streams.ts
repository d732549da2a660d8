/**
 * The gateway's open SSE streams to clients: one heartbeat ticker for all of
 * them (not a timer per stream), and the drain that SIGTERM starts.
 */
import type { GatewayError } from '../errors/index.js';
import { HEARTBEAT, encodeRetry } from '../mcp/sse.js';

/** Whom a stream serves, so that revoking them can end it. */
export interface StreamIdentity {
  /** ownerKey of the principal. */
  readonly owner: string;
  /** The token id (jti) the stream was opened with, if it had one. */
  readonly jti: string | undefined;
  /** The gateway session the stream belongs to, if any (may be learnt later). */
  sessionId(): string | undefined;
}

export interface ClientStream {
  /** Whether the client's side can still be written to. */
  readonly open: boolean;
  /** Writes to the client (through its exchange: what is written is counted). */
  write(chunk: string): void;
  /** Ends the stream, after `chunk` if any. */
  end(chunk?: string): void;
  /** Requests still waiting for their response on this stream. */
  readonly pending: ReadonlySet<unknown>;
  lastWriteAt: number;
  readonly identity?: StreamIdentity | undefined;
  /**
   * Ends the stream now: errors for every pending request (`reason`, or a
   * shutdown error), then the retry hint.
   */
  terminate(retryHintMs: number, reason?: GatewayError): void;
  /** Its place among the registry's open streams; the registry's only. */
  readonly streamLinks: ListLinks<ClientStream>;
}

/** A request sent upstream whose answer has not begun (no stream to cut yet), and whom it serves. */
export interface PendingCall extends StreamIdentity {
  /** Gives up on the upstream call; the client is answered with `reason`. */
  cancel(reason: GatewayError): void;
  /** Its place among the registry's pending calls; the registry's only. */
  readonly callLinks: ListLinks<PendingCall>;
}

/** An item's place on a `ThreadedList`, cleared when it leaves. */
export interface ListLinks<T> {
  prev: T | undefined;
  next: T | undefined;
  listed: boolean;
}

export function newLinks<T>(): ListLinks<T> {
  return { prev: undefined, next: undefined, listed: false };
}

/**
 * A list threaded through its items, each unlinked (its links cleared) when it
 * leaves. Not a Set: a hash table that every request enters and leaves is
 * rebuilt again and again, and a discarded table that has reached the old
 * generation still points at what it held, so each of those items, and its
 * whole request, was kept through young-generation collections until the next
 * full one (measured: bench/RESULTS-policy.md, "The pipeline").
 */
class ThreadedList<T> {
  private head: T | undefined = undefined;
  size = 0;

  constructor(private readonly linksOf: (item: T) => ListLinks<T>) {}

  add(item: T): void {
    const links = this.linksOf(item);
    if (links.listed) return;
    links.listed = true;
    links.prev = undefined;
    links.next = this.head;
    if (this.head !== undefined) this.linksOf(this.head).prev = item;
    this.head = item;
    this.size++;
  }

  remove(item: T): void {
    const links = this.linksOf(item);
    if (!links.listed) return;
    links.listed = false;
    if (links.prev !== undefined) this.linksOf(links.prev).next = links.next;
    else this.head = links.next;
    if (links.next !== undefined) this.linksOf(links.next).prev = links.prev;
    links.prev = undefined;
    links.next = undefined;
    this.size--;
  }

  /** The items now, newest first (a copy: what is done to one may unlink it). */
  items(): T[] {
    const out: T[] = [];
    for (let item = this.head; item !== undefined; item = this.linksOf(item).next) out.push(item);
    return out;
  }
}

export class StreamRegistry {
  private readonly streams = new ThreadedList<ClientStream>((s) => s.streamLinks);
  /** Calls whose answer has not begun. */
  private readonly calls = new ThreadedList<PendingCall>((c) => c.callLinks);
  private readonly ticker: NodeJS.Timeout;
  private draining = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly heartbeatMs: number,
    private readonly retryHintMs: number,
  ) {
    // Ticks at half the interval so a quiet stream never waits much past it.
    this.ticker = setInterval(() => this.beat(), Math.max(50, Math.floor(heartbeatMs / 2)));
    this.ticker.unref();
  }

  get size(): number {
    return this.streams.size;
  }

  add(stream: ClientStream): void {
    this.streams.add(stream);
    // A stream opened while draining that waits for nothing (a GET stream) closes at once.
    if (this.draining && stream.pending.size === 0) this.closeIdle(stream);
  }

  remove(stream: ClientStream): void {
    this.streams.remove(stream);
    if (this.streams.size === 0) this.settle();
  }

  /** Called by a stream whose last pending request was answered. */
  noteIdle(stream: ClientStream): void {
    if (this.draining) this.closeIdle(stream);
  }

  /**
   * Ends, with the retry hint, every stream that waits for nothing now; the
   * clients reconnect. For a replica leaving rotation: these streams' answers
   * began before it did, on connections kept alive, which a load balancer
   * would reuse the moment they end; ended now, while the replica still
   * serves, a request that comes on one is answered.
   */
  endIdle(): number {
    let ended = 0;
    for (const s of this.streams.items())
      if (s.pending.size === 0 && s.open) {
        this.closeIdle(s);
        ended++;
      }
    return ended;
  }

  private closeIdle(stream: ClientStream): void {
    if (stream.open) stream.end(encodeRetry(this.retryHintMs));
  }

  private beat(): void {
    const now = Date.now();
    for (const s of this.streams.items()) {
      if (now - s.lastWriteAt >= this.heartbeatMs && s.open) {
        s.write(HEARTBEAT);
        s.lastWriteAt = now;
      }
    }
  }

  /**
   * Closes streams that wait for nothing now (with an SSE `retry` hint so
   * clients reconnect elsewhere), lets streams with pending requests finish
   * within `timeoutMs`, then terminates the rest.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    for (const s of this.streams.items()) if (s.pending.size === 0) this.closeIdle(s);
    if (this.streams.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      timer = setTimeout(() => {
        for (const s of this.streams.items()) s.terminate(this.retryHintMs);
        resolve();
      }, timeoutMs);
    });
    clearTimeout(timer);
  }

  /** Tracks a call until its answer begins (then its stream, if any, is added). */
  addCall(call: PendingCall): void {
    this.calls.add(call);
  }

  removeCall(call: PendingCall): void {
    this.calls.remove(call);
  }

  /**
   * Ends every stream and pending call `match` picks, at once, answering what
   * is pending with `reason`; how many.
   */
  terminateWhere(match: (identity: StreamIdentity) => boolean, reason: GatewayError): number {
    let ended = 0;
    for (const c of this.calls.items()) {
      if (match(c)) {
        this.calls.remove(c);
        c.cancel(reason);
        ended++;
      }
    }
    for (const s of this.streams.items()) {
      if (s.identity !== undefined && match(s.identity)) {
        s.terminate(this.retryHintMs, reason);
        ended++;
      }
    }
    return ended;
  }

  private settle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  close(): void {
    clearInterval(this.ticker);
  }
}
