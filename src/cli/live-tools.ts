/**
 * Reads a configured server's live tool list for `portcullis manifest`,
 * through the gateway's own upstream layer (server/upstreams.ts): the same
 * transports, the same stdio sandbox, the same configured `headers`, and the
 * server's credential built as the gateway builds it (auth/credentials.ts).
 *
 * Eras, in order:
 * 1. legacy (`initialize`, then `tools/list` in that session, then DELETE);
 * 2. modern (2026-07-28: `server/discover`, then `tools/list`, each request
 *    carrying the `_meta` every request MUST carry), when the server refuses
 *    `initialize` (an HTTP 4xx or a JSON-RPC error), or when asked for.
 * A legacy HTTP+SSE server is legacy only.
 *
 * `tools/list` is followed through `nextCursor` (spec/2026-07-28/server/
 * utilities/pagination.mdx), bounded in pages and in tools.
 */
import { createParser } from 'eventsource-parser';
import pino, { type Logger } from 'pino';
import { createCredential } from '../auth/credentials.js';
import type { VerifiedToken } from '../auth/jwt.js';
import { SigningKeys } from '../auth/keys.js';
import { Revocations } from '../auth/revocation.js';
import type { Config, ServerConfig } from '../config/schema.js';
import { isGatewayError } from '../errors/index.js';
import {
  FIRST_MODERN_VERSION,
  META_CLIENT_CAPABILITIES,
  META_PROTOCOL_VERSION,
} from '../mcp/era.js';
import { createUpstream, gatewaySecrets } from '../server/upstreams.js';
import { MemoryStore } from '../store/memory.js';
import { createMetrics } from '../telemetry/metrics.js';
import type { Upstream, UpstreamResponse } from '../upstream/types.js';

/** The legacy revision offered in `initialize`. */
export const LEGACY_PROTOCOL_VERSION = '2025-11-25';
/** Longest wait for one answer of the server, start-up of a stdio process included. */
export const DEFAULT_LIVE_TIMEOUT_MS = 30_000;
/** `tools/list` pages followed at most: a server whose cursor never ends is refused. */
export const MAX_TOOL_PAGES = 100;
/** Tools read at most from one server. */
export const MAX_TOOLS = 10_000;
const META_CLIENT_INFO = 'io.modelcontextprotocol/clientInfo';
const CLIENT_INFO = { name: 'portcullis-manifest', version: '1' };
/** Who a minted credential names when the CLI, not an agent, reads the server. */
export const CLI_SUBJECT = 'portcullis-manifest';

export type EraChoice = 'auto' | 'legacy' | 'modern';

export type LiveErrorKind = 'unreachable' | 'no-tools' | 'protocol' | 'credential' | 'timeout';

export class LiveError extends Error {
  constructor(
    readonly kind: LiveErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'LiveError';
  }
}

export interface LiveTools {
  readonly era: 'legacy' | 'modern';
  readonly protocolVersion: string;
  readonly serverInfo: { name?: string; version?: string } | undefined;
  /** The `tools` entries as the server sent them, every page. */
  readonly tools: readonly unknown[];
}

export interface LiveOptions {
  readonly config: Config;
  readonly server: string;
  readonly era?: EraChoice;
  readonly timeoutMs?: number;
  /** The tenant a minted credential names (credential mode mint). */
  readonly tenant?: string;
  readonly log?: Logger;
}

type Json = Record<string, unknown>;

/** A JSON-RPC answer, or what came instead. */
interface Answer {
  readonly status: number;
  readonly headers: UpstreamResponse['headers'];
  readonly message: Json | undefined;
}

/**
 * The headers the gateway's credential step adds for `server`. Static and
 * none as the gateway does; mint signs with the configured key for the CLI
 * itself (subject `portcullis-manifest`, the given tenant, the credential's
 * scopes). Token exchange needs an agent's token to exchange: not here.
 */
