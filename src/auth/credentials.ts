/**
 * The credential step: what an upstream is sent in place of the agent's
 * token, which never leaves the gateway (spec/2025-11-25/basic/
 * authorization.mdx, "Token Passthrough": the server MUST NOT pass through
 * the token it received). Per server, one of:
 * - none;
 * - static: one header from configuration (a value or a file);
 * - mint: a JWT the gateway signs for that upstream alone — its audience,
 *   scopes narrowed to what the agent holds, an `act` claim naming the agent,
 *   a short life — reused until shortly before it expires, per legacy session
 *   (or per agent in the stateless era), and revoked when its session ends;
 * - token-exchange: RFC 8693 at a configured token endpoint, cached the same way.
 * A credential in the cache costs no signature and no network.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request } from 'undici';
import type { CredentialConfig } from '../config/schema.js';
import { GatewayError } from '../errors/index.js';
import type { VerifiedToken } from './jwt.js';
import type { SigningKeys } from './keys.js';
import { compositeKey } from './principal.js';
import type { Revocations } from './revocation.js';
import type { Verb } from '../policy/manifest.js';
import { readBounded } from '../upstream/bounded-read.js';

/** A cached credential is replaced this long before it expires, so none expires in flight. */
export const CREDENTIAL_REFRESH_MARGIN_MS = 30_000;
/** Largest token-endpoint response accepted. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

export interface CredentialRequest {
  /** The agent's verified token; undefined with auth.mode none. */
  readonly token: VerifiedToken | undefined;
  /** The gateway's legacy session id, if the request belongs to one. */
  readonly sessionId: string | undefined;
  /**
   * The tool calls the request carries (as they go upstream: a virtual tool's
   * real one), with the verb class of the most powerful: for `perCall`.
   */
  readonly calls?: { readonly tools: readonly string[]; readonly verb: Verb };
}

/** The scopes a per-call credential carries for each verb class, unless `scopesByVerb` says. */
export const DEFAULT_SCOPES_BY_VERB: Readonly<Record<Verb, readonly string[]>> = Object.freeze({
  read: ['read'],
  write: ['read', 'write'],
  destructive: ['read', 'write', 'destructive'],
});
/** The life of a per-call credential unless `perCallTtlMs` says. */
export const DEFAULT_PER_CALL_TTL_MS = 30_000;

type Headers = Readonly<Record<string, string>>;

export interface UpstreamCredential {
  readonly mode: CredentialConfig['mode'];
  /** True when `headers` reads `calls`; otherwise the caller need not work them out. */
  readonly readsCalls?: boolean;
  /** The headers to add for this request: synchronously when cached. */
  headers(req: CredentialRequest): Headers | undefined | Promise<Headers>;
  /** Forgets (and, for minted tokens, revokes) what was issued for the session. */
  sessionEnded(sessionId: string): void;
}

interface Cached {
  readonly headers: Headers;
  readonly refreshAt: number;
  readonly expiresAt: number;
  readonly jti?: string;
}

const NONE: UpstreamCredential = {
  mode: 'none',
  headers: () => undefined,
  sessionEnded: () => undefined,
};

class StaticCredential implements UpstreamCredential {
  readonly mode = 'static';
  private readonly value: Headers;
  constructor(header: string, value: string) {
    this.value = Object.freeze({ [header.toLowerCase()]: value });
  }
  headers(): Headers {
    return this.value;
  }
  sessionEnded(): void {}
}

/** Per-session (or per-agent) cache with expiry, shared by the minting and exchanging modes. */
abstract class CachingCredential implements UpstreamCredential {
  abstract readonly mode: CredentialConfig['mode'];
  private readonly cache = new Map<string, Cached>();
  private readonly inFlight = new Map<string, Promise<Headers>>();

  headers(req: CredentialRequest): Headers | Promise<Headers> {
    const token = req.token;
    if (token === undefined) {
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_CREDENTIAL',
        'no authenticated agent to act for',
      );
    }
    const key = this.keyFor(token, req.sessionId);
    const hit = this.cache.get(key);
    if (hit !== undefined && hit.refreshAt > Date.now()) return hit.headers;
    let pending = this.inFlight.get(key);
    if (pending === undefined) {
      pending = this.obtain(token).then(
        (fresh) => {
          this.inFlight.delete(key);
          this.cache.set(key, fresh);
          return fresh.headers;
        },
        (err: unknown) => {
          this.inFlight.delete(key);
          throw err;
        },
      );
      this.inFlight.set(key, pending);
    }
    return pending;
  }

  sessionEnded(sessionId: string): void {
    const key = `session:${sessionId}`;
    const cached = this.cache.get(key);
    this.cache.delete(key);
    if (cached !== undefined) this.revoke(cached);
  }

  protected abstract keyFor(token: VerifiedToken, sessionId: string | undefined): string;
  protected abstract obtain(token: VerifiedToken): Promise<Cached>;
  protected revoke(_cached: Cached): void {}

  /** Drops entries past their expiry, so the cache holds only live credentials. */
  protected prune(now: number): void {
    for (const [key, c] of this.cache) if (c.expiresAt <= now) this.cache.delete(key);
  }
}

