/**
 * The 2024-11-05 HTTP+SSE transport for old clients
 * (spec/2024-11-05/basic/transports.mdx, "HTTP with SSE"), offered for every
 * server whatever its own transport:
 *
 *   GET  /mcp/<name>/sse                       the event stream; its first event,
 *                                              `endpoint`, names the message URI
 *   POST /mcp/<name>/messages?sessionId=<id>   one message (or batch); 202, the
 *                                              answer comes on the stream
 *
 * Each message is handled by the gateway's own Streamable HTTP endpoint
 * (`/mcp/<name>`), in process, so authentication's result, the session, the
 * credential step, policy and audit apply exactly as they do to a modern
 * client; what that endpoint answers (JSON, or an SSE stream of messages) is
 * re-emitted as `message` events on the caller's stream.
 *
 * Rules, in order of precedence:
 * 1. The message endpoint is bound to the caller that opened the stream: a
 *    POST by anyone else (another subject or tenant) gets 404, as an unknown
 *    connection does, and learns nothing.
 * 2. Every POST is authenticated on its own (its token may be newer than the
 *    stream's); the in-process request then carries that result, by a
 *    single-use ticket, and is not authenticated twice.
 * 3. The stream closing ends everything it started: in-flight requests are
 *    aborted (the upstream sees the cancellation) and the gateway session is
 *    deleted, which ends the upstream session (and a stdio server's process).
 * 4. If the gateway session ends under the stream (the upstream crashed or
 *    forgot it), the stream ends too: a legacy client reconnects and
 *    re-initializes.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { createParser } from 'eventsource-parser';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { VerifiedToken } from '../auth/jwt.js';
import { ownerKey, type Principal } from '../auth/principal.js';
import { GatewayError, type JsonRpcId } from '../errors/index.js';
import { headerValue } from '../mcp/era.js';
import { parseBody } from '../mcp/frame.js';
import { encodeMessage } from '../mcp/sse.js';
import {
  newLinks,
  type ClientStream,
  type ListLinks,
  type StreamIdentity,
  type StreamRegistry,
} from './streams.js';
import type { Exchange } from './exchange.js';
import type { Quotas } from './quotas.js';

/** The header an in-process request carries its ticket in; never accepted from outside without one. */
export const INTERNAL_TICKET_HEADER = 'x-portcullis-internal-ticket';

/** Connections one gateway keeps at most; beyond, new streams get 503 until some close. */
const MAX_CONNECTIONS = 10_000;

/**
 * Single-use tickets: the result of authenticating a legacy POST, handed to the
 * in-process request that carries its message (rule 2).
 */
export class InternalTickets {
  private readonly tickets = new Map<
    string,
    { principal: Principal; token: VerifiedToken | undefined }
  >();

  issue(principal: Principal, token: VerifiedToken | undefined): string {
    const ticket = randomBytes(24).toString('base64url');
    this.tickets.set(ticket, { principal, token });
    return ticket;
  }

  /** The ticket's identity, once; undefined for a ticket never issued or already used. */
  redeem(
    ticket: string | undefined,
  ): { principal: Principal; token: VerifiedToken | undefined } | undefined {
    if (ticket === undefined) return undefined;
    const found = this.tickets.get(ticket);
    this.tickets.delete(ticket);
    return found;
  }

  discard(ticket: string): void {
    this.tickets.delete(ticket);
  }
}

export interface LegacySseDeps {
  readonly app: FastifyInstance;
  readonly tickets: InternalTickets;
  readonly streams: StreamRegistry;
  readonly log: Logger;
  readonly quotas: Quotas;
  readonly isRevoked: ((identity: StreamIdentity) => boolean) | undefined;
  /** Throws the gateway's refusal if the caller may not use `server` (unknown server, scopes). */
  readonly checkRoute: (req: FastifyRequest<{ Params: { server: string } }>) => unknown;
}

/** The in-process answer of /mcp/<name>, streamed. */
interface InjectedResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  stream(): Readable;
  raw: { res: { destroy(): void } };
}

/** One legacy client's stream and what it started. */
class LegacyConnection implements ClientStream {
  readonly pending = new Set<unknown>();
  lastWriteAt = Date.now();
  /** The gateway session initialize opened (the Mcp-Session-Id the in-process requests carry). */
  sessionId: string | undefined;
  /** The negotiated revision, for the in-process requests' MCP-Protocol-Version. */
  protocolVersion: string | undefined;
  readonly inflight = new Set<InjectedResponse>();
  getStream: InjectedResponse | undefined;
  closed = false;
  readonly streamLinks: ListLinks<ClientStream> = newLinks();
  readonly identity: StreamIdentity;

  constructor(
    readonly id: string,
    readonly server: string,
    readonly owner: string,
    readonly host: string | undefined,
    /** The stream's own exchange: every byte to the client goes through it. */
    readonly x: Exchange,
    jti: string | undefined,
  ) {
    this.identity = { owner, jti, sessionId: () => this.sessionId };
  }

  get open(): boolean {
    return this.x.writable;
  }

