/**
 * `redactResult`: the strings of an MCP result an agent reads, redacted in a
 * copy. Read, in this order:
 * 1. `content[i].text` of `type: "text"` items, and
 *    `content[i].resource.text` of `type: "resource"` (embedded resources).
 *    A `resource.blob` (base64 binary) is not decoded or read, nor are
 *    images, audio and resource links;
 * 2. `structuredContent`: every string value at any depth. Property names
 *    are not read as text, but each string under a name that suggests a
 *    secret (or in an array under one) is also judged whole by
 *    generic-api-key (generic.ts, `keyed`): `{"password": "…"}` has no name
 *    before its value in the string itself;
 * 3. `contents[i].text` of a `resources/read` result (not `blob`).
 * Other members (`_meta`, `isError`, a legacy `toolResult`) are passed as
 * they are.
 *
 * The copy shares every object and array that holds no changed string; the
 * input is never written to. The walk is iterative (no recursion) and
 * bounded: a result nested deeper than MAX_RESULT_DEPTH, or holding more than
 * MAX_RESULT_STRINGS strings, is refused whole with a RedactError, so that no
 * string is ever passed on unscanned.
 */
import { MAX_RESULT_DEPTH, MAX_RESULT_STRINGS } from './bounds.js';
import { merge, replaceSpans, scanText, type CompiledRules, type RuleSpan } from './scan.js';
import { RedactError, type Finding } from './types.js';

type Key = string | number;

/** Where a string sits: its parent and its key, linked back to the root. */
interface Place {
  readonly parent: Place | undefined;
  readonly key: Key;
}

interface Change {
  readonly place: Place;
  readonly text: string;
}

const FINAL = { final: true, startsHere: true } as const;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

function keysOf(place: Place): Key[] {
  const keys: Key[] = [];
  for (let p: Place | undefined = place; p !== undefined; p = p.parent) keys.push(p.key);
  return keys.reverse();
}

/** RFC 6901. */
function pointer(keys: readonly Key[]): string {
  let out = '';
  for (const k of keys) out += '/' + String(k).replaceAll('~', '~0').replaceAll('/', '~1');
  return out;
}

function setOwn(target: Record<Key, unknown>, key: Key, value: unknown): void {
  // defineProperty, not assignment: a key may be "__proto__".
  Object.defineProperty(target, key, {
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

/** A copy of `root` with each change made, copying only the containers on their paths. */
function applyChanges(root: object, changes: readonly Change[]): unknown {
  const copies = new Map<object, Record<Key, unknown>>();
  const copyOf = (o: object): Record<Key, unknown> => {
    let c = copies.get(o);
    if (c === undefined) {
      c = (Array.isArray(o) ? o.slice() : { ...o }) as Record<Key, unknown>;
      copies.set(o, c);
    }
    return c;
  };
  for (const change of changes) {
    const keys = keysOf(change.place);
    let original = root as Record<Key, unknown>;
    let copy = copyOf(root);
    for (let i = 0; i < keys.length - 1; i++) {
      const key = keys[i] as Key;
      const child = original[key] as object;
      const childCopy = copyOf(child);
      setOwn(copy, key, childCopy);
      original = child as Record<Key, unknown>;
      copy = childCopy;
    }
    setOwn(copy, keys[keys.length - 1] as Key, change.text);
  }
  return copyOf(root);
}

export function redactResult(
  c: CompiledRules,
  replacements: readonly string[],
  ids: readonly string[],
  result: unknown,
): { result: unknown; findings: Finding[] } | undefined {
  if (!isObject(result)) return undefined;
  const changes: Change[] = [];
  const findings: Finding[] = [];
  let strings = 0;

  const visit = (text: string, place: Place, name: string | undefined): void => {
    if (++strings > MAX_RESULT_STRINGS)
      throw new RedactError(
        'REDACT_TOO_MANY_STRINGS',
        `the result holds more than ${MAX_RESULT_STRINGS} strings; it was not scanned whole and is refused`,
      );
    let spans: RuleSpan[] = scanText(c, text, FINAL);
    if (name !== undefined && c.genericIndex >= 0 && c.generic.keyed(name, text))
      spans = merge([...spans, { rule: c.genericIndex, start: 0, end: text.length }]);
    if (spans.length === 0) return;
    changes.push({ place, text: replaceSpans(text, spans, replacements) });
    const path = pointer(keysOf(place));
    for (const s of spans)
      findings.push({ rule: ids[s.rule] as string, path, start: s.start, end: s.end });
  };

  const root: Place | undefined = undefined;
  const at = (parent: Place | undefined, key: Key): Place => ({ parent, key });

  // 1. content
  if (Array.isArray(result.content)) {
    const content = at(root, 'content');
    result.content.forEach((item: unknown, i) => {
      if (!isObject(item)) return;
      const place = at(content, i);
      if (item.type === 'text' && typeof item.text === 'string')
        visit(item.text, at(place, 'text'), undefined);
      else if (
        item.type === 'resource' &&
        isObject(item.resource) &&
        typeof item.resource.text === 'string'
      )
        visit(item.resource.text, at(at(place, 'resource'), 'text'), undefined);
    });
  }

  // 2. structuredContent, depth first, without recursion.
  if ('structuredContent' in result) {
    const stack: { value: unknown; place: Place; depth: number; name: string | undefined }[] = [
      {
        value: result.structuredContent,
        place: at(root, 'structuredContent'),
        depth: 1,
        name: undefined,
      },
    ];
    while (stack.length > 0) {
      const { value, place, depth, name } = stack.pop() as (typeof stack)[number];
      if (typeof value === 'string') {
        visit(value, place, name);
        continue;
      }
      if (!isObject(value)) continue;
      if (depth >= MAX_RESULT_DEPTH)
        throw new RedactError(
          'REDACT_TOO_DEEP',
          `the result nests deeper than ${MAX_RESULT_DEPTH} levels; it was not scanned whole and is refused`,
        );
      if (Array.isArray(value)) {
        for (let i = value.length - 1; i >= 0; i--)
          stack.push({ value: value[i], place: at(place, i), depth: depth + 1, name });
      } else {
        const keys = Object.keys(value);
        for (let i = keys.length - 1; i >= 0; i--) {
          const key = keys[i] as string;
          stack.push({ value: value[key], place: at(place, key), depth: depth + 1, name: key });
        }
      }
    }
  }

  // 3. contents (resources/read)
  if (Array.isArray(result.contents)) {
    const contents = at(root, 'contents');
    result.contents.forEach((item: unknown, i) => {
      if (isObject(item) && typeof item.text === 'string')
        visit(item.text, at(at(contents, i), 'text'), undefined);
    });
  }

  if (changes.length === 0) return undefined;
  return { result: applyChanges(result, changes), findings };
}
