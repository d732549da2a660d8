/**
 * Authentication on the wire: the request's credentials handed to the
 * Authenticator, the `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9449
 * §7.1, RFC 9728 §5.1), the protected-resource metadata documents, and the
 * audit-ready record of every refusal.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { AuthInput, Authenticator } from '../auth/authenticate.js';
import { serverResource } from '../auth/authenticate.js';
import type { VerifiedToken } from '../auth/jwt.js';
import { tokenHash } from '../auth/jwt.js';
import { GatewayError } from '../errors/index.js';
import type { Metrics } from '../telemetry/metrics.js';
import { SERVER_NAME_PATTERN } from '../config/schema.js';

export const PRM_PATH = '/.well-known/oauth-protected-resource';

/** What the metadata documents say, and what the challenges point at. */
export interface ResourceInfo {
  /** The gateway's resource identifier (an origin, no trailing slash). */
  readonly resource: string;
  readonly authorizationServers: readonly string[];
  readonly scopesSupported: readonly string[];
  readonly dpopAlgorithms: readonly string[];
  readonly dpopRequired: boolean;
  readonly certificateBound: boolean;
  /** Each server's own required scopes, by name. */
  readonly servers: ReadonlyMap<string, readonly string[]>;
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export function authInput(req: FastifyRequest): AuthInput {
  const h = req.headers;
  return {
    authorization: h.authorization,
    dpop: first(h.dpop),
    method: req.method,
    url: req.url,
    sessionId: first(h['mcp-session-id']),
    socket: req.raw.socket,
  };
}

const SERVER_NAME = new RegExp(SERVER_NAME_PATTERN);

/** The server a request is for, from the matched route (never the raw URL), if it names one validly. */
export function requestedServer(req: FastifyRequest): string | undefined {
  const name = (req.params as { server?: unknown } | undefined)?.server;
  return typeof name === 'string' && SERVER_NAME.test(name) ? name : undefined;
}

/**
 * The metadata URL for a request: the server's own document for any
 * well-formed name, configured or not, so a challenge tells an
 * unauthenticated caller nothing about which servers exist.
 */
export function metadataUrlFor(info: ResourceInfo, server: string | undefined): string {
  return server === undefined
    ? `${info.resource}${PRM_PATH}`
    : `${info.resource}${PRM_PATH}/mcp/${server}`;
}

/** An auth-param quoted-string value: visible ASCII without `"` and `\` (RFC 6750 §3). */
function quoted(text: string): string {
  return `"${text.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, ' ')}"`;
}

export function challengeHeader(
  err: GatewayError,
  info: ResourceInfo,
  server: string | undefined,
): string {
  const challenge = err.challenge;
  if (challenge === undefined) throw new Error(`${err.code} carries no challenge`);
  const params = [`resource_metadata=${quoted(metadataUrlFor(info, server))}`];
  if (challenge.error !== '') {
    params.push(`error=${quoted(challenge.error)}`, `error_description=${quoted(err.message)}`);
  }
  if (typeof err.data.scope === 'string') params.push(`scope=${quoted(err.data.scope)}`);
  if (challenge.scheme === 'DPoP') params.push(`algs=${quoted(info.dpopAlgorithms.join(' '))}`);
  return `${challenge.scheme} ${params.join(', ')}`;
}

/** Fields of a refusal's log record: enough to trace it, never the token itself. */
export function refusalRecord(req: FastifyRequest, err: GatewayError): Record<string, unknown> {
  const auth = req.headers.authorization;
  const space = auth?.indexOf(' ') ?? -1;
  return {
    event: 'auth.refused',
    code: err.code,
    reason: err.data.reason,
    status: err.status,
    method: req.method,
    path: req.url.split('?')[0],
    ip: req.ip,
    // A prefix of the token's SHA-256: correlates refusals without revealing the token.
    tokenSha256:
      auth && space > 0 ? tokenHash(auth.slice(space + 1).trim()).slice(0, 16) : undefined,
  };
}

export interface AuthHooks {
  /** The onRequest step for /mcp/ paths: sets `req.token` and `req.principal`, or refuses. */
  authenticate(req: FastifyRequest, reply: FastifyReply, done: () => void): void;
  /** Refuses the request with `err`: challenge header, audit record, metric. */
  refuse(req: FastifyRequest, reply: FastifyReply, err: GatewayError): void;
}

export function authHooks(
  authenticator: () => Authenticator,
  info: () => ResourceInfo,
  log: Logger,
  metrics: Metrics,
  send: (reply: FastifyReply, err: GatewayError) => void,
): AuthHooks {
  const refuse = (req: FastifyRequest, reply: FastifyReply, err: GatewayError): void => {
    if (err.challenge)
      reply.header('www-authenticate', challengeHeader(err, info(), requestedServer(req)));
    log.warn(refusalRecord(req, err), 'refused a request at authentication');
    metrics.authRefusals.inc({ code: err.code, reason: String(err.data.reason ?? '') });
    send(reply, err);
  };
  const accept = (req: FastifyRequest, token: VerifiedToken): void => {
    req.token = token;
    req.principal = token.principal;
  };
  const onError = (req: FastifyRequest, reply: FastifyReply, err: unknown): void => {
    if (err instanceof GatewayError) return refuse(req, reply, err);
    log.error({ err }, 'authentication failed unexpectedly');
    send(reply, new GatewayError('PORTCULLIS_ERR_INTERNAL'));
  };
  return {
    refuse,
    authenticate(req, reply, done) {
      let result: VerifiedToken | Promise<VerifiedToken>;
      try {
        result = authenticator().authenticate(authInput(req));
      } catch (err) {
        return onError(req, reply, err);
      }
      if (result instanceof Promise) {
        result.then(
          (token) => {
            accept(req, token);
            done();
          },
          (err: unknown) => onError(req, reply, err),
        );
        return;
      }
      accept(req, result);
      done();
    },
  };
}

/**
 * GET /.well-known/oauth-protected-resource[/mcp/<name>] (RFC 9728 §3).
 * Public, so every well-formed name gets the same document: a configured
 * server's cannot be told from an unknown name's. Its scopes are every scope
 * the gateway knows; the challenge of a 403 names the one a server needs.
 */
export function registerMetadataRoutes(app: FastifyInstance, info: () => ResourceInfo): void {
  const document = (resource: string): Record<string, unknown> => {
    const i = info();
    return {
      resource,
      authorization_servers: i.authorizationServers,
      scopes_supported: [...new Set([...i.scopesSupported, ...[...i.servers.values()].flat()])],
      bearer_methods_supported: ['header'],
      resource_name: 'Portcullis MCP gateway',
      dpop_signing_alg_values_supported: i.dpopAlgorithms,
      dpop_bound_access_tokens_required: i.dpopRequired,
      tls_client_certificate_bound_access_tokens: i.certificateBound,
    };
  };
  app.get(PRM_PATH, async (_req, reply) => {
    void reply.header('cache-control', 'public, max-age=300');
    return document(info().resource);
  });
  app.get<{ Params: { server: string } }>(`${PRM_PATH}/mcp/:server`, async (req, reply) => {
    const server = requestedServer(req);
    if (server === undefined) throw new GatewayError('PORTCULLIS_ERR_HTTP_NOT_FOUND');
    void reply.header('cache-control', 'public, max-age=300');
    return document(serverResource(info().resource, server));
  });
}
