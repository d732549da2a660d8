/**
 * CEL conditions for policy rules: compile once at config load, evaluate per message.
 *
 * Owns: parsing a rule's `when:` expression, rejecting at compile time what can be rejected
 * (syntax, undeclared variables, unknown functions, invalid literal regexes, results that are
 * plainly not bool), and evaluating it against one message with bounded work and no throw.
 * It knows nothing of rules, tenants or decisions: the caller decides what an error means
 * (docs/policy.md, "Conditions (CEL)": an allow rule whose condition errors does not allow,
 * a deny rule whose condition errors denies).
 *
 * Engine: `@bufbuild/cel` 0.6.1, chosen over `@marcbachmann/cel-js` 8.0.0 (evidence in
 * docs/policy.md and bench/cel.ts):
 * - `matches()` runs on RE2 (`@bufbuild/re2`, linear time). cel-js runs `new RegExp()` and
 *   cannot be made to do otherwise (redefining `string.matches` is refused as an overlapping
 *   overload): `^(a+)+$` against `"a"*26 + "!"` took 349 ms there and quadruples every two
 *   characters; here 1 000 000 characters take 149 ms.
 * - both run on Node 20 with no install script; cel-js is faster per evaluation and smaller,
 *   and it has a type checker, which @bufbuild/cel 0.6 does not export. What the checker would
 *   catch is done here by walking the AST (`checkExpr`).
 *
 * Two evaluators. When the whole expression is in the subset of src/policy/cel-fast.ts, it is
 * compiled there into closures over the message's JSON values (about a tenth of the engine's
 * cost per condition); otherwise, and for any evaluation the fast path hands back, the engine
 * runs it. The engine is the reference: test/policy-cel-fast.test.ts holds the two equal.
 *
 * Bounded work. Neither engine has a runtime cost limit, so the budget is counted here, in the
 * only places where work grows with the message: every element or key an iteration draws from
 * message data, and every element copied by list concatenation (what `map`/`filter` build).
 * Past `maxSteps` the evaluation stops with an error. Two engine behaviours are replaced
 * because they are super-linear on hostile input (measured in bench/cel.ts):
 * - a plain JS object is converted with `Object.entries` on every field access, so a field read
 *   inside an iteration costs the size of the object each time: JSON objects and arrays are
 *   wrapped here lazily, once per message however many conditions read it (`Lifter`);
 * - `list + list` nests lazy concatenations, so iterating a `map()`/`filter()` result is
 *   quadratic and overflows the stack at ~8 000 elements: `_+_` on lists is replaced by an
 *   append that reuses the left list's storage when nothing else has extended it (`concat`).
 */
import {
  CelScalar,
  celEnv,
  celFunc,
  celList,
  celMethod,
  celMap,
  isCelError,
  isCelList,
  isCelMap,
  listType,
  mapType,
  parse,
  plan,
  type CelList,
  type CelMap,
  type CelValue,
} from '@bufbuild/cel';
import { RE2JS } from '@bufbuild/re2';
import { mayMatch, requiredLiterals, type RequiredLiterals } from './regex-prefilter.js';
import {
  CelFault,
  compileFast,
  describeFastValue,
  FastBail,
  type FastProgram,
} from './cel-fast.js';

/** Iteration steps (elements or keys drawn from message data, elements copied) per evaluation. */
export const DEFAULT_CONDITION_MAX_STEPS = 100_000;
/** A condition is config, not a program: longer sources are refused at load. */
export const MAX_CONDITION_SOURCE_CHARS = 4_096;
/** JSON arrays up to this length are copied when first read; longer ones are proxied. */
const COPIED_ARRAY_MAX_ELEMENTS = 256;
/** Distinct regex patterns kept compiled; patterns beyond this are compiled per call. */
const REGEX_CACHE_MAX_ENTRIES = 1_024;

