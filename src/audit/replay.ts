/**
 * Replay: the recorded calls of one session (or trace, or subject), sent
 * again to an MCP endpoint, each answer compared with the recorded one. What
 * is sent is provably what was recorded: the trail verifies, each request's
 * capture entry decrypts only as the capture of its record (chain, seq and
 * hash are its additional data), and the decrypted message agrees with the
 * record's own fields (id, method, target, argsHash).
 *
 * In order, for each selected request (docs/audit.md, "Replay"):
 *   1. the trail is verified (`verifyLines`, signatures too given the gateway's
 *      keys); nothing is sent if it is not whole;
 *   2. requests are selected by session, trace or subject (and tenant,
 *      server, time); a request the gateway refused is skipped, never sent;
 *   3. its recorded answer is the next outbound answer record with the same
 *      chain, server, session, principal and rpcId;
 *   4. both capture entries are decrypted and checked against their records;
 *   5. it is sent in its era: legacy calls in a fresh session per recorded
 *      session, opened with that session's recorded `initialize`; modern
 *      calls stateless, with the headers the era requires;
 *   6. the answer is compared with the recorded one, except what may
 *      legitimately differ: `jsonrpc`, `id` (the replay numbers its own) and
 *      `result._meta`, and any path the caller ignores.
 */
