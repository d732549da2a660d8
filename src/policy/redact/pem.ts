/**
 * private-key: a PEM private key block, BEGIN line to END line, redacted
 * whole. gitleaks' rule is `(?i)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE
 * KEY(?: BLOCK)?-----[\s\S-]{64,}?KEY(?: BLOCK)?-----`; read here as:
 * 1. each `-----begin` (any case) where gitleaks' BEGIN line matches (RE2,
 *    on at most MAX_PEM_HEADER_CHARS);
 * 2. the first `KEY-----` or `KEY BLOCK-----` (any case) that starts at least
 *    64 characters after that line: the block ends with it. Any characters
 *    may come between, so the `\n` escapes of a key inside a JSON string
 *    (a GCP service account's `private_key`) are part of the block.
 * Adapted: the block must end within MAX_PEM_BLOCK_CHARS of its BEGIN, and a
 * BEGIN line with no END there is taken as a truncated key (a tool that
 * printed the first lines of a key file): the BEGIN line and the key-looking
 * run after it (base64, whitespace, `\`, and `:` `,` `-` of RFC 1421 headers
 * such as `Proc-Type: 4,ENCRYPTED`) are redacted when that run holds at
 * least 64 base64 characters, the body gitleaks requires.
 *
 * Linear: the END markers are searched forward from the furthest point
 * already searched (an index of the next occurrence is kept), and a block or
 * truncated run, once found, is skipped as a whole.
 */
import { RE2JS } from 're2js';
import { MAX_PEM_BLOCK_CHARS, MAX_PEM_HEADER_CHARS } from './bounds.js';
import { BASE64, SPACE, is } from './chars.js';
import type { Span } from './generic.js';

const BEGIN_LINE = RE2JS.compile(
  String.raw`(?i)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----`,
);
/** gitleaks' `[\s\S-]{64,}?`: the least body before an END marker. */
const MIN_BODY_CHARS = 64;
const END_MARKERS = ['key-----', 'key block-----'];
/** What every BEGIN line holds, looked for before RE2 reads the line. */
const LABEL = 'private key';
/** Characters of a truncated key's run besides base64 and whitespace. */
const RUN_EXTRA = '\\=:,-';

/** The next occurrence of a marker at or after a point, remembered across calls. */
class NextIndex {
  private at = -2; // -2: not searched yet; -1: none after `from`
  private from = 0;
  constructor(
    private readonly hay: string,
    private readonly needle: string,
  ) {}
  next(from: number): number {
    if (this.at === -1 && from >= this.from) return -1;
    if (this.at < from) {
      this.at = this.hay.indexOf(this.needle, from);
      this.from = from;
    }
    return this.at;
  }
}

/**
 * Private key blocks in `text`, given the offsets of `-----begin` in it.
 * Pushes each span to `out`; returns where an unfinished block starts when
 * `final` is false (text may follow), else -1.
 */
export function scanPem(
  text: string,
  begins: readonly number[],
  final: boolean,
  out: Span[],
): number {
  if (begins.length === 0) return -1;
  const lower = text.toLowerCase();
  const ends = END_MARKERS.map((m) => new NextIndex(lower, m));
  const label = new NextIndex(lower, LABEL);
  const n = text.length;
  let skipTo = 0;
  for (const k of begins) {
    if (k < skipTo) continue;
    const l = label.next(k);
    if (l < 0 || l + LABEL.length > k + MAX_PEM_HEADER_CHARS) {
      if (!final && n - k < MAX_PEM_HEADER_CHARS) return k;
      continue;
    }
    const header = BEGIN_LINE.matcher(text.slice(k, k + MAX_PEM_HEADER_CHARS));
    if (!header.lookingAt()) {
      if (!final && n - k < MAX_PEM_HEADER_CHARS) return k;
      continue;
    }
    const body = k + header.end();
    const limit = k + MAX_PEM_BLOCK_CHARS;
    // The END marker that starts first (the two cannot start at one place).
    let first = -1;
    let end = -1;
    for (const [i, marker] of END_MARKERS.entries()) {
      const at = (ends[i] as NextIndex).next(body + MIN_BODY_CHARS);
      if (at >= 0 && at + marker.length <= limit && (first < 0 || at < first)) {
        first = at;
        end = at + marker.length;
      }
    }
    if (end < 0 && !final && n < limit) return k;
    if (end < 0) {
      // Truncated: the key-looking run after the BEGIN line.
      let r = body;
      let base64 = 0;
      const stop = Math.min(n, limit);
      for (; r < stop; r++) {
        if (is(text, r, BASE64)) base64++;
        else if (!is(text, r, SPACE) && !RUN_EXTRA.includes(text.charAt(r))) break;
      }
      if (base64 < MIN_BODY_CHARS) continue;
      while (r > body && is(text, r - 1, SPACE)) r--;
      end = r;
    }
    out.push({ start: k, end });
    skipTo = end;
  }
  return -1;
}
