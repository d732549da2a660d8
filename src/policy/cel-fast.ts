/**
 * The fast path of CEL conditions: a parsed condition compiled straight into JavaScript
 * closures that read the message's plain JSON values, for a subset of CEL.
 *
 * Owns: deciding whether an expression is in that subset (`compileFast` returns undefined when
 * it is not, and src/policy/cel.ts then keeps the engine), and evaluating it with the results
 * the engine path gives on the same values: the same value, an error in the same cases, the
 * same iteration steps counted. The engine (`@bufbuild/cel` 0.6.1 with the replacements in
 * cel.ts) is the reference; test/policy-cel-fast.test.ts compares the two on generated
 * expressions and messages.
 *
 * Why: the engine costs about 2 µs per condition in allocations (an activation, attribute
 * resolution through qualified names, overload dispatch that types every argument, error
 * objects, generators); a policy has about 20 conditions per `tools/call`. A closure per AST
 * node, values left as JSON, costs a small fraction of that.
 *
 * The subset: the six variables and comprehension variables; `a.f`, `a[k]`, `has(a.f)`;
 * string, int, uint, double, bool and null literals and list literals; `&&`, `||`, `!`, `?:`;
 * `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`; `size()`, `startsWith`, `endsWith`, `contains`,
 * `matches` (RE2, through the cache cel.ts gives); `+`, `-`, `*`, `/`, `%` and unary `-` on
 * int (int64 overflow is an error), double and string (`+`); the macros `all`, `exists`,
 * `exists_one`. Everything else (type identifiers and conversions, bytes, map literals,
 * `map`/`filter`, timestamps, optionals) leaves the whole condition to the engine.
 *
 * Values, as the engine sees them through cel.ts's Lifter: a JSON number is a `double`, an
 * int is a bigint, a uint literal a `Uint`; an object is a map (own properties only, so
 * `constructor` or `__proto__` are missing keys), an array a list; `undefined` is null.
 *
 * Errors are thrown, not returned: a `CelFault` is a CEL error value (absorbed by `&&`/`||`
 * as CEL says, held by a comprehension's accumulator); anything else thrown (the step budget)
 * ends the evaluation. Where this path meets something it does not mirror exactly at run time
 * (list concatenation, uint arithmetic, a list indexed by a fraction or a bool, a value that
 * is not JSON), it throws `FastBail` and cel.ts evaluates the condition on the engine instead:
 * evaluation has no effect but counted steps, which the engine counts afresh.
 */
import type { parse } from '@bufbuild/cel';
import type { ConditionVars } from './cel.js';

type Expr = ReturnType<typeof parse>['expr'];

/** What the fast path needs from cel.ts: the same step meter, regex cache and size(). */
export interface FastRuntime {
  /** Counts iteration steps for this condition; throws once past its budget. */
  tick(steps: number): void;
  /** Compiles (or finds) an RE2 pattern; throws on an invalid one. */
  regex(pattern: string): { test(input: string): boolean };
  /** Code points in a string, as the engine path's `size()` counts them. */
  codePoints(s: string): number;
}

/** A compiled condition: its value, or it throws (CelFault, FastBail, the step budget). */
export type FastProgram = (vars: ConditionVars) => unknown;

/** A CEL error value, thrown. Not an Error: no stack is captured on the hot path. */
export class CelFault {
  constructor(
    readonly message: string,
    /** The id of the expression that failed, for its source position. */
    readonly exprId: bigint,
  ) {}
}

/** This evaluation must be made by the engine: the fast path does not mirror it. */
export class FastBail {
  constructor(readonly reason: string) {}
}

/** A CEL uint; only literals make one (JSON has none). */
class Uint {
  constructor(readonly value: bigint) {}
}

type Code = (vars: ConditionVars) => unknown;