import type { KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { createParser } from 'eventsource-parser';
import type { JSONWebKeySet } from 'jose';
import { encodeHeaderValue, META_PROTOCOL_VERSION, ToolHeaderRegistry } from '../mcp/era.js';
import { toFrame, type Frame, type JsonRpcMessage } from '../mcp/frame.js';
import { captureFiles, openCapture, parseCaptureLine, type CaptureEntry } from './capture.js';
import { argumentsOf, isErrorAnswer, recordedText } from './observer.js';
import { argsHash, parseLine } from './record.js';
import type { AuditRecord } from './types.js';
import { readAuditFiles, verifyLines, type VerifyProblem } from './verify.js';
import { DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES } from '../config/schema.js';
import { readBounded } from '../upstream/bounded-read.js';

/** Bound on waiting for one answer, by default. */
export const DEFAULT_REPLAY_TIMEOUT_MS = 30_000;
/**
 * What is read of one answer, a JSON body or a stream up to the answer: the
 * target is an MCP server, as hostile as any upstream.
 */
const MAX_ANSWER_BYTES = DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES;
/** Differences kept per call (a wholly different answer has many). */
const MAX_DIFFERENCES = 100;
/** Pages of `tools/list` read to learn the tools' `Mcp-Param-*` headers. */
const MAX_TOOL_PAGES = 20;
const ACCEPT = 'application/json, text/event-stream';
/** Methods that name a target in `Mcp-Name` (spec/2026-07-28, "Standard Headers"). */
const NAMED_METHODS = new Set(['tools/call', 'prompts/get', 'resources/read']);
/** Long-lived streams: nothing to compare. */
const STREAM_METHODS = new Set(['subscriptions/listen']);

/** Which recorded requests to replay: one of session, trace or subject, narrowed by the rest. */
export interface ReplaySelector {
  /** A legacy session (the records' `session`). */
  session?: string;
  /** A W3C trace id (the records' `traceId`): how modern, stateless calls are told apart. */
  trace?: string;
  subject?: string;
  tenant?: string;
  server?: string;
  /** ISO 8601: records at or after. */
  since?: string;
  /** ISO 8601: records before. */
  until?: string;
}

export interface ReplayOptions {
  /** Audit files, or directories of them. */
  from: readonly string[];
  captureDir: string;
  key: KeyObject;
  select: ReplaySelector;
  /** The MCP endpoint: a gateway's `/mcp/<server>`, or an upstream's own. */
  target: string;
  /** Sent as `authorization: Bearer …`. */
  token?: string;
  timeoutMs?: number;
  /** Answer paths not compared (`result.content[*].text`; `*` is one key or index). */
  ignore?: readonly string[];
  /** The gateway's public keys: the trail's checkpoints must be signed by them. */
  jwks?: JSONWebKeySet;
}

/** One path where the answers differ; `old` or `new` absent: the path is not in that answer. */
export interface Difference {
  path: string;
  old?: unknown;
  new?: unknown;
}

export type CallOutcome = 'same' | 'differs' | 'failed' | 'skipped';

export interface ReplayedCall {
  chain: string;
  seq: number;
  time: string;
  era?: string;
  session?: string;
  rpcId: string | number;
  method: string;
  tool?: string;
  outcome: CallOutcome;
  differences?: Difference[];
  /** Why a call failed or was skipped. */
  reason?: string;
}

export interface ReplayReport {
  /** The trail verified, something was replayed, and every replayed answer is the same. */
  ok: boolean;
  target: string;
  trail: { ok: boolean; records: number; problems: VerifyProblem[] };
  calls: ReplayedCall[];
  summary: { calls: number; same: number; differs: number; failed: number; skipped: number };
}

/** A selection that cannot be replayed as asked: a usage error. */
export class ReplaySelectionError extends Error {}

/** A selected request, its recorded answer, and where its session begins. */
interface Planned {
  request: AuditRecord;
  /** Its recorded answer, once found. */
  answer: AuditRecord | undefined;
  /** Why it is not sent (refused when recorded, or a stream). */
  skip?: string;
}

const entryKey = (chain: string, seq: number) => `${chain} ${seq}`;

/** What pairs an answer with its request: one exchange's principal, server, session and id. */
function pairKey(r: AuditRecord): string {
  return JSON.stringify([r.chain, r.server, r.session, r.tenant, r.subject, r.rpcId]);
}

function isRequestRecord(r: AuditRecord): boolean {
  return (
    r.kind === 'message' &&
    r.direction === 'in' &&
    r.rpcId !== undefined &&
    r.rpcId !== null &&
    r.method !== undefined &&
    r.isError === undefined
  );
}

function isAnswerRecord(r: AuditRecord): boolean {
  return (
    r.kind === 'message' &&
    r.direction === 'out' &&
    r.rpcId !== undefined &&
    r.rpcId !== null &&
    r.isError !== undefined
  );
}

function selects(s: ReplaySelector, r: AuditRecord): boolean {
  return (
    (s.session === undefined || r.session === s.session) &&
    (s.trace === undefined || r.traceId === s.trace) &&
    (s.subject === undefined || r.subject === s.subject) &&
    (s.tenant === undefined || r.tenant === s.tenant) &&
    (s.server === undefined || r.server === s.server) &&
    (s.since === undefined || r.time >= s.since) &&
    (s.until === undefined || r.time < s.until)
  );
}

/** Step 2 and 3: the selected requests in recorded order, each with its answer; and each session's initialize. */
async function plan(
  from: readonly string[],
  select: ReplaySelector,
): Promise<{ planned: Planned[]; initializes: Map<string, AuditRecord> }> {
  const planned: Planned[] = [];
  const initializes = new Map<string, AuditRecord>();
  // The latest request of each key still without its answer: an exchange's records are
  // appended together, and ids are unique among a client's pending requests, so a newer
  // request with the same key means the older one's answer is not coming (the gateway
  // answered it itself).
  const waiting = new Map<string, Planned>();
  for await (const { line } of readAuditFiles(from)) {
    if (line.trim() === '') continue;
    const record = parseLine(line).record;
    if (record === undefined || record.kind !== 'message') continue;
    if (isRequestRecord(record)) {
      const initialize = record.method === 'initialize' && record.session !== undefined;
      if (initialize && !initializes.has(record.session as string))
        initializes.set(record.session as string, record);
      const key = pairKey(record);
      waiting.delete(key);
      if (!selects(select, record)) continue;
      const p: Planned = { request: record, answer: undefined };
      if (record.decision === 'deny')
        p.skip = `refused by the gateway when recorded${record.rule ? ` (rule ${record.rule})` : ''}; not sent`;
      else if (STREAM_METHODS.has(record.method as string))
        p.skip = 'a long-lived stream; nothing to compare';
      else waiting.set(key, p);
      planned.push(p);
    } else if (isAnswerRecord(record)) {
      const key = pairKey(record);
      const p = waiting.get(key);
      if (p === undefined) continue;
      waiting.delete(key);
      p.answer = record;
    }
  }
  // Recorded order: a chain's order is its seq; chains (replicas) interleave by time.
  planned.sort((a, b) => {
    const x = a.request;
    const y = b.request;
    if (x.chain === y.chain) return x.seq - y.seq;
    return x.time < y.time ? -1 : x.time > y.time ? 1 : 0;
  });
  return { planned, initializes };
}

/** Step 4's input: the capture entries of the records named, read from every capture file. */
async function readEntries(
  dir: string,
  wanted: ReadonlySet<string>,
): Promise<Map<string, CaptureEntry | 'duplicate'>> {
  const found = new Map<string, CaptureEntry | 'duplicate'>();
  for (const file of await captureFiles(dir)) {
    const lines = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
    for await (const line of lines) {
      const entry = parseCaptureLine(line);
      if (entry === undefined) continue;
      const key = entryKey(entry.chain, entry.seq);
      if (!wanted.has(key)) continue;
      found.set(key, found.has(key) ? 'duplicate' : entry);
    }
  }
  return found;
}

/** A recorded message, decrypted and checked against its record; or why it cannot be trusted. */
type Opened = { message: JsonRpcMessage; frame: Frame } | { problem: string };

function opener(key: KeyObject, entries: Map<string, CaptureEntry | 'duplicate'>) {
  return (record: AuditRecord): Opened => {
    const entry = entries.get(entryKey(record.chain, record.seq));
    const what = `the capture entry of seq ${record.seq}`;
    if (entry === undefined)
      return {
        problem: `no capture entry for seq ${record.seq} (recorded before capture was on, removed by retention, or removed)`,
      };
    if (entry === 'duplicate') return { problem: `two capture entries claim seq ${record.seq}` };
    let text: string;
    try {
      text = openCapture(key, entry, record);
    } catch (err) {
      return { problem: `${what}: ${(err as Error).message}` };
    }
    let frame: Frame;
    try {
      frame = toFrame(
        JSON.parse(text),
        record.direction === 'in' ? 'client-to-server' : 'server-to-client',
      );
    } catch {
      return { problem: `${what} decrypts to no JSON-RPC message` };
    }
    // Beyond the binding: the message says what its record says of it.
    const disagree = (field: string) => ({
      problem: `lineage: ${what} decrypts, but its ${field} is not its record's`,
    });
    // A record holds at most MAX_RECORDED_TEXT of each text (observer.ts): compared after that cut.
    if (recordedText(frame.id) !== record.rpcId) return disagree('id');
    if (record.direction === 'in') {
      if (recordedText(frame.method) !== record.method) return disagree('method');
      if (record.tool !== undefined && recordedText(frame.target) !== record.tool)
        return disagree('target');
      const args = argumentsOf(frame);
      const hash = args === undefined ? undefined : argsHash(args);
      if (hash !== record.argsHash) return disagree('arguments (argsHash)');
    } else if (isErrorAnswer(frame) !== record.isError) return disagree('isError');
    return { message: frame.message, frame };
  };
}

// ---- sending ------------------------------------------------------------------------------

interface Sent {
  answer?: JsonRpcMessage;
  status: number;
  headers: Headers;
  problem?: string;
}

class Sender {
  private nextId = 1;

  constructor(
    private readonly target: string,
    private readonly token: string | undefined,
    private readonly timeoutMs: number,
  ) {}

  id(): number {
    return this.nextId++;
  }

  /**
   * POSTs one message; for a request, reads its answer (the message with its
   * id) from a JSON body or an SSE stream (notifications on the way are passed over; a request of the
   * server's is refused with `onServerRequest`, the replay has no client to ask).
   */
  async post(
    message: Record<string, unknown>,
    headers: Record<string, string>,
    onServerRequest?: (request: JsonRpcMessage) => void,
  ): Promise<Sent> {
    const signal = AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    try {
      res = await fetch(this.target, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: ACCEPT,
          ...(this.token === undefined ? {} : { authorization: `Bearer ${this.token}` }),
          ...headers,
        },
        body: JSON.stringify(message),
        signal,
      });
    } catch (err) {
      return {
        status: 0,
        headers: new Headers(),
        problem: `the target did not answer: ${describe(err)}`,
      };
    }
    const base = { status: res.status, headers: res.headers };
    const id = message.id;
    // A notification, or the replay's own answer to a request of the server's: nothing comes back.
    if (id === undefined || typeof message.method !== 'string') {
      await res.body?.cancel();
      return base;
    }
    const type = res.headers.get('content-type') ?? '';
    try {
      if (type.includes('text/event-stream')) {
        const answer = await answerFromStream(res, id, onServerRequest);
        return answer
          ? { ...base, answer }
          : { ...base, problem: `HTTP ${res.status}: the stream ended without the answer` };
      }
      const text =
        res.body === null
          ? ''
          : await readBounded(res.body as AsyncIterable<Uint8Array>, MAX_ANSWER_BYTES);
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        value = undefined;
      }
      const candidates = Array.isArray(value) ? value : [value];
      const answer = candidates.find(
        (m): m is JsonRpcMessage =>
          m !== null && typeof m === 'object' && (m as { id?: unknown }).id === id,
      );
      return answer
        ? { ...base, answer }
        : { ...base, problem: `HTTP ${res.status}: ${text.slice(0, 200).trim() || '(no body)'}` };
    } catch (err) {
      return {
        ...base,
        problem: `HTTP ${res.status}: reading the answer failed: ${describe(err)}`,
      };
    }
  }

  async delete(headers: Record<string, string>): Promise<void> {
    try {
      const res = await fetch(this.target, {
        method: 'DELETE',
        headers: {
          ...(this.token === undefined ? {} : { authorization: `Bearer ${this.token}` }),
          ...headers,
        },
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      await res.body?.cancel();
    } catch {
      // The session ends with its idle timeout instead.
    }
  }
}

function describe(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return 'timed out';
  return e.cause?.code ?? e.cause?.message ?? e.message;
}

async function answerFromStream(
  res: Response,
  id: unknown,
  onServerRequest: ((request: JsonRpcMessage) => void) | undefined,
): Promise<JsonRpcMessage | undefined> {
  let answer: JsonRpcMessage | undefined;
  const parser = createParser({
    onEvent(event) {
      if (answer !== undefined) return;
      let m: unknown;
      try {
        m = JSON.parse(event.data);
      } catch {
        return;
      }
      if (m === null || typeof m !== 'object') return;
      const msg = m as JsonRpcMessage;
      if (typeof msg.method === 'string') {
        if (msg.id !== undefined && msg.id !== null) onServerRequest?.(msg);
        return;
      }
      if (msg.id === id) answer = msg;
    },
  });
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let size = 0;
  try {
    while (answer === undefined) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > MAX_ANSWER_BYTES) throw new Error(`answer larger than ${MAX_ANSWER_BYTES} bytes`);
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return answer;
}

// ---- comparing ----------------------------------------------------------------------------

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** An answer as compared: without `jsonrpc`, `id` and `result._meta`. */
function comparable(message: JsonRpcMessage): Record<string, unknown> {
  const { jsonrpc: _jsonrpc, id: _id, ...rest } = message;
  if (isPlainObject(rest.result)) {
    const { _meta: _resultMeta, ...result } = rest.result;
    rest.result = result;
  }
  return rest;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  if (IDENTIFIER.test(key)) return path === '' ? key : `${path}.${key}`;
  return `${path}[${JSON.stringify(key)}]`;
}

/**
 * `--ignore` patterns as one test: a pattern is a path in the diff's own
 * syntax, `*` standing for one key or index; it covers everything below it.
 */
export function ignoreTest(patterns: readonly string[]): (path: string) => boolean {
  if (patterns.length === 0) return () => false;
  const res = patterns.map((p) => {
    const escaped = p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^.[\\]]+');
    return new RegExp(`^${escaped}(?:$|[.[])`);
  });
  return (path) => res.some((re) => re.test(path));
}

