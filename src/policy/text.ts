/**
 * What an agent is shown of a server's own words: tool, prompt and resource
 * titles and descriptions, and tool names. Pure, no I/O; everything is
 * compiled once, at module load.
 *
 * In order:
 * 1. `cleanText` removes what a person reading the text cannot see but a
 *    model still reads: Unicode tag characters, bidi controls, zero-width and
 *    other default-ignorable characters, terminal escape sequences and
 *    control characters. The gateway shows agents the cleaned text, and the
 *    rules below run on exactly that text, so what is judged is what is seen.
 * 2. `nameFindings` flags tool names that are not plain ASCII, or that imitate
 *    another name (look-alike letters, mixed scripts, NFKC variants).
 * 3. `poisonFindings` names the signs of a description that instructs the
 *    agent in plain sight, as the published tool-poisoning examples do. A
 *    finding means "hold this tool until an operator approves it"; what holds
 *    and who approves is the caller's.
 *
 * Matching is linear-time by construction: character scans here, and RE2
 * (`re2js`, an automaton without backtracking) for the rules. Hostile text
 * is bounded: the rules read at most `MAX_SCANNED_CHARS` of a description,
 * and a longer description is itself a finding (it cannot be vouched for).
 */
import { RE2JS } from 're2js';

/** How much of one description the rules read (UTF-16 code units, 64 KiB). */
export const MAX_SCANNED_CHARS = 64 * 1024;
/** How much text hidden in tag characters is decoded and scanned. */
export const MAX_SMUGGLED_CHARS = 4 * 1024;
/** Longest excerpt a finding carries (characters). */
export const MAX_EXCERPT_CHARS = 160;
/** Context kept either side of a match in an excerpt (characters). */
const EXCERPT_CONTEXT_CHARS = 40;
/** spec/2026-07-28/server/tools.mdx, "Tool Names": 1 to 128 characters SHOULD. */
export const MAX_TOOL_NAME_CHARS = 128;

// ---------------------------------------------------------------------------
// Hidden characters

/**
 * What `cleanText` removes, by kind:
 * - `tag`: Unicode tag characters U+E0000–U+E007F (ASCII mirrored out of
 *   sight: "ASCII smuggling");
 * - `variation-selector`: U+E0100–U+E01EF (bytes smuggled behind an emoji);
 * - `bidi`: embeddings, overrides and isolates (U+202A–U+202E,
 *   U+2066–U+2069), which reorder what a reader sees;
 * - `bidi-mark`: U+200E, U+200F, U+061C (invisible direction marks);
 * - `zero-width`: U+200B–U+200D, U+2060, U+FEFF, U+180E, U+2061–U+2064;
 * - `ignorable`: the other default-ignorable code points (soft hyphen, CGJ,
 *   Hangul fillers, Mongolian selectors, deprecated format characters,
 *   U+E0080–U+E0FFF outside the two ranges above, …);
 * - `ansi`: terminal escape sequences (CSI, OSC and other ESC sequences, and
 *   their 8-bit C1 forms);
 * - `control`: other C0 controls (all but tab, LF, CR), DEL and C1 controls;
 * - `lone-surrogate`: a UTF-16 surrogate without its pair (not text at all).
 */
export type HiddenKind =
  | 'tag'
  | 'variation-selector'
  | 'bidi'
  | 'bidi-mark'
  | 'zero-width'
  | 'ignorable'
  | 'ansi'
  | 'control'
  | 'lone-surrogate';

/** What `cleanText` removed from one text, for the gateway's log. */
export interface HiddenCharacters {
  /** Code points removed (an escape sequence counts each of its characters). */
  readonly removed: number;
  /** Kinds removed, each once, sorted. */
  readonly kinds: readonly HiddenKind[];
  /**
   * The ASCII that tag characters spelled (U+E0020–U+E007E map to
   * U+0020–U+007E), at most `MAX_SMUGGLED_CHARS`; `''` when there was none.
   */
  readonly smuggled: string;
}

/**
 * Kinds that hold a description by themselves (`poison.hidden-text`). The
 * others (zero-width characters, direction marks, soft hyphens…) occur in
 * honest text — emoji sequences, right-to-left scripts, pasted documents —
 * and are removed without holding: once removed, they can neither hide an
 * instruction nor split a keyword that the rules look for.
 */
const HOLDING_KINDS: ReadonlySet<HiddenKind> = new Set<HiddenKind>([
  'tag',
  'variation-selector',
  'bidi',
  'ansi',
  'control',
  'lone-surrogate',
]);

