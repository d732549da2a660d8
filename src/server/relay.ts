/**
 * Relaying an upstream's answer to the client. Every message is framed on the
 * way through — a JSON body as a whole, an SSE stream event by event, each
 * re-emitted as soon as it is framed, never buffered to the end of the stream.
 *
 * The stream rules, in order of precedence:
 * 1. Backpressure both ways: a slow client pauses the upstream body.
 * 2. When the upstream stream ends or dies while requests are still pending,
 *    the client gets a JSON-RPC error for each of them, then the stream ends
 *    — unless it was a legacy upstream closing a resumable stream on purpose
 *    (an event id and a `retry` hint were sent: spec/2025-11-25/basic/
 *    transports.mdx lets the server close and the client resume with
 *    Last-Event-ID). No client request is left hanging.
 * 3. The client going away aborts the upstream request; in the modern era
 *    that is the cancellation (spec/2026-07-28/basic/transports/
 *    streamable-http.mdx, "Cancellation").
 * 4. Only answers to what the client asked pass: a response or error whose id
 *    is not a request of this exchange still waiting (or, on a session's
 *    stream, one whose stream was closed to be resumed) is dropped and
 *    logged, never passed on; the real request is still answered, or gets an
 *    error. An answer cannot be forged, repeated, or land on another request.
 * 5. While requests are pending, an SSE stream must carry a message within
 *    the upstream's `idleMs`: comment lines (`: ping`) and empty events keep
 *    a connection open but say nothing, and do not count.
 */
import { createParser } from 'eventsource-parser';
import { performance } from 'node:perf_hooks';
import { GatewayError, type JsonRpcId } from '../errors/index.js';
import { MAX_JSON_DEPTH, nestedDeeperThan, responseIds } from '../mcp/depth.js';
import { toFrame, type Frame } from '../mcp/frame.js';
import { encodeEvent, encodeMessage, encodeRetry } from '../mcp/sse.js';
import type { UpstreamResponse } from '../upstream/types.js';
import { MAX_RESUMABLE } from '../mcp/sessions.js';
import { newLinks, type ClientStream, type StreamRegistry } from './streams.js';
import { decideOutbound, toldObserver } from './decide.js';
import { errorPayload, type Exchange } from './exchange.js';

/** What the gateway itself learns from answers passing through. */
function observe(x: Exchange, frame: Frame): void {
  if (frame.kind !== 'response' || frame.id === undefined || frame.id === null) return;
  const method = x.methodsById.get(frame.id);
  if (method === undefined) return;
  const result = frame.message.result as { protocolVersion?: unknown } | undefined;
  if (method === 'initialize' && x.session && typeof result?.protocolVersion === 'string') {
    x.session.protocolVersion = result.protocolVersion;
    x.session.save?.();
  }
}

/**
 * The `x-mcp-header` parameters of the server's tools, learned from its
 * `tools/list` answers as it sent them, before any decision: a tool the
 * policy hides from the client (a virtual tool's real one) is still called
 * with its headers.
 */
function learnToolHeaders(x: Exchange, frames: readonly Frame[]): void {
  for (const f of frames)
    if (f.kind === 'response' && f.id !== undefined && f.id !== null)
      if (x.methodsById.get(f.id) === 'tools/list') x.toolHeaders?.learn(f.message.result);
}

/** Frames a parsed server-to-client value (one message or a 2025-03-26 batch). */
function framesOf(value: unknown): Frame[] {
  return Array.isArray(value)
    ? value.map((v) => toFrame(v, 'server-to-client'))
    : [toFrame(value, 'server-to-client')];
}

/** Rule 4: whether a response or error answers a request the client is waiting for. */
function awaited(
  x: Exchange,
  id: JsonRpcId | undefined,
  seen: Set<JsonRpcId> | undefined,
): boolean {
  if (id === undefined || id === null || seen?.has(id)) return false;
  seen?.add(id);
  if (x.pending.has(id)) return true;
  if (x.session?.resumable?.delete(id) !== true) return false;
  x.session.save?.();
  return true;
}

/**
 * Rule 4: the frames that may reach the client; `frames` itself when all may
 * (the hot path allocates nothing).
 */