/** What a condition can see. Values are plain JSON data. */
export interface ConditionVars {
  principal: { tenant: string; subject: string; client?: string; scopes: readonly string[] };
  /** The server name. */
  server: string;
  /** JSON-RPC method, e.g. "tools/call". */
  method: string;
  /** Tool / prompt name or resource uri, when the method has one (CEL sees `null` otherwise). */
  target?: string;
  /** tools/call arguments, prompts/get arguments (CEL sees `{}` when absent). */
  arguments?: unknown;
  /** The whole JSON-RPC message (params etc.). */
  message: unknown;
}

/**
 * The outcome of one evaluation: `value` is false whenever `error` is set. Results without an
 * error are shared, frozen objects.
 */
export interface ConditionResult {
  readonly value: boolean;
  readonly error?: string;
}

export interface Condition {
  readonly source: string;
  /** True only if the expression evaluated to `true` without error. Never throws. */
  evaluate(vars: ConditionVars): boolean;
  /** As `evaluate`, and says why a result is false because of an error. Never throws. */
  evaluateDetailed(vars: ConditionVars): ConditionResult;
}

export interface CompileConditionOptions {
  /** Iteration budget per evaluation; default DEFAULT_CONDITION_MAX_STEPS. */
  maxSteps?: number;
  /**
   * @internal For tests. `auto` (the default): the fast path (src/policy/cel-fast.ts) when the
   * whole expression is in its subset, the engine otherwise. `reference`: the engine only, the
   * semantics the fast path is compared with. `fast`: the fast path only; compiling throws
   * outside its subset, and an evaluation it would hand to the engine is false with an error
   * starting with FAST_PATH_FELL_BACK.
   */
  engine?: 'auto' | 'reference' | 'fast';
}

/** @internal The error prefix of an evaluation the fast path would hand to the engine. */
export const FAST_PATH_FELL_BACK = 'the fast path fell back to the engine';

/** Conditions that run on the fast path. */
const fastConditions = new WeakSet<Condition>();

/**
 * @internal Which evaluator a compiled condition uses: `fast` (closures over the JSON values,
 * src/policy/cel-fast.ts) or `reference` (the engine).
 */
export function conditionEngine(condition: Condition): 'fast' | 'reference' {
  return fastConditions.has(condition) ? 'fast' : 'reference';
}

/** A condition that cannot be compiled. `line`/`column` are 1-based when known. */
export class ConditionError extends Error {
  readonly source: string;
  readonly line: number | undefined;
  readonly column: number | undefined;

  constructor(source: string, problem: string, offset?: number) {
    const pos = offset === undefined ? undefined : position(source, offset);
    super(
      `invalid condition ${JSON.stringify(source)}: ${problem}` +
        (pos ? ` (line ${pos.line}, column ${pos.column})` : ''),
    );
    this.name = 'ConditionError';
    this.source = source;
    this.line = pos?.line;
    this.column = pos?.column;
  }
}

const VARIABLE_NAMES = ['principal', 'server', 'method', 'target', 'arguments', 'message'] as const;
type VariableName = (typeof VARIABLE_NAMES)[number];
const DECLARED = new Set<string>(VARIABLE_NAMES);
/** Variables whose value is never a bool: a condition that is just one of them is refused. */
const NON_BOOL_VARIABLES = new Set<string>(['principal', 'server', 'method', 'target']);
/** Type names usable as values (`type(x) == string`). */
const TYPE_IDENTIFIERS = new Set([
  'bool',
  'bytes',
  'double',
  'dyn',
  'int',
  'list',
  'map',
  'null_type',
  'string',
  'type',
  'uint',
]);
/** Calls the planner implements itself: not in the function resolver, still valid. */
const PLANNER_FUNCTIONS = new Set(['_&&_', '_||_', '_?_:_', '_[_]', '@not_strictly_false']);
const BOOL_FUNCTIONS = new Set([
  '_&&_',
  '_||_',
  '!_',
  '_==_',
  '_!=_',
  '_<_',
  '_<=_',
  '_>_',
  '_>=_',
  '@in',
  '@not_strictly_false',
  'startsWith',
  'endsWith',
  'contains',
  'matches',
  'bool',
]);
const NON_BOOL_FUNCTIONS = new Set([
  '_+_',
  '_-_',
  '_*_',
  '_/_',
  '_%_',
  '-_',
  'size',
  'int',
  'uint',
  'double',
  'string',
  'bytes',
  'type',
  'timestamp',
  'duration',
  'dyn',
]);