/**
 * Every code unit that may start something `cleanText` removes. One native
 * scan over a single character class (no quantifier, nothing to backtrack):
 * the fast path for the text that has none, which is nearly all of it.
 * With the `u` flag, `\u{D800}-\u{DFFF}` matches only unpaired surrogates.
 */
const CANDIDATE =
  // Control and combining characters in the class are the point of it; each is matched alone.
  // eslint-disable-next-line no-control-regex, no-misleading-character-class
  /[\0-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\xAD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFEFF\uFFA0\uFFF0-\uFFF8\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0000}-\u{E0FFF}\u{D800}-\u{DFFF}]/u;

const ESC = 0x1b;
const BEL = 0x07;
const C1_DCS = 0x90;
const C1_SOS = 0x98;
const C1_CSI = 0x9b;
const C1_ST = 0x9c;
const C1_OSC = 0x9d;
const C1_PM = 0x9e;
const C1_APC = 0x9f;

/** The kind of one code point that is removed on its own, or null to keep it. */
function kindOf(cp: number): HiddenKind | null {
  if (cp < 0x20) return cp === 0x09 || cp === 0x0a || cp === 0x0d ? null : 'control';
  if (cp < 0x7f) return null;
  if (cp <= 0x9f) return 'control';
  if (cp < 0xad) return null;
  if (cp >= 0xe0000 && cp <= 0xe0fff) {
    if (cp <= 0xe007f) return 'tag';
    if (cp >= 0xe0100 && cp <= 0xe01ef) return 'variation-selector';
    return 'ignorable';
  }
  if (cp >= 0xd800 && cp <= 0xdfff) return 'lone-surrogate';
  if ((cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) return 'bidi';
  if (cp === 0x200e || cp === 0x200f || cp === 0x061c) return 'bidi-mark';
  if (
    (cp >= 0x200b && cp <= 0x200d) ||
    cp === 0x2060 ||
    cp === 0xfeff ||
    cp === 0x180e ||
    (cp >= 0x2061 && cp <= 0x2064)
  ) {
    return 'zero-width';
  }
  if (
    cp === 0xad ||
    cp === 0x034f ||
    cp === 0x115f ||
    cp === 0x1160 ||
    cp === 0x17b4 ||
    cp === 0x17b5 ||
    (cp >= 0x180b && cp <= 0x180f) ||
    (cp >= 0x2065 && cp <= 0x206f) ||
    cp === 0x3164 ||
    cp === 0xffa0 ||
    (cp >= 0xfff0 && cp <= 0xfff8) ||
    (cp >= 0x1bca0 && cp <= 0x1bca3) ||
    (cp >= 0x1d173 && cp <= 0x1d17a)
  ) {
    return 'ignorable';
  }
  return null;
}

/** Index just past a string sequence (OSC, DCS, SOS, PM, APC) that starts its payload at `from`. */
function endOfStringSequence(s: string, from: number): number {
  // Terminated by BEL, ST (ESC \) or 8-bit ST. Unterminated, a terminal
  // swallows the rest of the text, so the rest is removed too: what the agent
  // is shown (and the rules judge) never holds text a person could not see.
  for (let j = from; j < s.length; j++) {
    const c = s.charCodeAt(j);
    if (c === BEL || c === C1_ST) return j + 1;
    if (c === ESC && s.charCodeAt(j + 1) === 0x5c) return j + 2;
  }
  return s.length;
}

/** Index just past a CSI sequence whose parameters start at `from` (ECMA-48 §5.4). */
function endOfCsi(s: string, from: number): number {
  let j = from;
  while (j < s.length && s.charCodeAt(j) >= 0x30 && s.charCodeAt(j) <= 0x3f) j++;
  while (j < s.length && s.charCodeAt(j) >= 0x20 && s.charCodeAt(j) <= 0x2f) j++;
  if (j < s.length && s.charCodeAt(j) >= 0x40 && s.charCodeAt(j) <= 0x7e) j++;
  return j;
}

/** Index just past the escape sequence that starts with the ESC or C1 control at `i`. */
function endOfEscape(s: string, i: number): number {
  const c = s.charCodeAt(i);
  if (c === C1_CSI) return endOfCsi(s, i + 1);
  if (c === C1_OSC || c === C1_DCS || c === C1_SOS || c === C1_PM || c === C1_APC) {
    return endOfStringSequence(s, i + 1);
  }
  // ESC
  const next = s.charCodeAt(i + 1);
  if (next === 0x5b) return endOfCsi(s, i + 2); // ESC [
  // ESC ] (OSC), ESC P (DCS), ESC X (SOS), ESC ^ (PM), ESC _ (APC)
  if (next === 0x5d || next === 0x50 || next === 0x58 || next === 0x5e || next === 0x5f) {
    return endOfStringSequence(s, i + 2);
  }
  if (next >= 0x20 && next <= 0x2f) {
    // nF: intermediates, then one final byte (ESC ( B and the like).
    let j = i + 2;
    while (j < s.length && s.charCodeAt(j) >= 0x20 && s.charCodeAt(j) <= 0x2f) j++;
    if (j < s.length && s.charCodeAt(j) >= 0x30 && s.charCodeAt(j) <= 0x7e) j++;
    return j;
  }
  if (next >= 0x30 && next <= 0x7e) return i + 2; // Fp, Fe, Fs: ESC 7, ESC M, ESC c, …
  return i + 1; // a lone ESC
}

interface Scan {
  cleaned: string;
  removed: number;
  kinds: Set<HiddenKind>;
  smuggled: string;
}

/**
 * One linear pass from the first candidate on: removed ranges are skipped,
 * kept runs are sliced whole (not copied character by character).
 */
function scan(s: string, first: number): Scan {
  const parts: string[] = [];
  const kinds = new Set<HiddenKind>();
  let removed = 0;
  let smuggled = '';
  let keptFrom = 0;
  let i = first;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    let end: number;
    let kind: HiddenKind | null;
    if (
      c === ESC ||
      c === C1_CSI ||
      c === C1_OSC ||
      c === C1_DCS ||
      c === C1_SOS ||
      c === C1_PM ||
      c === C1_APC
    ) {
      end = endOfEscape(s, i);
      kind = 'ansi';
    } else {
      const cp = s.codePointAt(i) ?? c;
      kind = kindOf(cp);
      end = i + (cp > 0xffff ? 2 : 1);
      if (
        kind === 'tag' &&
        cp >= 0xe0020 &&
        cp <= 0xe007e &&
        smuggled.length < MAX_SMUGGLED_CHARS
      ) {
        smuggled += String.fromCharCode(cp - 0xe0000);
      }
    }
    if (kind === null) {
      i = end;
      continue;
    }
    if (i > keptFrom) parts.push(s.slice(keptFrom, i));
    kinds.add(kind);
    for (let j = i; j < end; j++) {
      // Count code points, not code units.
      const u = s.charCodeAt(j);
      if (!(u >= 0xdc00 && u <= 0xdfff && j > i && isHigh(s.charCodeAt(j - 1)))) removed++;
    }
    keptFrom = end;
    i = end;
  }
  if (keptFrom < s.length) parts.push(s.slice(keptFrom));
  return { cleaned: parts.join(''), removed, kinds, smuggled };
}