export interface MintOptions {
  readonly server: string;
  readonly audience: string;
  readonly scopes: readonly string[] | undefined;
  readonly ttlMs: number;
  readonly issuer: string;
  readonly keys: SigningKeys;
  readonly revocations: Revocations;
  readonly onIssued: (result: 'ok' | 'error') => void;
  /** One credential per tool call, scoped by the verb class of what it calls. */
  readonly perCall?: {
    readonly ttlMs: number;
    readonly scopesByVerb: Readonly<Record<Verb, readonly string[]>>;
  };
}

class MintedCredential extends CachingCredential {
  readonly mode = 'mint';
  readonly readsCalls: boolean;
  constructor(private readonly options: MintOptions) {
    super();
    this.readsCalls = options.perCall !== undefined;
  }

  /**
   * With `perCall`, a request that calls tools gets a credential of its own,
   * never cached: scoped to the verb class of what it calls, living
   * `perCallTtlMs`, naming the tools. Every other request (initialize, lists,
   * reads of resources) gets the cached one, scoped as a read.
   */
  override headers(req: CredentialRequest): Headers | Promise<Headers> {
    const perCall = this.options.perCall;
    if (perCall === undefined || req.calls === undefined || req.token === undefined)
      return super.headers(req);
    const { calls } = req;
    return this.sign(req.token, perCall.scopesByVerb[calls.verb], perCall.ttlMs, {
      mcp_verb: calls.verb,
      ...(calls.tools.length === 1 ? { mcp_tool: calls.tools[0] } : { mcp_tools: calls.tools }),
    }).then((c) => c.headers);
  }

  protected keyFor(token: VerifiedToken, sessionId: string | undefined): string {
    // One credential per legacy session, so it can be revoked with the session;
    // stateless requests share one per agent and scope set.
    if (sessionId !== undefined) return `session:${sessionId}`;
    const p = token.principal;
    return compositeKey('agent', p.tenant, p.subject, p.clientId ?? null, ...p.scopes);
  }

  protected obtain(token: VerifiedToken): Promise<Cached> {
    const { options } = this;
    const p = token.principal;
    const scopes = options.perCall
      ? options.perCall.scopesByVerb.read
      : options.scopes === undefined
        ? p.scopes
        : options.scopes.filter((s) => p.scopes.includes(s));
    return this.sign(token, scopes, options.ttlMs, {});
  }

  private async sign(
    token: VerifiedToken,
    granted: readonly string[],
    ttlMs: number,
    extra: Record<string, unknown>,
  ): Promise<Cached> {
    const { options } = this;
    const p = token.principal;
    // The configured `scopes` stay the most the upstream token may carry.
    const scopes =
      options.perCall && options.scopes !== undefined
        ? granted.filter((s) => options.scopes?.includes(s))
        : granted;
    const now = Math.floor(Date.now() / 1000);
    const exp = now + Math.floor(ttlMs / 1000);
    const jti = randomUUID();
    let jwt: string;
    try {
      jwt = await options.keys.sign({
        iss: options.issuer,
        sub: p.subject,
        aud: options.audience,
        iat: now,
        exp,
        jti,
        tenant: p.tenant,
        scope: scopes.join(' '),
        client_id: p.clientId ?? p.subject,
        // RFC 8693 §4.1: the gateway acts for the agent, which the actor claim names.
        act: { sub: p.clientId ?? p.subject, iss: token.issuer },
        ...extra,
      });
    } catch (err) {
      options.onIssued('error');
      throw new GatewayError('PORTCULLIS_ERR_UPSTREAM_CREDENTIAL', (err as Error).message, {
        server: options.server,
      });
    }
    options.onIssued('ok');
    this.prune(Date.now());
    return {
      headers: Object.freeze({ authorization: `Bearer ${jwt}` }),
      refreshAt: exp * 1000 - Math.min(CREDENTIAL_REFRESH_MARGIN_MS, ttlMs / 5),
      expiresAt: exp * 1000,
      jti,
    };
  }

  protected override revoke(cached: Cached): void {
    if (cached.jti === undefined || cached.expiresAt <= Date.now()) return;
    this.options.revocations
      .revoke({ kind: 'jti', id: cached.jti, expiresAt: cached.expiresAt, reason: 'session ended' })
      .catch(() => undefined);
  }
}

export interface ExchangeOptions {
  readonly server: string;
  readonly tokenEndpoint: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly resource: string;
  readonly audience: string | undefined;
  readonly scope: string | undefined;
  readonly timeoutMs: number;
  readonly onIssued: (result: 'ok' | 'error') => void;
}

