/**
 * The redactor's prefilter: every occurrence of every rule keyword, found in
 * one pass over the text (an Aho–Corasick automaton over ASCII, letters
 * folded to lower case). A text with no occurrence holds no secret, and a
 * rule runs only around its own keywords.
 *
 * Why an automaton: the keywords number about seventy, and a JS RegExp
 * alternation of them takes 9 ns a character on V8, `toLowerCase` and one
 * `includes` per keyword 27 ns; the table walk below takes a few, and never
 * more (one table read per character, whatever the text).
 *
 * Keywords are lowercase ASCII. A character outside ASCII matches no keyword
 * character, so RE2's `(?i)` folds of `k` to U+212A KELVIN SIGN and `s` to
 * U+017F LONG S are not followed here: a rule whose keyword holds one of those
 * letters is not run on a text that spells it so. No credential is spelled
 * that way.
 */

/** Characters the table has a column for: ASCII; anything else reads as column 0. */
const ALPHABET = 128;
const ROW_SHIFT = 7; // log2(ALPHABET)

const UPPER_A = 65;
const UPPER_Z = 90;
const CASE_BIT = 32;

export class KeywordIndex {
  /** Keyword lengths, by keyword index. */
  readonly lengths: Int32Array;
  /**
   * The transitions: row `s * ALPHABET` + character → the next state's row
   * (rows are stored pre-multiplied, and upper-case columns repeat the
   * lower-case ones, so a step is one read).
   */
  private readonly delta: Int32Array;
  /** By state: whether keywords end there, and which (outList[outStart[s] .. outStart[s + 1])). */
  private readonly ends: Uint8Array;
  private readonly outStart: Int32Array;
  private readonly outList: Int32Array;
  /** Length of the keyword prefix a state stands for. */
  private readonly depth: Int32Array;

  constructor(keywords: readonly string[]) {
    for (const k of keywords) {
      const ascii = [...k].every((ch) => ch.charCodeAt(0) > 0 && ch.charCodeAt(0) < ALPHABET);
      if (k === '' || !ascii || k !== k.toLowerCase())
        throw new Error(`keyword ${JSON.stringify(k)} is not lowercase ASCII`);
    }
    this.lengths = Int32Array.from(keywords, (k) => k.length);
    // The trie, state 0 the root.
    const goto: number[][] = [[]];
    const ends: number[][] = [[]];
    const depth = [0];
    keywords.forEach((k, index) => {
      let s = 0;
      for (let i = 0; i < k.length; i++) {
        const c = k.charCodeAt(i);
        let next = goto[s]?.[c];
        if (next === undefined) {
          next = goto.length;
          goto.push([]);
          ends.push([]);
          depth.push(i + 1);
          (goto[s] as number[])[c] = next;
        }
        s = next;
      }
      (ends[s] as number[]).push(index);
    });
    // Breadth first: each state's failure link, its full transition row, and
    // its outputs (its own keywords and those of the states it fails to).
    const states = goto.length;
    const delta = new Int32Array(states * ALPHABET);
    const fail = new Int32Array(states);
    const outputs: number[][] = ends.map((e) => [...e]);
    const queue: number[] = [];
    for (let c = 0; c < ALPHABET; c++) {
      const next = goto[0]?.[c];
      if (next !== undefined) {
        delta[c] = next;
        queue.push(next);
      }
    }
    for (let q = 0; q < queue.length; q++) {
      const s = queue[q] as number;
      const f = fail[s] as number;
      (outputs[s] as number[]).push(...(outputs[f] as number[]));
      for (let c = 0; c < ALPHABET; c++) {
        const next = goto[s]?.[c];
        if (next === undefined) {
          delta[s * ALPHABET + c] = delta[f * ALPHABET + c] as number;
        } else {
          delta[s * ALPHABET + c] = next;
          fail[next] = delta[f * ALPHABET + c] as number;
          queue.push(next);
        }
      }
    }
    for (let i = 0; i < delta.length; i++) delta[i] = (delta[i] as number) * ALPHABET;
    for (let s = 0; s < states; s++)
      for (let c = UPPER_A; c <= UPPER_Z; c++)
        delta[s * ALPHABET + c] = delta[s * ALPHABET + (c | CASE_BIT)] as number;
    this.delta = delta;
    this.depth = Int32Array.from(depth);
    this.ends = Uint8Array.from(outputs, (o) => (o.length > 0 ? 1 : 0));
    this.outStart = new Int32Array(states + 1);
    const list: number[] = [];
    for (let s = 0; s < states; s++) {
      this.outStart[s] = list.length;
      list.push(...(outputs[s] as number[]));
    }
    this.outStart[states] = list.length;
    this.outList = Int32Array.from(list);
  }

  /**
   * Appends each occurrence to `hits` as two numbers, keyword index then start
   * offset, in order of where they end. Returns how many characters at the
   * end of `text` are the start of a keyword that more text could complete.
   */
  scan(text: string, hits: number[]): number {
    const { delta, ends, outStart, outList, lengths } = this;
    const n = text.length;
    let row = 0;
    for (let i = 0; i < n; i++) {
      const c = text.charCodeAt(i);
      row = delta[row + (c < ALPHABET ? c : 0)] as number;
      const s = row >> ROW_SHIFT;
      if (ends[s] === 0) continue;
      for (let o = outStart[s] as number; o < (outStart[s + 1] as number); o++) {
        const k = outList[o] as number;
        hits.push(k, i + 1 - (lengths[k] as number));
      }
    }
    return this.depth[row >> ROW_SHIFT] as number;
  }
}
