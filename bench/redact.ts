// What response redaction costs per call, in process, no sockets: `redactResult` on a tool
// result with one text item of 1, 16 and 256 KiB, cut from the benign corpus
// (test/fixtures/benign-corpus.ts, samples cycled: code, logs, hashes, base64 images, URLs,
// prose, API JSON), first as it is and then with three secrets from the secret corpus put in
// (a GitHub token, a database URL, a JWT). Each call is timed alone with process.hrtime.bigint
// after a warm-up; every sample is kept and the percentiles are exact. Also `redactText` on
// the same benign texts, on 256 KiB of text holding no keyword (the floor: the keyword pass
// alone), and a stream fed the 256 KiB text with secrets in 4 KiB pieces.
// Prints a markdown table. Nothing here is asserted by the tests.
//
// Usage: npm run bench:redact [-- --scale 1]   (scale multiplies the iterations); its output is
// bench/RESULTS-redact.md
import os from 'node:os';
import { parseArgs } from 'node:util';
import { compileRedactor } from '../src/policy/redact/index.js';
import { ALL_BENIGN } from '../test/fixtures/benign-corpus.js';
import { SECRETS } from '../test/fixtures/secret-corpus.js';

const { values: flags } = parseArgs({ options: { scale: { type: 'string', default: '1' } } });
const SCALE = Number(flags.scale);
const KIB = 1024;
const SIZES_KIB = [1, 16, 256];
/** Calls timed per size: about the same total time at each size. */
const CALLS: Record<number, number> = { 1: 20_000, 16: 2_000, 256: 200 };
const WARMUP_SHARE = 0.1;
const STREAM_CHUNK_CHARS = 4 * KIB;

const redactor = compileRedactor();

/** A string as JSON.parse gives it (flat, not a tree of concatenations), as a result's are. */
const flat = (s: string): string => JSON.parse(JSON.stringify(s)) as string;

/** `chars` of benign text: the corpus samples, cycled, cut at the size. */
function benignText(chars: number): string {
  let out = '';
  for (let i = 0; out.length < chars; i++)
    out += (ALL_BENIGN[i % ALL_BENIGN.length] as string) + '\n';
  return flat(out.slice(0, chars));
}

/** The same text with three secrets at a quarter, a half and three quarters. */
function withSecrets(text: string): string {
  const secrets = [
    SECRETS.github?.[0]?.sample,
    SECRETS.databaseUrls?.[0]?.sample,
    SECRETS.jwt?.[0]?.sample,
  ] as string[];
  let out = text;
  secrets.forEach((s, i) => {
    const at = Math.floor(((i + 1) * out.length) / 4);
    out = `${out.slice(0, at)} ${s} ${out.slice(at)}`;
  });
  return flat(out);
}

const result = (text: string): unknown => ({ content: [{ type: 'text', text }], isError: false });

function time(calls: number, run: () => unknown): Float64Array {
  const n = Math.max(10, Math.round(calls * SCALE));
  for (let i = 0; i < Math.ceil(n * WARMUP_SHARE); i++) run();
  const samplesUs = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const start = process.hrtime.bigint();
    run();
    samplesUs[i] = Number(process.hrtime.bigint() - start) / 1e3;
  }
  return samplesUs.sort();
}

const pct = (s: Float64Array, p: number): number =>
  s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;

const rows: string[][] = [];
const f = (n: number): string => (n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0));
function line(what: string, kib: number, samples: Float64Array, findings: number): void {
  rows.push([
    what,
    String(kib),
    String(findings),
    f(pct(samples, 50)),
    f(pct(samples, 99)),
    f(pct(samples, 50) / kib),
  ]);
}

for (const kib of SIZES_KIB) {
  const calls = CALLS[kib] as number;
  const benign = benignText(kib * KIB);
  const secret = withSecrets(benign);
  const benignResult = result(benign);
  const secretResult = result(secret);
  line(
    'redactResult, benign',
    kib,
    time(calls, () => redactor.redactResult(benignResult)),
    0,
  );
  const found = redactor.redactResult(secretResult)?.findings.length ?? 0;
  line(
    'redactResult, 3 secrets',
    kib,
    time(calls, () => redactor.redactResult(secretResult)),
    found,
  );
  line(
    'redactText, benign',
    kib,
    time(calls, () => redactor.redactText(benign)),
    0,
  );
  if (kib === SIZES_KIB[SIZES_KIB.length - 1]) {
    const plain = flat(
      'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. '
        .repeat(Math.ceil((kib * KIB) / 80))
        .slice(0, kib * KIB),
    );
    line(
      'redactText, no keyword',
      kib,
      time(calls, () => redactor.redactText(plain)),
      0,
    );
    const feed = (): string => {
      const s = redactor.stream();
      let out = '';
      for (let i = 0; i < secret.length; i += STREAM_CHUNK_CHARS)
        out += s.push(secret.slice(i, i + STREAM_CHUNK_CHARS));
      return out + s.end();
    };
    line(`stream, 4 KiB pieces, 3 secrets`, kib, time(calls, feed), found);
  }
}

const header = ['call', 'KiB', 'findings', 'p50 µs', 'p99 µs', 'p50 µs/KiB'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
const row = (cells: string[]): string =>
  `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
console.log(`# Response redaction: cost per call

Command: \`node --import tsx bench/redact.ts --scale ${SCALE}\`, ${new Date().toISOString().slice(0, 10)}.
Machine: ${os.cpus().length} × ${cpu}, Node ${process.version}. Compile (\`compileRedactor()\`) is
not timed here; calls per size: ${SIZES_KIB.map((k) => `${k} KiB × ${Math.round((CALLS[k] as number) * SCALE)}`).join(', ')}.

${[row(header), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.map(row)].join('\n')}
`);
