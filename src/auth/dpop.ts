/**
 * DPoP proofs (RFC 9449 §4.3): a token bound to a key (`cnf.jkt`) is only
 * good together with a fresh proof, signed by that key, for this very request
 * (method and URL), for this very token (`ath`), and never seen before (its
 * `jti` is claimed once in the shared store, across replicas).
 */
import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify, type JWK } from 'jose';
import { GatewayError } from '../errors/index.js';

export interface DpopOptions {
  readonly algorithms: readonly string[];
  readonly maxAgeMs: number;
  readonly clockSkewMs: number;
}

export interface DpopRequest {
  /** The DPoP header, if any. */
  readonly proof: string | undefined;
  readonly method: string;
  /** The request URL as the client addressed it, without query or fragment. */
  readonly url: string;
  /** base64url SHA-256 of the access token. */
  readonly tokenHash: string;
  /** The token's `cnf.jkt`. */
  readonly jkt: string;
}

/** Claims `key` for `ttlMs`; resolves false if it was claimed before (a replay). */
export type ClaimOnce = (key: string, ttlMs: number) => Promise<boolean>;

function refuse(reason: string, detail: string): GatewayError {
  return new GatewayError('PORTCULLIS_ERR_AUTH_DPOP_INVALID', detail, { reason });
}

/** Scheme, host and port as a URL parser normalises them, plus the path: how `htu` is compared. */
export function normaliseHtu(url: string): string | undefined {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return undefined;
  }
}

/**
 * Checks the proof of one request; resolves when it is good, rejects with
 * `PORTCULLIS_ERR_AUTH_DPOP_INVALID` (and a `reason`) otherwise. A store that
 * cannot answer rejects with its own error: the caller fails closed.
 */
export async function verifyDpopProof(
  req: DpopRequest,
  options: DpopOptions,
  claimOnce: ClaimOnce,
): Promise<void> {
  if (req.proof === undefined || req.proof === '') {
    throw refuse('missing', 'the token is DPoP-bound and the request has no DPoP proof');
  }
  let payload: Record<string, unknown>;
  let jwk: JWK | undefined;
  try {
    const result = await jwtVerify(req.proof, EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: [...options.algorithms],
    });
    payload = result.payload;
    jwk = result.protectedHeader.jwk;
  } catch (err) {
    throw refuse('proof', `proof does not verify (${(err as Error).message})`);
  }
  if (jwk === undefined) throw refuse('proof', 'proof carries no jwk');
  if (typeof payload.jti !== 'string' || payload.jti === '')
    throw refuse('jti', 'proof has no jti');
  if (payload.htm !== req.method) throw refuse('htm', 'proof is for another HTTP method');
  const htu = typeof payload.htu === 'string' ? normaliseHtu(payload.htu) : undefined;
  if (htu === undefined || htu !== normaliseHtu(req.url)) {
    throw refuse('htu', 'proof is for another URL');
  }
  const now = Date.now() / 1000;
  const skew = options.clockSkewMs / 1000;
  if (typeof payload.iat !== 'number') throw refuse('iat', 'proof has no iat');
  if (payload.iat > now + skew) throw refuse('iat', 'proof is issued in the future');
  if (payload.iat < now - options.maxAgeMs / 1000 - skew) throw refuse('iat', 'proof is too old');
  if (payload.ath !== req.tokenHash) throw refuse('ath', 'proof is for another access token');
  if ((await calculateJwkThumbprint(jwk, 'sha256')) !== req.jkt) {
    throw refuse('jkt', 'proof is signed by another key than the token is bound to');
  }
  // Remember the proof as long as it could be accepted, so it is accepted once.
  const ttlMs = options.maxAgeMs + 2 * options.clockSkewMs;
  if (!(await claimOnce(`dpop:${req.jkt}:${payload.jti}`, ttlMs))) {
    throw refuse('replay', 'proof was already used');
  }
}
