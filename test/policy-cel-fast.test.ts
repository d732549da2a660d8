// The fast path of CEL conditions (src/policy/cel-fast.ts) against the engine (the reference
// semantics): the same value and the same error/no-error on every expression and message here.
// Expressions: every condition of bench/policy-fixture.ts, every string in
// test/policy-cel.test.ts that compiles, and generated ones over fields of every JSON type
// (missing, null, wrong types, nested, unicode, big numbers, -0). Deterministic: one seed.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { benchRules } from '../bench/policy-fixture.js';
import {
  compileCondition,
  conditionEngine,
  ConditionError,
  FAST_PATH_FELL_BACK,
  type Condition,
  type ConditionResult,
  type ConditionVars,
} from '../src/policy/cel.js';

let seed = 1234567;
function rand(): number {
  seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
  return seed / 2 ** 31;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;

// ---- messages --------------------------------------------------------------------------------

const STRINGS = [
  '',
  'a',
  'orders',
  'select * from orders',
  'DROP TABLE users; --',
  '/srv/data/x.txt',
  '/etc/passwd',
  '../x',
  'é',
  'a\u{1F600}b',
  'a\uD800b',
  'secret',
  'SeCrEt',
  '5',
  'true',
  'null',
];
const NUMBERS = [0, -0, 1, -1, 1.5, 5, 5000, 5001, 1e300, -1e-300, 2 ** 53, 2 ** 53 + 2, 2 ** 63];
function jsonValue(depth: number): unknown {
  const r = rand();
  if (r < 0.25) return pick(STRINGS);
  if (r < 0.5) return pick(NUMBERS);
  if (r < 0.58) return rand() < 0.5;
  if (r < 0.66) return null;
  if (depth <= 0) return pick(STRINGS);
  if (r < 0.83) return Array.from({ length: Math.floor(rand() * 4) }, () => jsonValue(depth - 1));
  return jsonObject(depth - 1);
}
const KEYS = ['a', 's', 'n', 'list', 'obj', 'x', 'nul', 'tags', '1', 'constructor'];
function jsonObject(depth: number): Record<string, unknown> {
  const text: string[] = [];
  for (const k of KEYS)
    if (rand() < 0.35) text.push(`${JSON.stringify(k)}:${JSON.stringify(jsonValue(depth))}`);
  // An own __proto__ key, as JSON.parse makes one.
  if (rand() < 0.1) text.push('"__proto__":1');
  return JSON.parse(`{${text.join(',')}}`) as Record<string, unknown>;
}
function typedArguments(): Record<string, unknown> {
  const o = jsonObject(2);
  // The fields the generated expressions read most, with their usual types most of the time.
  if (rand() < 0.7) o.s = pick(STRINGS);
  if (rand() < 0.7) o.n = pick(NUMBERS);
  if (rand() < 0.6)
    o.list = Array.from({ length: Math.floor(rand() * 5) }, () => pick([...NUMBERS, ...STRINGS]));
  if (rand() < 0.5) o.obj = { x: pick(NUMBERS), y: pick(STRINGS), z: [1, 2] };
  if (rand() < 0.3) o.nul = null;
  return o;
}
function message(): ConditionVars {
  const r = rand();
  const args: unknown =
    r < 0.8
      ? typedArguments()
      : r < 0.85
        ? undefined
        : r < 0.9
          ? [1, 'a']
          : r < 0.95
            ? 'str'
            : null;
  const principal: ConditionVars['principal'] = {
    tenant: pick(['acme', 'local', '']),
    subject: pick(['alice', 'eve', 'é']),
    scopes: Array.from({ length: Math.floor(rand() * 4) }, () =>
      pick(['admin', 'db:read', 'pii', 'x']),
    ),
  };
  if (rand() < 0.5) principal.client = pick(['cli', '']);
  const vars: ConditionVars = {
    principal,
    server: pick(['bench', 'other']),
    method: pick(['tools/call', 'prompts/get']),
    message: { jsonrpc: '2.0', id: pick([1, 7, 'x']), params: { name: 'q', arguments: args } },
  };
  if (rand() < 0.8) vars.target = pick(['query_01', 'admin_00', 'echo', 'x_dangerous']);
  if (args !== undefined) vars.arguments = args;
  return vars;
}

// ---- expressions -----------------------------------------------------------------------------

const PATHS = [
  'arguments.s',
  'arguments.n',
  'arguments.a',
  'arguments.x',
  'arguments.list',
  'arguments.obj',
  'arguments.obj.x',
  'arguments.obj.y',
  'arguments.obj.z',
  'arguments.nul',
  'arguments.missing',
  'arguments.constructor',
  'arguments.__proto__',
  'arguments["toString"]',
  'arguments["1"]',
  'arguments.list[0]',
  'arguments.list[1]',
  'arguments.list[-1]',
  'arguments.obj.z[1]',
  'arguments',
  'message.params.name',
  'message.params.arguments',
  'message.id',
  'principal.tenant',
  'principal.client',
  'principal.scopes',
  'principal.scopes[0]',
  'target',
  'server',
  'method',
];
const LITERALS = [
  '"a"',
  '""',
  '"é"',
  '"a\\U0001F600b"',
  '"secret"',
  '"5"',
  '0',
  '1',
  '-1',
  '5',
  '5000',
  '9007199254740992',
  '9007199254740993',
  '9223372036854775807',
  '-9223372036854775808',
  '0u',
  '1u',
  '5000u',
  '1.5',
  '-0.0',
  '0.0',
  '5.0',
  '1e300',
  'true',
  'false',
  'null',
  '[]',
  '[1, 2]',
  '[5.0, 1u]',
  '["a", "b", "secret"]',
  '[1.0, "a", null]',
  '[[1, 2]]',
];
const PATTERNS = ['"^a"', '"(?i)secret"', '"[0-9]+"', '"^$"', '"\\\\.txt$"', '"("'];

function value(depth: number, vars: readonly string[]): string {
  const r = rand();
  if (vars.length > 0 && r < 0.2) {
    const v = pick(vars);
    return rand() < 0.3 ? `${v}.${pick(['x', 'y', 'z'])}` : v;
  }
  if (depth <= 0 || r < 0.5) return rand() < 0.6 ? pick(PATHS) : pick(LITERALS);
  const d = depth - 1;
  const q = rand();
  if (q < 0.25) return `${value(d, vars)} ${pick(['+', '-', '*', '/', '%'])} ${value(d, vars)}`;
  if (q < 0.45) return rand() < 0.5 ? `size(${value(d, vars)})` : `${value(d, vars)}.size()`;
  if (q < 0.55) return `-${value(d, vars)}`;
  if (q < 0.7) return `(${bool(d, vars)} ? ${value(d, vars)} : ${value(d, vars)})`;
  if (q < 0.85)
    return `${value(d, vars)}[${pick([...LITERALS.slice(0, 12), 'arguments.s', 'arguments.n', 'true', '1.5', '-0.0'])}]`;
  return `[${value(d, vars)}, ${value(d, vars)}]`;
}

const NUMERIC = [
  'arguments.n',
  'arguments.obj.x',
  'size(arguments.s)',
  'arguments.list.size()',
  'message.id',
  'size(arguments)',
];
const NUMERIC_LITERALS = [
  '0',
  '1',
  '5',
  '5000',
  '-1',
  '1.5',
  '-0.0',
  '5.0',
  '9007199254740993',
  '1u',
  '1e300',
];
const TEXT = [
  'arguments.s',
  'arguments.obj.y',
  'principal.tenant',
  'principal.subject',
  'target',
  'method',
];

/** A comparison of operands of one type, so that most evaluations compare values, not errors. */
function typed(vars: readonly string[]): string {
  if (rand() < 0.5) {
    const l = pick(vars.length > 0 && rand() < 0.3 ? vars : NUMERIC);
    return `${l} ${pick(['==', '!=', '<', '<=', '>', '>='])} ${pick(NUMERIC_LITERALS)}`;
  }
  const l = pick(vars.length > 0 && rand() < 0.3 ? vars : TEXT);
  if (rand() < 0.5) return `${l} ${pick(['==', '!=', '<', '>='])} ${pick(LITERALS.slice(0, 6))}`;
  return `${l}.${pick(['startsWith', 'endsWith', 'contains'])}(${pick(LITERALS.slice(0, 6))})`;
}

function bool(depth: number, vars: readonly string[]): string {
  const d = Math.max(0, depth - 1);
  const r = rand();
  if (r < 0.3) {
    const t = typed(vars);
    const guard =
      rand() < 0.4
        ? `has(${pick(['arguments.s', 'arguments.n', 'arguments.obj', 'principal.client'])}) && `
        : '';
    return `(${guard}${t})`;
  }
  if (r < 0.22)
    return `${value(d, vars)} ${pick(['==', '!=', '<', '<=', '>', '>='])} ${value(d, vars)}`;
  if (r < 0.32) return `${value(d, vars)} in ${value(d, vars)}`;
  if (r < 0.4) return `has(${pick(PATHS.filter((p) => /\.\w+$/.test(p)))})`;
  if (r < 0.5) {
    const fn = pick(['startsWith', 'endsWith', 'contains']);
    return `${value(d, vars)}.${fn}(${rand() < 0.6 ? pick(LITERALS.slice(0, 6)) : value(d, vars)})`;
  }
  if (r < 0.55)
    return `${value(d, vars)}.matches(${rand() < 0.8 ? pick(PATTERNS.slice(0, 5)) : value(d, vars)})`;
  if (depth <= 0) return pick(['true', 'false', 'arguments.a', 'arguments.nul']);
  if (r < 0.62) return `!${bool(d, vars)}`;
  if (r < 0.72) return `(${bool(d, vars)} && ${bool(d, vars)})`;
  if (r < 0.82) return `(${bool(d, vars)} || ${bool(d, vars)})`;
  if (r < 0.86) return `(${bool(d, vars)} ? ${bool(d, vars)} : ${bool(d, vars)})`;
  const v = pick(['e', 'f', 'principal']);
  const range = pick([
    'arguments.list',
    'principal.scopes',
    'arguments.obj',
    'arguments',
    'arguments.obj.z',
    '[1, 2, 3]',
    '["a", "b"]',
    'arguments.s',
    'arguments.nul',
  ]);
  return `${range}.${pick(['exists', 'all', 'exists_one'])}(${v}, ${bool(d, [...vars, v])})`;
}

/** The string literals of test/policy-cel.test.ts: the expressions its tests compile. */
function testFileExpressions(): string[] {
  const text = readFileSync(new URL('./policy-cel.test.ts', import.meta.url), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/'((?:[^'\\\n]|\\.)*)'/g)) {
    const body = m[1] as string;
    try {
      out.push(JSON.parse(`"${body.replace(/"/g, '\\"').replace(/\\'/g, "'")}"`) as string);
    } catch {
      // not a plain string literal
    }
  }
  for (const m of text.matchAll(/`([^`$]*)`/g)) out.push(m[1] as string);
  return out;
}

function compiles(source: string, options = {}): [Condition, Condition] | undefined {
  try {
    return [
      compileCondition(source, options),
      compileCondition(source, { ...options, engine: 'reference' }),
    ];
  } catch (err) {
    if (err instanceof ConditionError) return undefined;
    throw err;
  }
}

function same(
  source: string,
  fast: ConditionResult,
  ref: ConditionResult,
  vars: ConditionVars,
): void {
  if (fast.value === ref.value && (fast.error === undefined) === (ref.error === undefined)) return;
  assert.fail(
    `${source}\n  on ${JSON.stringify(vars.arguments)} (target ${String(vars.target)})\n` +
      `  fast: ${JSON.stringify(fast)}\n  engine: ${JSON.stringify(ref)}`,
  );
}

const MESSAGES = Array.from({ length: 60 }, message);

/** Compares both paths on every message; how many evaluations (0 if it does not compile). */
function compareOn(source: string, messages: readonly ConditionVars[]): number {
  const pair = compiles(source);
  if (pair === undefined) return 0;
  for (const vars of messages) {
    same(source, pair[0].evaluateDetailed(vars), pair[1].evaluateDetailed(vars), vars);
  }
  return messages.length;
}

test('the fast path takes every condition of the bench fixture and the typical ones', () => {
  const typical = [
    ...benchRules().map((r) => r.when),
    'principal.scopes.exists(s, s == "db:write") && arguments.table != "users"',
    'has(arguments.table) && arguments.limit <= 100.5 && "db:read" in principal.scopes',
    'arguments.rows.all(r, r.v > 0) || size(arguments.rows) == 0',
    'arguments.rows.exists_one(r, r.v == 2) && arguments["table"] == "orders"',
    'target in ["query", "list"] ? !arguments.sql.matches("(?i)drop") : method == "tools/call"',
    'arguments.n + 1.0 > 2.0 && -arguments.n < 0.0 && 7 / 2 == 3',
  ];
  for (const source of typical) {
    assert.equal(conditionEngine(compileCondition(source)), 'fast', source);
  }
  for (const source of [
    'type(arguments.limit) == double',
    'arguments.rows.map(r, r.v).size() > 1',
    'size(b"ab") == 2',
    '{"a": 1}.a == 1',
  ]) {
    assert.equal(conditionEngine(compileCondition(source)), 'reference', source);
  }
  assert.equal(conditionEngine(compileCondition('true', { engine: 'reference' })), 'reference');
});

test('fast path results without an error are the shared frozen results', () => {
  const c = compileCondition('arguments.s == "a"');
  const yes = c.evaluateDetailed({ ...MESSAGES[0], arguments: { s: 'a' } } as ConditionVars);
  const no = c.evaluateDetailed({ ...MESSAGES[0], arguments: { s: 'b' } } as ConditionVars);
  assert.deepEqual([yes, no], [{ value: true }, { value: false }]);
  assert.ok(Object.isFrozen(yes) && Object.isFrozen(no));
  assert.equal(yes, c.evaluateDetailed({ ...MESSAGES[1], arguments: { s: 'a' } } as ConditionVars));
});

test('fixture and test-file expressions: the fast path equals the engine', () => {
  const sources = [...new Set([...benchRules().map((r) => r.when), ...testFileExpressions()])];
  let compared = 0;
  for (const source of sources) compared += compareOn(source, MESSAGES);
  assert.ok(compared > 3000, `compared ${compared}`);
});

test('generated expressions: the fast path equals the engine, value and error', () => {
  let compiled = 0;
  let fast = 0;
  let evaluations = 0;
  let fellBack = 0;
  let errors = 0;
  for (let i = 0; i < 2500; i++) {
    const source = bool(3, []);
    const pair = compiles(source);
    if (pair === undefined) continue;
    compiled++;
    const onlyFast =
      conditionEngine(pair[0]) === 'fast'
        ? compileCondition(source, { engine: 'fast' })
        : undefined;
    if (onlyFast) fast++;
    for (const vars of MESSAGES) {
      const a = pair[0].evaluateDetailed(vars);
      const b = pair[1].evaluateDetailed(vars);
      same(source, a, b, vars);
      evaluations++;
      if (b.error !== undefined) errors++;
      if (onlyFast?.evaluateDetailed(vars).error?.startsWith(FAST_PATH_FELL_BACK)) fellBack++;
    }
  }
  console.log(
    `${compiled} generated expressions (${fast} on the fast path), ${evaluations} evaluations compared, ` +
      `${errors} of them errors, ${fellBack} handed from the fast path to the engine`,
  );
  assert.ok(compiled > 1500 && fast > compiled * 0.9, `${fast} of ${compiled} on the fast path`);
  // Most evaluations ran on the fast path itself, so the comparison is not of the engine with itself.
  assert.ok(fellBack < evaluations * 0.05, `${fellBack} of ${evaluations} fell back`);
  assert.ok(errors > evaluations * 0.1 && errors < evaluations * 0.9, `${errors} errors`);
});

test('the step budget: exceeded in the same evaluations on both paths', () => {
  const rows = Array.from({ length: 40 }, (_, i) => ({ v: i, tags: ['a', 'b', String(i)] }));
  const wide = Object.fromEntries(rows.map((r) => [`k${r.v}`, r.v]));
  const vars = {
    ...MESSAGES[0],
    arguments: { rows, wide, list: rows.map((r) => r.v) },
  } as ConditionVars;
  const sources = [
    'arguments.rows.exists(a, arguments.rows.exists(b, a.v + b.v < 0.0))',
    'arguments.rows.exists(a, arguments.rows.exists(b, a.v < 0.0)) || true',
    'arguments.rows.all(r, "z" in r.tags)',
    'arguments.rows.exists(r, r.v == 3)',
    'arguments.wide.all(k, k.startsWith("k"))',
    'arguments.rows.exists(r, arguments.wide[1] == 1) || true',
    'arguments.rows.exists(r, 1 in arguments.wide) || true',
    'arguments.rows.exists(r, 1.5 in arguments.wide) || true',
    'arguments.rows.all(r, r == r) && arguments.wide == arguments.wide',
    'arguments.rows.exists(r, arguments.rows[0] == arguments.rows[1]) || true',
    '[1, 2, 3].all(x, x in arguments.list)',
    '["a"].exists(x, x in principal.scopes) || principal.scopes.exists_one(s, s == "x")',
  ];
  for (const maxSteps of [1, 5, 39, 40, 41, 80, 120, 1600, 1640, 2000, 100_000]) {
    for (const source of sources) {
      const pair = compiles(source, { maxSteps });
      assert.ok(pair, source);
      assert.equal(conditionEngine(pair[0]), 'fast', source);
      const a = pair[0].evaluateDetailed(vars);
      const b = pair[1].evaluateDetailed(vars);
      assert.deepEqual(a, b, `${source} with ${maxSteps} steps`);
    }
  }
});

test('prototype keys are missing keys, and values that are not JSON are the engine’s to judge', () => {
  const vars = {
    ...MESSAGES[0],
    arguments: JSON.parse('{"__proto__": {"x": 1}, "a": 1}'),
  } as ConditionVars;
  for (const source of [
    'has(arguments.constructor)',
    'has(arguments.toString) || has(arguments.hasOwnProperty)',
    'arguments.constructor == null',
    '"constructor" in arguments',
    'arguments.__proto__.x == 1',
    'has(arguments.__proto__)',
    'size(arguments) == 2',
  ]) {
    assert.equal(compareOn(source, [vars]), 1, source);
  }
  const odd = {
    ...MESSAGES[0],
    message: { x: () => 1, y: [Symbol('s')] },
  } as unknown as ConditionVars;
  for (const source of [
    'message.x == 1 || true',
    'has(message.x)',
    'message.y[0] == 1 || true',
    'size(message) == 2',
  ]) {
    assert.equal(compareOn(source, [odd]), 1, source);
  }
});

test('numbers and strings: every operator on every pair of operand kinds equals the engine', () => {
  const operands = [
    'arguments.n',
    'arguments.m',
    'arguments.s',
    'size(arguments.s)',
    'arguments.list.size()',
    'arguments.nul',
    'arguments.list',
    'arguments.obj',
    '0',
    '1',
    '-1',
    '5',
    '9007199254740993',
    '-9223372036854775808',
    '1u',
    '1.5',
    '-0.0',
    '9007199254740992.0',
    '"5"',
    '""',
    'true',
    'null',
    '[1, 5.0]',
  ];
  const values = [
    0,
    -0,
    1,
    1.5,
    5,
    -1,
    2 ** 53,
    2 ** 53 + 2,
    -(2 ** 63),
    1e300,
    '5',
    '',
    'a\u{1F600}',
    null,
    true,
  ];
  const messages = values.map((n, i) => ({
    ...MESSAGES[0],
    arguments: {
      n,
      m: values[(i * 7 + 3) % values.length],
      s: typeof n === 'string' ? n : 'abcde',
      list: [n, 5],
      obj: { 1: n, n },
      nul: null,
    },
  })) as ConditionVars[];
  let compared = 0;
  for (const a of operands) {
    for (const b of operands) {
      for (const op of ['==', '!=', '<', '<=', '>', '>=', 'in', '+', '-', '*', '/', '%']) {
        const source = /^[+\-*/%]$/.test(op) ? `${a} ${op} ${b} == ${a}` : `${a} ${op} ${b}`;
        compared += compareOn(source, messages);
      }
    }
  }
  assert.ok(compared > 50_000, `compared ${compared}`);
});