// ---- per-evaluation budget -------------------------------------------------------------

class StepBudgetExceeded extends Error {}

/**
 * One per compiled condition, reset at the start of each of its evaluations (a condition
 * cannot be re-entered: evaluation is synchronous and calls no condition), so evaluating
 * allocates no meter.
 */
class Meter {
  remaining: number;
  exceeded = false;
  constructor(readonly maxSteps: number) {
    this.remaining = maxSteps;
  }
  reset(): void {
    this.remaining = this.maxSteps;
    this.exceeded = false;
  }
  tick(steps: number): void {
    this.remaining -= steps;
    if (this.remaining < 0) {
      this.exceeded = true;
      throw new StepBudgetExceeded(this.exceededMessage());
    }
  }
  exceededMessage(): string {
    return `the condition exceeded its budget of ${this.maxSteps} iteration steps`;
  }
}

/** The evaluation in progress. Evaluation is synchronous, so one slot is enough. */
let currentMeter: Meter | undefined;

function tick(steps = 1): void {
  currentMeter?.tick(steps);
}

// ---- JSON values, wrapped lazily ------------------------------------------------------

/**
 * Wraps JSON data as CEL values on first access and remembers each wrapper for the
 * evaluation, so a field read costs O(1) however often an iteration repeats it. Numbers stay
 * JS numbers, which CEL treats as `double` (the CEL spec's JSON mapping, google.protobuf.Value).
 */
class Lifter {
  private readonly seen = new Map<object, CelValue>();

  lift(v: unknown): CelValue {
    switch (typeof v) {
      case 'string':
      case 'boolean':
      case 'number':
      case 'bigint':
        return v;
      case 'undefined':
        return null;
      case 'object':
        break;
      default:
        throw new TypeError(`unsupported value of type ${typeof v}`);
    }
    if (v === null) return null;
    if (isCelList(v) || isCelMap(v)) return v;
    let lifted = this.seen.get(v);
    if (lifted === undefined) {
      lifted = Array.isArray(v)
        ? celList(jsonArrayView(v as unknown[], this))
        : celMap(new JsonObjectMap(v as Record<string, unknown>, this));
      this.seen.set(v, lifted);
    }
    return lifted;
  }
}

/**
 * A JSON array as the engine reads a list: `length`, `[i]`, `values()`, elements lifted.
 * A short array is copied (a plain array is several times faster to iterate than a proxy:
 * bench/cel.ts); a long one is a proxy, so `size()` or one index stays O(1). Both count
 * every element an iteration draws.
 */
function jsonArrayView(arr: readonly unknown[], lifter: Lifter): readonly CelValue[] {
  if (arr.length <= COPIED_ARRAY_MAX_ELEMENTS) {
    const copy: CelValue[] & { values?: unknown } = arr.map((el) => lifter.lift(el));
    copy.values = countedValues;
    return copy;
  }
  let lifted: CelValue[] | undefined;
  function values(): ArrayIterator<CelValue> {
    tick(arr.length);
    return (lifted ??= arr.map((el) => lifter.lift(el))).values();
  }
  return new Proxy(arr as CelValue[], {
    get(target, p, receiver) {
      if (p === 'values' || p === Symbol.iterator) return values;
      if (typeof p === 'string' && p !== 'length') {
        const i = Number(p);
        if (Number.isInteger(i) && i >= 0)
          return i < target.length ? lifter.lift(target[i]) : undefined;
      }
      return Reflect.get(target, p, receiver) as unknown;
    },
  });
}

const arrayValues = Array.prototype.values;

/**
 * Counts an iteration all at once: the engine draws every element of an iteration range
 * before folding it, so this is exact, and much cheaper than a generator.
 */
function countedValues(this: CelValue[]): ArrayIterator<CelValue> {
  tick(this.length);
  return arrayValues.call(this);
}