/** What a node is known to produce when it does not throw, for specialised operators. */
interface Node {
  readonly run: Code;
  /** Set when the node is a literal. */
  readonly constant?: { readonly value: unknown };
  /** For a node that always yields an int: the same int as a JS number (size()). */
  readonly smallInt?: (vars: ConditionVars) => number;
}

class Unsupported extends Error {}

const MAX_INT = 9_223_372_036_854_775_807n;
const MIN_INT = -9_223_372_036_854_775_808n;

/**
 * Lists written in the expression. The engine counts a step for every element an iteration
 * (or `in`) draws from message data, not from a literal, so the two must be told apart.
 */
const literalLists = new WeakSet<readonly unknown[]>();

/** `arguments` when the message has none, as the engine path binds it: an empty map. */
const NO_ARGUMENTS: Readonly<Record<string, unknown>> = Object.freeze({});

/**
 * Compiles `expr` for the fast path, or returns undefined when some part of it is outside the
 * subset. `declared` are the condition's variables; `rt` is its meter and helpers.
 */
export function compileFast(
  expr: Expr,
  declared: ReadonlySet<string>,
  rt: FastRuntime,
): FastProgram | undefined {
  const slots: unknown[] = [];
  try {
    const node = new Compiler(declared, rt, slots).compile(expr, new Map());
    return node.run;
  } catch (err) {
    if (err instanceof Unsupported) return undefined;
    throw err;
  }
}

// ---- values ----------------------------------------------------------------------------------

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint);
}

/** A value read from message data, as the engine path's Lifter makes it. */
function norm(v: unknown): unknown {
  if (v === undefined) return null;
  const t = typeof v;
  if (t === 'function' || t === 'symbol') throw new FastBail(`a ${t} in the message`);
  return v;
}

/** The CEL type name of a value, for error messages. */
function typeName(v: unknown): string {
  switch (typeof v) {
    case 'bigint':
      return 'int';
    case 'number':
      return 'double';
    case 'string':
      return 'string';
    case 'boolean':
      return 'bool';
  }
  if (v === null) return 'null_type';
  if (Array.isArray(v)) return 'list';
  if (v instanceof Uint) return 'uint';
  return 'map';
}

/** The result description cel.ts gives for a non-bool result on the engine path. */
export function describeFastValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Uint) return 'an object';
  if (typeof v === 'object') return 'a map';
  return `a ${typeof v === 'bigint' ? 'int' : typeof v === 'number' ? 'double' : typeof v}`;
}

function noOverload(id: bigint, fn: string, target: unknown, args: readonly unknown[]): CelFault {
  const on = target === undefined ? '' : `${typeName(target)}.`;
  return new CelFault(
    `found no matching overload for '${fn}' applied to '${on}(${args.map(typeName).join(', ')})'`,
    id,
  );
}

/** Object.keys(m).length without the array: own enumerable string keys, as for-in with hasOwn sees them. */
function ownKeyCount(m: Record<string, unknown>): number {
  let n = 0;
  for (const k in m) if (Object.hasOwn(m, k)) n++;
  return n;
}

/** A number and a bigint are equal when they are mathematically (JS `==` on the pair). */
function numberEqualsInt(n: number, i: bigint): boolean {
  return Number.isInteger(n) && BigInt(n) === i;
}

/**
 * CEL equality as the engine's `equals`: numbers across int, uint and double; lists element
 * by element; maps by keys and values, a map comparison counting the left map's keys as
 * steps (the engine iterates them); anything else only when type and value are the same.
 */
function equals(rt: FastRuntime, a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Uint) a = a.value;
  if (b instanceof Uint) b = b.value;
  const ta = typeof a;
  const tb = typeof b;
  if (ta === 'number') {
    if (tb === 'number') return a === b;
    if (tb === 'bigint') return numberEqualsInt(a as number, b as bigint);
    return false;
  }
  if (ta === 'bigint') {
    if (tb === 'bigint') return a === b;
    if (tb === 'number') return numberEqualsInt(b as number, a as bigint);
    return false;
  }
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) {
      if (!equals(rt, norm(a[i]), norm(b[i]))) return false;
    }
    return true;
  }
  if (isMap(a)) {
    if (!isMap(b)) return false;
    const keys = Object.keys(a);
    if (keys.length !== ownKeyCount(b)) return false;
    rt.tick(keys.length);
    for (const k of keys) {
      if (!Object.hasOwn(b, k)) return false;
      if (!equals(rt, norm(a[k]), norm(b[k]))) return false;
    }
    return true;
  }
  return false;
}

