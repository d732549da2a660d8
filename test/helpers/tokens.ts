/**
 * A test issuer: real keys (jose), a JWKS written to a file or served over
 * HTTP, and tokens signed with them. Tokens a real authorization server would
 * never issue (expired, `alg: none`, HMAC with a public key…) are made here on
 * purpose, to prove the gateway refuses them; tests of the happy path use a
 * real authorization server (oidc-provider) as well.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  base64url,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from 'jose';

export const ISSUER = 'https://issuer.test';

export interface SigningKey {
  readonly kid: string;
  readonly alg: 'ES256' | 'EdDSA' | 'RS256';
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  readonly publicJwk: JWK;
}

export async function newKey(alg: SigningKey['alg'], kid = `${alg}-key`): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, publicJwk };
}

export function jwks(...keys: SigningKey[]): { keys: JWK[] } {
  return { keys: keys.map((k) => k.publicJwk) };
}

export async function writeJwks(dir: string, ...keys: SigningKey[]): Promise<string> {
  const file = join(dir, 'issuer.jwks.json');
  await writeFile(file, JSON.stringify(jwks(...keys)));
  return file;
}

export function spkiPem(key: SigningKey): Promise<string> {
  return exportSPKI(key.publicKey);
}

export interface TokenOptions {
  readonly claims?: JWTPayload;
  /** Seconds from now; default 300. */
  readonly ttlS?: number;
  /** iat offset from now, seconds (negative = in the past). */
  readonly iatOffsetS?: number;
  readonly header?: Record<string, unknown>;
  readonly omit?: readonly string[];
}

/** A token as a well-behaved issuer would sign it, adjusted by `options`. */
export async function mint(
  key: SigningKey,
  audience: string,
  options: TokenOptions = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const iat = now + (options.iatOffsetS ?? 0);
  const payload: JWTPayload = {
    iss: ISSUER,
    sub: 'agent-1',
    aud: audience,
    iat,
    exp: iat + (options.ttlS ?? 300),
    jti: `jti-${Math.random().toString(36).slice(2)}`,
    tenant: 'acme',
    scope: 'mcp tools:call',
    client_id: 'agent-app',
    ...options.claims,
  };
  for (const claim of options.omit ?? []) delete payload[claim];
  return new SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt', ...options.header })
    .sign(key.privateKey);
}

/** Base64url JSON, for tokens assembled by hand. */
export function segment(value: unknown): string {
  return base64url.encode(JSON.stringify(value));
}

/** An unsecured JWT (`alg: none`), which no configuration may accept. */
export function unsecuredToken(audience: string): string {
  const now = Math.floor(Date.now() / 1000);
  return `${segment({ alg: 'none', typ: 'JWT' })}.${segment({
    iss: ISSUER,
    sub: 'agent-1',
    aud: audience,
    iat: now,
    exp: now + 300,
    tenant: 'acme',
  })}.`;
}

/** A JWKS endpoint whose behaviour a test switches: the real keys, down (503), slow, or garbage. */
export interface JwksServer {
  readonly url: string;
  mode: 'ok' | 'down' | 'slow' | 'garbage';
  keys: { keys: JWK[] };
  /** GETs served, whatever the mode. */
  fetches: number;
  close(): Promise<void>;
}

export async function startJwksServer(keys: { keys: JWK[] }): Promise<JwksServer> {
  const state = { mode: 'ok' as JwksServer['mode'], keys, fetches: 0 };
  const server: Server = createServer((req, res) => {
    state.fetches++;
    switch (state.mode) {
      case 'ok':
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(state.keys));
        return;
      case 'down':
        res.writeHead(503).end();
        return;
      case 'garbage':
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"keys": "not a list"');
        return;
      case 'slow':
        // Never answers; the gateway's timeout must cut it.
        req.socket.setTimeout(0);
        return;
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}/jwks`,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}