function isHigh(u: number): boolean {
  return u >= 0xd800 && u <= 0xdbff;
}

/**
 * The text with every hidden character removed (see `HiddenKind`). Returns
 * `s` itself when there is nothing to remove, which is one native scan and
 * no allocation.
 */
export function cleanText(s: string): string {
  const first = s.search(CANDIDATE);
  if (first === -1) return s;
  return scan(s, first).cleaned;
}

const NOTHING_HIDDEN: HiddenCharacters = Object.freeze({
  removed: 0,
  kinds: Object.freeze([]) as readonly HiddenKind[],
  smuggled: '',
});

/** What `cleanText(s)` removes from `s`, for logging and for the rules. */
export function hiddenCharacters(s: string): HiddenCharacters {
  const first = s.search(CANDIDATE);
  if (first === -1) return NOTHING_HIDDEN;
  const r = scan(s, first);
  return { removed: r.removed, kinds: [...r.kinds].sort(), smuggled: r.smuggled };
}

// ---------------------------------------------------------------------------
// Look-alike letters

/**
 * Letters from other scripts that render like ASCII letters: Cyrillic,
 * Greek, Armenian and a few Latin extensions, the ones the published
 * homograph and tool-name spoofing examples use. A hand-picked subset of
 * Unicode's confusables (UTS #39), not all of it; NFKC already folds the
 * fullwidth and mathematical forms.
 */
