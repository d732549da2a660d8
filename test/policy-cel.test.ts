import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ConditionError,
  compileCondition,
  DEFAULT_CONDITION_MAX_STEPS,
  MAX_CONDITION_SOURCE_CHARS,
  type ConditionVars,
} from '../src/policy/cel.js';

function vars(overrides: Partial<ConditionVars> = {}): ConditionVars {
  return {
    principal: { tenant: 'acme', subject: 'alice', client: 'cli', scopes: ['db:read', 'db:write'] },
    server: 'db',
    method: 'tools/call',
    target: 'query',
    arguments: {
      table: 'orders',
      sql: 'select * from orders',
      limit: 5,
      rows: [{ v: 1 }, { v: 2 }],
    },
    message: {
      jsonrpc: '2.0',
      id: 7,
      method: 'tools/call',
      params: { name: 'query', arguments: { table: 'orders' } },
    },
    ...overrides,
  };
}

function compileError(source: string): ConditionError {
  try {
    compileCondition(source);
  } catch (err) {
    assert.ok(err instanceof ConditionError, `expected ConditionError, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${JSON.stringify(source)} not to compile`);
}

test('a syntax error is a ConditionError with its position', () => {
  const err = compileError('principal.tenant == ');
  assert.match(err.message, /syntax error/);
  assert.equal(err.line, 1);
  assert.equal(typeof err.column, 'number');
  const multi = compileError('true &&\n  principal.tenant == "a" )');
  assert.equal(multi.line, 2);
  assert.equal(multi.column, 27);
  assert.match(compileError('').message, /empty/);
  assert.match(compileError('x'.repeat(MAX_CONDITION_SOURCE_CHARS + 1)).message, /longer than/);
});

test('an undeclared variable is a compile error, not a runtime false', () => {
  const err = compileError('principal.tenant == "acme" && user.admin');
  assert.match(err.message, /unknown variable 'user'/);
  assert.equal(err.column, 31);
  assert.match(compileError('request.method == "x"').message, /unknown variable 'request'/);
  // a comprehension's own variable is only in scope inside it
  assert.match(compileError('principal.scopes.exists(s, s == "a") && s == "b"').message, /'s'/);
});

test('an unknown function and an invalid literal regex are compile errors', () => {
  assert.match(
    compileError('arguments.sql.looksLike("x")').message,
    /unknown function 'looksLike'/,
  );
  assert.match(compileError('arguments.sql.matches("(unclosed")').message, /regular expression/);
});

test('a result that is plainly not a bool is a compile error', () => {
  for (const source of [
    '1 + 2',
    '"text"',
    'server',
    'principal.scopes',
    'size(arguments)',
    '[true]',
    'arguments.rows.map(r, r.v)',
    'true ? 1 : false',
  ]) {
    assert.match(compileError(source).message, /does not evaluate to a bool/, source);
  }
});

test('a result that is not a bool at run time is false with an error', () => {
  const c = compileCondition('arguments.table');
  assert.deepEqual(c.evaluateDetailed(vars()), {
    value: false,
    error: 'the expression evaluated to a string, not a bool',
  });
});

test('principal.scopes.exists, the example from the policy docs', () => {
  const c = compileCondition('principal.scopes.exists(s, s == "db:write")');
  assert.equal(c.source, 'principal.scopes.exists(s, s == "db:write")');
  assert.equal(c.evaluate(vars()), true);
  const reader = vars({ principal: { tenant: 'acme', subject: 'bob', scopes: ['db:read'] } });
  assert.deepEqual(c.evaluateDetailed(reader), { value: false });
  const typical = compileCondition(
    'principal.scopes.exists(s, s == "db:write") && arguments.table != "users"',
  );
  assert.equal(typical.evaluate(vars()), true);
  assert.equal(typical.evaluate(vars({ arguments: { table: 'users' } })), false);
});

test('has(), in, string functions, size, map and list access', () => {
  const v = vars();
  const cases: Array<[string, boolean]> = [
    ['has(arguments.table)', true],
    ['has(arguments.nope)', false],
    ['has(principal.client)', true],
    ['"db:read" in principal.scopes', true],
    ['"admin" in principal.scopes', false],
    ['"table" in arguments', true],
    ['target in ["query", "list"]', true],
    ['target.startsWith("qu") && target.endsWith("ry") && target.contains("uer")', true],
    ['arguments.sql.matches("^select\\\\s")', true],
    ['arguments.sql.matches("(?i)DROP\\\\s+TABLE")', false],
    ['size(arguments.rows) == 2 && arguments.rows.size() == 2', true],
    ['arguments.rows.all(r, r.v > 0)', true],
    ['arguments.rows.exists_one(r, r.v == 2)', true],
    ['arguments.rows[1].v == 2', true],
    ['arguments["table"] == "orders"', true],
    ['message.params.name == target && message.id == 7', true],
    ['arguments.rows.map(r, r.v * 10.0).exists(x, x == 20.0)', true],
    ['size(arguments.rows.filter(r, r.v > 1)) == 1', true],
    ['server == "db" && method == "tools/call" && principal.tenant == "acme"', true],
  ];
  for (const [source, expected] of cases) {
    assert.deepEqual(compileCondition(source).evaluateDetailed(v), { value: expected }, source);
  }
});

test('absent target is null and absent arguments are an empty map', () => {
  const v = vars({ method: 'tools/list', target: undefined, arguments: undefined });
  assert.equal(compileCondition('target == null').evaluate(v), true);
  assert.equal(compileCondition('!has(arguments.table) && size(arguments) == 0').evaluate(v), true);
});

test('runtime errors are false with an error, never a throw', () => {
  const cases: Array<[string, RegExp]> = [
    ['arguments.missing == 1', /field not found: missing/],
    ['arguments.table > 1', /no matching overload/],
    ['principal.scopes[9] == "x"', /out of bounds/],
    ['arguments.sql.matches(arguments.table + "(")', /missing closing/],
    ['target.startsWith("q")', /no matching overload/],
    ['arguments.rows.all(r, r.w == 1)', /field not found: w/],
  ];
  const noTarget = vars({ target: undefined });
  for (const [source, error] of cases) {
    const c = compileCondition(source);
    const input = source.startsWith('target') ? noTarget : vars();
    const result = c.evaluateDetailed(input);
    assert.equal(result.value, false, source);
    assert.match(result.error ?? '', error, source);
    assert.equal(c.evaluate(input), false, source);
  }
  // the error names where it happened
  const at = compileCondition('true && arguments.missing == 1').evaluateDetailed(vars());
  assert.match(at.error ?? '', /column \d+/);
  // a message that is not JSON data still does not throw
  const odd = compileCondition('message.x == 1').evaluateDetailed(
    vars({ message: { x: () => 1 } as unknown }),
  );
  assert.equal(odd.value, false);
  assert.ok(odd.error);
});

test('an error inside || or && follows CEL: absorbed when the other side decides', () => {
  assert.deepEqual(compileCondition('arguments.missing == 1 || true').evaluateDetailed(vars()), {
    value: true,
  });
  assert.deepEqual(compileCondition('arguments.missing == 1 && false').evaluateDetailed(vars()), {
    value: false,
  });
});

test('numbers: JSON integers and fractions compare with int and double literals alike', () => {
  const gt = compileCondition('arguments.limit > 100');
  const eq = compileCondition('arguments.limit == 5');
  for (const [limit, over, five] of [
    [5, false, true],
    [5.5, false, false],
    [100, false, false],
    [100.5, true, false],
    [1e6, true, false],
  ] as const) {
    const v = vars({ arguments: { limit } });
    assert.deepEqual(gt.evaluateDetailed(v), { value: over }, `limit ${limit} > 100`);
    assert.deepEqual(eq.evaluateDetailed(v), { value: five }, `limit ${limit} == 5`);
  }
  const v = vars({ arguments: { limit: 5 } });
  assert.equal(
    compileCondition('arguments.limit > 4.5 && arguments.limit in [5, 6]').evaluate(v),
    true,
  );
  assert.equal(compileCondition('type(arguments.limit) == double').evaluate(v), true);
  assert.equal(compileCondition('int(arguments.limit) % 2 == 1').evaluate(v), true);
  // arithmetic does not mix int and double in CEL: use a double literal or int()
  assert.equal(compileCondition('arguments.limit * 2.0 == 10.0').evaluate(v), true);
  assert.match(
    compileCondition('arguments.limit + 1 == 6').evaluateDetailed(v).error ?? '',
    /no matching overload/,
  );
});

test('a catastrophic-backtracking pattern on hostile input completes (RE2)', () => {
  const c = compileCondition('arguments.s.matches("^(a+)+$") || arguments.s.matches("^(a|aa)*b$")');
  const hostile = 'a'.repeat(50_000) + '!';
  assert.deepEqual(c.evaluateDetailed(vars({ arguments: { s: hostile } })), { value: false });
  assert.equal(c.evaluate(vars({ arguments: { s: 'aaaa' } })), true);
});

test('iteration is budgeted: nested iteration over a hostile list stops with an error', () => {
  const rows = Array.from({ length: 2_000 }, (_, i) => ({ v: i }));
  const nested = compileCondition(
    'arguments.rows.exists(a, arguments.rows.exists(b, a.v + b.v < 0.0))',
  );
  const result = nested.evaluateDetailed(vars({ arguments: { rows } }));
  assert.equal(result.value, false);
  assert.match(result.error ?? '', new RegExp(`budget of ${DEFAULT_CONDITION_MAX_STEPS}`));
  // the budget is reported even when || would have absorbed the error
  const absorbed = compileCondition(
    'arguments.rows.exists(a, arguments.rows.exists(b, a.v < 0.0)) || true',
  ).evaluateDetailed(vars({ arguments: { rows } }));
  assert.equal(absorbed.value, false);
  assert.match(absorbed.error ?? '', /budget/);
  // a small budget is an option
  const small = compileCondition('arguments.rows.all(r, r.v >= 0)', { maxSteps: 100 });
  assert.match(small.evaluateDetailed(vars({ arguments: { rows } })).error ?? '', /budget of 100/);
  assert.throws(() => compileCondition('true', { maxSteps: 0 }), RangeError);
});

test('single iterations, map/filter chains and repeated field reads stay within the budget', () => {
  const n = 20_000;
  const rows = Array.from({ length: n }, (_, i) => ({ v: i }));
  const wide = Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
  const v = vars({ arguments: { rows, wide } });
  for (const source of [
    'arguments.rows.all(r, r.v >= 0)',
    // a field of a wide object read inside the iteration: once per evaluation, not per read
    'arguments.rows.all(r, arguments.wide.k0 == 0)',
    // iterating what map/filter built: linear, no stack overflow
    'arguments.rows.map(r, r.v).exists(x, x == -1.0) == false',
    'arguments.rows.filter(r, r.v >= 0).all(r, r.v >= 0)',
    'size(arguments.rows.map(r, r.v)) == 20000',
    'arguments.rows.map(r, r.v)[19999] == 19999',
  ]) {
    assert.deepEqual(compileCondition(source).evaluateDetailed(v), { value: true }, source);
  }
});

test('a list built by + keeps its own contents when extended twice (append semantics)', () => {
  const c = compileCondition(
    '[[1] + [2]].all(l, size(l + [3]) == 3 && size(l + [4, 5]) == 4 && size(l) == 2 && (l + [4])[2] == 4)',
  );
  assert.deepEqual(c.evaluateDetailed(vars()), { value: true });
});

test('a deep message does not throw out of evaluate', () => {
  let deep: unknown = { leaf: true };
  for (let i = 0; i < 128; i++) deep = { child: deep };
  const path = 'message' + '.child'.repeat(128) + '.leaf';
  assert.deepEqual(compileCondition(path).evaluateDetailed(vars({ message: deep })), {
    value: true,
  });
});

test('size() of a string counts code points, as the engine does (pairs once, lone surrogates once)', () => {
  for (const [s, n] of [
    ['', 0],
    ['x'.repeat(960), 960],
    ['a\u{1F600}b', 3],
    ['a\uD800\uD800b', 4],
    ['\uDC00\uD800\uDC00x\uD800', 4],
  ] as const) {
    const v = vars({ arguments: { s } });
    for (const source of [`size(arguments.s) == ${n}`, `arguments.s.size() == ${n}`]) {
      assert.deepEqual(compileCondition(source).evaluateDetailed(v), { value: true }, source);
    }
  }
  assert.deepEqual(
    compileCondition('size(arguments) == 4 && size(b"ab") == 2').evaluateDetailed(vars()),
    {
      value: true,
    },
  );
});

test('a leading has() that is false answers false without evaluating the rest; true still runs it', () => {
  const rows = Array.from({ length: 2_000 }, (_, i) => ({ v: i }));
  const source =
    'has(arguments.force) && arguments.rows.exists(a, arguments.rows.exists(b, a.v < 0.0))';
  const c = compileCondition(source);
  assert.deepEqual(c.evaluateDetailed(vars({ arguments: { rows } })), { value: false });
  assert.match(
    c.evaluateDetailed(vars({ arguments: { rows, force: true } })).error ?? '',
    /budget/,
  );
  // not leading: what runs before it can still exceed the budget, and that is reported
  const late = compileCondition(
    'arguments.rows.exists(a, arguments.rows.exists(b, a.v < 0.0)) && has(arguments.force)',
  );
  assert.match(late.evaluateDetailed(vars({ arguments: { rows } })).error ?? '', /budget/);
  // arguments that are not a map: the engine decides, as before
  const onList = compileCondition('has(arguments.x) && true').evaluateDetailed(
    vars({ arguments: [1] }),
  );
  assert.equal(onList.value, false);
  // a present key whose value is null is not "set" to the engine either
  assert.deepEqual(
    compileCondition('has(arguments.x) && true').evaluateDetailed(vars({ arguments: { x: null } })),
    compileCondition('has(arguments.x)').evaluateDetailed(vars({ arguments: { x: null } })),
  );
});
