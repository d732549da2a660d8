/**
 * Character classes the hand-written scanners share (as bit flags over
 * ASCII, one table read a character), and Shannon entropy.
 */

/** `[A-Za-z0-9]` */
export const ALNUM = 1;
/** `[\w.-]`: a name's characters. */
export const NAME = 2;
/** `[ \t]` */
export const BLANK = 4;
/** RE2's `\s`: `[\t\n\f\r ]`. */
export const SPACE = 8;
/** `[\w.=-]`: gitleaks' generic value, first form. */
export const VALUE = 16;
/** `[A-Za-z0-9+/]`: base64. */
export const BASE64 = 32;
/** `[A-Za-z]` */
export const LETTER = 64;

const TABLE = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const ch = String.fromCharCode(c);
  let f = 0;
  if (/[A-Za-z0-9]/.test(ch)) f |= ALNUM | NAME | VALUE | BASE64;
  if (/[A-Za-z]/.test(ch)) f |= LETTER;
  if (ch === '_' || ch === '.' || ch === '-') f |= NAME | VALUE;
  if (ch === '=') f |= VALUE;
  if (ch === '+' || ch === '/') f |= BASE64;
  if (ch === ' ' || ch === '\t') f |= BLANK;
  if (/[\t\n\f\r ]/.test(ch)) f |= SPACE;
  TABLE[c] = f;
}

/** Whether the character at `i` is ASCII and in one of the classes `flags` names. */
export function is(text: string, i: number, flags: number): boolean {
  const c = text.charCodeAt(i);
  return c < 128 && ((TABLE[c] as number) & flags) !== 0;
}

/** Counts scratch: ASCII in an array, the rest in a map (both reset after each use). */
const ascii = new Int32Array(128);
const other = new Map<number, number>();

/**
 * Shannon entropy of `text[start, end)` in bits per character, over UTF-16
 * code units (gitleaks counts runes and divides by bytes; for the ASCII
 * values every rule here yields, the same number).
 */
export function entropy(text: string, start: number, end: number): number {
  const length = end - start;
  if (length <= 0) return 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c < 128) ascii[c] = (ascii[c] as number) + 1;
    else other.set(c, (other.get(c) ?? 0) + 1);
  }
  let bits = 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c >= 128 || ascii[c] === 0) continue;
    const p = (ascii[c] as number) / length;
    bits -= p * Math.log2(p);
    ascii[c] = 0;
  }
  for (const n of other.values()) {
    const p = n / length;
    bits -= p * Math.log2(p);
  }
  other.clear();
  return bits;
}
