/**
 * Access-token verification: JWTs checked with jose against the issuer's
 * keys, then remembered by their SHA-256 until they expire, so the hot path
 * of a known token is one hash and one map lookup — no signature check and no
 * network. The checks, all required (spec/2025-11-25/basic/authorization.mdx,
 * "Token Handling": servers MUST validate that tokens were issued for them):
 * an allowed asymmetric `alg` (HMAC only with a configured secret, never
 * `none`), a known key, the signature, `iss`, `aud` naming this gateway or one
 * of its servers (RFC 8707), `exp`/`nbf`/`iat` within the clock skew, a
 * lifetime (`exp - iat`) no longer than the maximum, `sub`, the configured
 * required claims, and a tenant.
 */
import { hash } from 'node:crypto';
import { errors as joseErrors, jwtVerify, type CryptoKey, type JWTPayload } from 'jose';
import { GatewayError, type ErrorCode } from '../errors/index.js';
import type { Principal } from './principal.js';
import { KeysUnavailableError, type KeySource } from './jwks.js';

/** A token that passed every check, as remembered by the cache. */
export interface VerifiedToken {
  readonly principal: Principal;
  /** `jti`, if the token has one: what revocation by token id names. */
  readonly tokenId: string | undefined;
  readonly issuer: string;
  readonly audiences: readonly string[];
  /** `exp`, epoch seconds. */
  readonly exp: number;
  /** base64url SHA-256 of the token: the cache key, and DPoP's `ath`. */
  readonly hash: string;
  /** `cnf.jkt`: the token is bound to this DPoP key (RFC 9449). */
  readonly jkt: string | undefined;
  /** `cnf.x5t#S256`: the token is bound to this client certificate (RFC 8705). */
  readonly x5t: string | undefined;
  /** The raw token, for token exchange; never logged, never sent upstream as is. */
  readonly token: string;
}

export interface VerifierOptions {
  readonly issuer: string;
  /** Every audience accepted for some server; which server a token may reach is checked per route. */
  readonly audiences: readonly string[];
  readonly algorithms: readonly string[];
  readonly clockSkewMs: number;
  readonly maxLifetimeMs: number;
  readonly requiredClaims: readonly string[];
  readonly tenantClaim: string;
  readonly defaultTenant: string | undefined;
  readonly maxTokenBytes: number;
  readonly cacheMaxEntries: number;
  readonly keys: KeySource | undefined;
  readonly hmacSecret: string | undefined;
  /** Told whether each check was a cache hit, for metrics. */
  readonly onVerify?: (hit: boolean) => void;
}

/** Claims every token must carry, whatever the configuration adds. */
const ALWAYS_REQUIRED = ['iss', 'aud', 'exp', 'iat', 'sub'];
/** A JWS in compact form: three base64url segments. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function tokenHash(token: string): string {
  // One-shot hash: half the cost of createHash() on the hot path.
  return hash('sha256', token, 'base64url');
}

function invalid(code: ErrorCode, reason: string, detail = reason): GatewayError {
  return new GatewayError(code, detail, { reason });
}

/** The jose failure as the gateway's error, with a `reason` for logs and tests. */
function fromJose(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  if (err instanceof KeysUnavailableError) {
    return new GatewayError('PORTCULLIS_ERR_AUTH_KEYS_UNAVAILABLE', undefined, { reason: 'jwks' });
  }
  if (err instanceof joseErrors.JWTExpired) {
    return err.claim === 'exp'
      ? invalid('PORTCULLIS_ERR_AUTH_TOKEN_EXPIRED', 'exp', 'expired')
      : invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', err.claim, err.message);
  }
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') {
      return invalid(
        'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
        'missing_claim',
        `missing "${err.claim}"`,
      );
    }
    if (err.claim === 'aud') {
      return invalid('PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE', 'aud', 'audience not accepted');
    }
    if (err.claim === 'iss')
      return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'iss', 'wrong issuer');
    if (err.claim === 'nbf') {
      return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'nbf', 'not valid yet (nbf)');
    }
    return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', err.claim, err.message);
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed || err instanceof joseErrors.JOSENotSupported) {
    return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'alg', 'algorithm not allowed');
  }
  if (err instanceof joseErrors.JWKSNoMatchingKey) {
    return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'kid', 'signed with an unknown key');
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
    return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'signature', 'bad signature');
  }
  return invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'malformed', 'malformed token');
}

function scopesOf(payload: JWTPayload): string[] {
  const scope = payload.scope ?? payload.scp;
  if (typeof scope === 'string') return scope.split(' ').filter((s) => s !== '');
  if (Array.isArray(scope)) return scope.filter((s): s is string => typeof s === 'string');
  return [];
}