type CompareOp = '_<_' | '_<=_' | '_>_' | '_>=_';

function cmpNumbers(op: CompareOp, l: number | bigint | string | boolean, r: typeof l): boolean {
  switch (op) {
    case '_<_':
      return l < r;
    case '_<=_':
      return l <= r;
    case '_>_':
      return l > r;
    case '_>=_':
      return l >= r;
  }
}

/** `<`, `<=`, `>`, `>=` with the engine's overloads: int and double meet as doubles. */
function compare(op: CompareOp, id: bigint, l: unknown, r: unknown): boolean {
  const tl = typeof l;
  const tr = typeof r;
  if (tl === tr && (tl === 'number' || tl === 'string' || tl === 'bigint' || tl === 'boolean')) {
    return cmpNumbers(op, l as number, r as number);
  }
  if (tl === 'bigint') {
    if (tr === 'number') return cmpNumbers(op, Number(l), r as number);
    if (r instanceof Uint) return cmpNumbers(op, l as bigint, r.value);
  } else if (tl === 'number') {
    if (tr === 'bigint') return cmpNumbers(op, l as number, Number(r));
    if (r instanceof Uint) return cmpNumbers(op, l as number, Number(r.value));
  } else if (l instanceof Uint) {
    if (tr === 'bigint') return cmpNumbers(op, l.value, r as bigint);
    if (r instanceof Uint) return cmpNumbers(op, l.value, r.value);
    if (tr === 'number') return cmpNumbers(op, Number(l.value), r as number);
  }
  throw noOverload(id, op, undefined, [l, r]);
}

function safeInt(id: bigint, v: bigint, op: string): bigint {
  if (v < MIN_INT || v > MAX_INT) throw new CelFault(`int overflow during ${op}`, id);
  return v;
}

type ArithOp = '_+_' | '_-_' | '_*_' | '_/_' | '_%_';

/** Arithmetic with the engine's overloads: int with int (checked), double with double. */
function arith(op: ArithOp, id: bigint, l: unknown, r: unknown): unknown {
  const tl = typeof l;
  const tr = typeof r;
  if (tl === 'bigint' && tr === 'bigint') {
    const a = l as bigint;
    const b = r as bigint;
    switch (op) {
      case '_+_':
        return safeInt(id, a + b, op);
      case '_-_':
        return safeInt(id, a - b, op);
      case '_*_':
        return safeInt(id, a * b, op);
      case '_/_':
        if (b === 0n) throw new CelFault('int divide by zero', id);
        return safeInt(id, a / b, `divide by ${b}`);
      case '_%_':
        if (b === 0n) throw new CelFault('int modulus by zero', id);
        return a % b;
    }
  }
  if (tl === 'number' && tr === 'number') {
    const a = l as number;
    const b = r as number;
    switch (op) {
      case '_+_':
        return a + b;
      case '_-_':
        return a - b;
      case '_*_':
        return a * b;
      case '_/_':
        return a / b;
      case '_%_':
        break;
    }
  }
  if (op === '_+_' && tl === 'string' && tr === 'string') return (l as string) + (r as string);
  // The engine path builds lists with an append that shares storage and counts the elements it
  // copies (cel.ts `concat`); uint arithmetic has its own overflow rules. Neither is mirrored.
  if (l instanceof Uint && r instanceof Uint) throw new FastBail('uint arithmetic');
  if (op === '_+_' && Array.isArray(l) && Array.isArray(r))
    throw new FastBail('list concatenation');
  throw noOverload(id, op, undefined, [l, r]);
}