async function credentialHeaders(
  config: Config,
  name: string,
  server: ServerConfig,
  tenant: string,
): Promise<Record<string, string>> {
  const c = server.credential;
  if (c.mode === 'token-exchange') {
    throw new LiveError(
      'credential',
      `server '${name}' uses credential mode token-exchange, which exchanges an agent's token; ` +
        'the CLI has none to exchange. Pull through a server entry with a static credential',
    );
  }
  if (c.mode === 'none') return {};
  let keys: SigningKeys | undefined;
  let issuer: string | undefined;
  if (c.mode === 'mint') {
    if (config.signing.keysFile === undefined)
      throw new LiveError('credential', `server '${name}': credential mint needs signing.keysFile`);
    // The gateway's issuer defaults to its own listen URL, which the CLI cannot know.
    issuer = config.signing.issuer ?? config.auth.resource;
    if (issuer === undefined) {
      throw new LiveError(
        'credential',
        `server '${name}': credential mint needs signing.issuer (or auth.resource) in the configuration: ` +
          "the gateway's default issuer is its listen URL, which the CLI does not know",
      );
    }
    keys = await SigningKeys.load(config.signing.keysFile, config.signing.activeKid);
  }
  const credential = createCredential(c, {
    server: name,
    serverUrl: server.url ?? `urn:portcullis:server:${name}`,
    signingIssuer: issuer,
    keys,
    // Nothing minted here is revoked (no session of the gateway ends): this process's store suffices.
    revocations: new Revocations(new MemoryStore()),
    onIssued: () => undefined,
  });
  const now = Math.floor(Date.now() / 1000);
  // The CLI acts for itself: the principal a minted credential names.
  const token: VerifiedToken | undefined =
    c.mode !== 'mint'
      ? undefined
      : {
          principal: {
            tenant,
            subject: CLI_SUBJECT,
            scopes: c.scopes ?? [],
            clientId: CLI_SUBJECT,
          },
          tokenId: undefined,
          issuer: issuer as string,
          audiences: [],
          exp: now + 300,
          hash: CLI_SUBJECT,
          jkt: undefined,
          x5t: undefined,
          token: '',
        };
  const headers = credential.headers({ token, sessionId: undefined });
  return { ...(headers instanceof Promise ? await headers : headers) };
}

/** Where a server lives, for the operator's messages (the CLI's user is the operator). */
export function describeServer(server: ServerConfig): string {
  if (server.transport === 'stdio')
    return `stdio: ${[server.command, ...(server.args ?? [])].join(' ')}`;
  return `${server.transport === 'sse' ? 'sse: ' : ''}${server.url ?? '?'}`;
}

class Session {
  private nextId = 1;
  sessionId: string | undefined;
  protocolVersion: string | undefined;

  constructor(
    private readonly upstream: Upstream,
    private readonly name: string,
    private readonly base: Readonly<Record<string, string>>,
    private readonly timeoutMs: number,
    private readonly modern: boolean,
  ) {}

  private headers(method: string): Record<string, string> {
    const h: Record<string, string> = {
      ...this.base,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
    };
    if (this.protocolVersion !== undefined) h['mcp-protocol-version'] = this.protocolVersion;
    if (this.sessionId !== undefined) h['mcp-session-id'] = this.sessionId;
    // spec/2026-07-28/basic/transports/streamable-http.mdx: every POST carries Mcp-Method.
    if (this.modern) h['mcp-method'] = method;
    return h;
  }

  private params(params: Json): Json {
    if (!this.modern) return params;
    // spec/2026-07-28/basic/index.mdx, "_meta": every request MUST carry these.
    return {
      ...params,
      _meta: {
        [META_PROTOCOL_VERSION]: FIRST_MODERN_VERSION,
        [META_CLIENT_INFO]: CLIENT_INFO,
        [META_CLIENT_CAPABILITIES]: {},
      },
    };
  }

