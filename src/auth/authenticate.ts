/**
 * The authenticate step of the pipeline, in this order (each step refuses
 * with its own error, and nothing is forwarded after a refusal):
 * 1. no token in the query string (spec/2025-11-25/basic/authorization.mdx:
 *    access tokens MUST NOT be included in the URI query string);
 * 2. an `Authorization: Bearer|DPoP <token>` header;
 * 3. the token verified (jwt.ts), from the cache when seen before;
 * 4. its sender constraint: a DPoP-bound token (`cnf.jkt`) only with the DPoP
 *    scheme and a valid proof, a certificate-bound one (`cnf.x5t#S256`) only
 *    over a connection that presented that certificate;
 * 5. revocations (token id, subject, session), from the local mirror.
 * Then, per route, `authorize` checks the audience names that server and the
 * scopes it needs.
 */
import { createHash } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { GatewayError } from '../errors/index.js';
import { StoreUnavailableError } from '../store/index.js';
import { verifyDpopProof, type ClaimOnce, type DpopOptions } from './dpop.js';
import type { TokenVerifier, VerifiedToken } from './jwt.js';
import { subjectKey, type Revocations } from './revocation.js';

export interface AuthInput {
  readonly authorization: string | undefined;
  readonly dpop: string | undefined;
  readonly method: string;
  /** The request target as received: path and query. */
  readonly url: string;
  readonly sessionId: string | undefined;
  /** The client's connection: a TLS socket when the listener is HTTPS. */
  readonly socket: object;
}

export interface AuthenticatorOptions {
  readonly verifier: TokenVerifier;
  readonly revocations: Revocations;
  readonly dpop: DpopOptions & { readonly required: boolean };
  readonly claimOnce: ClaimOnce;
  /** The gateway's resource identifier (an origin): DPoP proofs name URLs under it. */
  readonly resource: string;
  /** Audiences good for every server: the gateway's resource and `auth.jwt.audiences`. */
  readonly gatewayAudiences: readonly string[];
  readonly requiredScopes: readonly string[];
  readonly failClosed: boolean;
  /** A request let through unchecked while revocations could not be checked (fail open). */
  readonly onUnchecked: () => void;
}

const certThumbprints = new WeakMap<object, string | null>();

/**
 * base64url SHA-256 of the DER client certificate of the connection (RFC 8705
 * `x5t#S256`), computed once per connection; undefined without one, or with
 * one that does not chain to the configured client CAs.
 */
export function peerCertificate(socket: object): string | undefined {
  const tls = socket as Partial<TLSSocket>;
  if (typeof tls.getPeerCertificate !== 'function') return undefined;
  let known = certThumbprints.get(socket);
  if (known === undefined) {
    const cert = tls.getPeerCertificate();
    known =
      cert?.raw && tls.authorized
        ? createHash('sha256').update(cert.raw).digest('base64url')
        : null;
    certThumbprints.set(socket, known);
  }
  return known ?? undefined;
}

/** Query parameters that would carry a token (RFC 6750 §2.3). */
const QUERY_TOKEN = /[?&]access_token=/;

/** The server `name`'s resource identifier under the gateway's. */
export function serverResource(resource: string, name: string): string {
  return `${resource}/mcp/${name}`;
}

interface ServerAccess {
  /** The server's own resource identifier. */
  readonly own: string;
  /** Every scope a token needs for it. */
  readonly scopes: readonly string[];
}

export class Authenticator {
  private readonly gatewayAudiences: ReadonlySet<string>;
  /** Per server, computed on its first request: nothing is concatenated per request. */
  private readonly access = new Map<string, ServerAccess>();

  constructor(private readonly options: AuthenticatorOptions) {
    this.gatewayAudiences = new Set(options.gatewayAudiences);
  }

  /** The verified token of the request: synchronously when nothing needs waiting for. */
  authenticate(input: AuthInput): VerifiedToken | Promise<VerifiedToken> {
    if (QUERY_TOKEN.test(input.url)) {
      throw new GatewayError(
        'PORTCULLIS_ERR_AUTH_BAD_REQUEST',
        'access tokens are not accepted in the query string; send them in the Authorization header',
        { reason: 'query' },
      );
    }
    const auth = input.authorization;
    if (auth === undefined || auth === '') throw new GatewayError('PORTCULLIS_ERR_AUTH_MISSING');
    const space = auth.indexOf(' ');
    const scheme = space > 0 ? auth.slice(0, space).toLowerCase() : '';
    const token = space > 0 ? auth.slice(space + 1).trim() : '';
    if ((scheme !== 'bearer' && scheme !== 'dpop') || token === '') {
      throw new GatewayError(
        'PORTCULLIS_ERR_AUTH_MISSING',
        'the Authorization header must be "Bearer <token>" or "DPoP <token>"',
        { reason: 'scheme' },
      );
    }
    const verified = this.options.verifier.verify(token, input.socket);
    if (verified instanceof Promise) {
      return verified.then((v) => this.afterVerify(v, scheme, input));
    }
    return this.afterVerify(verified, scheme, input);
  }