/** `v in list`: every element of a list from message data counts a step, found or not. */
function inList(rt: FastRuntime, value: unknown, list: readonly unknown[]): boolean {
  if (!literalLists.has(list)) rt.tick(list.length);
  for (let i = 0; i < list.length; i++) {
    if (equals(rt, norm(list[i]), value)) return true;
  }
  return false;
}

/**
 * A map looked up with a key that is not a string: the engine's map converts an integral
 * number to an int and, finding no int key, scans its keys for a uint one, counting them.
 */
function scanForNumericKey(rt: FastRuntime, m: Record<string, unknown>, key: unknown): void {
  if (typeof key === 'bigint' || key instanceof Uint) rt.tick(ownKeyCount(m));
  else if (typeof key === 'number' && Number.isInteger(key)) rt.tick(ownKeyCount(m));
}

// ---- the compiler ----------------------------------------------------------------------------

type Scope = ReadonlyMap<string, number>;

const COMPARE_OPS = new Set(['_<_', '_<=_', '_>_', '_>=_']);
const ARITH_OPS = new Set(['_+_', '_-_', '_*_', '_/_', '_%_']);
const STRING_METHODS = new Set(['startsWith', 'endsWith', 'contains']);

class Compiler {
  constructor(
    private readonly declared: ReadonlySet<string>,
    private readonly rt: FastRuntime,
    /** Comprehension variables, one slot each: evaluation is never re-entered. */
    private readonly slots: unknown[],
  ) {}

  compile(e: Expr, scope: Scope): Node {
    const k = e.exprKind;
    switch (k.case) {
      case 'constExpr':
        return this.constant(k.value.constantKind);
      case 'identExpr':
        return this.ident(k.value.name, scope);
      case 'selectExpr': {
        if (k.value.operand === undefined) throw new Unsupported();
        const operand = this.compile(k.value.operand, scope);
        return k.value.testOnly
          ? this.has(operand.run, k.value.field)
          : this.select(e.id, operand.run, k.value.field);
      }
      case 'callExpr':
        return this.call(e, k.value, scope);
      case 'listExpr':
        return this.list(k.value.elements, k.value.optionalIndices.length, scope);
      case 'comprehensionExpr':
        return this.comprehension(e.id, k.value, scope);
      default:
        throw new Unsupported();
    }
  }

  private constant(
    c: Extract<Expr['exprKind'], { case: 'constExpr' }>['value']['constantKind'],
  ): Node {
    let value: unknown;
    switch (c.case) {
      case 'stringValue':
      case 'doubleValue':
      case 'boolValue':
      case 'int64Value':
        value = c.value;
        break;
      case 'uint64Value':
        value = new Uint(c.value);
        break;
      case 'nullValue':
        value = null;
        break;
      default:
        throw new Unsupported();
    }
    const node: Node = { run: () => value, constant: { value } };
    if (typeof value === 'bigint' && Number.isSafeInteger(Number(value))) {
      const n = Number(value);
      return { ...node, smallInt: () => n };
    }
    return node;
  }

  private ident(name: string, scope: Scope): Node {
    const slot = scope.get(name);
    if (slot !== undefined) {
      const slots = this.slots;
      return {
        run: () => {
          const v = slots[slot];
          // An accumulator holds the error of a failed step, as the engine's does.
          if (v instanceof CelFault) throw v;
          return v;
        },
      };
    }
    if (!this.declared.has(name)) throw new Unsupported();
    switch (name) {
      case 'principal':
        return { run: (vars) => norm(vars.principal) };
      case 'server':
        return { run: (vars) => stringVar(vars.server) };
      case 'method':
        return { run: (vars) => stringVar(vars.method) };
      case 'target':
        return {
          run: (vars) => {
            const t: unknown = vars.target;
            return t === undefined || t === null ? null : stringVar(t);
          },
        };
      case 'arguments':
        return { run: (vars) => norm(vars.arguments ?? NO_ARGUMENTS) };
      case 'message':
        return { run: (vars) => norm(vars.message) };
      default:
        throw new Unsupported();
    }
  }

