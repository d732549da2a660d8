/**
 * A literal prefilter for RE2 searches: the strings a match must contain,
 * read from the pattern, so that a text holding none of them is answered
 * "no match" without running the regex.
 *
 * Why: `@bufbuild/re2` prefilters exact literals itself but not case-folded
 * ones, and policy patterns are mostly `(?i)` keyword searches
 * (`(?i)\b(drop|truncate)\s+table\b`). On a 90-character query the search
 * takes 8-14 µs where a folded `includes` takes a few hundred nanoseconds;
 * most messages match no deny pattern, so most of that time is spent proving
 * a negative.
 *
 * Soundness is all that matters here: a prefilter may say "maybe" for a text
 * the regex then rejects, never "no" for a text it would match. So the reader
 * below understands a small part of RE2's syntax and gives up (no prefilter,
 * the regex always runs) on anything else: escapes other than the ASCII
 * classes, assertions and escaped punctuation, inline flags other than one
 * leading `(?flags)` group, `\Q…\E`, Unicode classes, and, under `(?i)`, any
 * literal that is not ASCII. What it keeps:
 * - a run of literal characters with no quantifier after its last one is one
 *   required string (`table`); a quantifier that can repeat zero times drops
 *   the character it follows, `+` and `{n,}` with n ≥ 1 keep it but end the run;
 * - a concatenation requires what its most selective element requires (the
 *   one whose shortest required string is longest);
 * - an alternation requires one of what its branches require, and nothing if
 *   any branch requires nothing; a group, what its contents require.
 *
 * Case folding, `(?i)`: RE2 matches a letter with every member of its simple
 * case-folding orbit. For ASCII letters those are the two cases, plus U+212A
 * KELVIN SIGN for `k` and U+017F LATIN SMALL LETTER LONG S for `s`. The text is
 * folded with `toLowerCase()` (which maps U+212A to `k`) and U+017F replaced
 * by `s`, so every text the regex matches folds to one containing the
 * lowercased literal. (toLowerCase folds more than RE2 does, e.g. U+0130 to
 * `i̇`: that only makes the prefilter say "maybe" more often.)
 */

/** What a match must contain: at least one of `anyOf` (folded when `fold`). */
export interface RequiredLiterals {
  readonly fold: boolean;
  readonly anyOf: readonly string[];
}

/** No requirement, or at least one of these strings. */
type Req = readonly string[] | null;

/** The pattern uses something the reader does not vouch for. */
class GiveUp extends Error {}

/** Escapes that match one character of a class (never a literal): no requirement. */
const CLASS_ESCAPES = new Set(['d', 'D', 's', 'S', 'w', 'W']);
/** Zero-width escapes. */
const ASSERTION_ESCAPES = new Set(['b', 'B', 'A', 'z']);
/** Required strings shorter than this are not worth a scan. */
const MIN_LITERAL_LENGTH = 2;
/** Alternatives kept at most: past this a prefilter costs more than it saves. */
const MAX_ALTERNATIVES = 16;

function shortest(req: Req): number {
  if (req === null) return 0;
  let min = Infinity;
  for (const s of req) min = Math.min(min, s.length);
  return min;
}

/** The better of two requirements for one concatenation (both must hold; either alone is sound). */
function better(a: Req, b: Req): Req {
  return shortest(b) > shortest(a) ? b : a;
}

class Reader {
  private i = 0;
  constructor(
    private readonly src: string,
    private readonly fold: boolean,
  ) {}

  /** The whole pattern (after the leading flags). */
  read(): Req {
    const req = this.alternation();
    if (this.i !== this.src.length) throw new GiveUp();
    return req;
  }

  private alternation(): Req {
    const branches: Req[] = [this.concatenation()];
    while (this.src[this.i] === '|') {
      this.i++;
      branches.push(this.concatenation());
    }
    if (branches.length === 1) return branches[0] as Req;
    const all = new Set<string>();
    for (const b of branches) {
      if (b === null) return null;
      for (const s of b) all.add(s);
    }
    return all.size > MAX_ALTERNATIVES ? null : [...all];
  }

  private concatenation(): Req {
    let best: Req = null;
    let run = '';
    const endRun = () => {
      if (run.length >= MIN_LITERAL_LENGTH) best = better(best, [run]);
      run = '';
    };
    for (;;) {
      const c = this.src[this.i];
      if (c === undefined || c === '|' || c === ')') break;
      const atom = this.atom();
      const q = this.quantifier();
      if (atom.literal !== undefined) {
        if (q === 'optional') {
          endRun();
        } else if (q === 'repeated') {
          run += atom.literal;
          endRun();
        } else {
          run += atom.literal;
        }
        continue;
      }
      endRun();
      if (q !== 'optional') best = better(best, atom.req);
    }
    endRun();
    return best;
  }