  /** Sends one request and waits for its response (from a JSON body or an SSE stream). */
  async request(method: string, params: Json = {}): Promise<Answer> {
    const id = this.nextId++;
    const body = JSON.stringify({ jsonrpc: '2.0', id, method, params: this.params(params) });
    const call = this.upstream.request({
      method: 'POST',
      headers: this.headers(method),
      body,
      affinity: CLI_SUBJECT,
    });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        call.abort();
        reject(
          new LiveError(
            'timeout',
            `server '${this.name}' did not answer ${method} within ${this.timeoutMs} ms`,
          ),
        );
      }, this.timeoutMs);
    });
    try {
      return await Promise.race([this.answer(call.response, id), deadline]);
    } catch (err) {
      if (err instanceof LiveError) throw err;
      throw unreachable(this.name, err);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends a notification; the server answers 202. */
  async notify(method: string): Promise<void> {
    const call = this.upstream.request({
      method: 'POST',
      headers: this.headers(method),
      body: JSON.stringify({ jsonrpc: '2.0', method, params: this.params({}) }),
      affinity: CLI_SUBJECT,
    });
    const res = await call.response.catch((err: unknown) => {
      throw unreachable(this.name, err);
    });
    await res.body.dump();
  }

  /** Ends the legacy session (best effort: the server may not support DELETE). */
  async end(): Promise<void> {
    if (this.sessionId === undefined) return;
    const call = this.upstream.request({
      method: 'DELETE',
      headers: this.headers('DELETE'),
      affinity: CLI_SUBJECT,
    });
    try {
      const res = await call.response;
      await res.body.dump();
    } catch {
      // Closing the upstream ends it anyway.
    }
  }

  private async answer(pending: Promise<UpstreamResponse>, id: number): Promise<Answer> {
    const res = await pending;
    const type = String(res.headers['content-type'] ?? '');
    const limit = this.upstream.maxResponseBytes;
    if (!type.startsWith('text/event-stream')) {
      const raw = (await res.body.collect(limit)).toString('utf8');
      let message: Json | undefined;
      try {
        const parsed = JSON.parse(raw) as unknown;
        const one = (Array.isArray(parsed) ? parsed : [parsed]).find(
          (m: Json | null) => m !== null && typeof m === 'object' && m.id === id,
        ) as Json | undefined;
        message = one ?? (parsed as Json);
      } catch {
        message = undefined;
      }
      return { status: res.statusCode, headers: res.headers, message };
    }
    return new Promise<Answer>((resolve, reject) => {
      let done = false;
      const parser = createParser({
        maxBufferSize: limit,
        onEvent(ev) {
          if (done || (ev.event !== undefined && ev.event !== 'message')) return;
          let m: Json;
          try {
            m = JSON.parse(ev.data) as Json;
          } catch {
            return;
          }
          // Notifications and server requests on the way are not what was asked.
          if (m.id !== id || m.method !== undefined) return;
          done = true;
          res.body.destroy();
          resolve({ status: res.statusCode, headers: res.headers, message: m });
        },
        onError(err) {
          if (done) return;
          done = true;
          res.body.destroy();
          reject(new LiveError('protocol', `unreadable event stream: ${err.message}`));
        },
      });
      const decoder = new TextDecoder();
      res.body.consume(
        (chunk) => parser.feed(decoder.decode(chunk, { stream: true })),
        () => {
          if (done) return;
          done = true;
          resolve({ status: res.statusCode, headers: res.headers, message: undefined });
        },
        (err) => {
          if (done) return;
          done = true;
          reject(err);
        },
      );
    });
  }
}

function unreachable(name: string, err: unknown): LiveError {
  if (err instanceof LiveError) return err;
  const message = (err as Error).message ?? String(err);
  if (isGatewayError(err) && err.code === 'PORTCULLIS_ERR_UPSTREAM_TIMEOUT')
    return new LiveError('timeout', message);
  return new LiveError(
    'unreachable',
    message.includes(`'${name}'`) ? message : `server '${name}': ${message}`,
  );
}

/** The error in an answer, as one line; undefined when it is a result. */
function refusalOf(answer: Answer): string | undefined {
  const m = answer.message;
  const error = m?.error as { code?: unknown; message?: unknown } | undefined;
  if (error !== undefined)
    return `HTTP ${answer.status}, JSON-RPC error ${String(error.code)}: ${String(error.message)}`;
  if (answer.status >= 400 || m === undefined || typeof m.result !== 'object' || m.result === null)
    return `HTTP ${answer.status}${m === undefined ? ', no JSON-RPC response' : ''}`;
  return undefined;
}