  /** `has(o.f)`: false for anything but a map; a key whose value is null is not set. */
  private has(operand: Code, field: string): Node {
    return {
      run: (vars) => {
        const o = operand(vars);
        return isMap(o) && Object.hasOwn(o, field) && norm(o[field]) !== null;
      },
    };
  }

  private select(id: bigint, operand: Code, field: string): Node {
    return {
      run: (vars) => {
        const o = operand(vars);
        if (isMap(o) && Object.hasOwn(o, field)) return norm(o[field]);
        throw new CelFault(`field not found: ${field}`, id);
      },
    };
  }

  /** `o[k]`, as the engine's attribute accesses do it for each type of key. */
  private index(id: bigint, operand: Code, key: Node): Node {
    const rt = this.rt;
    const keyRun = key.run;
    return {
      run: (vars) => {
        const o = operand(vars);
        const k = keyRun(vars);
        if (k === null || typeof k === 'object') {
          if (!(k instanceof Uint)) throw new CelFault('unsupported key type', id);
        }
        if (Array.isArray(o)) {
          if (typeof k === 'string') throw new CelFault(`field not found: ${k}`, id);
          // The engine reads element 1 for `true`, and fails outside CEL for a fraction.
          if (typeof k === 'boolean') throw new FastBail('a list indexed by a bool');
          if (typeof k === 'number' && !Number.isInteger(k)) {
            throw new FastBail('a list indexed by a fraction');
          }
          const i = typeof k === 'number' ? k : Number(k instanceof Uint ? k.value : (k as bigint));
          if (i >= 0 && i < o.length) return norm(o[i]);
          throw new CelFault(`index ${i} out of bounds [0, ${o.length})`, id);
        }
        if (isMap(o)) {
          if (typeof k === 'string') {
            if (Object.hasOwn(o, k)) return norm(o[k]);
            throw new CelFault(`field not found: ${k}`, id);
          }
          scanForNumericKey(rt, o, k);
          throw new CelFault(`key not found: ${String(k instanceof Uint ? k.value : k)}`, id);
        }
        throw new CelFault(`no such key on a ${typeName(o)}`, id);
      },
    };
  }

  private list(elements: readonly Expr[], optionals: number, scope: Scope): Node {
    if (optionals > 0) throw new Unsupported();
    const nodes = elements.map((el) => this.compile(el, scope));
    if (nodes.every((n) => n.constant !== undefined)) {
      const value = Object.freeze(nodes.map((n) => n.constant?.value));
      literalLists.add(value);
      return { run: () => value, constant: { value } };
    }
    const runs = nodes.map((n) => n.run);
    return {
      run: (vars) => {
        const out: unknown[] = [];
        for (const r of runs) out.push(r(vars));
        literalLists.add(out);
        return out;
      },
    };
  }