/** A JSON object as the engine reads a map (string keys, own properties only). */
class JsonObjectMap implements ReadonlyMap<string, CelValue> {
  private keyList: string[] | undefined;

  constructor(
    private readonly obj: Record<string, unknown>,
    private readonly lifter: Lifter,
  ) {}

  private ownKeys(): string[] {
    return (this.keyList ??= Object.keys(this.obj));
  }
  get size(): number {
    return this.ownKeys().length;
  }
  get(key: unknown): CelValue | undefined {
    if (typeof key !== 'string' || !Object.hasOwn(this.obj, key)) return undefined;
    return this.lifter.lift(this.obj[key]);
  }
  has(key: unknown): boolean {
    return typeof key === 'string' && Object.hasOwn(this.obj, key);
  }
  keys(): ArrayIterator<string> {
    const keys = this.ownKeys();
    tick(keys.length);
    return keys.values();
  }
  *values(): MapIterator<CelValue> {
    for (const k of this.keys()) yield this.lifter.lift(this.obj[k]);
  }
  *entries(): MapIterator<[string, CelValue]> {
    for (const k of this.keys()) yield [k, this.lifter.lift(this.obj[k])];
  }
  [Symbol.iterator](): MapIterator<[string, CelValue]> {
    return this.entries();
  }
  forEach(cb: (value: CelValue, key: string, map: ReadonlyMap<string, CelValue>) => void): void {
    for (const [k, v] of this.entries()) cb(v, k, this);
  }
}

// ---- list concatenation, linear ----------------------------------------------------------

/** Lists built by `concat`: their storage and how much of it they cover. */
const grown = new WeakMap<CelList, { storage: CelValue[]; length: number }>();

function sliceView(storage: CelValue[], length: number): readonly CelValue[] {
  function* values(): IterableIterator<CelValue> {
    for (let i = 0; i < length; i++) yield storage[i] as CelValue;
  }
  return new Proxy(storage, {
    get(target, p, receiver) {
      if (p === 'length') return length;
      if (p === 'values' || p === Symbol.iterator) return values;
      return Reflect.get(target, p, receiver) as unknown;
    },
  });
}

/**
 * `a + b` for lists, as Go's append: when `a` was built here and nothing has extended its
 * storage since, `b` is appended in place and the result is a longer view of the same
 * storage (`a` still sees its own length); otherwise `a` is copied first. `map`/`filter`
 * accumulate this way, so building an n-element result costs O(n), not O(n²).
 */
function concat(a: CelList, b: CelList): CelList {
  const owned = grown.get(a);
  let storage: CelValue[];
  if (owned !== undefined && owned.length === owned.storage.length) {
    storage = owned.storage;
  } else {
    storage = [];
    for (const v of a) {
      tick();
      storage.push(v);
    }
  }
  for (const v of b) {
    tick();
    storage.push(v);
  }
  const list = celList(sliceView(storage, storage.length));
  grown.set(list, { storage, length: storage.length });
  return list;
}

// ---- regexes: RE2, compiled once per pattern ---------------------------------------------

/**
 * A compiled pattern, searched only when the text holds one of the strings
 * every match must contain (src/policy/regex-prefilter.ts): most texts match
 * no deny pattern, and proving that with a folded `includes` is 20-50 times
 * cheaper than an RE2 search.
 */
class Regex {
  constructor(
    private readonly re: RE2JS,
    private readonly required: RequiredLiterals | undefined,
  ) {}

  test(text: string): boolean {
    if (this.required !== undefined && !mayMatch(this.required, text)) return false;
    return this.re.test(text);
  }
}

const regexCache = new Map<string, Regex>();

function compileRegex(pattern: string): Regex {
  let re = regexCache.get(pattern);
  if (re === undefined) {
    re = new Regex(RE2JS.compile(pattern), requiredLiterals(pattern));
    if (regexCache.size < REGEX_CACHE_MAX_ENTRIES) regexCache.set(pattern, re);
  }
  return re;
}

// ---- size(), without allocating ---------------------------------------------------------

/** A UTF-16 high surrogate: where a string can hold a code point that takes two units. */
const HIGH_SURROGATE = /[\uD800-\uDBFF]/;

