/**
 * The nesting-depth check every message passes where it enters (src/mcp/depth.ts),
 * on text and on bytes alike.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_JSON_DEPTH, nestedDeeperThan } from '../src/mcp/depth.js';

const nested = (depth: number, inner = '1') =>
  `${'{"a":['.repeat(depth / 2)}${inner}${']}'.repeat(depth / 2)}`;

function both(json: string): boolean {
  const text = nestedDeeperThan(json);
  assert.equal(nestedDeeperThan(Buffer.from(json)), text, 'bytes and text agree');
  return text;
}

test('a message nested deeper than MAX_JSON_DEPTH is found; one at the limit is not', () => {
  assert.equal(both(nested(MAX_JSON_DEPTH)), false);
  assert.equal(both(nested(MAX_JSON_DEPTH + 2)), true);
  assert.equal(both(`${'['.repeat(10_000)}${']'.repeat(10_000)}`), true);
});

test('brackets inside strings, escaped quotes among them, do not count towards depth', () => {
  const brackets = '['.repeat(500);
  assert.equal(both(JSON.stringify({ text: brackets })), false);
  assert.equal(both(JSON.stringify({ text: `\\"${brackets}`, more: `"${brackets}\\` })), false);
  assert.equal(both(JSON.stringify({ text: `é${brackets}ü` })), false, 'multi-byte characters');
  // After a string ending in an escaped backslash, the brackets are structure again.
  assert.equal(both(`["\\\\",${nested(MAX_JSON_DEPTH + 2)}]`), true);
});

test('many sibling arrays and objects are not depth', () => {
  const wide = JSON.stringify(Array.from({ length: 1_000 }, (_, i) => ({ i, tags: [i] })));
  assert.equal(both(wide), false);
});