  private comprehension(
    id: bigint,
    c: Extract<Expr['exprKind'], { case: 'comprehensionExpr' }>['value'],
    scope: Scope,
  ): Node {
    if (
      c.iterVar2 !== '' ||
      c.iterRange === undefined ||
      c.accuInit === undefined ||
      c.loopCondition === undefined ||
      c.loopStep === undefined ||
      c.result === undefined
    ) {
      throw new Unsupported();
    }
    // map() and filter() accumulate a list by concatenation, which the engine path counts in
    // its own way (cel.ts `concat`): they stay on the engine.
    if (c.accuInit.exprKind.case === 'listExpr') throw new Unsupported();
    const accuInit = this.compile(c.accuInit, scope).run;
    const range = this.compile(c.iterRange, scope).run;
    const accuSlot = this.slots.push(undefined) - 1;
    const iterSlot = this.slots.push(undefined) - 1;
    const withAccu = new Map(scope).set(c.accuVar, accuSlot);
    const inner = new Map(withAccu).set(c.iterVar, iterSlot);
    const cond = this.compile(c.loopCondition, inner).run;
    const step = this.compile(c.loopStep, inner).run;
    const result = this.compile(c.result, withAccu).run;
    const { rt, slots } = this;
    return {
      run: (vars) => {
        // The engine's order: the accumulator, the range, then every item drawn at once.
        const init = accuInit(vars);
        const r = range(vars);
        let items: readonly unknown[];
        let fromData: boolean;
        if (Array.isArray(r)) {
          fromData = !literalLists.has(r);
          if (fromData) rt.tick(r.length);
          items = r;
        } else if (isMap(r)) {
          items = Object.keys(r);
          fromData = false;
          rt.tick(items.length);
        } else {
          throw new CelFault(`type mismatch: iterable vs ${typeName(r)}`, id);
        }
        slots[accuSlot] = init;
        for (let i = 0; i < items.length; i++) {
          slots[iterSlot] = fromData ? norm(items[i]) : items[i];
          if (cond(vars) !== true) break;
          try {
            slots[accuSlot] = step(vars);
          } catch (err) {
            if (!(err instanceof CelFault)) throw err;
            slots[accuSlot] = err;
          }
        }
        try {
          return result(vars);
        } finally {
          // Hold no message data between evaluations.
          slots[accuSlot] = undefined;
          slots[iterSlot] = undefined;
        }
      },
    };
  }

  private call(
    e: Expr,
    c: Extract<Expr['exprKind'], { case: 'callExpr' }>['value'],
    scope: Scope,
  ): Node {
    const fn = c.function;
    const id = e.id;
    const argc = c.args.length;
    const hasTarget = c.target !== undefined;
    const arg = (i: number): Node => this.compile(c.args[i] as Expr, scope);

    if (!hasTarget) {
      switch (fn) {
        case '_&&_':
        case '_||_':
          if (argc < 1) break;
          return this.logical(
            id,
            fn === '_&&_',
            c.args.map((a) => this.compile(a, scope).run),
          );
        case '!_':
          if (argc !== 1) break;
          return this.not(id, arg(0).run);
        case '@not_strictly_false':
          if (argc !== 1) break;
          return this.notStrictlyFalse(arg(0).run);
        case '_?_:_':
          if (argc !== 3) break;
          return this.conditional(id, arg(0).run, arg(1).run, arg(2).run);
        case '_==_':
        case '_!=_':
          if (argc !== 2) break;
          return this.equality(fn === '_!=_', arg(0), arg(1));
        case '@in':
          if (argc !== 2) break;
          return this.membership(id, arg(0).run, arg(1));
        case '_[_]':
          if (argc !== 2) break;
          return this.index(id, arg(0).run, arg(1));
        case 'size':
          if (argc !== 1) break;
          return this.size(id, arg(0).run, false);
        case '-_':
          if (argc !== 1) break;
          return this.negate(id, arg(0).run);
      }
      if (COMPARE_OPS.has(fn) && argc === 2)
        return this.comparison(fn as CompareOp, id, arg(0), arg(1));
      if (ARITH_OPS.has(fn) && argc === 2) {
        // A list literal added to something is list concatenation: the engine's.
        if (c.args.some((a) => a.exprKind.case === 'listExpr')) throw new Unsupported();
        return this.arithmetic(fn as ArithOp, id, arg(0).run, arg(1).run);
      }
      throw new Unsupported();
    }

    const target = this.compile(c.target as Expr, scope);
    if (fn === 'size' && argc === 0) return this.size(id, target.run, true);
    if (STRING_METHODS.has(fn) && argc === 1) return this.stringMethod(id, fn, target.run, arg(0));
    if (fn === 'matches' && argc === 1) return this.matches(id, target.run, arg(0));
    throw new Unsupported();
  }

