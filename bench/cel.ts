// What a CEL policy condition costs (src/policy/cel.ts), and the evidence for the engine choice:
//   1. import and compile time;
//   2. ns per evaluation of a typical rule, through compileCondition and on the bare engine;
//   3. matches() with a catastrophic-backtracking pattern on hostile input (RE2: linear);
//   4. scaling with message size where the bare engine is super-linear (field reads inside an
//      iteration, iterating a map() result), and how fast a nested iteration hits the budget.
// With --cel-js DIR (a directory where `npm i @marcbachmann/cel-js@8.0.0` was run; it is not a
// dependency), the same rule and the same regex are run on that engine side by side.
// Prints a report; docs/policy.md quotes it. Nothing here is asserted by the tests.
//
// Usage: node --import tsx bench/cel.ts [--evals 300000] [--cel-js /tmp/celjs]
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: flags } = parseArgs({
  options: {
    evals: { type: 'string', default: '300000' },
    'cel-js': { type: 'string' },
  },
});
const EVALS = Number(flags.evals);

const t0 = process.hrtime.bigint();
const engine = await import('@bufbuild/cel');
const importMs = Number(process.hrtime.bigint() - t0) / 1e6;
const { compileCondition } = await import('../src/policy/cel.js');

const TYPICAL = 'principal.scopes.exists(s, s == "db:write") && arguments.table != "users"';
const vars = {
  principal: { tenant: 'acme', subject: 'alice', client: 'cli', scopes: ['db:read', 'db:write'] },
  server: 'db',
  method: 'tools/call',
  target: 'query',
  arguments: { table: 'orders', sql: 'select * from orders where id = 1', limit: 5 },
  message: { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'query' } },
};

const ROUNDS = 5;

/** ns per call: the best of ROUNDS rounds of n/ROUNDS calls, after a warm-up. */
function nsPer(n: number, fn: () => unknown): number {
  for (let i = 0; i < Math.min(n, 20_000); i++) fn();
  const per = Math.max(1, Math.floor(n / ROUNDS));
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < per; i++) fn();
    best = Math.min(best, Number(process.hrtime.bigint() - start) / per);
  }
  return best;
}

/** ms of one call: the best of `rounds` calls (the value is the last one's). */
function msOf(fn: () => unknown, rounds = 3): { ms: number; value: unknown } {
  let best = Infinity;
  let value: unknown;
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    value = fn();
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e6);
  }
  return { ms: best, value };
}

const fmt = (ns: number): string => `${ns.toFixed(0)} ns`;
const rate = (ns: number): string => `${Math.round(1e9 / ns).toLocaleString('en-US')}/s`;

console.log(`# CEL conditions: ${new Date().toISOString()}`);
console.log(
  `node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}, ${os.platform()}`,
);
console.log(
  `command: node --import tsx bench/cel.ts --evals ${EVALS}${flags['cel-js'] ? ' --cel-js DIR' : ''}`,
);
console.log('');
console.log(`import @bufbuild/cel: ${importMs.toFixed(1)} ms`);
const compileNs = nsPer(5_000, () => compileCondition(TYPICAL));
console.log(`compileCondition(typical): ${(compileNs / 1000).toFixed(1)} µs`);

// ---- 2. typical rule -------------------------------------------------------------------
console.log('');
console.log(`## typical rule: ${TYPICAL}`);
const cond = compileCondition(TYPICAL);
if (cond.evaluate(vars) !== true) throw new Error('typical rule should be true');
const ours = nsPer(EVALS, () => cond.evaluate(vars));
const env = engine.celEnv({
  variables: {
    principal: engine.CelScalar.DYN,
    server: engine.CelScalar.STRING,
    method: engine.CelScalar.STRING,
    target: engine.CelScalar.STRING,
    arguments: engine.CelScalar.DYN,
    message: engine.CelScalar.DYN,
  },
});
const bare = engine.plan(env, engine.parse(TYPICAL));
const bareNs = nsPer(EVALS, () => bare(vars));
console.log(`compileCondition().evaluate : ${fmt(ours)} per eval (${rate(ours)})`);
console.log(`bare @bufbuild/cel plan()   : ${fmt(bareNs)} per eval (${rate(bareNs)})`);
const matchCond = compileCondition(
  'arguments.sql.matches("^select\\\\s.*\\\\bfrom\\\\s+orders\\\\b")',
);
const matchNs = nsPer(EVALS / 3, () => matchCond.evaluate(vars));
const bareMatch = engine.plan(
  env,
  engine.parse('arguments.sql.matches("^select\\\\s.*\\\\bfrom\\\\s+orders\\\\b")'),
);
const bareMatchNs = nsPer(EVALS / 30, () => bareMatch(vars));
console.log(`matches() rule, cached RE2  : ${fmt(matchNs)} per eval`);
console.log(`matches() rule, bare engine : ${fmt(bareMatchNs)} per eval (RE2 compiled per call)`);