const LOOKALIKE_PAIRS: readonly (readonly [from: string, to: string])[] = [
  // Cyrillic
  ['авеёорсухѕіїјһԁԛԝӏѵ', 'abeeopcyxsiijhdqwlv'],
  ['АВЕКМНОРСТХУІЈЅԀԚԜӀҺ', 'ABEKMHOPCTXYIJSDQWIH'],
  // Greek
  ['αονρικυχϲϳ', 'aovpikuxcj'],
  ['ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹ', 'ABEZHIKMNOPTYXC'],
  // Armenian
  ['օսցհոքՍՕ', 'oughnqUO'],
  // Latin extensions and IPA
  ['ıȷɑɡɩʏɴʀᴄᴏᴜᴠᴡᴢ', 'ijagiynrcouvwz'],
];
const LOOKALIKES: ReadonlyMap<string, string> = new Map(
  LOOKALIKE_PAIRS.flatMap(([from, to]) => {
    if (from.length !== to.length) throw new Error(`look-alike table: ${from} / ${to}`);
    return [...from].map((ch, i): [string, string] => [ch, to.charAt(i)]);
  }),
);

/** One native scan over a class of single characters: does `s` contain a look-alike? */
const LOOKALIKE_CHAR = new RegExp(`[${[...LOOKALIKES.keys()].join('')}]`, 'u');
const LOOKALIKE_CHARS = new RegExp(LOOKALIKE_CHAR.source, 'gu');

/** `s` with look-alike letters replaced by the ASCII they imitate. */
function foldLookalikes(s: string): string {
  if (!LOOKALIKE_CHAR.test(s)) return s;
  return s.replace(LOOKALIKE_CHARS, (ch) => LOOKALIKES.get(ch) ?? ch);
}

/**
 * The text as the rules read it: NFKC (fullwidth and other compatibility
 * forms become their plain letters) and look-alike letters folded to ASCII.
 * Case is left alone (the rules are case-insensitive), so excerpts read as
 * the server wrote them.
 */
function foldForRules(s: string): string {
  return foldLookalikes(s.normalize('NFKC'));
}

// ---------------------------------------------------------------------------
// Tool names

/** Rules on tool names, each a stable finding id. */
export const NAME_RULES: readonly { readonly id: string; readonly summary: string }[] =
  Object.freeze([
    {
      id: 'name.non-ascii',
      summary: 'the name has characters outside printable ASCII',
    },
    {
      id: 'name.confusable',
      summary:
        'the name imitates another: a letter that looks like an ASCII letter (Cyrillic "а"), or characters NFKC normalizes to something else (fullwidth "ｒｅａｄ")',
    },
    {
      id: 'name.mixed-script',
      summary: 'the name mixes letters of more than one script (Latin with Cyrillic, Greek, …)',
    },
    {
      id: 'name.hidden-characters',
      summary:
        'the name holds characters that `cleanText` removes (tag, bidi, zero-width, controls)',
    },
    {
      id: 'name.invalid-characters',
      summary:
        'the name has ASCII characters outside A-Z a-z 0-9 _ - . (spec "Tool Names": SHOULD be the only ones)',
    },
    {
      id: 'name.length',
      summary: `the name is empty or longer than ${MAX_TOOL_NAME_CHARS} characters (spec "Tool Names")`,
    },
  ]);

const NAME_CHARSET = /^[A-Za-z0-9_.-]*$/;
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
// Character classes only, tested one letter at a time.
const SCRIPTS: readonly (readonly [string, RegExp])[] = [
  ['Latin', /\p{Script=Latin}/u],
  ['Cyrillic', /\p{Script=Cyrillic}/u],
  ['Greek', /\p{Script=Greek}/u],
  ['Armenian', /\p{Script=Armenian}/u],
  ['Georgian', /\p{Script=Georgian}/u],
  ['Cherokee', /\p{Script=Cherokee}/u],
  ['Hebrew', /\p{Script=Hebrew}/u],
  ['Arabic', /\p{Script=Arabic}/u],
  // Japanese text mixes these three by nature: one script for this check.
  ['Han/Kana', /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}]/u],
  ['Hangul', /\p{Script=Hangul}/u],
];
const LETTER = /\p{L}/u;

function scriptOf(ch: string): string {
  for (const [name, re] of SCRIPTS) if (re.test(ch)) return name;
  return 'Other';
}

/**
 * Findings on a tool name (ids from `NAME_RULES`, in that order; `[]` for a
 * plain name). A name with findings can pose as another tool: callers flag
 * it, and may refuse it.
 */
