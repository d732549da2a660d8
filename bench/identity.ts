// What authentication costs per request, measured on the gateway's own verifier
// (src/auth/jwt.ts) with real keys:
//   - a cache miss: a token never seen, verified by jose (signature, claims), for ES256,
//     EdDSA and RS256;
//   - a cache hit: a token seen before: one SHA-256 and one map lookup;
//   - JWKS fetches from the issuer while tokens are verified: 1 at start-up, 0 on the
//     request path (counted on a local JWKS server, for misses with a known key and hits).
// Writes bench/RESULTS-identity.md (or --out FILE).
//
// Usage: npm run bench:identity [-- --misses 2000 --hits 200000]
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { RemoteJwks } from '../src/auth/jwks.js';
import { TokenVerifier, type VerifierOptions } from '../src/auth/jwt.js';

const ALGORITHMS = ['ES256', 'EdDSA', 'RS256'] as const;
const AUDIENCE = 'http://127.0.0.1:8080';
const ISSUER = 'https://issuer.bench';

const { values: flags } = parseArgs({
  options: {
    misses: { type: 'string', default: '2000' },
    hits: { type: 'string', default: '200000' },
    out: { type: 'string' },
  },
});
const MISSES = Number(flags.misses);
const HITS = Number(flags.hits);
const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outFile = flags.out ?? path.join(repoDir, 'bench/RESULTS-identity.md');

interface Key {
  readonly alg: (typeof ALGORITHMS)[number];
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly jwk: JWK;
}

async function newKey(alg: Key['alg']): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const kid = `${alg}-bench`;
  return { alg, kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg } };
}

function sign(key: Key, i: number): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: ISSUER,
    sub: `agent-${i}`,
    aud: AUDIENCE,
    iat: now,
    exp: now + 600,
    jti: `bench-${i}`,
    tenant: 'bench',
    scope: 'mcp tools:call',
  })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt' })
    .sign(key.privateKey);
}

function verifierOptions(keys: VerifierOptions['keys']): VerifierOptions {
  return {
    issuer: ISSUER,
    audiences: [AUDIENCE],
    algorithms: [...ALGORITHMS],
    clockSkewMs: 30_000,
    maxLifetimeMs: 900_000,
    requiredClaims: [],
    tenantClaim: 'tenant',
    defaultTenant: undefined,
    maxTokenBytes: 8192,
    cacheMaxEntries: MISSES + 10,
    keys,
    hmacSecret: undefined,
  };
}

/** A JWKS endpoint that counts the fetches it serves. */
async function jwksServer(jwks: { keys: JWK[] }) {
  let fetches = 0;
  const server = createServer((_req, res) => {
    fetches++;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`,
    fetches: () => fetches,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

interface Row {
  alg: string;
  missUs: number;
  missPerS: number;
  hitNs: number;
  hitPerS: number;
  fetchesAtStart: number;
  fetchesOnRequests: number;
}

async function measure(key: Key): Promise<Row> {
  const server = await jwksServer({ keys: [key.jwk] });
  const jwks = new RemoteJwks({
    url: server.url,
    timeoutMs: 3000,
    cooldownMs: 30_000,
    refreshIntervalMs: 0,
  });
  await jwks.start();
  const fetchesAtStart = server.fetches();
  const verifier = new TokenVerifier(verifierOptions(jwks));
  const tokens = await Promise.all(Array.from({ length: MISSES }, (_, i) => sign(key, i)));

  // Warm-up: JIT and key import, outside the measurement.
  for (const t of tokens.slice(0, 50)) await verifier.verify(t);

  const missStart = process.hrtime.bigint();
  for (const t of tokens.slice(50)) await verifier.verify(t);
  const missNs = Number(process.hrtime.bigint() - missStart) / (MISSES - 50);

  const hot = tokens[0] as string;
  for (let i = 0; i < 10_000; i++) verifier.verify(hot);
  const hitStart = process.hrtime.bigint();
  for (let i = 0; i < HITS; i++) {
    const r = verifier.verify(hot);
    if (r instanceof Promise) throw new Error('a cache hit must not be asynchronous');
  }
  const hitNs = Number(process.hrtime.bigint() - hitStart) / HITS;
  const fetchesOnRequests = server.fetches() - fetchesAtStart;
  jwks.close();
  await server.close();
  return {
    alg: key.alg,
    missUs: missNs / 1000,
    missPerS: 1e9 / missNs,
    hitNs,
    hitPerS: 1e9 / hitNs,
    fetchesAtStart,
    fetchesOnRequests,
  };
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

const rows: Row[] = [];
for (const alg of ALGORITHMS) {
  rows.push(await measure(await newKey(alg)));
  console.error(`[bench identity] ${alg} done`);
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const lines = [
  '# Identity benchmark: token verification',
  '',
  `Written by \`bench/identity.ts\` on ${new Date().toISOString()}. One process, one run.`,
  '',
  '```sh',
  `npm run bench:identity -- --misses ${MISSES} --hits ${HITS}`,
  '```',
  '',
  `Machine: ${os.cpus().length} CPUs (${os.cpus()[0]?.model.trim() ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, Node ${process.version}, jose ${sh('node', ['-p', "require('jose/package.json').version"])}; git ${sh('git', ['-C', repoDir, 'log', '-1', '--format=%h'])}.`,
  '',
  `A miss is a token never seen: the full check (signature with the issuer's key from the cached JWKS, then every claim), ${MISSES - 50} distinct tokens after 50 for warm-up. A hit is a token seen before: its SHA-256 and a map lookup, synchronously, ${HITS} times. JWKS fetches are counted on the JWKS server: once at start-up, then during all those verifications.`,
  '',
  '| alg | miss µs/token | misses/s | hit ns/token | hits/s | hit / miss cost | JWKS fetches at start | JWKS fetches while verifying |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map(
    (r) =>
      `| ${r.alg} | ${fmt(r.missUs, 1)} | ${fmt(r.missPerS)} | ${fmt(r.hitNs)} | ${fmt(r.hitPerS)} | ${fmt((r.hitNs / (r.missUs * 1000)) * 100, 2)}% | ${r.fetchesAtStart} | ${r.fetchesOnRequests} |`,
  ),
  '',
  'The cost in the whole pipeline: instructions per request below (`npm run bench:instructions`, appended to this file), and throughput in [RESULTS.md](RESULTS.md) (target `portcullis (JWT)` against `portcullis`).',
  '',
];
writeFileSync(outFile, lines.join('\n'));
console.error(`[bench identity] wrote ${path.relative(repoDir, outFile)}`);