function admit(x: Exchange, frames: Frame[]): Frame[] {
  const seen = frames.length > 1 ? new Set<JsonRpcId>() : undefined;
  let kept: Frame[] | undefined;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i] as Frame;
    const ok = (f.kind !== 'response' && f.kind !== 'error') || awaited(x, f.id, seen);
    if (!ok) {
      x.log.warn(
        { server: x.server, id: f.id },
        'dropped an upstream answer to a request the client is not waiting for',
      );
      kept ??= frames.slice(0, i);
    } else if (kept) {
      kept.push(f);
    }
  }
  return kept ?? frames;
}

/** The bytes of what `admit` kept: one message, or a batch. */
function encodeAdmitted(frames: readonly Frame[], batch: boolean): string {
  return JSON.stringify(batch ? frames.map((f) => f.message) : frames[0]?.message);
}

function settle(x: Exchange, frames: readonly Frame[]): void {
  if (x.observer?.message) for (const f of frames) if (!toldObserver(f)) x.noteMessage(f, 'allow');
  for (const f of frames) {
    if ((f.kind === 'response' || f.kind === 'error') && f.id !== undefined) {
      observe(x, f);
      x.pending.delete(f.id);
    }
  }
}

function tooDeep(x: Exchange): GatewayError {
  return new GatewayError(
    'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
    `server '${x.server}' sent a message nested deeper than ${MAX_JSON_DEPTH} levels`,
    { server: x.server },
  );
}

/** Upstream statuses passed on to the client as they are; others become 502. */
const PASSED_CLIENT_ERRORS = new Set([400, 404, 405, 406, 409, 413, 415, 422, 429]);

/**
 * Relays an upstream answer: 202, a JSON body, an SSE stream, or an error
 * status. Resolves when the client's response is complete.
 */
export async function relayResponse(
  x: Exchange,
  up: UpstreamResponse,
  streams: StreamRegistry,
): Promise<void> {
  x.upstreamAnsweredAt = performance.now();
  const contentType = String(up.headers['content-type'] ?? '');
  if (up.statusCode >= 300) return relayErrorStatus(x, up, contentType);
  if (contentType.startsWith('text/event-stream')) return relayStream(x, up, streams);
  if (up.statusCode === 202 || up.statusCode === 204 || !contentType) {
    await up.body.dump();
    if (x.pending.size > 0 && up.statusCode !== 204) {
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
        `server '${x.server}' sent no answer`,
        {
          server: x.server,
        },
      );
    }
    x.sendEmpty(up.statusCode);
    return;
  }
  if (!contentType.startsWith('application/json')) {
    await up.body.dump();
    throw new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
      `server '${x.server}' answered with Content-Type '${contentType}'`,
      { server: x.server },
    );
  }
  let raw = await up.body.collect(x.maxResponseBytes);
  // Refused before anything walks it (mcp/depth.ts); every pending request gets the error.
  if (nestedDeeperThan(raw)) throw tooDeep(x);
  let frames: Frame[];
  let batch: boolean;
  try {
    const value: unknown = JSON.parse(raw.toString('utf8'));
    batch = Array.isArray(value);
    frames = framesOf(value);
  } catch (err) {
    throw new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
      `server '${x.server}' sent a body that is not JSON-RPC (${(err as Error).message})`,
      { server: x.server },
    );
  }
  let kept = admit(x, frames);
  if (kept !== frames && kept.length === 0) {
    throw new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
      `server '${x.server}' answered a request that was never sent`,
      { server: x.server },
    );
  }
  learnToolHeaders(x, kept);
  // The outbound decision point: an allowed body goes on as its own bytes.
  if (x.policy.enabled) {
    kept = decideOutbound(x, kept);
    if (kept.length === 0 && !batch) {
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
        `server '${x.server}' sent no answer`,
        {
          server: x.server,
        },
      );
    }
  }
  if (kept !== frames) {
    frames = kept;
    raw = Buffer.from(encodeAdmitted(kept, batch));
  }
  settle(x, frames);
  x.sendJson(up.statusCode, raw);
}