export function nameFindings(name: string): string[] {
  const out: string[] = [];
  const printableAscii = PRINTABLE_ASCII.test(name);
  if (!printableAscii) {
    out.push('name.non-ascii');
    const cleaned = cleanText(name);
    const nfkc = cleaned.normalize('NFKC');
    if (nfkc !== cleaned || LOOKALIKE_CHAR.test(cleaned)) out.push('name.confusable');
    const scripts = new Set<string>();
    for (const ch of cleaned) if (LETTER.test(ch)) scripts.add(scriptOf(ch));
    if (scripts.size > 1) out.push('name.mixed-script');
    if (cleaned !== name) out.push('name.hidden-characters');
  }
  if (printableAscii && !NAME_CHARSET.test(name)) out.push('name.invalid-characters');
  const length = [...name].length;
  if (length === 0 || length > MAX_TOOL_NAME_CHARS) out.push('name.length');
  return out;
}

// ---------------------------------------------------------------------------
// Poisoned descriptions

/** One sign that a description instructs the agent. */
export interface PoisonFinding {
  /** A rule id from `POISON_RULES`. */
  readonly rule: string;
  /** A sentence for the operator: what was found. */
  readonly reason: string;
  /**
   * Up to `MAX_EXCERPT_CHARS` of the text around the match, whitespace
   * collapsed, from the text as the rules read it (cleaned, NFKC, look-alike
   * letters folded); for `poison.hidden-text`, the smuggled text if any.
   */
  readonly excerpt: string;
}

interface PatternRule {
  readonly id: string;
  readonly summary: string;
  readonly reason: string;
  /** Alternatives; ' ' in a pattern stands for one or more whitespace characters. */
  readonly patterns: readonly string[];
}

// Pieces shared by several rules. RE2 syntax: every quantifier is bounded or
// over a single class, and RE2 cannot backtrack whatever the pattern.
const NEG = String.raw`(?:do not|don['’]?t|never|must not|mustn['’]?t|should not|shouldn['’]?t|avoid|refrain from|no need to)`;
const PASS_VERB = String.raw`(?:pass|put|include|insert|send|append|provide|place|embed|supply|concatenate|attach|share|paste)`;
const INTO = String.raw`(?:as|in|into|inside|within|via)`;
const SENSITIVE_PATH = [
  String.raw`~/\.ssh\b`,
  String.raw`\.ssh/`,
  String.raw`\bid_(?:rsa|dsa|ecdsa|ed25519)\b`,
  String.raw`\bauthorized_keys\b`,
  String.raw`\bmcp\.json\b`,
  String.raw`\bclaude_desktop_config\.json\b`,
  String.raw`\.cursor/`,
  String.raw`\.aws/(?:credentials|config)\b`,
  String.raw`\baws_secret_access_key\b`,
  String.raw`(?:^|[\s'"\x60(/~=])\.env(?:\.[a-z0-9_-]+)?\b`,
  String.raw`\.netrc\b`,
  String.raw`\.npmrc\b`,
  String.raw`\.pypirc\b`,
  String.raw`\.git-credentials\b`,
  String.raw`\.docker/config\.json\b`,
  String.raw`\.kube/config\b`,
  String.raw`/etc/(?:passwd|shadow)\b`,
  String.raw`\.gnupg\b`,
  String.raw`\.(?:bash|zsh)_history\b`,
  String.raw`/proc/(?:self|\d{1,10})/environ\b`,
  String.raw`\.config/gcloud\b`,
  String.raw`\bwallet\.dat\b`,
  String.raw`\.pgpass\b`,
].join('|');
const READ_VERB = String.raw`(?:read|cat|open|fetch|retrieve|grab|collect|gather|extract|copy|dump|print|output|exfiltrate|upload|send|pass|include|attach|provide|share|concatenate|append|contents? of)`;

