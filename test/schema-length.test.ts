/**
 * The argument schemas' `maxLength` and `minLength` (src/policy/schema-length.ts)
 * decide exactly as ajv's own keywords do, with the same errors, in both
 * drafts the gateway compiles (2020-12 and draft-07): checked against stock
 * ajv on generated strings of plain, astral (surrogate pair) and lone
 * surrogate characters, at and around every limit, where the fast paths
 * (length alone) and the count meet.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Ajv } from 'ajv';
import { codePointLength, useLengthKeywords } from '../src/policy/schema-length.js';
import { prng } from './helpers/prng.js';

const PIECES = ['a', 'é', '😀', '\ud83d', '\ude00', '\u0000', '𝒳'];

function text(rand: () => number, units: number): string {
  let s = '';
  while (s.length < units) s += PIECES[Math.floor(rand() * PIECES.length)];
  return s;
}

test('code points are counted as ajv counts them', async () => {
  const { default: ucs2length } = (await import('ajv/dist/runtime/ucs2length.js')) as unknown as {
    default: (s: string) => number;
  };
  const rand = prng(7);
  for (const s of [
    '',
    'a',
    '😀',
    '\ud83d',
    '\ude00',
    '\ude00\ud83d',
    '\ud83d\ud83d\ude00',
    'a😀b',
  ]) {
    assert.equal(codePointLength(s), ucs2length(s), JSON.stringify(s));
  }
  for (let i = 0; i < 5000; i++) {
    const s = text(rand, Math.floor(rand() * 40));
    assert.equal(codePointLength(s), ucs2length(s), JSON.stringify(s));
  }
});

test('maxLength and minLength decide and report as stock ajv, in 2020-12 and draft-07', () => {
  const rand = prng(11);
  const options = { strict: false, allErrors: true } as const;
  const pairs = [
    [new Ajv2020(options), useLengthKeywords(new Ajv2020(options))],
    [new Ajv(options), useLengthKeywords(new Ajv(options))],
  ] as const;
  let counted = 0;
  for (const [stock, ours] of pairs) {
    for (const limit of [0, 1, 2, 3, 5, 8, 13, 20]) {
      for (const keywords of [
        { maxLength: limit },
        { minLength: limit },
        { minLength: limit, maxLength: limit + 2 },
      ]) {
        const schema = {
          type: 'object',
          properties: {
            s: { type: 'string', ...keywords },
            n: { type: ['string', 'number'], ...keywords },
          },
        };
        const a = stock.compile(schema);
        const b = ours.compile(schema);
        for (let i = 0; i < 300; i++) {
          const s = text(rand, Math.floor(rand() * (2 * limit + 6)));
          const data = { s, n: rand() < 0.2 ? 42 : s };
          const okA = a(data);
          const okB = b(data);
          assert.equal(okB, okA, `${JSON.stringify(keywords)} on ${JSON.stringify(s)}`);
          assert.deepEqual(b.errors ?? null, a.errors ?? null, JSON.stringify(s));
          if (!okA) counted++;
        }
      }
    }
  }
  // The cases are not all on one side of the limits.
  assert.ok(counted > 1000, `only ${counted} refusals among the generated cases`);
});

test('a string decided by its length alone is not counted', (t) => {
  const ajv = useLengthKeywords(new Ajv2020({ strict: false }));
  const max = ajv.compile({ type: 'string', maxLength: 4096 });
  const min = ajv.compile({ type: 'string', minLength: 10 });
  const tight = ajv.compile({ type: 'string', maxLength: 10 });
  // Every character read is counted while the validators run.
  let reads = 0;
  const charCodeAt = String.prototype.charCodeAt;
  t.mock.method(String.prototype, 'charCodeAt', function (this: string, i: number) {
    reads++;
    return charCodeAt.call(this, i);
  });
  assert.equal(max('x'.repeat(960)), true);
  assert.equal(min('x'.repeat(20)), true, 'twenty units are at least ten code points');
  assert.equal(min('x'.repeat(9)), false, 'nine units are fewer than ten code points');
  assert.equal(reads, 0, 'no character was read');
  // Between the bounds the string is counted, and counted right.
  assert.equal(tight('😀'.repeat(10)), true, 'ten code points in twenty units');
  assert.ok(reads > 0);
  assert.equal(tight('😀'.repeat(11)), false);
  assert.equal(min('😀'.repeat(9)), false, 'nine code points in eighteen units');
  assert.equal(min('😀'.repeat(5) + 'xxxxx'), true, 'ten code points in fifteen units');
});