async function relayErrorStatus(
  x: Exchange,
  up: UpstreamResponse,
  contentType: string,
): Promise<void> {
  const status = up.statusCode;
  let raw: Buffer | undefined;
  try {
    raw = await up.body.collect(64 * 1024);
  } catch {
    raw = undefined;
  }
  if (PASSED_CLIENT_ERRORS.has(status)) {
    // A body is passed on only if it is JSON-RPC answering nothing but what is pending
    // (or nothing in particular: id null); anything else is replaced.
    if (raw && contentType.startsWith('application/json') && !nestedDeeperThan(raw)) {
      try {
        const value: unknown = JSON.parse(raw.toString('utf8'));
        const frames = framesOf(value);
        if (!frames.every((f) => f.id === undefined || f.id === null || x.pending.has(f.id)))
          throw new Error('an answer to a request that was never sent');
        const decided = x.policy.enabled ? decideOutbound(x, frames) : frames;
        if (decided.length === 0) throw new Error('nothing of it may be relayed');
        settle(x, decided);
        x.sendJsonStatus(
          status,
          decided === frames ? raw : encodeAdmitted(decided, Array.isArray(value)),
        );
        return;
      } catch {
        // fall through to a gateway-made body
      }
    }
    const err =
      status === 404 && x.session
        ? new GatewayError(
            'PORTCULLIS_ERR_SESSION_UNKNOWN',
            `server '${x.server}' ended the session`,
          )
        : new GatewayError(
            'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
            `server '${x.server}' answered ${status}`,
            {
              server: x.server,
              upstreamStatus: status,
            },
          );
    x.errorCode = err.code;
    x.sendJsonStatus(status, JSON.stringify(errorPayload(err, [...x.pending])));
    return;
  }
  throw new GatewayError(
    'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
    `server '${x.server}' answered ${status}`,
    {
      server: x.server,
      upstreamStatus: status,
    },
  );
}