const PATTERN_RULES: readonly PatternRule[] = [
  {
    id: 'poison.important-tag',
    summary:
      'instruction markup addressed to the model: <IMPORTANT>, <SYSTEM>, <instructions> and similar tags, or "SYSTEM NOTE:"-style headers',
    reason: 'the description carries instruction markup addressed to the model',
    patterns: [
      String.raw`<\s*/?\s*(?:important|system|system[-_ ]?(?:prompt|message|note|instructions?)|instructions?|hidden|secret|admin|critical|override|mandatory|priority|(?:assistant|ai|agent|model|llm)[-_ ]?(?:instructions?|note))\s*>`,
      String.raw`\bsystem (?:note|instructions?|directive|override)\s*:`,
    ],
  },
  {
    id: 'poison.model-tokens',
    summary:
      'chat-template control tokens (<|im_start|>, <|system|>, [INST], <<SYS>>) that try to open a new system or user turn',
    reason: 'the description carries chat-template control tokens',
    patterns: [
      String.raw`<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|end_header_id|eot_id)\s*\|>`,
      String.raw`\[/?inst\]`,
      String.raw`<</?sys>>`,
    ],
  },
  {
    id: 'poison.override-instructions',
    summary:
      'tells the model to ignore or replace its other instructions ("ignore previous instructions", "you are now …", "new instructions:")',
    reason: 'the description tells the model to set aside its other instructions',
    patterns: [
      String.raw`\b(?:ignore|disregard|forget|override|bypass) (?:(?:all|any|the|your|of) ){0,3}(?:previous|prior|above|earlier|preceding|other|existing|original|system|safety) (?:instructions?|rules|directions|guidelines|prompts?|messages|policies|constraints)\b`,
      String.raw`\byou are now (?:a|an|the|my|in (?:developer|dan|god|admin|jailbreak)) `,
      String.raw`\bnew (?:system )?instructions\s*:`,
    ],
  },
  {
    id: 'poison.credential-files',
    summary:
      'tells the agent to read or send credential and configuration files (~/.ssh, id_rsa, mcp.json, .env, ~/.aws/credentials, ~/.cursor/, .netrc, …)',
    reason: 'the description tells the agent to read or send a credential or configuration file',
    patterns: [
      String.raw`\b${READ_VERB}\b.{0,80}(?:${SENSITIVE_PATH})`,
      String.raw`(?:${SENSITIVE_PATH}).{0,80}\b(?:${PASS_VERB}|its contents?)\b`,
    ],
  },
  {
    id: 'poison.extra-argument',
    summary:
      'tells the agent to put data it read elsewhere into an argument ("read … and pass its content as \'sidenote\'"), or to use an extra, hidden or side parameter',
    reason: 'the description tells the agent to pass data it obtained elsewhere in an argument',
    patterns: [
      String.raw`\b(?:read|cat|open|fetch|retrieve|grab|collect|gather|extract|copy)\b.{0,120}\b(?:and|then) ${PASS_VERB}\b.{0,60}\b${INTO}\b`,
      String.raw`\b${PASS_VERB} (?:its|their) (?:\w+ )?contents?\b.{0,30}\b${INTO}\b`,
      String.raw`\b(?:${PASS_VERB}|fill|set|smuggle|hide|encode)\b.{0,60}\b(?:extra|hidden|secret|side|covert|unused|dummy)[-_\s]?(?:param(?:eter)?|arg(?:ument)?|field|channel|notes?)s?\b`,
    ],
  },
  {
    id: 'poison.conceal-from-user',
    summary:
      'tells the agent to hide something from the user ("do not tell / mention / show the user", "keep this from the user", "without the user\'s knowledge")',
    reason: 'the description tells the agent to hide something from the user',
    patterns: [
      String.raw`\b${NEG} (?:\w+ ){0,3}(?:tell|telling|mention|mentioning|inform|informing|notify|notifying|show|showing|reveal|revealing|disclose|disclosing|alert|alerting|warn|warning|explain|explaining|report|reporting|display|displaying|let|letting|ask|asking|bother|bothering|confirm|confirming)\b.{0,60}\b(?:the user|users?\b|the human|the person|the operator|the developer|the customer)`,
      String.raw`\b(?:do not|don['’]?t|never|must not) (?:tell|mention|reveal|disclose|say|admit|acknowledge|inform|notify|report) (?:this|that|it|these|anything|any of)\b`,
      String.raw`\b(?:hide|conceal|keep|hidden|secret|invisible)\b.{0,40}\bfrom (?:the )?(?:user|users|human|operator)\b`,
      String.raw`\bwithout (?:the )?(?:user|user['’]s|their|human['’]?s?) (?:knowledge|knowing|noticing|consent|awareness|permission|approval|seeing)\b`,
      String.raw`\b(?:the )?users? (?:must|should|need|needs|will) (?:not|never) (?:know|see|notice|find out|be told|be informed|learn)\b`,
    ],
  },
  {
    id: 'poison.cross-tool-instructions',
    summary:
      'tells the agent to change how other tools are used: always BCC / forward / redirect, send all messages to an address, change the recipient, "this tool has a side effect on send_email"',
    reason: 'the description tells the agent to change how other tools are used',
    patterns: [
      String.raw`\b(?:always|also|must|should|make sure to|be sure to|remember to|you need to) (?:\w+ ){0,3}(?:bcc|cc|blind[-\s]?copy|carbon[-\s]?copy|forward|redirect|reroute|re-route)\b`,
      String.raw`\b(?:send|forward|redirect|route|deliver|copy|cc|bcc)\b.{0,30}\b(?:all|every|each|any) (?:\w+ )?(?:e-?mails?|mails?|messages?|texts?|sms|requests?|payments?|transfers?|transactions?|files?|data)\b.{0,40}\bto\s+['"\x60<]?(?:[a-z0-9._%+-]+@[a-z0-9.-]+|\+?\d[\d\s().-]{6,}|https?://)`,
      String.raw`\b(?:change|replace|override|modify|switch|redirect|rewrite|alter) (?:the |all |any )?(?:recipients?|destination|to address|to field|address|phone number|number|target|account|iban|wallet|url|endpoint|email)\b.{0,30}\bto\b`,
      String.raw`\b(?:this|the) tool has (?:a |an )?(?:\w+ ){0,3}side[-\s]?effects? on\b`,
      String.raw`\b(?:when|whenever|before|after) (?:using|calling|invoking|running) (?:any|all|every|other|another) (?:other )?(?:tools?|functions?|servers?)\b`,
      String.raw`\b(?:when|whenever|before|after) (?:using|calling|invoking|running) (?:the )?['"\x60]?[a-z0-9]{1,40}[_.][\w.-]{0,60}['"\x60]?(?: tool)?\s*,? (?:you )?(?:must|should always|always|make sure|need to|have to)\b`,
      String.raw`\b(?:when|whenever) (?:\(?[\w.-]{1,60}\)? )?[a-z0-9]{1,40}_[\w.-]{0,60} (?:tool )?(?:is|are|gets?) (?:invoked|called|used|run|executed)\b.{0,80}\b(?:make sure|always|you must|change|instead|replace|redirect|forward|bcc)\b`,
    ],
  },
  {
    id: 'poison.coercion',
    summary:
      'pressures the agent with invented consequences ("otherwise the tool will not work", "the system will crash", "all data will be lost", "VERY VERY important")',
    reason: 'the description pressures the agent with invented consequences',
    patterns: [
      String.raw`\botherwise\b.{0,20}\b(?:the |this )?(?:tool|function|system|application|app|server|request) (?:will not|won['’]?t|cannot|can['’]?t|does not|doesn['’]?t) work\b`,
      String.raw`\b(?:the )?(?:system|application|app|server|computer|agent) will crash\b`,
      String.raw`\ball (?:\w+ )?data will be (?:lost|deleted|destroyed)\b`,
      String.raw`\b(?:very ){2,8}important\b`,
    ],
  },
];