function headerOf(headers: UpstreamResponse['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

async function listAll(session: Session, name: string): Promise<unknown[]> {
  const tools: unknown[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined;
  for (let page = 0; ; page++) {
    if (page === MAX_TOOL_PAGES)
      throw new LiveError(
        'protocol',
        `server '${name}': tools/list still had a next page after ${MAX_TOOL_PAGES} pages`,
      );
    const answer = await session.request('tools/list', cursor === undefined ? {} : { cursor });
    const refused = refusalOf(answer);
    if (refused !== undefined) {
      const code = (answer.message?.error as { code?: unknown } | undefined)?.code;
      throw new LiveError(
        code === -32601 ? 'no-tools' : 'protocol',
        code === -32601
          ? `server '${name}' has no tools (tools/list: method not found)`
          : `server '${name}' refused tools/list: ${refused}`,
      );
    }
    const result = answer.message?.result as { tools?: unknown; nextCursor?: unknown };
    if (!Array.isArray(result.tools))
      throw new LiveError('protocol', `server '${name}': tools/list result has no tools array`);
    tools.push(...(result.tools as unknown[]));
    if (tools.length > MAX_TOOLS)
      throw new LiveError('protocol', `server '${name}' lists more than ${MAX_TOOLS} tools`);
    if (typeof result.nextCursor !== 'string' || result.nextCursor === '') return tools;
    // A cursor seen before would loop for ever.
    if (seen.has(result.nextCursor))
      throw new LiveError('protocol', `server '${name}': tools/list repeated a cursor`);
    seen.add(result.nextCursor);
    cursor = result.nextCursor;
  }
}

async function legacy(
  upstream: Upstream,
  name: string,
  base: Record<string, string>,
  timeoutMs: number,
): Promise<LiveTools | { refused: string }> {
  const session = new Session(upstream, name, base, timeoutMs, false);
  const init = await session.request('initialize', {
    protocolVersion: LEGACY_PROTOCOL_VERSION,
    capabilities: {},
    clientInfo: CLIENT_INFO,
  });
  const refused = refusalOf(init);
  if (refused !== undefined) {
    // A credential refused is not an era question.
    if (init.status === 401 || init.status === 403)
      throw new LiveError('credential', `server '${name}' refused the credential: ${refused}`);
    return { refused };
  }
  const result = init.message?.result as {
    protocolVersion?: unknown;
    capabilities?: { tools?: unknown };
    serverInfo?: { name?: string; version?: string };
  };
  session.sessionId = headerOf(init.headers, 'mcp-session-id');
  session.protocolVersion =
    typeof result.protocolVersion === 'string' ? result.protocolVersion : LEGACY_PROTOCOL_VERSION;
  try {
    await session.notify('notifications/initialized');
    if (result.capabilities?.tools === undefined) {
      throw new LiveError(
        'no-tools',
        `server '${name}' has no tools: its initialize answer declares no tools capability`,
      );
    }
    return {
      era: 'legacy',
      protocolVersion: session.protocolVersion,
      serverInfo: result.serverInfo,
      tools: await listAll(session, name),
    };
  } finally {
    await session.end();
  }
}

async function modern(
  upstream: Upstream,
  name: string,
  base: Record<string, string>,
  timeoutMs: number,
): Promise<LiveTools | { refused: string }> {
  const session = new Session(upstream, name, base, timeoutMs, true);
  session.protocolVersion = FIRST_MODERN_VERSION;
  const discover = await session.request('server/discover');
  const refused = refusalOf(discover);
  if (refused !== undefined) {
    if (discover.status === 401 || discover.status === 403)
      throw new LiveError('credential', `server '${name}' refused the credential: ${refused}`);
    return { refused };
  }
  const result = discover.message?.result as {
    supportedVersions?: unknown;
    capabilities?: { tools?: unknown };
    _meta?: Record<string, unknown>;
  };
  if (
    !Array.isArray(result.supportedVersions) ||
    !result.supportedVersions.includes(FIRST_MODERN_VERSION)
  )
    return { refused: `server/discover lists no ${FIRST_MODERN_VERSION} support` };
  if (result.capabilities?.tools === undefined) {
    throw new LiveError(
      'no-tools',
      `server '${name}' has no tools: its server/discover answer declares no tools capability`,
    );
  }
  return {
    era: 'modern',
    protocolVersion: FIRST_MODERN_VERSION,
    serverInfo: result._meta?.['io.modelcontextprotocol/serverInfo'] as LiveTools['serverInfo'],
    tools: await listAll(session, name),
  };
}

/**
 * Every tool the live server lists. Throws a LiveError saying what went
 * wrong: unreachable, a refused credential, no tools capability, a protocol
 * problem, a timeout.
 */
export async function listLiveTools(options: LiveOptions): Promise<LiveTools> {
  const { config, server: name } = options;
  const server = config.servers[name];
  if (server === undefined) throw new Error(`unknown server '${name}'`);
  const timeoutMs = options.timeoutMs ?? DEFAULT_LIVE_TIMEOUT_MS;
  const log = options.log ?? pino({ level: 'warn' }, pino.destination(2));
  const base = await credentialHeaders(config, name, server, options.tenant ?? CLI_SUBJECT).catch(
    (err: unknown) => {
      if (err instanceof LiveError) throw err;
      throw new LiveError('credential', `server '${name}': ${(err as Error).message}`);
    },
  );
  let upstream: Upstream;
  try {
    upstream = createUpstream(name, server, {
      config,
      log,
      metrics: createMetrics(),
      secrets: gatewaySecrets(config),
    });
  } catch (err) {
    throw new LiveError('unreachable', (err as Error).message);
  }
  try {
    const era = server.transport === 'sse' ? 'legacy' : (options.era ?? 'auto');
    const attempts = era === 'auto' ? [legacy, modern] : era === 'legacy' ? [legacy] : [modern];
    const refusals: string[] = [];
    for (const attempt of attempts) {
      const got = await attempt(upstream, name, base, timeoutMs);
      if (!('refused' in got)) return got;
      refusals.push(`${attempt === legacy ? 'initialize' : 'server/discover'}: ${got.refused}`);
    }
    throw new LiveError(
      'protocol',
      `server '${name}' answered neither era: ${refusals.join('; ')}`,
    );
  } finally {
    await upstream.close();
  }
}