function relayStream(x: Exchange, up: UpstreamResponse, streams: StreamRegistry): Promise<void> {
  x.openStream(up.statusCode);
  if (x.session) x.session.streams++;

  const body = up.body;
  let sawEventId = false;
  let sawRetry = false;
  let finished = false;

  // One chunk may hold many events: pause once, resume once on drain.
  let paused = false;
  const resume = () => {
    paused = false;
    body.resume();
  };
  const write = (chunk: string): void => {
    stream.lastWriteAt = Date.now();
    if (!x.write(chunk) && !paused) {
      paused = true;
      body.pause();
      x.onDrain(resume);
    }
  };

  /** Rule 5: set while requests are pending and the upstream bounds its silence. */
  let idle: NodeJS.Timeout | undefined;
  const silent = (): GatewayError =>
    new GatewayError(
      'PORTCULLIS_ERR_UPSTREAM_TIMEOUT',
      `server '${x.server}' went silent mid-stream`,
      { server: x.server },
    );

  /** Ends the client stream, first answering every pending request with `err`. */
  const finish = (err: GatewayError | undefined, retryHintMs?: number): void => {
    if (finished) return;
    finished = true;
    clearTimeout(idle);
    if (x.session) x.session.streams--;
    streams.remove(stream);
    if (x.writable) {
      if (err) for (const id of x.pending) x.write(encodeMessage(err.toResponse(id)));
      x.end(retryHintMs !== undefined ? encodeRetry(retryHintMs) : undefined);
    }
    x.pending.clear();
  };

  const stream: ClientStream = {
    get open() {
      return x.writable;
    },
    write,
    end: (chunk) => x.end(chunk),
    pending: x.pending,
    lastWriteAt: Date.now(),
    identity: x.identity,
    streamLinks: newLinks(),
    terminate: (retryHintMs, reason) => {
      const err =
        reason ??
        new GatewayError(
          'PORTCULLIS_ERR_HTTP_SHUTTING_DOWN',
          `request to '${x.server}' interrupted`,
          {
            server: x.server,
          },
        );
      // Finish first: aborting reports the upstream's end synchronously.
      finish(err, retryHintMs);
      x.abort();
    },
  };
  streams.add(stream);

  /** An event nested too deep: dropped; each pending request it answered gets an error instead. */
  const refuseTooDeep = (data: string): void => {
    x.log.warn(
      { server: x.server, maxDepth: MAX_JSON_DEPTH },
      'dropped an upstream SSE event nested too deep',
    );
    let value: unknown;
    try {
      value = JSON.parse(data);
    } catch {
      return;
    }
    const before = x.pending.size;
    for (const id of responseIds(value)) {
      if (!x.pending.delete(id)) continue;
      write(encodeMessage(tooDeep(x).toResponse(id)));
    }
    if (before > 0 && x.pending.size === 0) streams.noteIdle(stream);
  };

  const parser = createParser({
    maxBufferSize: x.maxResponseBytes,
    onEvent(ev) {
      if (ev.id !== undefined) sawEventId = true;
      // An event with empty data primes resumption (an id to come back to); it carries no message.
      if (ev.data !== '') {
        if (nestedDeeperThan(ev.data)) return refuseTooDeep(ev.data);
        let frames: Frame[];
        try {
          frames = framesOf(JSON.parse(ev.data));
        } catch (err) {
          x.log.warn(
            { server: x.server, err: (err as Error).message },
            'dropped an upstream SSE event that is not JSON-RPC',
          );
          return;
        }
        let kept = admit(x, frames);
        if (kept.length === 0) return;
        learnToolHeaders(x, kept);
        if (x.policy.enabled) {
          kept = decideOutbound(x, kept);
          if (kept.length === 0) return;
        }
        idle?.refresh();
        const before = x.pending.size;
        settle(x, kept);
        const data =
          kept === frames ? ev.data : encodeAdmitted(kept, ev.data.trimStart().startsWith('['));
        write(encodeEvent({ id: ev.id, event: ev.event, data }));
        if (before > 0 && x.pending.size === 0) streams.noteIdle(stream);
        return;
      }
      write(encodeEvent({ id: ev.id, event: ev.event, data: '' }));
    },
    onRetry(ms) {
      sawRetry = true;
      write(encodeRetry(ms));
    },
    onError(err) {
      if (err.type === 'max-buffer-size-exceeded') {
        finish(
          new GatewayError(
            'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
            `server '${x.server}' sent an oversized event`,
            {
              server: x.server,
            },
          ),
        );
        x.abort();
      }
    },
  });

  if (up.idleMs !== undefined && up.idleMs > 0 && x.pending.size > 0) {
    idle = setTimeout(() => {
      if (finished || x.pending.size === 0) return;
      finish(silent());
      x.abort();
    }, up.idleMs);
    idle.unref();
  }

  return new Promise<void>((resolve) => {
    x.onClose(() => {
      // The client went away (or the stream was finished): stop the upstream side.
      if (!finished) {
        finished = true;
        clearTimeout(idle);
        if (x.session) x.session.streams--;
        streams.remove(stream);
        x.abort();
      }
      resolve();
    });
    // Multi-byte characters may straddle chunks: decode in streaming mode.
    const decoder = new TextDecoder();
    const onData = (chunk: Buffer) => {
      if (finished) return;
      try {
        parser.feed(decoder.decode(chunk, { stream: true }));
      } catch (err) {
        x.log.error({ server: x.server, err }, 'failed to relay an upstream event');
        finish(new GatewayError('PORTCULLIS_ERR_INTERNAL', `relaying from '${x.server}' failed`));
        x.abort();
      }
    };
    const onEnd = () => {
      if (x.pending.size === 0) return finish(undefined);
      if (x.era === 'legacy' && sawEventId && sawRetry) {
        // Closed to be resumed: these answers may come on a later stream of the session.
        if (x.session) {
          const resumable = (x.session.resumable ??= new Set());
          for (const id of x.pending)
            if (id !== null && resumable.size < MAX_RESUMABLE) resumable.add(id);
          // The stream may be resumed on another replica.
          x.session.save?.();
        }
        return finish(undefined);
      }
      finish(
        new GatewayError(
          'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED',
          `server '${x.server}' ended the stream without answering`,
          { server: x.server },
        ),
      );
    };
    const onError = (err: Error & { code?: string }) => {
      if (finished) return;
      x.log.warn({ server: x.server, err: err.message }, 'upstream stream failed');
      const code = (err as { code?: string }).code;
      finish(
        code === 'UND_ERR_BODY_TIMEOUT'
          ? silent()
          : new GatewayError(
              'PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED',
              `server '${x.server}' broke off its stream`,
              { server: x.server },
            ),
      );
    };
    body.consume(onData, onEnd, onError);
  });
}
