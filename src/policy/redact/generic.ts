/**
 * generic-api-key: a high-entropy value assigned to a name that sounds like a
 * secret (`API_TOKEN=…`, `password: …`, `"client_secret": "…"`), the value
 * redacted, the name kept.
 *
 * It is gitleaks' generic-api-key rule (rules.ts names the commit) read as
 * code instead of run as its RE2 pattern, which costs about a microsecond a
 * character on re2js. The pattern, for reference:
 *
 *   (?i)[\w.-]{0,50}?(?:access|auth|(?-i:[Aa]pi|API)|credential|creds|key|
 *   passw(?:or)?d|secret|token)(?:[ \t\w.-]{0,20})[\s'"]{0,3}
 *   (?:=|>|:{1,3}=|\|\||:|=>|\?=|,)[\x60'"\s=]{0,5}
 *   ([\w.=-]{10,150}|[a-z0-9][a-z0-9+/]{11,}={0,3})(?:[\x60'"\s;]|\\[nr]|$)
 *
 * with entropy > 3.5, the value allowlist `^[a-zA-Z_.-]+$` (no digit and no
 * `=+/`: an identifier such as `process.env.TOKEN`), and an allowlist of
 * names read on the whole match (`primary_key`, `key_id`, `csrf_token`,
 * `author`, `public_token`, …). Read in the same order, from each keyword:
 * 1. the keyword, with up to 50 name characters before it (for the
 *    allowlist), then up to 20 of `[ \t\w.-]` and up to 3 of `[\s'"]`;
 * 2. the operator: `=>`, `:=` (`::=`, `:::=`), `=`, `:`, `>`, `||`, `?=`, `,`;
 * 3. up to 5 of `` [`'"\s=] ``, then the value: the run of `[\w.=-]` if it is
 *    10 to 150 long and the context ends there, else the run of base64
 *    characters with up to three `=` if it is at least 12 long.
 * Each part is a maximal run over a class the next part cannot start with
 * (or over at most 3 or 5 shared characters), so reading greedily accepts
 * what the pattern accepts; every step looks at a bounded stretch but the
 * base64 value, which is read once.
 *
 * Adapted, in order of weight:
 * - keywords: gitleaks' bare `key`, `access` and `api` flag every
 *   `"key": …` in a tool result (S3 object keys, Jira issue keys, cache
 *   keys). Here `key` counts only after a qualifier (`api_key`, `apikey`,
 *   `x-api-key`, `access_key`, `private_key`, `client_key`, …, QUALIFIERS),
 *   and bare `access` and `api` not at all (`access_token`, `api_secret` are
 *   still found by their other keyword);
 * - gitleaks' 1,500 stopwords are not used: a secret that happens to contain
 *   "code" or "data" would pass, the wrong way round for a redactor;
 * - names of pagination cursors (`nextPageToken`, `NextToken`,
 *   `continuation_token`, `sync_token`) are allowlisted: they are opaque and
 *   high-entropy but grant nothing;
 * - trailing context: as rules.ts (1), plus `&` `,` `)` `}` `]` `<` `>` `|`
 *   `#` and any backslash (JSON-escaped text);
 * - `\"` and `\'` count as quotes, so JSON inside a JSON string is read;
 * - after the operator, an HTTP auth scheme (`Bearer `, `Basic `, `token `)
 *   is skipped, and gitleaks' `author` allowlist entry no longer covers
 *   `Authorization`: `Authorization: Bearer <token>` is found;
 * - the base64 value is read up to MAX_TOKEN_RUN_CHARS; gitleaks' has no
 *   bound.
 * gitleaks' two allowlists on whole lines (Dockerfile `--mount=type=secret`,
 * JavaScript `import { … } from`) are not kept: no value matches there.
 *
 * `keyed` is the same judgement on a property name and its string value, for
 * structuredContent, where the name is a key and not text before the value.
 */
import { RE2JS } from 're2js';
import { MAX_TOKEN_RUN_CHARS } from './bounds.js';
import { ALNUM, BASE64, BLANK, LETTER, NAME, SPACE, VALUE, entropy, is } from './chars.js';

/** The scanner cannot decide until more text arrives (streams only). */
export const OPEN = Symbol('open');

/** A finding's span, `[start, end)`. */
export interface Span {
  readonly start: number;
  readonly end: number;
}

/** Bits per character a value must exceed (gitleaks' 3.5). */
const MIN_ENTROPY_BITS = 3.5;
/** Name characters read before the keyword, and after it before the operator. */
const NAME_BEFORE_CHARS = 50;
const NAME_AFTER_CHARS = 20;
/** `[\s'"]{0,3}` and `[\x60'"\s=]{0,5}`. */
const QUOTES_BEFORE_OPERATOR = 3;
const QUOTES_AFTER_OPERATOR = 5;
/** The two value forms' lengths. */
const MIN_VALUE_CHARS = 10;
const MAX_VALUE_CHARS = 150;
const MIN_BASE64_VALUE_CHARS = 12;
/** Blanks skipped after an auth scheme. */
const MAX_SCHEME_BLANKS = 3;

