/**
 * The local development identity: a signing key the CLI generates once under
 * `.portcullis/`, which `start --demo` trusts as the token issuer
 * `portcullis-dev` and `token mint` signs with. It exists so a single
 * developer gets real JWT authentication with no authorization server; it is
 * not for production (anyone who can read the key can mint tokens).
 */
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  generateSigningKey,
  publicPart,
  SigningKeys,
  type SigningAlgorithm,
} from '../auth/keys.js';

export const DEV_DIR = '.portcullis';
export const DEV_KEYS_FILE = join(DEV_DIR, 'dev-signing-keys.json');
export const DEV_ISSUER = 'portcullis-dev';
export const DEV_SUBJECT = 'dev';
export const DEV_TENANT = 'local';
/** What `token mint` names as audience when none is given: the default listener. */
export const DEV_AUDIENCE = 'http://127.0.0.1:8080';

/** Where the public half of a private JWKS file is written. */
export function publicKeysFile(privateFile: string): string {
  return privateFile.endsWith('.json')
    ? `${privateFile.slice(0, -'.json'.length)}.pub.json`
    : `${privateFile}.pub.json`;
}

/**
 * Writes a private JWKS (owner-only) and its public half beside it. With
 * `add`, the new key is appended to an existing file instead of refusing.
 */
export async function writeKeys(
  file: string,
  alg: SigningAlgorithm,
  options: { kid?: string; add?: boolean } = {},
): Promise<{ kid: string; publicFile: string }> {
  let existing: unknown[] = [];
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { keys?: unknown[] };
    if (!options.add) throw new Error(`${file} exists; pass --add to add a key to it`);
    existing = Array.isArray(doc.keys) ? doc.keys : [];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = await generateSigningKey(alg, options.kid);
  const keys = [...existing, key] as Parameters<typeof publicPart>[0][];
  await writeFile(file, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  const publicFile = publicKeysFile(file);
  await writeFile(publicFile, `${JSON.stringify({ keys: keys.map(publicPart) }, null, 2)}\n`);
  return { kid: key.kid as string, publicFile };
}

/** The dev keys, created on first use. */
export async function ensureDevKeys(): Promise<{
  keysFile: string;
  publicFile: string;
  created: boolean;
}> {
  try {
    await readFile(DEV_KEYS_FILE);
    return { keysFile: DEV_KEYS_FILE, publicFile: publicKeysFile(DEV_KEYS_FILE), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(DEV_DIR, { recursive: true, mode: 0o700 });
  const { publicFile } = await writeKeys(DEV_KEYS_FILE, 'ES256', { kid: 'portcullis-dev' });
  return { keysFile: DEV_KEYS_FILE, publicFile, created: true };
}

export interface MintRequest {
  readonly keysFile: string;
  readonly issuer: string;
  readonly audience: string;
  readonly subject: string;
  readonly tenant: string;
  readonly scope: string;
  readonly ttlS: number;
  readonly clientId?: string;
}

/** A short-lived access token signed with a local key (for development and tests). */
export async function mintToken(req: MintRequest): Promise<string> {
  const keys = await SigningKeys.load(req.keysFile);
  const now = Math.floor(Date.now() / 1000);
  return keys.sign({
    iss: req.issuer,
    sub: req.subject,
    aud: req.audience,
    iat: now,
    exp: now + req.ttlS,
    jti: randomUUID(),
    tenant: req.tenant,
    ...(req.scope === '' ? {} : { scope: req.scope }),
    client_id: req.clientId ?? 'portcullis-cli',
  });
}

/** "90", "90s", "10m", "1h" → seconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+)\s*(s|m|h)?$/.exec(text.trim());
  if (m?.[1] === undefined) return undefined;
  const n = Number(m[1]);
  return m[2] === 'h' ? n * 3600 : m[2] === 'm' ? n * 60 : n;
}