interface CelJs {
  Environment: new () => {
    registerVariable(name: string, type: string): CelJsEnv;
  };
}
interface CelJsEnv {
  registerVariable(name: string, type: string): CelJsEnv;
  parse(src: string): (ctx: unknown) => unknown;
}
let celjs: CelJsEnv | undefined;
if (flags['cel-js']) {
  const entry = path.join(flags['cel-js'], 'node_modules/@marcbachmann/cel-js/lib/index.js');
  const t1 = process.hrtime.bigint();
  const mod = (await import(pathToFileURL(entry).href)) as CelJs;
  console.log(
    `import @marcbachmann/cel-js : ${(Number(process.hrtime.bigint() - t1) / 1e6).toFixed(1)} ms`,
  );
  celjs = new mod.Environment()
    .registerVariable('principal', 'map')
    .registerVariable('server', 'string')
    .registerVariable('method', 'string')
    .registerVariable('target', 'string')
    .registerVariable('arguments', 'dyn')
    .registerVariable('message', 'dyn');
  const f = celjs.parse(TYPICAL);
  if (f(vars) !== true) throw new Error('cel-js: typical rule should be true');
  const ns = nsPer(EVALS, () => f(vars));
  console.log(`@marcbachmann/cel-js parse(): ${fmt(ns)} per eval (${rate(ns)})`);
}

// ---- 3. ReDoS ----------------------------------------------------------------------------
console.log('');
console.log('## matches("^(a+)+$") on "a" * n + "!"');
const redos = compileCondition('arguments.s.matches("^(a+)+$")');
for (const n of [26, 1_000, 100_000, 1_000_000]) {
  const s = 'a'.repeat(n) + '!';
  const r = msOf(() => redos.evaluateDetailed({ ...vars, arguments: { s } }));
  console.log(`@bufbuild/cel (RE2) n=${n}: ${r.ms.toFixed(1)} ms -> ${JSON.stringify(r.value)}`);
}
if (celjs) {
  const f = celjs.parse('arguments.s.matches("^(a+)+$")');
  for (const n of [18, 20, 22, 24, 26]) {
    const s = 'a'.repeat(n) + '!';
    const r = msOf(() => f({ ...vars, arguments: { s } }), 1);
    console.log(
      `@marcbachmann/cel-js (RegExp) n=${n}: ${r.ms.toFixed(1)} ms -> ${String(r.value)}`,
    );
  }
}

// ---- 4. scaling --------------------------------------------------------------------------
console.log('');
console.log('## scaling with message size: ms per evaluation (bare engine capped at n=4000)');
const SCALING = [
  'arguments.rows.all(r, r.v >= 0)',
  'arguments.rows.all(r, arguments.wide.k0 == 0)',
  'arguments.rows.map(r, r.v).exists(x, x == -1.0) == false',
];
for (const source of SCALING) {
  const c = compileCondition(source);
  const b = engine.plan(env, engine.parse(source));
  const cells: string[] = [];
  for (const n of [1_000, 2_000, 4_000, 8_000, 16_000, 32_000]) {
    const rows = Array.from({ length: n }, (_, i) => ({ v: i }));
    const wide = Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
    const input = { ...vars, arguments: { rows, wide } };
    const r = msOf(() => c.evaluateDetailed(input));
    let cell = `n=${n}: ${r.ms.toFixed(1)}`;
    if (n <= 4_000) {
      const rb = msOf(() => b(input), 1);
      const v = engine.isCelError(rb.value) ? `error: ${rb.value.message}` : String(rb.value);
      cell += ` (bare ${rb.ms.toFixed(1)}${v === 'true' ? '' : `, ${v}`})`;
    }
    const ok = (r.value as { value: boolean }).value;
    cells.push(ok ? cell : `${cell} -> ${JSON.stringify(r.value)}`);
  }
  console.log(`${source}\n  ${cells.join(' | ')}`);
}
const nested = compileCondition('arguments.rows.exists(a, arguments.rows.exists(b, a.v < 0.0))');
for (const n of [2_000, 100_000]) {
  const rows = Array.from({ length: n }, (_, i) => ({ v: i }));
  const r = msOf(() => nested.evaluateDetailed({ ...vars, arguments: { rows } }));
  console.log(`nested exists over n=${n}: ${r.ms.toFixed(1)} ms -> ${JSON.stringify(r.value)}`);
}
