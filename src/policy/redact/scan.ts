/**
 * Finding secrets in one string: the rules of rules.ts compiled once, then
 * run in this order on each text:
 * 1. the keyword automaton (keywords.ts) finds every keyword occurrence; a
 *    text with none is done, with nothing allocated;
 * 2. each pattern rule runs on RE2 (`re2js`, linear time, no backtracking) in
 *    windows around its keywords: from `before` + 1 characters before a
 *    keyword to `after` + 1 after it, overlapping windows merged. A match
 *    lies wholly inside the window of the keyword it contains, one
 *    character clear of each edge, so a match that touches an edge is an
 *    artefact of the cut (`^`, `$` or `\b` read there) and is dropped, and
 *    the search resumes one character after its start. For the rules without
 *    a length bound (jwt, three Slack formats) the window runs to the end of
 *    the run of token characters the keyword starts (read once per run);
 * 3. the secret group of each match must pass the rule's entropy threshold,
 *    the rule's allowlist and the global allowlist;
 * 4. the rules written as code, private-key, url-password and
 *    generic-api-key, read from their keywords' occurrences;
 * 5. the spans are ordered by start, then by rule (the order of rules.ts),
 *    and overlapping spans merged into the first: nothing of a secret that
 *    two rules see differently is left out.
 *
 * Why windows: on re2js a pattern that does not start with one literal
 * (aws-access-token's alternation of prefixes, every `(?i)` rule) costs 40
 * to 400 ns a character over a whole text; around keywords it reads a few
 * hundred characters per occurrence, and benign text has few.
 *
 * For streams (stream.ts) a scan is told whether the text may continue
 * (`final` false). It then also says from where the findings are not yet
 * settled (`holdFrom`): the earliest start a secret could still have, from a
 * keyword whose window or run reaches the end, an unfinished PEM block or
 * URL, or a keyword only partly arrived.
 */
import { RE2JS } from 're2js';
import { MAX_TOKEN_RUN_CHARS } from './bounds.js';
import { entropy } from './chars.js';
import { OPEN, compileGeneric, type GenericScanner, type Span } from './generic.js';
import { KeywordIndex } from './keywords.js';
import { scanPem } from './pem.js';
import { GLOBAL_ALLOW, RULE_SPECS, type PatternRule } from './rules.js';
import { urlPasswordAt } from './url.js';

/** One finding in a string: the rule's index in RULE_SPECS order and `[start, end)`. */
export interface RuleSpan {
  readonly rule: number;
  readonly start: number;
  readonly end: number;
}

/** Characters of context a window keeps past a match's bound on each side. */
const WINDOW_MARGIN_CHARS = 1;

interface CompiledPattern {
  readonly spec: PatternRule;
  readonly index: number;
  readonly re: RE2JS;
  readonly allow: RE2JS | undefined;
  /** Unbounded rules: which ASCII characters continue a match's run. */
  readonly run: Uint8Array | undefined;
}

/** What a keyword occurrence is handed to. */
type Target =
  | { readonly kind: 'pattern'; readonly pattern: CompiledPattern }
  | { readonly kind: 'generic' | 'pem' | 'url'; readonly index: number };

/** The rules a redactor runs, compiled. */
export interface CompiledRules {
  /** generic-api-key's index, or -1 when it is disabled. */
  readonly genericIndex: number;
  readonly generic: GenericScanner;
  readonly keywords: KeywordIndex;
  readonly keywordText: readonly string[];
  /** By keyword index: the rules it starts. */
  readonly targets: readonly (readonly Target[])[];
  /** The furthest any enabled rule's secret starts before its keyword. */
  readonly maxSecretBefore: number;
  readonly globalAllowed: (secret: string) => boolean;
}

function runTable(chars: string): Uint8Array {
  const table = new Uint8Array(128);
  const re = new RegExp(`[${chars}]`);
  for (let c = 0; c < 128; c++) if (re.test(String.fromCharCode(c))) table[c] = 1;
  return table;
}