function stringClaim(payload: JWTPayload, name: string): string | undefined {
  const v = payload[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

export class TokenVerifier {
  private readonly cache = new Map<string, VerifiedToken>();
  private readonly lastOnConnection = new WeakMap<object, VerifiedToken>();
  private readonly hmacKey: Uint8Array | undefined;
  private readonly verifyOptions: Parameters<typeof jwtVerify>[2];

  constructor(private readonly options: VerifierOptions) {
    this.hmacKey =
      options.hmacSecret === undefined ? undefined : new TextEncoder().encode(options.hmacSecret);
    this.verifyOptions = {
      algorithms: [...options.algorithms],
      issuer: options.issuer,
      audience: [...options.audiences],
      clockTolerance: Math.floor(options.clockSkewMs / 1000),
      requiredClaims: [...new Set([...ALWAYS_REQUIRED, ...options.requiredClaims])],
    };
  }

  /** Tokens remembered right now (for tests and metrics). */
  get cached(): number {
    return this.cache.size;
  }

  /**
   * Verifies `token`: synchronously from the cache for a token seen before,
   * otherwise asynchronously. Rejects (or throws) a GatewayError.
   *
   * `connection` (the client's socket) makes the common case cheaper still:
   * an agent sends the same token on a keep-alive connection request after
   * request, so the token last verified on that connection is compared as a
   * string before anything is hashed.
   */
  verify(token: string, connection?: object): VerifiedToken | Promise<VerifiedToken> {
    const memo = connection !== undefined && this.options.cacheMaxEntries > 0;
    if (memo) {
      const last = this.lastOnConnection.get(connection);
      if (last !== undefined && last.token === token && this.fresh(last)) {
        this.options.onVerify?.(true);
        return last;
      }
    }
    if (token.length > this.options.maxTokenBytes) {
      throw invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'too_large', 'token too large');
    }
    const hash = tokenHash(token);
    const hit = this.cache.get(hash);
    if (hit !== undefined) {
      if (this.fresh(hit)) {
        this.options.onVerify?.(true);
        if (memo) this.lastOnConnection.set(connection, hit);
        return hit;
      }
      this.cache.delete(hash);
    }
    this.options.onVerify?.(false);
    const verified = this.verifySlow(token, hash);
    if (memo) {
      return verified.then((v) => {
        this.lastOnConnection.set(connection, v);
        return v;
      });
    }
    return verified;
  }

  /** Not expired, with the clock skew. */
  private fresh(v: VerifiedToken): boolean {
    return (v.exp + this.options.clockSkewMs / 1000) * 1000 > Date.now();
  }

  private async verifySlow(token: string, hash: string): Promise<VerifiedToken> {
    if (!COMPACT_JWS.test(token)) {
      throw invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'malformed', 'not a JWS');
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.getKey, this.verifyOptions));
    } catch (err) {
      throw fromJose(err);
    }
    const verified = this.check(payload, token, hash);
    this.remember(hash, verified);
    return verified;
  }

  private readonly getKey = (
    header: Parameters<KeySource['lookup']>[0],
    token: Parameters<KeySource['lookup']>[1],
  ): Promise<CryptoKey | Uint8Array> | Uint8Array => {
    if (header.alg?.startsWith('HS')) {
      // Reached only when an HS* algorithm is allowed, which needs the secret.
      if (this.hmacKey === undefined) throw new joseErrors.JOSEAlgNotAllowed('HMAC not configured');
      return this.hmacKey;
    }
    if (this.options.keys === undefined) {
      throw new joseErrors.JOSEAlgNotAllowed('only HMAC keys are configured');
    }
    return this.options.keys.lookup(header, token);
  };

  /** The checks jose does not make: lifetime, iat in the future, subject, tenant. */
  private check(payload: JWTPayload, token: string, hash: string): VerifiedToken {
    const now = Date.now() / 1000;
    const skew = this.options.clockSkewMs / 1000;
    const iat = payload.iat as number;
    const exp = payload.exp as number;
    if (iat > now + skew) {
      throw invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'iat', 'issued in the future (iat)');
    }
    if (exp - iat > this.options.maxLifetimeMs / 1000) {
      throw invalid(
        'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
        'lifetime',
        `lifetime ${Math.round(exp - iat)} s is longer than the ${this.options.maxLifetimeMs / 1000} s allowed`,
      );
    }
    const subject = stringClaim(payload, 'sub');
    if (subject === undefined) {
      throw invalid('PORTCULLIS_ERR_AUTH_INVALID_TOKEN', 'missing_claim', 'missing "sub"');
    }
    const tenant = stringClaim(payload, this.options.tenantClaim) ?? this.options.defaultTenant;
    if (tenant === undefined) {
      throw invalid(
        'PORTCULLIS_ERR_AUTH_INVALID_TOKEN',
        'missing_claim',
        `missing tenant claim "${this.options.tenantClaim}"`,
      );
    }
    const cnf = payload.cnf as Record<string, unknown> | undefined;
    const clientId = stringClaim(payload, 'client_id') ?? stringClaim(payload, 'azp');
    const principal: Principal = Object.freeze({
      tenant,
      subject,
      scopes: Object.freeze(scopesOf(payload)),
      ...(clientId === undefined ? {} : { clientId }),
    });
    return Object.freeze({
      principal,
      tokenId: stringClaim(payload, 'jti'),
      issuer: payload.iss as string,
      audiences: Object.freeze(
        typeof payload.aud === 'string' ? [payload.aud] : [...(payload.aud ?? [])],
      ),
      exp,
      hash,
      jkt: typeof cnf?.jkt === 'string' ? cnf.jkt : undefined,
      x5t: typeof cnf?.['x5t#S256'] === 'string' ? (cnf['x5t#S256'] as string) : undefined,
      token,
    });
  }

  private remember(hash: string, verified: VerifiedToken): void {
    const max = this.options.cacheMaxEntries;
    if (max === 0) return;
    if (this.cache.size >= max) {
      // Oldest first: Map iteration follows insertion order.
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
    this.cache.set(hash, verified);
  }
}