  /**
   * `&&` / `||` as the engine's: operands left to right, the first deciding one (false for
   * `&&`, true for `||`) wins even after an error; otherwise the first error, or a type
   * mismatch for an operand that is not a bool.
   */
  private logical(id: bigint, isAnd: boolean, operands: Code[]): Node {
    const decides = !isAnd;
    return {
      run: (vars) => {
        let fault: CelFault | undefined;
        for (const operand of operands) {
          let v: unknown;
          try {
            v = operand(vars);
          } catch (err) {
            if (!(err instanceof CelFault)) throw err;
            fault ??= err;
            continue;
          }
          if (v === decides) return decides;
          if (typeof v !== 'boolean') {
            fault ??= new CelFault(`type mismatch: expected bool, got ${typeName(v)}`, id);
          }
        }
        if (fault !== undefined) throw fault;
        return !decides;
      },
    };
  }

  private not(id: bigint, operand: Code): Node {
    return {
      run: (vars) => {
        const v = operand(vars);
        if (typeof v === 'boolean') return !v;
        throw noOverload(id, '!_', undefined, [v]);
      },
    };
  }

  /** The macros' loop condition: anything but `false`, an error included, goes on. */
  private notStrictlyFalse(operand: Code): Node {
    return {
      run: (vars) => {
        try {
          return operand(vars) !== false;
        } catch (err) {
          if (!(err instanceof CelFault)) throw err;
          return true;
        }
      },
    };
  }

  private conditional(id: bigint, cond: Code, yes: Code, no: Code): Node {
    return {
      run: (vars) => {
        const c = cond(vars);
        if (c === true) return yes(vars);
        if (c === false) return no(vars);
        throw new CelFault(
          `found no matching overload for _?_:_ applied to '(${typeName(c)})'`,
          id,
        );
      },
    };
  }

  private equality(negate: boolean, left: Node, right: Node): Node {
    const rt = this.rt;
    const l = left.run;
    const r = right.run;
    // A literal on either side: equality with it needs no general comparison. Both sides
    // are still evaluated in order, for their errors.
    const lit = right.constant ?? left.constant;
    const other = right.constant !== undefined ? l : r;
    const oneLiteral = (left.constant === undefined) !== (right.constant === undefined);
    if (lit !== undefined && oneLiteral) {
      const c = lit.value;
      let same: ((v: unknown) => boolean) | undefined;
      if (typeof c === 'string' || typeof c === 'boolean' || c === null) {
        same = (v) => v === c;
      } else if (typeof c === 'bigint' && Number.isSafeInteger(Number(c))) {
        const n = Number(c);
        same = (v) => v === n || v === c || (v instanceof Uint && v.value === c);
      }
      if (same !== undefined) {
        const test = same;
        return negate
          ? { run: (vars) => !test(other(vars)) }
          : { run: (vars) => test(other(vars)) };
      }
    }
    return negate
      ? { run: (vars) => !equals(rt, l(vars), r(vars)) }
      : { run: (vars) => equals(rt, l(vars), r(vars)) };
  }

  private comparison(op: CompareOp, id: bigint, left: Node, right: Node): Node {
    const l = left.run;
    const r = right.run;
    // size() against an int literal: both ints, compared as JS numbers (exact below 2^53).
    if (left.smallInt !== undefined && right.smallInt !== undefined) {
      const ls = left.smallInt;
      const rs = right.smallInt;
      return { run: (vars) => cmpNumbers(op, ls(vars), rs(vars)) };
    }
    const c = right.constant?.value;
    if (left.smallInt !== undefined && typeof c === 'number') {
      // int against double: the int as a double, exact for a size.
      const ls = left.smallInt;
      return { run: (vars) => cmpNumbers(op, ls(vars), c) };
    }
    // A JSON number against an int literal is double against int: the literal as a double.
    if (typeof c === 'bigint' || typeof c === 'number') {
      const n = Number(c);
      return {
        run: (vars) => {
          const v = l(vars);
          return typeof v === 'number' ? cmpNumbers(op, v, n) : compare(op, id, v, c);
        },
      };
    }
    return { run: (vars) => compare(op, id, l(vars), r(vars)) };
  }