  /** One atom: a literal character, or something with what it requires. */
  private atom(): { literal?: string; req: Req } {
    const src = this.src;
    const c = src[this.i] as string;
    switch (c) {
      case '(':
        return { req: this.group() };
      case '[':
        this.charClass();
        return { req: null };
      case '.':
      case '^':
      case '$':
        this.i++;
        return { req: null };
      case '\\': {
        const e = src[this.i + 1];
        if (e === undefined) throw new GiveUp();
        this.i += 2;
        if (CLASS_ESCAPES.has(e) || ASSERTION_ESCAPES.has(e)) return { req: null };
        // Escaped ASCII punctuation is that character; any other escape is beyond this reader.
        if (/^[!-/:-@[-`{-~]$/.test(e)) return this.literal(e);
        throw new GiveUp();
      }
      case '*':
      case '+':
      case '?':
      case '{':
        // A quantifier with nothing to repeat (RE2 refuses most; `{` may be a literal there).
        throw new GiveUp();
      default: {
        const cp = src.codePointAt(this.i) as number;
        const ch = String.fromCodePoint(cp);
        this.i += ch.length;
        return this.literal(ch);
      }
    }
  }

  private literal(ch: string): { literal: string; req: Req } {
    if (!this.fold) return { literal: ch, req: null };
    // Folded: ASCII only (the orbits of other letters are not modelled here).
    if (ch.charCodeAt(0) > 0x7f) throw new GiveUp();
    return { literal: ch.toLowerCase(), req: null };
  }

  private group(): Req {
    const src = this.src;
    this.i++; // (
    if (src[this.i] === '?') {
      if (src.startsWith('?:', this.i)) this.i += 2;
      else if (src.startsWith('?P<', this.i) || src.startsWith('?<', this.i)) {
        const close = src.indexOf('>', this.i);
        if (close < 0) throw new GiveUp();
        this.i = close + 1;
      } else {
        // Inline flags inside the pattern change what follows: not modelled.
        throw new GiveUp();
      }
    }
    const req = this.alternation();
    if (src[this.i] !== ')') throw new GiveUp();
    this.i++;
    return req;
  }

  /** Skips a bracketed class; it matches one character of a set, never a required literal. */
  private charClass(): void {
    const src = this.src;
    this.i++; // [
    if (src[this.i] === '^') this.i++;
    if (src[this.i] === ']') this.i++; // a leading ] is literal
    for (;;) {
      const c = src[this.i];
      if (c === undefined) throw new GiveUp();
      if (c === ']') {
        this.i++;
        return;
      }
      if (c === '\\') {
        this.i += 2;
        continue;
      }
      if (c === '[' && src[this.i + 1] === ':') {
        const close = src.indexOf(':]', this.i + 2);
        if (close < 0) throw new GiveUp();
        this.i = close + 2;
        continue;
      }
      this.i++;
    }
  }

  /** The quantifier after an atom, if any: may it match zero times, or more than once? */
  private quantifier(): 'once' | 'optional' | 'repeated' {
    const src = this.src;
    const c = src[this.i];
    let kind: 'once' | 'optional' | 'repeated' = 'once';
    if (c === '*' || c === '?') {
      this.i++;
      kind = 'optional';
    } else if (c === '+') {
      this.i++;
      kind = 'repeated';
    } else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(src.slice(this.i));
      if (!m) throw new GiveUp();
      this.i += m[0].length;
      const min = Number(m[1]);
      kind = min === 0 ? 'optional' : m[2] === undefined && min === 1 ? 'once' : 'repeated';
    } else {
      return 'once';
    }
    if (src[this.i] === '?') this.i++; // non-greedy: the same requirement
    if (src[this.i] === '*' || src[this.i] === '+' || src[this.i] === '?' || src[this.i] === '{')
      throw new GiveUp();
    return kind;
  }
}

/**
 * The strings a match of `pattern` (RE2 syntax, already accepted by RE2)
 * must contain one of, or undefined when the reader cannot vouch for any.
 */
export function requiredLiterals(pattern: string): RequiredLiterals | undefined {
  let src = pattern;
  let fold = false;
  const flags = /^\(\?([imsU]+)\)/.exec(src);
  if (flags) {
    fold = flags[1]?.includes('i') === true;
    src = src.slice(flags[0].length);
  }
  try {
    const req = new Reader(src, fold).read();
    if (req === null || req.length === 0) return undefined;
    return { fold, anyOf: req };
  } catch (err) {
    if (err instanceof GiveUp) return undefined;
    throw err;
  }
}

/** A text folded as `RequiredLiterals` with `fold` are compared against (see the header). */
export function foldForPrefilter(text: string): string {
  const lower = text.toLowerCase();
  return lower.includes('\u017f') ? lower.replaceAll('\u017f', 's') : lower;
}

/** One folded text remembered: a message's rules often search the same argument in turn. */
let lastText: string | undefined;
let lastFolded = '';

/** Whether `text` may match (false: it certainly does not). */
export function mayMatch(required: RequiredLiterals, text: string): boolean {
  let hay = text;
  if (required.fold) {
    if (text !== lastText) {
      lastFolded = foldForPrefilter(text);
      lastText = text;
    }
    hay = lastFolded;
  }
  for (const s of required.anyOf) if (hay.includes(s)) return true;
  return false;
}
