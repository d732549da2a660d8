/**
 * The gateway's own signing keys: a private JWKS on disk (written by
 * `portcullis keys generate`), one key active at a time, every key's public
 * half published at /.well-known/jwks.json so upstreams can verify what the
 * gateway mints. Rotation: add a key, let upstreams refetch, switch
 * `activeKid`, remove the old key once its tokens have expired.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  exportJWK,
  generateKeyPair,
  importJWK,
  SignJWT,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from 'jose';

export const SIGNING_ALGORITHMS = ['ES256', 'EdDSA'] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];

/** JWK members that are private key material. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

export function publicPart(jwk: JWK): JWK {
  const out: Record<string, unknown> = { ...jwk };
  for (const m of PRIVATE_MEMBERS) delete out[m];
  return out as JWK;
}

/** A new private signing key as a JWK, with `kid`, `alg` and `use`. */
export async function generateSigningKey(alg: SigningAlgorithm, kid?: string): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(privateKey);
  const date = new Date().toISOString().slice(0, 10);
  return {
    ...jwk,
    kid: kid ?? `${alg.toLowerCase()}-${date}-${randomUUID().slice(0, 8)}`,
    alg,
    use: 'sig',
  };
}

export class SigningKeys {
  private constructor(
    private readonly active: { kid: string; alg: string; key: CryptoKey },
    private readonly published: { keys: JWK[] },
  ) {}

  /** Loads a private JWKS; `activeKid` picks the signing key (default: the first). */
  static async load(file: string, activeKid?: string): Promise<SigningKeys> {
    let doc: { keys?: unknown };
    try {
      doc = JSON.parse(await readFile(file, 'utf8')) as { keys?: unknown };
    } catch (err) {
      throw new Error(`signing keys ${file}: ${(err as Error).message}`);
    }
    const keys = Array.isArray(doc.keys) ? (doc.keys as JWK[]) : [];
    if (keys.length === 0) throw new Error(`signing keys ${file}: no "keys"`);
    for (const k of keys) {
      if (typeof k.kid !== 'string' || typeof k.alg !== 'string' || typeof k.d !== 'string') {
        throw new Error(`signing keys ${file}: every key needs "kid", "alg" and its private part`);
      }
      if (!(SIGNING_ALGORITHMS as readonly string[]).includes(k.alg)) {
        throw new Error(
          `signing keys ${file}: "${k.alg}" is not one of ${SIGNING_ALGORITHMS.join(', ')}`,
        );
      }
    }
    const chosen = activeKid === undefined ? keys[0] : keys.find((k) => k.kid === activeKid);
    if (chosen === undefined)
      throw new Error(`signing keys ${file}: no key with kid "${activeKid}"`);
    const key = (await importJWK(chosen, chosen.alg)) as CryptoKey;
    return new SigningKeys(
      { kid: chosen.kid as string, alg: chosen.alg as string, key },
      { keys: keys.map(publicPart) },
    );
  }

  get kid(): string {
    return this.active.kid;
  }

  /** The public keys, for /.well-known/jwks.json. */
  jwks(): { keys: JWK[] } {
    return this.published;
  }

  /** Signs `claims` as an access token (`typ: at+jwt`, RFC 9068) with the active key. */
  sign(claims: JWTPayload): Promise<string> {
    return new SignJWT(claims)
      .setProtectedHeader({ alg: this.active.alg, kid: this.active.kid, typ: 'at+jwt' })
      .sign(this.active.key);
  }

  /**
   * Signs an audit checkpoint: a JWT of its own type, so it can never be
   * taken for an access token (RFC 8725, section 3.11).
   */
  signCheckpoint(claims: JWTPayload): Promise<string> {
    return new SignJWT(claims)
      .setProtectedHeader({
        alg: this.active.alg,
        kid: this.active.kid,
        typ: 'portcullis-audit-checkpoint+jwt',
      })
      .sign(this.active.key);
  }
}