/** What makes `key` a keyword, lowercase, as the word before it. */
const QUALIFIERS = [
  'api',
  'access',
  'private',
  'secret',
  'client',
  'app',
  'auth',
  'encryption',
  'signing',
  'master',
  'account',
  'shared',
  'consumer',
  'license',
  'subscription',
  'session',
  'storage',
  'hmac',
];
const AUTH_SCHEMES = ['bearer', 'basic', 'token'];

/**
 * gitleaks' allowlist on the match (`regexTarget = "match"`), with `author`
 * narrowed to `author(?:[^i]|$)` so that it no longer allows every
 * `Authorization:` header; and ours for pagination cursors.
 */
const MATCH_ALLOW = [
  String.raw`(?i)(?:access(?:ibility|or)|access[_.-]?id|random[_.-]?access|api[_.-]?(?:id|name|version)|rapid|capital|[a-z0-9-]*?api[a-z0-9-]*?:jar:|author(?:[^i]|$)|X-MS-Exchange-Organization-Auth|Authentication-Results|(?:credentials?[_.-]?id|withCredentials)|(?:bucket|foreign|hot|idx|natural|primary|pub(?:lic)?|schema|sequence)[_.-]?key|(?:turkey)|key[_.-]?(?:alias|board|code|frame|id|length|mesh|name|pair|press(?:ed)?|ring|selector|signature|size|stone|storetype|word|up|down|left|right)|key[_.-]?vault[_.-]?(?:id|name)|keyVaultToStoreSecrets|key(?:store|tab)[_.-]?(?:file|path)|issuerkeyhash|(?-i:[DdMm]onkey|[DM]ONKEY)|keying|(?:secret)[_.-]?(?:length|name|size)|UserSecretsId|(?:csrf)[_.-]?token|(?:io\.jsonwebtoken[ \t]?:[ \t]?[\w-]+)|(?:api|credentials|token)[_.-]?(?:endpoint|ur[il])|public[_.-]?token|(?:key|token)[_.-]?file|(?-i:(?:[A-Z_]+=\n[A-Z_]+=|[a-z_]+=\n[a-z_]+=)(?:\n|\z))|(?-i:(?:[A-Z.]+=\n[A-Z.]+=|[a-z.]+=\n[a-z.]+=)(?:\n|\z)))`,
  String.raw`(?i)(?:page|continuation|sync|next|resume)[_.-]?token`,
].join('|');

function lowerAt(text: string, i: number): number {
  const c = text.charCodeAt(i);
  return c >= 65 && c <= 90 ? c + 32 : c;
}

/** Whether `text` spells `word` (lowercase ASCII) at `i`, in any case. */
function spells(text: string, i: number, word: string): boolean {
  if (i < 0 || i + word.length > text.length) return false;
  for (let j = 0; j < word.length; j++)
    if (lowerAt(text, i + j) !== word.charCodeAt(j)) return false;
  return true;
}

/** A quote character, or a backslash-escaped one: its length, else 0. */
function quoteAt(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c === 0x22 || c === 0x27) return 1;
  if (c === 0x5c) {
    const d = text.charCodeAt(i + 1);
    if (d === 0x22 || d === 0x27) return 2;
  }
  return 0;
}

/** Where a value may end: gitleaks' context and ours (header). */
function endsValue(text: string, i: number): boolean {
  if (i >= text.length) return true;
  if (is(text, i, SPACE)) return true;
  return '`\'";\\&,)}]<>|#'.includes(text.charAt(i));
}

/** Whether the value is an identifier, gitleaks' `^[a-zA-Z_.-]+$`. */
function identifierOnly(text: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    if (is(text, i, LETTER)) continue;
    const c = text.charCodeAt(i);
    if (c !== 0x5f && c !== 0x2e && c !== 0x2d) return false;
  }
  return true;
}

/** The end of the keyword at `k`, when it is one here; OPEN when that needs more text. */
function keywordEnd(
  text: string,
  k: number,
  keyword: string,
  final: boolean,
): number | typeof OPEN {
  if (keyword === 'passw') {
    // passw(?:or)?d
    if (spells(text, k + 5, 'd')) return k + 6;
    if (spells(text, k + 5, 'ord')) return k + 8;
    return !final && k + 8 > text.length ? OPEN : -1;
  }
  if (keyword === 'key') {
    let q = k;
    if (q > 0 && '_.- '.includes(text.charAt(q - 1))) q--;
    for (const w of QUALIFIERS) if (spells(text, q - w.length, w)) return k + 3;
    return -1;
  }
  return k + keyword.length;
}

export interface GenericScanner {
  /** The value assigned after the keyword at `k`, OPEN, or undefined. */
  at(text: string, k: number, keyword: string, final: boolean): Span | typeof OPEN | undefined;
  /** Whether `value`, the whole of a string under property `name`, is a secret. */
  keyed(name: string, value: string): boolean;
}