/** The paths where `a` and `b` differ, in key order (at most MAX_DIFFERENCES). */
export function differences(
  a: unknown,
  b: unknown,
  ignored: (path: string) => boolean = () => false,
): Difference[] {
  const out: Difference[] = [];
  const walk = (x: unknown, y: unknown, path: string): void => {
    if (out.length >= MAX_DIFFERENCES || (path !== '' && ignored(path))) return;
    if (isPlainObject(x) && isPlainObject(y)) {
      const keys = [...new Set([...Object.keys(x), ...Object.keys(y)])].sort();
      for (const k of keys) walk(x[k], y[k], childPath(path, k));
      return;
    }
    if (Array.isArray(x) && Array.isArray(y)) {
      for (let i = 0; i < Math.max(x.length, y.length); i++)
        walk(i < x.length ? x[i] : undefined, i < y.length ? y[i] : undefined, childPath(path, i));
      return;
    }
    if (x === y) return;
    const d: Difference = { path: path === '' ? '(the answer)' : path };
    if (x !== undefined) d.old = x;
    if (y !== undefined) d.new = y;
    out.push(d);
  };
  walk(a, b, '');
  return out;
}

// ---- replaying ----------------------------------------------------------------------------

interface LegacySession {
  headers: Record<string, string>;
  /** Why the session could not be opened; its calls fail with it. */
  problem?: string;
}