/** Compiles the rules in `enabled` (indexes into RULE_SPECS). */
export function compileRules(enabled: ReadonlySet<number>): CompiledRules {
  const global = RE2JS.compile(GLOBAL_ALLOW.map((p) => `(?:${p})`).join('|'));
  const globalAllowed = (secret: string): boolean => global.test(secret);
  const keywordText: string[] = [];
  const keywordIds = new Map<string, number>();
  const targets: Target[][] = [];
  let genericIndex = -1;
  let maxSecretBefore = 0;
  RULE_SPECS.forEach((spec, index) => {
    if (!enabled.has(index)) return;
    let target: Target;
    if (spec.kind === 'pattern') {
      const pattern: CompiledPattern = {
        spec,
        index,
        re: RE2JS.compile(spec.regex),
        allow:
          spec.allow === undefined
            ? undefined
            : RE2JS.compile(spec.allow.map((p) => `(?:${p})`).join('|')),
        run: spec.run === undefined ? undefined : runTable(spec.run),
      };
      target = { kind: 'pattern', pattern };
    } else {
      if (spec.kind === 'generic') genericIndex = index;
      target = { kind: spec.kind, index };
    }
    maxSecretBefore = Math.max(maxSecretBefore, spec.secretBefore);
    for (const k of spec.keywords) {
      let id = keywordIds.get(k);
      if (id === undefined) {
        id = keywordText.length;
        keywordIds.set(k, id);
        keywordText.push(k);
        targets.push([]);
      }
      (targets[id] as Target[]).push(target);
    }
  });
  return {
    genericIndex,
    generic: compileGeneric(globalAllowed),
    keywords: new KeywordIndex(keywordText),
    keywordText,
    targets,
    maxSecretBefore,
    globalAllowed,
  };
}

/** How a scan reads its text. */
export interface ScanMode {
  /** The text ends here (false: a stream, more may follow). */
  readonly final: boolean;
  /** The text starts here (false: a stream that dropped what came before). */
  readonly startsHere: boolean;
}

/** Where a stream's findings stop being settled (see the header). */
export interface HoldState {
  holdFrom: number;
}

const NOTHING: RuleSpan[] = [];
/** Reused between scans (a scan is synchronous and calls nothing back). */
const hits: number[] = [];

function secretPasses(
  p: CompiledPattern,
  text: string,
  start: number,
  end: number,
  c: CompiledRules,
): boolean {
  const { spec } = p;
  if (spec.entropy !== undefined && entropy(text, start, end) <= spec.entropy) return false;
  const secret = text.slice(start, end);
  if (p.allow?.test(secret) === true) return false;
  return !c.globalAllowed(secret);
}

/** Runs one pattern on `text[from, to)`, pushing its secrets' spans. */
function runPattern(
  p: CompiledPattern,
  text: string,
  from: number,
  to: number,
  mode: ScanMode,
  c: CompiledRules,
  out: RuleSpan[],
): void {
  const window = from === 0 && to === text.length ? text : text.slice(from, to);
  const leftEdge = from > 0 || !mode.startsHere;
  const rightEdge = to < text.length || !mode.final;
  const m = p.re.matcher(window);
  let at = 0;
  while (at <= window.length && m.find(at)) {
    const start = m.start();
    const end = m.end();
    if ((leftEdge && start === 0) || (rightEdge && end === window.length)) {
      at = start + 1;
      continue;
    }
    at = end > start ? end : start + 1;
    const s = m.start(p.spec.secretGroup);
    const e = m.end(p.spec.secretGroup);
    if (s < 0 || e <= s) continue;
    if (secretPasses(p, window, s, e, c))
      out.push({ rule: p.index, start: from + s, end: from + e });
  }
}

/**
 * Where the run of a rule's token characters that holds `i` ends, for one
 * text: the last answer is kept, so keywords inside one long run (hits come
 * in order) read it once, not once each.
 */
class RunEnds {
  private from = -1;
  private end = -1;
  constructor(
    private readonly text: string,
    private readonly table: Uint8Array,
  ) {}
  at(i: number): number {
    if (i >= this.from && i <= this.end) return this.end;
    const { text, table } = this;
    let r = i;
    while (r < text.length) {
      const ch = text.charCodeAt(r);
      if (ch >= 128 || table[ch] === 0) break;
      r++;
    }
    this.from = i;
    this.end = r;
    return r;
  }
}

/**
 * The findings in `text`, merged and in order (see the header); an empty
 * array, always the same one, when there are none. When `state` is given, it
 * receives `holdFrom` (the text length when `mode.final`).
 */