/** `globalAllowed(secret)`: the allowlists every rule shares (scan.ts). */
export function compileGeneric(globalAllowed: (secret: string) => boolean): GenericScanner {
  const matchAllow = RE2JS.compile(MATCH_ALLOW);

  const judged = (secret: string, match: string): boolean =>
    !identifierOnly(secret, 0, secret.length) &&
    entropy(secret, 0, secret.length) > MIN_ENTROPY_BITS &&
    !globalAllowed(secret) &&
    !matchAllow.test(match);

  const at = (
    text: string,
    k: number,
    keyword: string,
    final: boolean,
  ): Span | typeof OPEN | undefined => {
    const n = text.length;
    const more = final ? undefined : OPEN;
    const kwEnd = keywordEnd(text, k, keyword, final);
    if (kwEnd === OPEN) return OPEN;
    if (kwEnd < 0) return undefined;

    // 1. The rest of the name, and quotes.
    let q = kwEnd;
    while (q < n && q - kwEnd < NAME_AFTER_CHARS && is(text, q, NAME | BLANK)) q++;
    for (let count = 0; count < QUOTES_BEFORE_OPERATOR; count++) {
      if (q >= n - 1) return more; // the operator, or an escaped quote, is still to come
      if (is(text, q, SPACE)) q++;
      else {
        const len = quoteAt(text, q);
        if (len === 0) break;
        q += len;
      }
    }
    // 2. The operator.
    if (q + 1 >= n) return more;
    const c = text.charAt(q);
    if (c === '=') q += text.charAt(q + 1) === '>' ? 2 : 1;
    else if (c === ':') {
      let j = q;
      while (j < n && j - q < 3 && text.charAt(j) === ':') j++;
      if (j >= n) return more;
      if (text.charAt(j) === '=') q = j + 1;
      else if (j - q === 1) q = j;
      else return undefined;
    } else if (c === '>' || c === ',') q += 1;
    else if ((c === '|' && text.charAt(q + 1) === '|') || (c === '?' && text.charAt(q + 1) === '='))
      q += 2;
    else return undefined;
    // 3. Quotes, an auth scheme, the value.
    for (let count = 0; count < QUOTES_AFTER_OPERATOR && q < n; count++) {
      if (is(text, q, SPACE) || text.charAt(q) === '=' || text.charAt(q) === '`') q++;
      else {
        const len = quoteAt(text, q);
        if (len === 0) break;
        q += len;
      }
    }
    if (!final && n - q <= 'bearer '.length) return OPEN;
    for (const scheme of AUTH_SCHEMES) {
      if (spells(text, q, scheme) && is(text, q + scheme.length, BLANK)) {
        q += scheme.length;
        for (let b = 0; b < MAX_SCHEME_BLANKS && is(text, q, BLANK); b++) q++;
        break;
      }
    }
    const v = q;
    let r = v;
    while (r < n && r - v <= MAX_VALUE_CHARS && is(text, r, VALUE)) r++;
    if (r >= n && !final && r - v <= MAX_VALUE_CHARS) return OPEN;
    let end = -1;
    if (r - v >= MIN_VALUE_CHARS && r - v <= MAX_VALUE_CHARS && endsValue(text, r)) end = r;
    else if (is(text, v, ALNUM)) {
      r = v;
      while (r < n && r - v < MAX_TOKEN_RUN_CHARS && is(text, r, BASE64)) r++;
      if (r - v >= MAX_TOKEN_RUN_CHARS) return undefined;
      const run = r - v;
      for (let eq = 0; eq < 3 && text.charAt(r) === '='; eq++) r++;
      if (r >= n && !final) return OPEN;
      if (run >= MIN_BASE64_VALUE_CHARS && endsValue(text, r)) end = r;
    }
    if (end < 0) return undefined;
    let from = k;
    while (from > 0 && k - from < NAME_BEFORE_CHARS && is(text, from - 1, NAME)) from--;
    const secret = text.slice(v, end);
    return judged(secret, text.slice(from, Math.min(n, end + 1))) ? { start: v, end } : undefined;
  };

  const nameSuggestsSecret = (name: string): boolean => {
    const lower = name.toLowerCase();
    for (const word of ['secret', 'token', 'credential', 'creds', 'auth'])
      if (lower.includes(word)) return true;
    for (let i = lower.indexOf('passw'); i >= 0; i = lower.indexOf('passw', i + 1))
      if (keywordEnd(lower, i, 'passw', true) !== -1) return true;
    for (let i = lower.indexOf('key'); i >= 0; i = lower.indexOf('key', i + 1))
      if (keywordEnd(lower, i, 'key', true) !== -1) return true;
    return false;
  };

  const keyed = (name: string, value: string): boolean => {
    const n = value.length;
    if (n < MIN_VALUE_CHARS || n > MAX_TOKEN_RUN_CHARS || !nameSuggestsSecret(name)) return false;
    let i = 0;
    while (i < n && is(value, i, VALUE)) i++;
    let shaped = i === n && n <= MAX_VALUE_CHARS;
    if (!shaped && is(value, 0, ALNUM)) {
      i = 0;
      while (i < n && is(value, i, BASE64)) i++;
      const run = i;
      for (let eq = 0; eq < 3 && value.charAt(i) === '='; eq++) i++;
      shaped = i === n && run >= MIN_BASE64_VALUE_CHARS;
    }
    return shaped && judged(value, `${name}=${value}`);
  };

  return { at, keyed };
}