/** The answer to a replayed call, or why there is none. */
type Replayed = { sent: Sent } | { problem: string };

/** Step 5 and 6, call by call: the fresh sessions in place of the recorded ones, and what was learned. */
class Replayer {
  /** By recorded session id. */
  private readonly sessions = new Map<string, LegacySession>();
  private readonly toolHeaders = new ToolHeaderRegistry();
  private learnedTools = false;

  constructor(
    private readonly sender: Sender,
    private readonly open: (record: AuditRecord) => Opened,
    private readonly initializes: ReadonlyMap<string, AuditRecord>,
    private readonly ignored: (path: string) => boolean,
  ) {}

  async replay(p: Planned): Promise<ReplayedCall> {
    const r = p.request;
    const call: ReplayedCall = {
      chain: r.chain,
      seq: r.seq,
      time: r.time,
      ...(r.era === undefined ? {} : { era: r.era }),
      ...(r.session === undefined ? {} : { session: r.session }),
      rpcId: r.rpcId as string | number,
      method: r.method as string,
      ...(r.tool === undefined ? {} : { tool: r.tool }),
      outcome: 'failed',
    };
    const failed = (reason: string): ReplayedCall => Object.assign(call, { reason });
    if (p.skip !== undefined) return Object.assign(call, { outcome: 'skipped', reason: p.skip });
    const request = this.open(r);
    if ('problem' in request) return failed(request.problem);
    if (p.answer === undefined)
      return failed(
        `no recorded answer to compare (the client got ${r.error ? `the gateway's ${r.error}` : 'none that was recorded'}${r.status ? `, HTTP ${r.status}` : ''}); not sent`,
      );
    const recorded = this.open(p.answer);
    if ('problem' in recorded) return failed(`its answer: ${recorded.problem}`);

    const replayed =
      r.era === 'legacy' ? await this.legacy(r, request.message) : await this.modern(request.frame);
    if ('problem' in replayed) return failed(replayed.problem);
    const answer = replayed.sent.answer;
    if (answer === undefined) return failed(replayed.sent.problem ?? 'no answer');
    if (r.method === 'tools/list' && isPlainObject(answer.result))
      this.toolHeaders.learn(answer.result);
    const diffs = differences(comparable(recorded.message), comparable(answer), this.ignored);
    if (diffs.length === 0) call.outcome = 'same';
    else Object.assign(call, { outcome: 'differs', differences: diffs });
    return call;
  }