  write(chunk: string): void {
    this.lastWriteAt = Date.now();
    this.x.write(chunk);
  }

  end(chunk?: string): void {
    this.x.end(chunk);
  }

  send(message: unknown): void {
    if (this.closed || !this.open) return;
    this.write(encodeMessage(message));
  }

  terminate(_retryHintMs: number, reason?: GatewayError): void {
    // A revocation answers what is pending at once: the in-process streams are cut.
    if (reason !== undefined) {
      for (const id of this.pending) this.send(reason.toResponse(id as JsonRpcId));
    }
    // Otherwise errors for what is still pending travel as the in-process streams end.
    this.end();
  }
}

/**
 * Whether a legacy client's Accept admits an event stream. The 2024-11-05
 * transport asks nothing of Accept, and its reference servers take any: no
 * header, `*\/*` and `text/*` all do, as a media range that names the type.
 */
export function acceptsEventStream(accept: string | undefined): boolean {
  if (accept === undefined || accept.trim() === '') return true;
  return accept.split(',').some((range) => {
    const type = (range.split(';')[0] ?? '').trim().toLowerCase();
    return type === 'text/event-stream' || type === '*/*' || type === 'text/*';
  });
}

export function registerLegacySse(deps: LegacySseDeps): void {
  const { app, tickets, streams, log } = deps;
  const connections = new Map<string, LegacyConnection>();

  /** Runs one request against the gateway's own endpoint for the connection's server. */
  const inject = async (
    conn: LegacyConnection,
    req: FastifyRequest,
    method: 'POST' | 'GET' | 'DELETE',
    body?: string,
  ): Promise<InjectedResponse> => {
    const ticket = tickets.issue(req.principal, req.token);
    const headers: Record<string, string> = {
      [INTERNAL_TICKET_HEADER]: ticket,
      accept: method === 'GET' ? 'text/event-stream' : 'application/json, text/event-stream',
    };
    if (conn.host !== undefined) headers.host = conn.host;
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (conn.sessionId !== undefined) headers['mcp-session-id'] = conn.sessionId;
    if (conn.protocolVersion !== undefined) headers['mcp-protocol-version'] = conn.protocolVersion;
    try {
      return (await app.inject({
        method,
        url: `/mcp/${encodeURIComponent(conn.server)}`,
        headers,
        ...(body === undefined ? {} : { payload: body }),
        payloadAsStream: true,
      })) as unknown as InjectedResponse;
    } finally {
      tickets.discard(ticket);
    }
  };

  /** Re-emits an in-process answer's messages on the connection's stream. */
  const pipe = (conn: LegacyConnection, res: InjectedResponse): Promise<void> => {
    conn.inflight.add(res);
    const type = String(res.headers['content-type'] ?? '');
    const body = res.stream();
    return new Promise<void>((resolve) => {
      const done = () => {
        conn.inflight.delete(res);
        resolve();
      };
      if (type.startsWith('text/event-stream')) {
        const decoder = new TextDecoder();
        const parser = createParser({
          onEvent(ev) {
            if (ev.data === '') return;
            try {
              emit(conn, JSON.parse(ev.data));
            } catch {
              log.warn({ server: conn.server }, 'dropped an event that is not JSON');
            }
          },
        });
        body.on('data', (chunk: Buffer) => parser.feed(decoder.decode(chunk, { stream: true })));
      } else {
        const chunks: Buffer[] = [];
        body.on('data', (chunk: Buffer) => chunks.push(chunk));
        body.once('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (text === '') return;
          try {
            emit(conn, JSON.parse(text));
          } catch {
            log.warn(
              { server: conn.server, status: res.statusCode },
              'dropped an answer that is not JSON',
            );
          }
        });
      }
      body.once('end', done);
      body.once('error', done);
      body.once('close', done);
    });
  };

  /** Messages to the client; the gateway learns the negotiated revision from the initialize answer. */
  const emit = (conn: LegacyConnection, value: unknown): void => {
    for (const message of Array.isArray(value) ? value : [value]) {
      const m = message as { id?: unknown; result?: { protocolVersion?: unknown } };
      if (m.id !== undefined && m.id !== null) conn.pending.delete(m.id);
      if (typeof m.result?.protocolVersion === 'string' && conn.protocolVersion === undefined)
        conn.protocolVersion = m.result.protocolVersion;
      if (m.id === undefined || m.id === null) {
        // An error without an id answers a notification: nothing on the client waits for it.
        if ((message as { error?: unknown }).error !== undefined) continue;
      }
      conn.send(message);
    }
    if (conn.pending.size === 0) streams.noteIdle(conn);
  };

  /** Ends the connection's gateway session, and with it the upstream's. */
  const endSession = (conn: LegacyConnection, req: FastifyRequest): void => {
    inject(conn, req, 'DELETE').then(
      (res) => res.stream().resume(),
      (err: { code?: string }) => {
        // A gateway shutting down ends every session with its upstreams anyway.
        if (err.code !== 'FST_ERR_REOPENED_CLOSE_SERVER')
          log.warn({ server: conn.server, err }, 'ending a legacy SSE session failed');
      },
    );
  };

  /** Rule 3. */
  const closeConnection = (conn: LegacyConnection, req: FastifyRequest): void => {
    if (conn.closed) return;
    conn.closed = true;
    connections.delete(conn.id);
    streams.remove(conn);
    for (const r of conn.inflight) r.raw.res.destroy();
    conn.getStream?.raw.res.destroy();
    if (conn.sessionId !== undefined) endSession(conn, req);
    if (conn.open) conn.end();
    log.info({ server: conn.server, connection: conn.id }, 'legacy SSE stream closed');
  };

  /** After initialize: the session's GET stream carries what the server says unprompted. */
  const openGetStream = async (conn: LegacyConnection, req: FastifyRequest): Promise<void> => {
    const res = await inject(conn, req, 'GET');
    if (res.statusCode !== 200) {
      res.stream().resume();
      return;
    }
    conn.getStream = res;
    await pipe(conn, res);
    conn.getStream = undefined;
  };

  app.get<{ Params: { server: string } }>('/mcp/:server/sse', async (req) => {
    deps.checkRoute(req);
    if (!acceptsEventStream(req.headers.accept))
      throw new GatewayError('PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE_STREAM');
    if (connections.size >= MAX_CONNECTIONS) throw new GatewayError('PORTCULLIS_ERR_SESSION_LIMIT');
    const id = randomBytes(24).toString('base64url');
    const conn = new LegacyConnection(
      id,
      req.params.server,
      ownerKey(req.principal),
      req.headers.host,
      req.exchange,
      req.token?.tokenId,
    );
    // Revoked since the door (a revocation from here on ends it through the registry).
    if (deps.isRevoked?.(conn.identity)) {
      throw new GatewayError(
        'PORTCULLIS_ERR_AUTH_TOKEN_REVOKED',
        'revoked while the request was read',
      );
    }
    const lease = deps.quotas.acquire('legacyConnections', req.principal);
    const x = req.exchange;
    x.openStream(200, {});
    connections.set(id, conn);
    streams.add(conn);
    // spec/2024-11-05/basic/transports.mdx: the server MUST send an `endpoint` event first.
    const endpoint = `/mcp/${encodeURIComponent(req.params.server)}/messages?sessionId=${id}`;
    conn.write(`event: endpoint\ndata: ${endpoint}\n\n`);
    log.info({ server: conn.server, connection: id }, 'legacy SSE stream opened');
    x.onClose(() => {
      lease.release();
      closeConnection(conn, req);
    });
  });

  app.post<{ Params: { server: string }; Querystring: { sessionId?: string } }>(
    '/mcp/:server/messages',
    async (req) => {
      deps.checkRoute(req);
      const conn = connections.get(headerValue(req.query.sessionId) ?? '');
      // Rule 1: someone else's connection is as unknown as a closed one.
      if (
        conn === undefined ||
        conn.server !== req.params.server ||
        conn.owner !== ownerKey(req.principal)
      )
        throw new GatewayError('PORTCULLIS_ERR_SESSION_UNKNOWN', 'no such SSE connection');
      if (typeof req.body !== 'string')
        throw new GatewayError('PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
      // Framed at this door too: what cannot be (too deep, an id that is not a string or an
      // integer) is refused on the POST itself, as the SDK's servers do, since the in-process
      // refusal would carry no id and reach the stream as an answer to nothing.
      const messages = parseBody(req.body, 'client-to-server', true).frames.map(
        (f) => f.message as { id?: unknown; method?: unknown },
      );
      const initialize = messages.some((m) => m?.method === 'initialize');
      for (const m of messages) {
        if (typeof m?.method === 'string' && m.id !== undefined && m.id !== null)
          conn.pending.add(m.id);
      }
      // The answer travels on the stream; the POST is only acknowledged.
      req.exchange.sendText(202, 'Accepted');

      let res: InjectedResponse;
      try {
        res = await inject(conn, req, 'POST', req.body);
      } catch (err) {
        log.error({ server: conn.server, err }, 'legacy SSE message failed in process');
        for (const m of messages) {
          if (m.id !== undefined && m.id !== null && typeof m.method === 'string')
            emit(conn, new GatewayError('PORTCULLIS_ERR_INTERNAL').toResponse(m.id as string));
        }
        return;
      }
      if (initialize && res.statusCode === 200) {
        conn.sessionId = headerValue(res.headers['mcp-session-id']) ?? conn.sessionId;
        // The stream closed while initialize was on its way: nothing else would end the session.
        if (conn.closed && conn.sessionId !== undefined) {
          res.stream().resume();
          endSession(conn, req);
          return;
        }
      }
      const sessionGone = res.statusCode === 404 && conn.sessionId !== undefined;
      await pipe(conn, res);
      if (
        initialize &&
        conn.sessionId !== undefined &&
        conn.getStream === undefined &&
        !conn.closed
      ) {
        void openGetStream(conn, req);
      }
      // Rule 4.
      if (sessionGone) closeConnection(conn, req);
    },
  );
}