export function scanText(
  c: CompiledRules,
  text: string,
  mode: ScanMode,
  state?: HoldState,
): RuleSpan[] {
  hits.length = 0;
  const partial = c.keywords.scan(text, hits);
  const n = text.length;
  let holdFrom = mode.final ? n : Math.max(0, n - partial - c.maxSecretBefore);
  if (state !== undefined) state.holdFrom = holdFrom;
  if (hits.length === 0) return NOTHING;

  const out: RuleSpan[] = [];
  const windows = new Map<CompiledPattern, number[]>(); // [from, to, from, to, …]
  const pemBegins: number[] = [];
  let pemIndex = -1;
  const hold = (at: number): void => {
    holdFrom = Math.min(holdFrom, Math.max(0, at));
  };
  const runs = new Map<CompiledPattern, RunEnds>();
  const windowed = (pattern: CompiledPattern, from: number, to: number): void => {
    let list = windows.get(pattern);
    if (list === undefined) windows.set(pattern, (list = []));
    list.push(from, to);
  };
  for (let h = 0; h < hits.length; h += 2) {
    const keyword = hits[h] as number;
    const k = hits[h + 1] as number;
    for (const target of c.targets[keyword] as readonly Target[]) {
      switch (target.kind) {
        case 'pattern': {
          const { pattern } = target;
          const { before, after, secretBefore } = pattern.spec;
          if (after === undefined) {
            // Unbounded: the window runs to the end of the token run and the
            // character after it (a match may consume it); settled once those
            // have arrived.
            let ends = runs.get(pattern);
            if (ends === undefined)
              runs.set(pattern, (ends = new RunEnds(text, pattern.run as Uint8Array)));
            const end = ends.at(k);
            const to = end + 1 + WINDOW_MARGIN_CHARS;
            windowed(pattern, Math.max(0, k - before - WINDOW_MARGIN_CHARS), Math.min(n, to));
            if (!mode.final && to > n && end - k < MAX_TOKEN_RUN_CHARS) hold(k - secretBefore);
            break;
          }
          const to = k + after + WINDOW_MARGIN_CHARS;
          windowed(pattern, Math.max(0, k - before - WINDOW_MARGIN_CHARS), Math.min(n, to));
          if (!mode.final && to > n) hold(k - secretBefore);
          break;
        }
        case 'pem':
          pemIndex = target.index;
          pemBegins.push(k);
          break;
        case 'url': {
          const span = urlPasswordAt(text, k, mode.final, c.globalAllowed);
          if (span === OPEN) hold(k);
          else if (span !== undefined) out.push({ rule: target.index, ...span });
          break;
        }
        case 'generic': {
          const span = c.generic.at(text, k, c.keywordText[keyword] as string, mode.final);
          if (span === OPEN) hold(k);
          else if (span !== undefined) out.push({ rule: target.index, ...span });
          break;
        }
      }
    }
  }
  for (const [pattern, list] of windows) {
    // Keywords of different lengths report slightly out of start order.
    const order: number[] = [];
    for (let w = 0; w < list.length; w += 2) order.push(w);
    order.sort((a, b) => (list[a] as number) - (list[b] as number));
    let from = -1;
    let to = -1;
    for (const w of order) {
      const f = list[w] as number;
      const t = list[w + 1] as number;
      if (f <= to) to = Math.max(to, t);
      else {
        if (to >= 0) runPattern(pattern, text, from, to, mode, c, out);
        from = f;
        to = t;
      }
    }
    runPattern(pattern, text, from, to, mode, c, out);
  }
  if (pemIndex >= 0) {
    const pem: Span[] = [];
    const open = scanPem(text, pemBegins, mode.final, pem);
    if (open >= 0) hold(open);
    for (const span of pem) out.push({ rule: pemIndex, ...span });
  }
  if (state !== undefined) state.holdFrom = holdFrom;
  return out.length === 0 ? NOTHING : merge(out);
}

/** Orders spans by start then rule, and folds each overlap into the first. */
export function merge(spans: RuleSpan[]): RuleSpan[] {
  spans.sort((a, b) => a.start - b.start || a.rule - b.rule || b.end - a.end);
  const merged: RuleSpan[] = [];
  let current = spans[0] as RuleSpan;
  for (let i = 1; i < spans.length; i++) {
    const next = spans[i] as RuleSpan;
    if (next.start < current.end) {
      if (next.end > current.end)
        current = { rule: current.rule, start: current.start, end: next.end };
    } else {
      merged.push(current);
      current = next;
    }
  }
  merged.push(current);
  return merged;
}

/**
 * `text[from, to)` with each span inside it replaced by its rule's text
 * (`replacements`, by rule index). Spans are merged and ordered.
 */
export function replaceSpans(
  text: string,
  spans: readonly RuleSpan[],
  replacements: readonly string[],
  from = 0,
  to = text.length,
): string {
  let out = '';
  let at = from;
  for (const span of spans) {
    if (span.end <= from || span.start >= to) continue;
    out += text.slice(at, Math.max(at, span.start)) + (replacements[span.rule] as string);
    at = Math.max(at, span.end);
  }
  return out + text.slice(at, to);
}