  /** A legacy call, in the fresh session that stands for its recorded one. */
  private async legacy(r: AuditRecord, message: JsonRpcMessage): Promise<Replayed> {
    if (r.session === undefined)
      return { problem: 'a legacy request without a session: nothing to open it in' };
    let session = this.sessions.get(r.session);
    if (r.method === 'initialize' && session === undefined)
      return { sent: await this.openSession(r.session, message) };
    if (session === undefined) {
      const init = this.initializes.get(r.session);
      const opened = init ? this.open(init) : { problem: 'it is not in the trail' };
      if ('problem' in opened) {
        session = { headers: {}, problem: `the session's initialize: ${opened.problem}` };
        this.sessions.set(r.session, session);
      } else {
        await this.openSession(r.session, opened.message);
        session = this.sessions.get(r.session) as LegacySession;
      }
    }
    if (session.problem !== undefined) return { problem: session.problem };
    const headers = session.headers;
    const sent = await this.sender.post({ ...message, id: this.sender.id() }, headers, (asked) => {
      // The replay has no client to ask; the server is told so at once, not left waiting.
      void this.sender.post(
        {
          jsonrpc: '2.0',
          id: asked.id,
          error: { code: -32601, message: 'portcullis audit replay answers no requests' },
        },
        headers,
      );
    });
    return { sent };
  }