interface CompiledRule {
  readonly rule: PatternRule;
  readonly re: RE2JS;
}

/** Compiled once: ' ' becomes `\s+`, alternatives are joined, case-insensitive, `.` spans lines. */
const COMPILED: readonly CompiledRule[] = PATTERN_RULES.map((rule) => ({
  rule,
  re: RE2JS.compile(
    rule.patterns.map((p) => `(?:${p.replaceAll(' ', String.raw`\s+`)})`).join('|'),
    RE2JS.CASE_INSENSITIVE | RE2JS.DOTALL,
  ),
}));

const HIDDEN_TEXT_RULE = {
  id: 'poison.hidden-text',
  summary:
    'the raw text hides characters a reader cannot see: tag characters, variation-selector smuggling, bidi embeddings/overrides/isolates, terminal escapes, control characters, lone surrogates',
} as const;
const UNSCANNED_RULE = {
  id: 'poison.unscanned-length',
  summary: `the cleaned description is longer than the ${MAX_SCANNED_CHARS} characters the rules read, so the rest cannot be vouched for`,
} as const;

/** Every rule `poisonFindings` can name, with its summary (docs/policy.md lists them). */
export const POISON_RULES: readonly { readonly id: string; readonly summary: string }[] =
  Object.freeze([
    HIDDEN_TEXT_RULE,
    UNSCANNED_RULE,
    ...PATTERN_RULES.map(({ id, summary }) => ({ id, summary })),
  ]);