  private membership(id: bigint, value: Code, container: Node): Node {
    const rt = this.rt;
    const c = container.constant?.value;
    // A literal list of strings: a set. Any other value equals none of its elements.
    if (Array.isArray(c) && c.every((x) => typeof x === 'string')) {
      const set = new Set<unknown>(c);
      return { run: (vars) => set.has(value(vars)) };
    }
    const containerRun = container.run;
    return {
      run: (vars) => {
        const v = value(vars);
        const m = containerRun(vars);
        if (Array.isArray(m)) return inList(rt, v, m);
        if (isMap(m)) {
          if (typeof v === 'string') return Object.hasOwn(m, v) && norm(m[v]) !== null;
          if (
            typeof v === 'number' ||
            typeof v === 'bigint' ||
            typeof v === 'boolean' ||
            v instanceof Uint
          ) {
            scanForNumericKey(rt, m, v);
            return false;
          }
        }
        throw noOverload(id, '@in', undefined, [v, m]);
      },
    };
  }

  /** size() and .size(): keys of a map, code points of a string, elements of a list. */
  private size(id: bigint, operand: Code, method: boolean): Node {
    const { codePoints } = this.rt;
    const count = (vars: ConditionVars): number => {
      const v = operand(vars);
      if (typeof v === 'string') return codePoints(v);
      if (Array.isArray(v)) return v.length;
      if (isMap(v)) return ownKeyCount(v);
      throw method ? noOverload(id, 'size', v, []) : noOverload(id, 'size', undefined, [v]);
    };
    return { run: (vars) => BigInt(count(vars)), smallInt: count };
  }

  private negate(id: bigint, operand: Code): Node {
    return {
      run: (vars) => {
        const v = operand(vars);
        if (typeof v === 'bigint') return safeInt(id, -v, 'negation');
        if (typeof v === 'number') return -v;
        throw noOverload(id, '-_', undefined, [v]);
      },
    };
  }

  private arithmetic(op: ArithOp, id: bigint, l: Code, r: Code): Node {
    return { run: (vars) => arith(op, id, l(vars), r(vars)) };
  }

  private stringMethod(id: bigint, fn: string, target: Code, argument: Node): Node {
    const impl =
      fn === 'startsWith'
        ? String.prototype.startsWith
        : fn === 'endsWith'
          ? String.prototype.endsWith
          : String.prototype.includes;
    const a = argument.run;
    return {
      run: (vars) => {
        const s = target(vars);
        const x = a(vars);
        if (typeof s === 'string' && typeof x === 'string') return impl.call(s, x);
        throw noOverload(id, fn, s, [x]);
      },
    };
  }

  private matches(id: bigint, target: Code, pattern: Node): Node {
    const rt = this.rt;
    const c = pattern.constant?.value;
    if (typeof c === 'string') {
      // A literal pattern was compiled when the condition was checked: it cannot fail here.
      const re = rt.regex(c);
      return {
        run: (vars) => {
          const s = target(vars);
          if (typeof s === 'string') return re.test(s);
          throw noOverload(id, 'matches', s, [c]);
        },
      };
    }
    const p = pattern.run;
    return {
      run: (vars) => {
        const s = target(vars);
        const x = p(vars);
        if (typeof s !== 'string' || typeof x !== 'string') throw noOverload(id, 'matches', s, [x]);
        let re: { test(input: string): boolean };
        try {
          re = rt.regex(x);
        } catch (err) {
          throw new CelFault(err instanceof Error ? err.message : String(err), id);
        }
        return re.test(s);
      },
    };
  }
}

/** server and method: strings by their type; anything else is the engine's to judge. */
function stringVar(v: unknown): string {
  if (typeof v === 'string') return v;
  throw new FastBail('a variable that is not a string');
}
