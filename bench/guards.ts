// What the argument guards cost per call, in process, no sockets: each compiled guard
// (src/policy/guards/) called as the policy calls it, on the project's corpus
// (test/fixtures/attack-corpus.ts), each call timed alone with process.hrtime.bigint after a
// warm-up. Every sample is kept; percentiles are exact.
//   - sql (PostgreSQL, libpg-query): the benign queries (joins, aggregates, CTEs, window
//     functions) and, apart, the attack corpus (refused, mostly early);
//   - sql (MySQL, node-sql-parser): the same benign queries where MySQL reads them;
//   - shell, path (without resolving symlinks), size, pattern: their benign corpora;
//   - libpg-query's load time: `loadModule()` in a fresh process (import excluded, then
//     included), the median of --loads runs.
// Writes bench/RESULTS-guards.md (or --out FILE). Nothing here is asserted by the tests.
//
// Usage: npm run bench:guards [-- --iterations 20000 --loads 7]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { compilePathGuard } from '../src/policy/guards/path.js';
import { compilePatternGuard } from '../src/policy/guards/pattern.js';
import { compileShellGuard } from '../src/policy/guards/shell.js';
import { compileSizeGuard } from '../src/policy/guards/size.js';
import { compileSqlGuard, loadSqlParser } from '../src/policy/guards/sql.js';
import type { GuardCheck } from '../src/policy/guards/types.js';
import {
  PATH_BENIGN,
  POSTGRES_ATTACKS,
  POSTGRES_BENIGN,
  SHELL_BENIGN,
} from '../test/fixtures/attack-corpus.js';

const { values: flags } = parseArgs({
  options: {
    iterations: { type: 'string', default: '20000' },
    loads: { type: 'string', default: '7' },
    out: { type: 'string' },
  },
});
const ITERATIONS = Number(flags.iterations);
const LOADS = Number(flags.loads);
const WARMUP_SHARE = 0.1;

const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outFile = flags.out ?? path.join(repoDir, 'bench/RESULTS-guards.md');

await loadSqlParser();

interface Line {
  readonly name: string;
  readonly inputs: string;
  readonly samplesUs: Float64Array;
}

function time(name: string, inputs: string, check: GuardCheck, values: readonly unknown[]): Line {
  const warm = Math.ceil(ITERATIONS * WARMUP_SHARE);
  for (let i = 0; i < warm; i++) check(values[i % values.length]);
  const samplesUs = new Float64Array(ITERATIONS);
  for (let i = 0; i < ITERATIONS; i++) {
    const v = values[i % values.length];
    const start = process.hrtime.bigint();
    check(v);
    samplesUs[i] = Number(process.hrtime.bigint() - start) / 1e3;
  }
  samplesUs.sort();
  return { name, inputs, samplesUs };
}

const pct = (s: Float64Array, p: number): number =>
  s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;

const mysqlBenign = POSTGRES_BENIGN.filter(
  (q) => compileSqlGuard({ dialect: 'mysql' })(q) === undefined,
);
const lines: Line[] = [
  time(
    'sql (postgresql), benign',
    `${POSTGRES_BENIGN.length} queries`,
    compileSqlGuard({}),
    POSTGRES_BENIGN,
  ),
  time(
    'sql (postgresql), attacks',
    `${POSTGRES_ATTACKS.length} attacks`,
    compileSqlGuard({}),
    POSTGRES_ATTACKS,
  ),
  time(
    'sql (postgresql), with a table list',
    `${POSTGRES_BENIGN.length} queries`,
    compileSqlGuard({ tables: ['users', 'orders', 'big', 'information_schema.tables'] }),
    POSTGRES_BENIGN,
  ),
  time(
    'sql (mysql), benign',
    `${mysqlBenign.length} queries`,
    compileSqlGuard({ dialect: 'mysql' }),
    mysqlBenign,
  ),
  time('shell', `${SHELL_BENIGN.length} command lines`, compileShellGuard({}), SHELL_BENIGN),
  time(
    'path (no symlinks)',
    `${PATH_BENIGN.length} paths`,
    compilePathGuard({ root: '/srv/data' }),
    PATH_BENIGN.map(([p]) => p),
  ),
  time(
    'size (maxBytes)',
    `${POSTGRES_BENIGN.length} strings`,
    compileSizeGuard({ maxBytes: 4096 }),
    POSTGRES_BENIGN,
  ),
  time(
    'pattern (3 deny, RE2)',
    `${POSTGRES_BENIGN.length} strings`,
    compilePatternGuard({
      deny: ['(?i)drop\\s+table', 'pg_[a-z_]+\\(', '\\bunion\\b.*\\bselect\\b'],
    }),
    POSTGRES_BENIGN,
  ),
];

// libpg-query's load, in fresh processes.
const loadScript = `
const t0 = process.hrtime.bigint();
const m = await import('libpg-query');
const t1 = process.hrtime.bigint();
await m.loadModule();
const t2 = process.hrtime.bigint();
console.log(JSON.stringify({ importMs: Number(t1 - t0) / 1e6, loadMs: Number(t2 - t1) / 1e6 }));`;
const loads: Array<{ importMs: number; loadMs: number }> = [];
for (let i = 0; i < LOADS; i++) {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', loadScript], {
    cwd: repoDir,
    encoding: 'utf8',
  });
  loads.push(JSON.parse(out) as { importMs: number; loadMs: number });
}
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
};
const loadMs = median(loads.map((l) => l.loadMs));
const totalMs = median(loads.map((l) => l.importMs + l.loadMs));

const f = (n: number): string => (n < 10 ? n.toFixed(1) : n.toFixed(0));
const rows = lines.map((l) => [
  l.name,
  l.inputs,
  f(pct(l.samplesUs, 50)),
  f(pct(l.samplesUs, 99)),
  f(pct(l.samplesUs, 99.9)),
]);
const header = ['guard', 'inputs (cycled)', 'p50 µs', 'p99 µs', 'p99.9 µs'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
const row = (cells: string[]): string =>
  `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
const table = [
  row(header),
  `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
  ...rows.map(row),
].join('\n');

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const text = `# Guards: cost per call

Command: \`npm run bench:guards -- --iterations ${ITERATIONS} --loads ${LOADS}\`, ${new Date().toISOString().slice(0, 10)}.
Machine: ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}.

Each guard is called in process as the policy calls it, each call timed alone after a
warm-up of ${WARMUP_SHARE * 100}%; ${ITERATIONS} calls per line; the inputs are the project's corpus
(test/fixtures/attack-corpus.ts), cycled.

${table}

libpg-query's load (\`loadModule()\`, WebAssembly instantiation), once per process at start:
median of ${LOADS} fresh processes ${f(loadMs)} ms, ${f(totalMs)} ms with the import.
`;
writeFileSync(outFile, text);
console.log(text);