const WHITESPACE_RUN = /\s+/g;

function excerptOf(text: string, start: number, end: number): string {
  const from = Math.max(0, start - EXCERPT_CONTEXT_CHARS);
  const to = Math.min(text.length, end + EXCERPT_CONTEXT_CHARS, from + MAX_EXCERPT_CHARS * 2);
  const collapsed = text.slice(from, to).replace(WHITESPACE_RUN, ' ').trim();
  return collapsed.length > MAX_EXCERPT_CHARS ? collapsed.slice(0, MAX_EXCERPT_CHARS) : collapsed;
}

function matchRules(folded: string, where: string, seen: Set<string>, out: PoisonFinding[]): void {
  for (const { rule, re } of COMPILED) {
    if (seen.has(rule.id) || !re.test(folded)) continue;
    const m = re.matcher(folded);
    const excerpt = m.find() ? excerptOf(folded, m.start(), m.end()) : '';
    seen.add(rule.id);
    out.push({ rule: rule.id, reason: `${rule.reason}${where}`, excerpt });
  }
}

/**
 * The signs that `text` (a title or description, raw as the server sent it)
 * instructs the agent; `[]` when there are none. Hidden characters are
 * judged on the raw text; the other rules on `cleanText(text)`, the text the
 * agent is shown, at most its first `MAX_SCANNED_CHARS`; text spelled in tag
 * characters is decoded and judged too. One finding per rule, in
 * `POISON_RULES` order for the hidden and length rules, then the rest.
 * Pure and deterministic: callers may cache by the definition's pin.
 */
export function poisonFindings(text: string): PoisonFinding[] {
  const out: PoisonFinding[] = [];
  const seen = new Set<string>();
  let cleaned = text;
  const first = text.search(CANDIDATE);
  let smuggled = '';
  if (first !== -1) {
    const r = scan(text, first);
    cleaned = r.cleaned;
    smuggled = r.smuggled;
    const holding = [...r.kinds].filter((k) => HOLDING_KINDS.has(k)).sort();
    if (holding.length > 0) {
      out.push({
        rule: HIDDEN_TEXT_RULE.id,
        reason: `the description hides characters a reader cannot see (${holding.join(', ')}; ${r.removed} removed)`,
        excerpt: excerptOf(smuggled, 0, MAX_EXCERPT_CHARS),
      });
      seen.add(HIDDEN_TEXT_RULE.id);
    }
  }
  if (cleaned.length > MAX_SCANNED_CHARS) {
    out.push({
      rule: UNSCANNED_RULE.id,
      reason: `the description is ${cleaned.length} characters long; the rules read the first ${MAX_SCANNED_CHARS}`,
      excerpt: '',
    });
    seen.add(UNSCANNED_RULE.id);
    cleaned = cleaned.slice(0, MAX_SCANNED_CHARS);
  }
  matchRules(foldForRules(cleaned), '', seen, out);
  if (smuggled !== '')
    matchRules(foldForRules(smuggled), ' (in text hidden in tag characters)', seen, out);
  return out;
}

// ---------------------------------------------------------------------------
// Where a definition keeps its words

/** One title or description inside a definition, with its JSON path. */
export interface DefinitionText {
  /** JSON path from the definition, e.g. `inputSchema.properties.path.description`. */
  readonly path: string;
  readonly text: string;
}

/** Deepest nesting `definitionTexts` walks (messages are depth-checked before policy). */
const MAX_DEFINITION_DEPTH = 64;

/**
 * Every `title` and `description` string in a tool, prompt, resource or
 * resource-template definition, at any depth: the definition's own, its
 * input and output schemas' (property descriptions reach the model too), a
 * prompt's arguments'. The list the gateway cleans and judges.
 */
export function definitionTexts(definition: unknown): DefinitionText[] {
  const out: DefinitionText[] = [];
  const walk = (value: unknown, path: string, depth: number): void => {
    if (depth > MAX_DEFINITION_DEPTH || value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `${path}[${i}]`, depth + 1));
      return;
    }
    for (const [key, item] of Object.entries(value)) {
      const at = path === '' ? key : `${path}.${key}`;
      if ((key === 'title' || key === 'description') && typeof item === 'string') {
        out.push({ path: at, text: item });
      } else {
        walk(item, at, depth + 1);
      }
    }
  };
  walk(definition, '', 0);
  return out;
}