  /** A fresh session in place of the recorded one, opened with its recorded initialize. */
  private async openSession(recorded: string, initialize: JsonRpcMessage): Promise<Sent> {
    const sent = await this.sender.post({ ...initialize, id: this.sender.id() }, {});
    const session: LegacySession = { headers: {} };
    const id = sent.headers.get('mcp-session-id');
    const result = sent.answer?.result as { protocolVersion?: unknown } | undefined;
    if (sent.problem !== undefined) session.problem = `initialize: ${sent.problem}`;
    else if (typeof result?.protocolVersion !== 'string')
      session.problem = 'initialize: the target did not accept it';
    else {
      // A stateless legacy server issues no session id; its calls go without one.
      session.headers = { 'mcp-protocol-version': result.protocolVersion };
      if (id !== null) session.headers['mcp-session-id'] = id;
      await this.sender.post(
        { jsonrpc: '2.0', method: 'notifications/initialized' },
        session.headers,
      );
    }
    this.sessions.set(recorded, session);
    return sent;
  }

  /**
   * A modern call, stateless: its recorded `_meta` as it was, and the headers
   * the era requires (version, method, name, the tool's `Mcp-Param-*`).
   */
  private async modern(frame: Frame): Promise<Replayed> {
    const params = frame.message.params as
      { _meta?: Record<string, unknown>; arguments?: unknown } | undefined;
    const meta = params?._meta;
    const headers: Record<string, string> = { 'mcp-method': frame.method as string };
    const version = meta?.[META_PROTOCOL_VERSION];
    if (typeof version === 'string') headers['mcp-protocol-version'] = version;
    if (NAMED_METHODS.has(frame.method as string) && frame.target !== undefined)
      headers['mcp-name'] = encodeHeaderValue(frame.target);
    if (frame.method === 'tools/call' && frame.target !== undefined) {
      if (!this.learnedTools) {
        this.learnedTools = true;
        await learnTools(this.sender, this.toolHeaders, meta, headers['mcp-protocol-version']);
      }
      for (const p of this.toolHeaders.get(frame.target) ?? []) {
        let v: unknown = params?.arguments;
        for (const k of p.path) v = isPlainObject(v) ? v[k] : undefined;
        if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')
          headers[p.header] = encodeHeaderValue(String(v));
      }
    }
    return { sent: await this.sender.post({ ...frame.message, id: this.sender.id() }, headers) };
  }