/**
 * Code points in `s`, as the engine's `[...s].length` counts them (a surrogate pair is one, a
 * lone surrogate is one) but without building an array of them on every call: most strings
 * have no surrogate, and the count is their length.
 */
function codePointCount(s: string): number {
  if (!HIGH_SURROGATE.test(s)) return s.length;
  let n = s.length;
  for (let i = 0; i < s.length - 1; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

const DYN_LIST = listType(CelScalar.DYN);
const DYN_MAP = mapType(CelScalar.DYN, CelScalar.DYN);

/**
 * `size()` in all its forms. Each replaces the engine's overload of the same signature (same
 * results); `size(string)` counts without allocating, and the order puts what conditions size
 * most (JSON objects and strings) first, since the engine tries overloads in order and types
 * every argument afresh for each one it tries.
 */
const SIZE_FUNCS = [
  celFunc('size', [DYN_MAP], CelScalar.INT, (m: CelMap) => BigInt(m.size)),
  celFunc('size', [CelScalar.STRING], CelScalar.INT, (s: string) => BigInt(codePointCount(s))),
  celFunc('size', [DYN_LIST], CelScalar.INT, (l: CelList) => BigInt(l.size)),
  celFunc('size', [CelScalar.BYTES], CelScalar.INT, (b: Uint8Array) => BigInt(b.length)),
  celMethod('size', DYN_MAP, [], CelScalar.INT, function (this: CelMap) {
    return BigInt(this.size);
  }),
  celMethod('size', CelScalar.STRING, [], CelScalar.INT, function (this: string) {
    return BigInt(codePointCount(this));
  }),
  celMethod('size', DYN_LIST, [], CelScalar.INT, function (this: CelList) {
    return BigInt(this.size);
  }),
  celMethod('size', CelScalar.BYTES, [], CelScalar.INT, function (this: Uint8Array) {
    return BigInt(this.length);
  }),
];

// ---- the environment --------------------------------------------------------------------

const ENV = celEnv({
  variables: {
    principal: mapType(CelScalar.STRING, CelScalar.DYN),
    server: CelScalar.STRING,
    method: CelScalar.STRING,
    target: CelScalar.DYN,
    arguments: CelScalar.DYN,
    message: CelScalar.DYN,
  },
  funcs: [celFunc('_+_', [DYN_LIST, DYN_LIST], DYN_LIST, concat), ...SIZE_FUNCS],
  re2: { compile: compileRegex },
});

// ---- compile-time checks -----------------------------------------------------------------

type Expr = ReturnType<typeof parse>['expr'];
type Kind = 'bool' | 'other' | 'unknown';

interface CheckContext {
  source: string;
  positions: { [id: string]: number };
}

function offsetOf(ctx: CheckContext, e: Expr): number | undefined {
  return ctx.positions[String(e.id)];
}

/**
 * Walks the parsed expression: every identifier must be declared or bound by a comprehension,
 * every function must exist, every literal regex must compile. Returns what the expression
 * is known to produce, so a plainly non-bool condition is refused.
 */
function checkExpr(ctx: CheckContext, e: Expr, scope: ReadonlySet<string>): Kind {
  const k = e.exprKind;
  switch (k.case) {
    case 'constExpr':
      return k.value.constantKind.case === 'boolValue' ? 'bool' : 'other';
    case 'identExpr': {
      const name = k.value.name;
      if (scope.has(name)) return 'unknown';
      if (DECLARED.has(name)) return NON_BOOL_VARIABLES.has(name) ? 'other' : 'unknown';
      if (TYPE_IDENTIFIERS.has(name)) return 'other';
      throw new ConditionError(
        ctx.source,
        `unknown variable '${name}' (declared: ${VARIABLE_NAMES.join(', ')})`,
        offsetOf(ctx, e),
      );
    }
    case 'selectExpr': {
      const operand = k.value.operand;
      if (operand === undefined) throw new ConditionError(ctx.source, 'malformed field selection');
      checkExpr(ctx, operand, scope);
      if (k.value.testOnly) return 'bool';
      const isPrincipalField =
        operand.exprKind.case === 'identExpr' &&
        operand.exprKind.value.name === 'principal' &&
        !scope.has('principal');
      return isPrincipalField ? 'other' : 'unknown';
    }
    case 'callExpr': {
      const { function: fn, target, args } = k.value;
      if (!PLANNER_FUNCTIONS.has(fn) && ENV.funcs.find(fn) === undefined) {
        throw new ConditionError(ctx.source, `unknown function '${fn}'`, offsetOf(ctx, e));
      }
      if (target !== undefined) checkExpr(ctx, target, scope);
      const kinds = args.map((a) => checkExpr(ctx, a, scope));
      if (fn === 'matches') {
        const pattern = target === undefined ? args[1] : args[0];
        if (
          pattern?.exprKind.case === 'constExpr' &&
          pattern.exprKind.value.constantKind.case === 'stringValue'
        ) {
          try {
            compileRegex(pattern.exprKind.value.constantKind.value);
          } catch (err) {
            throw new ConditionError(
              ctx.source,
              `invalid regular expression: ${errorMessage(err)}`,
              offsetOf(ctx, pattern),
            );
          }
        }
      }
      if (fn === '_?_:_') {
        const [, yes, no] = kinds;
        if (yes === 'other' || no === 'other') return 'other';
        return yes === 'bool' && no === 'bool' ? 'bool' : 'unknown';
      }
      if (BOOL_FUNCTIONS.has(fn)) return 'bool';
      if (NON_BOOL_FUNCTIONS.has(fn)) return 'other';
      return 'unknown';
    }
    case 'listExpr':
      for (const el of k.value.elements) checkExpr(ctx, el, scope);
      return 'other';
    case 'structExpr':
      if (k.value.messageName !== '') {
        throw new ConditionError(
          ctx.source,
          `message construction '${k.value.messageName}{...}' is not supported; values are JSON`,
          offsetOf(ctx, e),
        );
      }
      for (const entry of k.value.entries) {
        if (entry.keyKind.case === 'mapKey') checkExpr(ctx, entry.keyKind.value, scope);
        if (entry.value !== undefined) checkExpr(ctx, entry.value, scope);
      }
      return 'other';
    case 'comprehensionExpr': {
      const c = k.value;
      if (c.iterRange === undefined || c.accuInit === undefined || c.result === undefined) {
        throw new ConditionError(ctx.source, 'malformed comprehension', offsetOf(ctx, e));
      }
      checkExpr(ctx, c.iterRange, scope);
      const accuKind = checkExpr(ctx, c.accuInit, scope);
      const inner = new Set(scope);
      inner.add(c.accuVar);
      const withAccu = new Set(inner);
      inner.add(c.iterVar);
      if (c.iterVar2 !== '') inner.add(c.iterVar2);
      if (c.loopCondition !== undefined) checkExpr(ctx, c.loopCondition, inner);
      if (c.loopStep !== undefined) checkExpr(ctx, c.loopStep, inner);
      const r = c.result;
      if (r.exprKind.case === 'identExpr' && r.exprKind.value.name === c.accuVar) return accuKind;
      return checkExpr(ctx, r, withAccu);
    }
    case undefined:
      throw new ConditionError(ctx.source, 'empty expression');
  }
}

// ---- compile and evaluate ----------------------------------------------------------------

/**
 * `has(v.f)` when it is the first thing the condition evaluates: the leftmost operand of its
 * top-level `&&` chain (or the whole condition), `v` a declared variable. The engine evaluates
 * `&&` left to right and returns false at the first false operand, so when `v` is a map without
 * `f` the result is `false`, without error, before anything has run or counted a step: it is
 * answered here without running the program. Most `has(arguments.x) && ...` conditions
 * stop there, and a full evaluation costs several times the test.
 */
function leadingPresenceTest(e: Expr): { variable: VariableName; field: string } | undefined {
  let first = e;
  while (
    first.exprKind.case === 'callExpr' &&
    first.exprKind.value.function === '_&&_' &&
    first.exprKind.value.target === undefined &&
    first.exprKind.value.args.length === 2
  ) {
    first = first.exprKind.value.args[0] as Expr;
  }
  const k = first.exprKind;
  if (k.case !== 'selectExpr' || !k.value.testOnly) return undefined;
  const operand = k.value.operand?.exprKind;
  if (operand?.case !== 'identExpr') return undefined;
  const name = operand.value.name;
  return (VARIABLE_NAMES as readonly string[]).includes(name)
    ? { variable: name as VariableName, field: k.value.field }
    : undefined;
}

/**
 * Compiles a policy condition. Throws ConditionError for a syntax error, an undeclared
 * variable, an unknown function, an invalid literal regex, or a result that is not a bool.
 */
/** The bindings of every declared variable (a name missing here is a type error). */
interface Bindings extends Record<VariableName, CelValue> {
  principal: CelMap;
  server: string;
  method: string;
  target: string | null;
  arguments: CelValue;
  message: CelValue;
}

/** The results without an error, shared: evaluating allocates no result for them. */
const TRUE_RESULT: ConditionResult = Object.freeze({ value: true });
const FALSE_RESULT: ConditionResult = Object.freeze({ value: false });

/**
 * The CEL bindings of one message's variables, made once however many
 * conditions read them: a message's rules share one set of lazy wrappers
 * (the wrappers are read-only views of the message, so sharing is safe).
 */
const bindingsByVars = new WeakMap<ConditionVars, Bindings>();

function bindingsOf(vars: ConditionVars): Bindings {
  let bindings = bindingsByVars.get(vars);
  if (bindings === undefined) {
    const lifter = new Lifter();
    bindings = {
      // A principal is always an object, so its wrapper is a map.
      principal: lifter.lift(vars.principal) as CelMap,
      server: vars.server,
      method: vars.method,
      target: vars.target ?? null,
      arguments: lifter.lift(vars.arguments ?? {}),
      message: lifter.lift(vars.message),
    };
    bindingsByVars.set(vars, bindings);
  }
  return bindings;
}

export function compileCondition(source: string, options: CompileConditionOptions = {}): Condition {
  const maxSteps = options.maxSteps ?? DEFAULT_CONDITION_MAX_STEPS;
  if (!Number.isSafeInteger(maxSteps) || maxSteps < 1) {
    throw new RangeError(`maxSteps must be a positive integer, got ${maxSteps}`);
  }
  if (source.trim() === '') throw new ConditionError(source, 'the expression is empty');
  if (source.length > MAX_CONDITION_SOURCE_CHARS) {
    throw new ConditionError(
      source.slice(0, 40) + '…',
      `longer than ${MAX_CONDITION_SOURCE_CHARS} characters`,
    );
  }

  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(source);
  } catch (err) {
    throw syntaxError(source, err);
  }
  const positions: { [id: string]: number } = parsed.sourceInfo?.positions ?? {};
  const ctx: CheckContext = { source, positions };
  const kind = checkExpr(ctx, parsed.expr, new Set());
  if (kind === 'other') {
    throw new ConditionError(source, 'the expression does not evaluate to a bool', 0);
  }

  const program = plan(ENV, parsed);
  const guard = leadingPresenceTest(parsed.expr);
  const meter = new Meter(maxSteps);
  const mode = options.engine ?? 'auto';
  const fast: FastProgram | undefined =
    mode === 'reference'
      ? undefined
      : compileFast(parsed.expr, DECLARED, {
          tick: (steps) => meter.tick(steps),
          regex: compileRegex,
          codePoints: codePointCount,
        });
  if (mode === 'fast' && fast === undefined) {
    throw new ConditionError(source, 'the expression is outside the fast path subset');
  }

  // Where an error happened, worked out once per expression: a condition that errors on some
  // message shape errors on every message of that shape.
  const whereById = new Map<bigint, string>();
  function where(exprId: bigint | undefined): string {
    if (exprId === undefined) return '';
    let text = whereById.get(exprId);
    if (text === undefined) {
      const at = positions[String(exprId)];
      text = at === undefined ? '' : ` (${describePosition(source, at)})`;
      whereById.set(exprId, text);
    }
    return text;
  }

  /**
   * The fast path. Whatever it does not mirror exactly, it hands to the engine: a FastBail,
   * or any exception that is neither a CEL error nor the budget (a stack overflow on a deep
   * message, say), which the engine may treat otherwise.
   */
  function evaluateFast(run: FastProgram, vars: ConditionVars): ConditionResult {
    meter.reset();
    let result: unknown;
    try {
      result = run(vars);
    } catch (err) {
      if (meter.exceeded) return { value: false, error: meter.exceededMessage() };
      if (err instanceof CelFault) return { value: false, error: err.message + where(err.exprId) };
      if (mode === 'fast') {
        const why = err instanceof FastBail ? err.reason : errorMessage(err);
        return { value: false, error: `${FAST_PATH_FELL_BACK}: ${why}` };
      }
      return evaluateOnEngine(vars);
    }
    if (result === true) return TRUE_RESULT;
    if (result === false) return FALSE_RESULT;
    return {
      value: false,
      error: `the expression evaluated to ${describeFastValue(result)}, not a bool`,
    };
  }

  function evaluateOnEngine(vars: ConditionVars): ConditionResult {
    meter.reset();
    const outer = currentMeter;
    currentMeter = meter;
    try {
      const bindings = bindingsOf(vars);
      if (guard !== undefined) {
        // The same test the engine would make first (`isSet`: a map's `has`).
        const operand = bindings[guard.variable];
        if (isCelMap(operand) && !operand.has(guard.field)) return FALSE_RESULT;
      }
      const result = program(bindings);
      if (meter.exceeded) return { value: false, error: meter.exceededMessage() };
      if (isCelError(result)) return { value: false, error: result.message + where(result.exprId) };
      if (typeof result !== 'boolean') {
        return {
          value: false,
          error: `the expression evaluated to ${describe(result)}, not a bool`,
        };
      }
      return result ? TRUE_RESULT : FALSE_RESULT;
    } catch (err) {
      if (meter.exceeded) return { value: false, error: meter.exceededMessage() };
      return { value: false, error: `evaluation failed: ${errorMessage(err)}` };
    } finally {
      currentMeter = outer;
    }
  }

  const evaluateDetailed =
    fast === undefined
      ? evaluateOnEngine
      : (vars: ConditionVars): ConditionResult => evaluateFast(fast, vars);
  const condition: Condition = Object.freeze({
    source,
    evaluateDetailed,
    evaluate: (vars: ConditionVars): boolean => evaluateDetailed(vars).value,
  });
  if (fast !== undefined) fastConditions.add(condition);
  return condition;
}

// ---- messages ------------------------------------------------------------------------------

function syntaxError(source: string, err: unknown): ConditionError {
  // ParseSyntaxError carries `location.start.offset` (peggy); its message repeats "<input>:l:c:".
  const e = err as {
    rawMessage?: unknown;
    message?: unknown;
    location?: { start?: { offset?: unknown } };
  };
  const offset = e.location?.start?.offset;
  const text =
    typeof e.rawMessage === 'string'
      ? e.rawMessage
      : errorMessage(err).replace(/^<input>:\d+:\d+:\s*/, '');
  return new ConditionError(
    source,
    `syntax error: ${text}`,
    typeof offset === 'number' ? offset : undefined,
  );
}

function position(source: string, offset: number): { line: number; column: number } {
  const before = source.slice(0, Math.max(0, offset));
  const line = before.split('\n').length;
  const column = offset - (before.lastIndexOf('\n') + 1) + 1;
  return { line, column };
}

function describePosition(source: string, offset: number): string {
  const { line, column } = position(source, offset);
  return `line ${line}, column ${column}`;
}

function describe(v: CelValue): string {
  if (v === null) return 'null';
  if (isCelList(v)) return 'a list';
  if (isCelMap(v)) return 'a map';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v === 'bigint' ? 'int' : typeof v === 'number' ? 'double' : typeof v}`;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