  /** Whether the token may reach server `name`: its audience, then its scopes. */
  authorize(token: VerifiedToken, name: string, serverScopes: readonly string[]): void {
    let access = this.access.get(name);
    if (access === undefined) {
      access = {
        own: serverResource(this.options.resource, name),
        scopes: [...new Set([...this.options.requiredScopes, ...serverScopes])],
      };
      this.access.set(name, access);
    }
    let audienceOk = false;
    for (const a of token.audiences) {
      if (a === access.own || this.gatewayAudiences.has(a)) {
        audienceOk = true;
        break;
      }
    }
    if (!audienceOk) {
      throw new GatewayError(
        'PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE',
        `the token's audience does not name ${access.own}`,
        { reason: 'aud' },
      );
    }
    const held = token.principal.scopes;
    for (const scope of access.scopes) {
      if (held.includes(scope)) continue;
      const missing = access.scopes.filter((s) => !held.includes(s));
      throw new GatewayError('PORTCULLIS_ERR_AUTH_INSUFFICIENT_SCOPE', missing.join(' '), {
        reason: 'scope',
        scope: access.scopes.join(' '),
      });
    }
  }

  private afterVerify(
    token: VerifiedToken,
    scheme: string,
    input: AuthInput,
  ): VerifiedToken | Promise<VerifiedToken> {
    if (token.x5t !== undefined && peerCertificate(input.socket) !== token.x5t) {
      throw new GatewayError('PORTCULLIS_ERR_AUTH_CERTIFICATE_MISMATCH', undefined, {
        reason: 'x5t',
      });
    }
    if (token.jkt === undefined) {
      if (scheme === 'dpop') {
        throw new GatewayError(
          'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
          'the DPoP scheme needs a DPoP-bound token (cnf.jkt)',
          { reason: 'not_dpop_bound' },
        );
      }
      if (this.options.dpop.required) {
        throw new GatewayError(
          'PORTCULLIS_ERR_AUTH_DPOP_INVALID',
          'this gateway accepts DPoP-bound tokens only',
          { reason: 'dpop_required' },
        );
      }
      this.checkRevoked(token, input);
      return token;
    }
    // RFC 9449 §7.1: a DPoP-bound token is never good as a bearer token.
    if (scheme !== 'dpop') {
      throw new GatewayError(
        'PORTCULLIS_ERR_AUTH_DPOP_INVALID',
        'the token is DPoP-bound: send it with the DPoP scheme and a proof',
        { reason: 'bearer_for_bound_token' },
      );
    }
    const queryAt = input.url.indexOf('?');
    const path = queryAt < 0 ? input.url : input.url.slice(0, queryAt);
    return verifyDpopProof(
      {
        proof: input.dpop,
        method: input.method,
        url: `${this.options.resource}${path}`,
        tokenHash: token.hash,
        jkt: token.jkt,
      },
      this.options.dpop,
      this.options.claimOnce,
    ).then(
      () => {
        this.checkRevoked(token, input);
        return token;
      },
      (err: unknown) => {
        if (!(err instanceof StoreUnavailableError)) throw err;
        throw new GatewayError('PORTCULLIS_ERR_AUTH_STORE_UNAVAILABLE', 'DPoP proof replay check', {
          reason: 'store',
        });
      },
    );
  }

  private checkRevoked(token: VerifiedToken, input: AuthInput): void {
    const p = token.principal;
    const state = this.options.revocations.check(
      token.tokenId,
      subjectKey(p.tenant, p.subject),
      input.sessionId,
    );
    if (state === 'ok') return;
    if (state === 'revoked') {
      throw new GatewayError('PORTCULLIS_ERR_AUTH_TOKEN_REVOKED', undefined, { reason: 'revoked' });
    }
    if (this.options.failClosed) {
      throw new GatewayError('PORTCULLIS_ERR_AUTH_STORE_UNAVAILABLE', 'revocation check', {
        reason: 'store',
      });
    }
    this.options.onUnchecked();
  }
}