  /** Ends the fresh sessions now, not at the target's idle timeout. */
  async end(): Promise<void> {
    await Promise.all(
      [...this.sessions.values()]
        .filter((s) => s.headers['mcp-session-id'] !== undefined)
        .map((s) => this.sender.delete(s.headers)),
    );
  }
}

/** Steps 1 to 6 (see the header). */
export async function replay(options: ReplayOptions): Promise<ReplayReport> {
  const verified = await verifyLines(
    readAuditFiles(options.from),
    options.jwks ? { jwks: options.jwks } : {},
  );
  const report: ReplayReport = {
    ok: false,
    target: options.target,
    trail: { ok: verified.ok, records: verified.records, problems: verified.problems },
    calls: [],
    summary: { calls: 0, same: 0, differs: 0, failed: 0, skipped: 0 },
  };
  if (!verified.ok) return report;

  const { planned, initializes } = await plan(options.from, options.select);
  const servers = new Set(planned.map((p) => p.request.server ?? '(none)'));
  if (servers.size > 1)
    throw new ReplaySelectionError(
      `the selection spans servers ${[...servers].sort().join(', ')}; the target is one: narrow it with --server`,
    );

  const wanted = new Set<string>();
  for (const p of planned) {
    if (p.skip !== undefined) continue;
    wanted.add(entryKey(p.request.chain, p.request.seq));
    if (p.answer) wanted.add(entryKey(p.answer.chain, p.answer.seq));
    const init = p.request.session === undefined ? undefined : initializes.get(p.request.session);
    if (p.request.era === 'legacy' && init) wanted.add(entryKey(init.chain, init.seq));
  }
  const replayer = new Replayer(
    new Sender(options.target, options.token, options.timeoutMs ?? DEFAULT_REPLAY_TIMEOUT_MS),
    opener(options.key, await readEntries(options.captureDir, wanted)),
    initializes,
    ignoreTest(options.ignore ?? []),
  );
  // In recorded order, one at a time: a call may depend on what the one before it did.
  for (const p of planned) report.calls.push(await replayer.replay(p));
  await replayer.end();

  const summary = report.summary;
  summary.calls = report.calls.length;
  for (const c of report.calls) summary[c.outcome]++;
  report.ok = summary.calls > summary.skipped && summary.differs === 0 && summary.failed === 0;
  return report;
}

/**
 * What a modern tool's `Mcp-Param-*` headers are: learned from the target's
 * own `tools/list`, as a client learns them. A target that refuses the list
 * gets calls without them (and says so in its answer).
 */
async function learnTools(
  sender: Sender,
  registry: ToolHeaderRegistry,
  meta: Record<string, unknown> | undefined,
  version: string | undefined,
): Promise<void> {
  const headers: Record<string, string> = { 'mcp-method': 'tools/list' };
  if (version !== undefined) headers['mcp-protocol-version'] = version;
  let cursor: string | undefined;
  for (let page = 0; page < MAX_TOOL_PAGES; page++) {
    const params: Record<string, unknown> = meta === undefined ? {} : { _meta: meta };
    if (cursor !== undefined) params.cursor = cursor;
    const sent = await sender.post(
      { jsonrpc: '2.0', id: sender.id(), method: 'tools/list', params },
      headers,
    );
    const result = sent.answer?.result as { nextCursor?: unknown } | undefined;
    if (!isPlainObject(result)) return;
    registry.learn(result);
    if (typeof result.nextCursor !== 'string' || result.nextCursor === '') return;
    cursor = result.nextCursor;
  }
}
