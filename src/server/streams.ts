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
  /** The registry's links to its neighbours while it is registered; set by the registry only. */
  prevStream: ClientStream | undefined;
  nextStream: ClientStream | undefined;
  listed: boolean;
}

/** A request sent upstream whose answer has not begun (no stream to cut yet), and whom it serves. */
export interface PendingCall extends StreamIdentity {
  /** Gives up on the upstream call; the client is answered with `reason`. */
  cancel(reason: GatewayError): void;
  /** The registry's links to its neighbours while it is tracked; set by the registry only. */
  prevCall: PendingCall | undefined;
  nextCall: PendingCall | undefined;
  tracked: boolean;
}

export class StreamRegistry {
  /** Open streams, threaded through the streams themselves (not a Set: see `firstCall`). */
  private firstStream: ClientStream | undefined = undefined;
  private streamCount = 0;
  /**
   * Calls whose answer has not begun, as a list threaded through the calls
   * themselves, each unlinked (its links cleared) when its answer begins. Not a
   * Set: a hash table that every request enters and leaves is rebuilt again and
   * again, and a discarded table that has reached the old generation still
   * points at the calls it held, so each of them, and its whole request, was
   * kept through young-generation collections until the next full one
   * (measured: bench/RESULTS-policy.md, "The pipeline").
   */
  private firstCall: PendingCall | undefined = undefined;
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
    return this.streamCount;
  }

  add(stream: ClientStream): void {
    if (!stream.listed) {
      stream.listed = true;
      stream.prevStream = undefined;
      stream.nextStream = this.firstStream;
      if (this.firstStream) this.firstStream.prevStream = stream;
      this.firstStream = stream;
      this.streamCount++;
    }
    // A stream opened while draining that waits for nothing (a GET stream) closes at once.
    if (this.draining && stream.pending.size === 0) this.closeIdle(stream);
  }

  remove(stream: ClientStream): void {
    if (stream.listed) {
      stream.listed = false;
      if (stream.prevStream) stream.prevStream.nextStream = stream.nextStream;
      else this.firstStream = stream.nextStream;
      if (stream.nextStream) stream.nextStream.prevStream = stream.prevStream;
      stream.prevStream = undefined;
      stream.nextStream = undefined;
      this.streamCount--;
    }
    if (this.streamCount === 0) this.settle();
  }

  /** Called by a stream whose last pending request was answered. */
  noteIdle(stream: ClientStream): void {
    if (this.draining) this.closeIdle(stream);
  }

  private closeIdle(stream: ClientStream): void {
    if (stream.open) stream.end(encodeRetry(this.retryHintMs));
  }

  private beat(): void {
    const now = Date.now();
    for (let s = this.firstStream; s !== undefined; s = s.nextStream) {
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
    for (const s of this.openStreams()) if (s.pending.size === 0) this.closeIdle(s);
    if (this.streamCount === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      timer = setTimeout(() => {
        for (const s of this.openStreams()) s.terminate(this.retryHintMs);
        resolve();
      }, timeoutMs);
    });
    clearTimeout(timer);
  }

  /** Tracks a call until its answer begins (then its stream, if any, is added). */
  addCall(call: PendingCall): void {
    if (call.tracked) return;
    call.tracked = true;
    call.prevCall = undefined;
    call.nextCall = this.firstCall;
    if (this.firstCall) this.firstCall.prevCall = call;
    this.firstCall = call;
  }

  removeCall(call: PendingCall): void {
    if (!call.tracked) return;
    call.tracked = false;
    if (call.prevCall) call.prevCall.nextCall = call.nextCall;
    else this.firstCall = call.nextCall;
    if (call.nextCall) call.nextCall.prevCall = call.prevCall;
    call.prevCall = undefined;
    call.nextCall = undefined;
  }

  /** The streams open now (a copy: ending one unlinks it). */
  private openStreams(): ClientStream[] {
    const out: ClientStream[] = [];
    for (let s = this.firstStream; s !== undefined; s = s.nextStream) out.push(s);
    return out;
  }

  /** The calls tracked now (a copy: cancelling one unlinks it). */
  private pendingCalls(): PendingCall[] {
    const out: PendingCall[] = [];
    for (let c = this.firstCall; c !== undefined; c = c.nextCall) out.push(c);
    return out;
  }

  /**
   * Ends every stream and pending call `match` picks, at once, answering what
   * is pending with `reason`; how many.
   */
  terminateWhere(match: (identity: StreamIdentity) => boolean, reason: GatewayError): number {
    let ended = 0;
    for (const c of this.pendingCalls()) {
      if (match(c)) {
        this.removeCall(c);
        c.cancel(reason);
        ended++;
      }
    }
    for (const s of this.openStreams()) {
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
