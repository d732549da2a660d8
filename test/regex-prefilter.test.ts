/**
 * The literal prefilter of CEL `matches()` (src/policy/regex-prefilter.ts) is
 * sound: for every pattern and text where RE2 finds a match, the prefilter
 * says "maybe". Checked against the real engine (`@bufbuild/re2`) on the
 * policy bench's patterns and on generated ones, with texts that hold the
 * characters case folding is subtle about (U+212A KELVIN SIGN, U+017F LONG S,
 * U+0130, Greek sigma).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RE2JS } from '@bufbuild/re2';
import { mayMatch, requiredLiterals } from '../src/policy/regex-prefilter.js';
import { prng } from './helpers/prng.js';

test('what the policy patterns require is read as expected, and what is not understood is left alone', () => {
  const cases: Array<[string, { fold: boolean; anyOf: string[] } | undefined]> = [
    ['(?i)\\b(drop|truncate|alter)\\s+table\\b', { fold: true, anyOf: ['table'] }],
    ['(?i)^\\s*(delete|update|insert)\\b', { fold: true, anyOf: ['delete', 'update', 'insert'] }],
    ['(?i)password|secret|token', { fold: true, anyOf: ['password', 'secret', 'token'] }],
    ['\\.(pem|key|env)$', { fold: false, anyOf: ['pem', 'key', 'env'] }],
    ['(?i)SELECT\\s+\\*', { fold: true, anyOf: ['select'] }],
    ['ab+cd', { fold: false, anyOf: ['ab'] }],
    ['abc?de', { fold: false, anyOf: ['ab'] }],
    ['x{2}yz', { fold: false, anyOf: ['yz'] }],
    ['(?:foo)+bar', { fold: false, anyOf: ['foo'] }],
    // Nothing required, or beyond the reader: no prefilter, the regex always runs.
    ['(?i);\\s*\\w', undefined],
    ['a|bc', undefined],
    ['(abc)?', undefined],
    ['\\pLabc', undefined],
    ['\\x41bc', undefined],
    ['(?i)ab(?-i)cd', undefined],
    ['(?i:abc)', undefined],
    ['(?i)é+tude', undefined],
    ['\\Qa.b\\E', undefined],
    ['[abc]+', undefined],
  ];
  for (const [pattern, expected] of cases) {
    RE2JS.compile(pattern); // each is a pattern RE2 accepts
    assert.deepEqual(requiredLiterals(pattern), expected, pattern);
  }
});

/** A random pattern from pieces RE2 accepts: literals, classes, escapes, groups, quantifiers. */
function randomPattern(rand: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const literals = ['ab', 'k', 's', 'ks', 'sk', 'table', 'drop', 'Kis', 'SS', 'x', 'é', ';', '.'];
  const atoms = ['\\s', '\\w', '\\d', '\\b', '.', '[a-z]', '[^k]', '[[:alpha:]]', '^', '$'];
  const quantifiers = ['', '', '', '*', '+', '?', '{2}', '{0,2}', '{1,}', '+?'];
  const piece = (depth: number): string => {
    const r = rand();
    let p: string;
    if (r < 0.45) p = pick(literals).replace('.', '\\.');
    else if (r < 0.75) p = pick(atoms);
    else if (depth < 2) {
      const branches = Array.from({ length: 1 + Math.floor(rand() * 3) }, () =>
        sequence(depth + 1),
      );
      p = `(${rand() < 0.5 ? '?:' : ''}${branches.join('|')})`;
    } else p = pick(literals);
    const q = pick(quantifiers);
    // A quantifier applies to the last character of a literal: fine, that is what is tested.
    return q && !['^', '$', '\\b'].includes(p) ? p + q : p;
  };
  const sequence = (depth: number): string =>
    Array.from({ length: 1 + Math.floor(rand() * 4) }, () => piece(depth)).join('');
  const body = rand() < 0.3 ? `${sequence(0)}|${sequence(0)}` : sequence(0);
  return (rand() < 0.5 ? '(?i)' : rand() < 0.2 ? '(?s)' : '') + body;
}

function randomText(rand: () => number): string {
  const alphabet = [
    'a',
    'b',
    'k',
    'K',
    '\u212a',
    's',
    'S',
    '\u017f',
    'x',
    'X',
    't',
    'A',
    'B',
    'L',
    'E',
    'table',
    'TABLE',
    'Dr\u212aop',
    'drop',
    ' ',
    '\n',
    ';',
    '.',
    '1',
    'é',
    'É',
    '\u0130',
    '\u03a3',
    'ς',
    '\ud83d\ude00',
  ];
  const n = Math.floor(rand() * 12);
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
  return s;
}

test('sound: wherever RE2 finds a match the prefilter lets the search run (generated patterns and texts)', () => {
  const rand = prng(0x5eed);
  let patterns = 0;
  let prefiltered = 0;
  let matches = 0;
  let rejected = 0;
  for (let i = 0; i < 1_500; i++) {
    const pattern = randomPattern(rand);
    let re: RE2JS;
    try {
      re = RE2JS.compile(pattern);
    } catch {
      continue; // not a pattern a condition could hold: compile refuses it at load
    }
    patterns++;
    const required = requiredLiterals(pattern);
    if (required) prefiltered++;
    for (let j = 0; j < 60; j++) {
      const text = randomText(rand);
      const match = re.test(text);
      if (match) matches++;
      if (!required) continue;
      const maybe = mayMatch(required, text);
      if (match)
        assert.ok(
          maybe,
          `${JSON.stringify(pattern)} matches ${JSON.stringify(text)}: prefilter said no`,
        );
      else if (!maybe) rejected++;
    }
  }
  // The test is only as good as what it exercised.
  assert.ok(patterns > 1_000, `patterns: ${patterns}`);
  assert.ok(prefiltered > 300, `patterns with a prefilter: ${prefiltered}`);
  assert.ok(matches > 10_000, `matching texts: ${matches}`);
  assert.ok(rejected > 10_000, `texts the prefilter answered alone: ${rejected}`);
});

test('case folding: the Kelvin sign, the long s and both cases of a literal pass a (?i) prefilter', () => {
  const required = requiredLiterals('(?i)desk|stack');
  assert.ok(required);
  for (const text of ['DESK', 'des\u212a', 'de\u017fk', 'STAC\u212a', '\u017ftack', 'a deSk b']) {
    assert.ok(RE2JS.compile('(?i)desk|stack').test(text), text);
    assert.equal(mayMatch(required, text), true, text);
  }
  assert.equal(mayMatch(required, 'nothing to see'), false);
});
