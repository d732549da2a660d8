/**
 * The token issuer's public keys: a JWKS fetched from a URL and cached, or
 * read once from a local JWKS or PEM file. The rules for a remote JWKS, in
 * order of precedence:
 * 1. A fetch that fails, times out or returns garbage never replaces the
 *    cached keys: an issuer outage does not lock out tokens signed with keys
 *    the gateway already has.
 * 2. A token naming a key that is not cached triggers a refetch, at most
 *    once per cooldown, so forged `kid`s cannot make the gateway hammer the
 *    issuer; verification waits for that fetch (bounded by its timeout).
 * 3. Keys are refetched in the background, so rotated keys are known before
 *    tokens use them, and the hot path never waits on the network.
 */
import { createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'undici';
import {
  createLocalJWKSet,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters,
  type CryptoKey,
  type FlattenedJWSInput,
} from 'jose';
import { readBounded } from '../upstream/bounded-read.js';

/** Largest JWKS document accepted. */
const MAX_JWKS_BYTES = 512 * 1024;

type KeyLookup = (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>;

/** Where verification gets keys from; `lookup` throws jose's own errors. */
export interface KeySource {
  /** True once a key set is loaded. */
  readonly ready: boolean;
  /** Not ready yet: try loading again now, unless a fetch was tried within the cooldown. */
  retry(): void;
  lookup: KeyLookup;
  close(): void;
}

/** No key set could be loaded at all: nothing to verify with (503, not the client's fault). */
export class KeysUnavailableError extends Error {
  constructor(detail: string) {
    super(`no signing keys of the issuer are available: ${detail}`);
    this.name = 'KeysUnavailableError';
  }
}

export interface RemoteJwksOptions {
  readonly url: string;
  readonly timeoutMs: number;
  readonly cooldownMs: number;
  readonly refreshIntervalMs: number;
  /** Told about every fetch, for logs and metrics. */
  readonly onFetch?: (result: 'ok' | 'error', detail: { keys?: number; error?: string }) => void;
}

function parseJwks(text: string): JSONWebKeySet {
  const doc = JSON.parse(text) as { keys?: unknown };
  if (doc === null || typeof doc !== 'object' || !Array.isArray(doc.keys)) {
    throw new Error('not a JWKS (no "keys" array)');
  }
  const keys = (doc.keys as unknown[]).filter(
    (k): k is JWK => k !== null && typeof k === 'object' && typeof (k as JWK).kty === 'string',
  );
  if (keys.length === 0) throw new Error('JWKS holds no usable key');
  // Private parts are never needed to verify; a JWKS that carries them is a misconfiguration.
  if (keys.some((k) => 'd' in k)) throw new Error('JWKS holds a private key');
  return { keys };
}

export class RemoteJwks implements KeySource {
  private keys: ReturnType<typeof createLocalJWKSet> | undefined;
  private inFlight: Promise<void> | undefined;
  private lastAttemptAt = 0;
  private lastError = 'not fetched yet';
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(private readonly options: RemoteJwksOptions) {
    if (options.refreshIntervalMs > 0) {
      this.timer = setInterval(() => void this.refresh(), options.refreshIntervalMs);
      this.timer.unref();
    }
  }

  get ready(): boolean {
    return this.keys !== undefined;
  }

  retry(): void {
    if (this.keys === undefined && !this.coolingDown()) void this.refresh();
  }

  /** The first fetch; resolves whether or not it worked (verification then retries on demand). */
  start(): Promise<void> {
    return this.refresh();
  }

  readonly lookup: KeyLookup = async (header, token) => {
    if (this.keys === undefined) {
      if (this.coolingDown()) throw new KeysUnavailableError(this.lastError);
      await this.refresh();
      if (this.keys === undefined) throw new KeysUnavailableError(this.lastError);
    }
    try {
      return await this.keys(header, token);
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey) || this.coolingDown()) throw err;
      await this.refresh();
      return this.keys(header, token);
    }
  };

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private coolingDown(): boolean {
    return Date.now() - this.lastAttemptAt < this.options.cooldownMs;
  }

  private refresh(): Promise<void> {
    this.inFlight ??= this.fetchOnce().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async fetchOnce(): Promise<void> {
    this.lastAttemptAt = Date.now();
    const { timeoutMs, url, onFetch } = this.options;
    try {
      const res = await request(url, {
        method: 'GET',
        headers: { accept: 'application/jwk-set+json, application/json' },
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw new Error(`HTTP ${res.statusCode}`);
      }
      const jwks = parseJwks(await readBounded(res.body, MAX_JWKS_BYTES));
      this.keys = createLocalJWKSet(jwks);
      onFetch?.('ok', { keys: jwks.keys.length });
    } catch (err) {
      this.lastError = `${url}: ${(err as Error).message}`;
      onFetch?.('error', { error: this.lastError });
    }
  }
}

/**
 * Keys read once from a JWKS (JSON) or PEM file of public keys. PEM keys have
 * no `kid`, so tokens are matched to them by key type alone, whatever `kid`
 * they name: a PEM file should hold one key per type (a JWKS with `kid`s
 * serves several keys of one type).
 */
export class FileJwks implements KeySource {
  private constructor(
    private readonly keys: ReturnType<typeof createLocalJWKSet>,
    private readonly ignoreKid: boolean,
  ) {}

  static async load(file: string): Promise<FileJwks> {
    const text = await readFile(file, 'utf8');
    let jwks: JSONWebKeySet;
    if (text.includes('-----BEGIN')) {
      const blocks = text.match(/-----BEGIN [^-]+-----[\s\S]+?-----END [^-]+-----/g) ?? [];
      const keys = blocks.map((pem) => createPublicKey(pem).export({ format: 'jwk' }) as JWK);
      if (keys.length === 0) throw new Error(`${file}: no PEM key found`);
      jwks = { keys };
    } else {
      try {
        jwks = parseJwks(text);
      } catch (err) {
        throw new Error(`${file}: ${(err as Error).message}`);
      }
    }
    return new FileJwks(createLocalJWKSet(jwks), text.includes('-----BEGIN'));
  }

  get ready(): boolean {
    return true;
  }

  retry(): void {}

  readonly lookup: KeyLookup = (header, token) =>
    this.keys(this.ignoreKid ? { ...header, kid: undefined } : header, token);

  close(): void {}
}