const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

class ExchangedCredential extends CachingCredential {
  readonly mode = 'token-exchange';
  private readonly basic: string;
  constructor(private readonly options: ExchangeOptions) {
    super();
    // RFC 6749 §2.3.1: client id and secret are form-encoded before Basic encoding.
    const enc = (v: string) => encodeURIComponent(v).replace(/%20/g, '+');
    this.basic = `Basic ${Buffer.from(`${enc(options.clientId)}:${enc(options.clientSecret)}`).toString('base64')}`;
  }

  protected keyFor(token: VerifiedToken): string {
    // The exchanged token stands for the agent's token: one per agent token.
    return `token:${token.hash}`;
  }

  protected async obtain(token: VerifiedToken): Promise<Cached> {
    const { options } = this;
    const form = new URLSearchParams({
      grant_type: TOKEN_EXCHANGE_GRANT,
      subject_token: token.token,
      subject_token_type: ACCESS_TOKEN_TYPE,
      requested_token_type: ACCESS_TOKEN_TYPE,
      resource: options.resource,
    });
    if (options.audience !== undefined) form.set('audience', options.audience);
    if (options.scope !== undefined) form.set('scope', options.scope);
    try {
      const res = await request(options.tokenEndpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
          authorization: this.basic,
        },
        body: form.toString(),
        headersTimeout: options.timeoutMs,
        bodyTimeout: options.timeoutMs,
        signal: AbortSignal.timeout(options.timeoutMs),
      });
      const text = await readBounded(res.body, MAX_TOKEN_RESPONSE_BYTES);
      const body = JSON.parse(text) as {
        access_token?: unknown;
        expires_in?: unknown;
        token_type?: unknown;
        error?: unknown;
      };
      if (res.statusCode !== 200 || typeof body.access_token !== 'string') {
        throw new Error(
          `token endpoint answered ${res.statusCode}${typeof body.error === 'string' ? ` (${body.error})` : ''}`,
        );
      }
      const lifeMs = (typeof body.expires_in === 'number' ? body.expires_in : 60) * 1000;
      const expiresAt = Math.min(Date.now() + lifeMs, token.exp * 1000);
      options.onIssued('ok');
      this.prune(Date.now());
      return {
        headers: Object.freeze({ authorization: `Bearer ${body.access_token}` }),
        refreshAt: expiresAt - Math.min(CREDENTIAL_REFRESH_MARGIN_MS, lifeMs / 5),
        expiresAt,
      };
    } catch (err) {
      options.onIssued('error');
      throw new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_CREDENTIAL',
        `token exchange for server '${options.server}' failed: ${(err as Error).message}`,
        { server: options.server },
      );
    }
  }
}

function readSecret(file: string): string {
  return readFileSync(file, 'utf8').trim();
}

export interface CredentialDeps {
  readonly server: string;
  readonly serverUrl: string;
  readonly signingIssuer: string | undefined;
  readonly keys: SigningKeys | undefined;
  readonly revocations: Revocations;
  readonly onIssued: (server: string, mode: string, result: 'ok' | 'error') => void;
}

/** The credential provider for one server, from its configuration (files are read here, once). */
export function createCredential(
  config: CredentialConfig,
  deps: CredentialDeps,
): UpstreamCredential {
  switch (config.mode) {
    case 'none':
      return NONE;
    case 'static':
      return new StaticCredential(config.header, config.value ?? readSecret(config.file as string));
    case 'mint':
      if (deps.keys === undefined || deps.signingIssuer === undefined) {
        throw new Error(`server '${deps.server}': mint needs signing keys`);
      }
      return new MintedCredential({
        server: deps.server,
        audience: config.audience ?? deps.serverUrl,
        scopes: config.scopes,
        ttlMs: config.ttlMs,
        issuer: deps.signingIssuer,
        keys: deps.keys,
        revocations: deps.revocations,
        onIssued: (r) => deps.onIssued(deps.server, 'mint', r),
        ...(config.perCall
          ? {
              perCall: {
                ttlMs: config.perCallTtlMs ?? DEFAULT_PER_CALL_TTL_MS,
                scopesByVerb: { ...DEFAULT_SCOPES_BY_VERB, ...config.scopesByVerb },
              },
            }
          : {}),
      });
    case 'token-exchange':
      return new ExchangedCredential({
        server: deps.server,
        tokenEndpoint: config.tokenEndpoint,
        clientId: config.clientId,
        clientSecret: config.clientSecret ?? readSecret(config.clientSecretFile as string),
        resource: config.resource ?? deps.serverUrl,
        audience: config.audience,
        scope: config.scope,
        timeoutMs: config.timeoutMs,
        onIssued: (r) => deps.onIssued(deps.server, 'token-exchange', r),
      });
  }
}
