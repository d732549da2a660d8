/**
 * url-password (ours; gitleaks has no rule for it): the password in a URL's
 * userinfo, `scheme://user:password@host`, for any scheme (postgres,
 * postgresql, mysql, mariadb, mongodb, mongodb+srv, redis, rediss, amqp,
 * amqps, mssql, https, ftp, …). Only the password is redacted; scheme, user,
 * host and path stay readable.
 *
 * Read from each `://`, as a URL parser reads an authority:
 * 1. the scheme: up to MAX_URL_SCHEME_CHARS of `[A-Za-z0-9+.-]` before it,
 *    from its first letter;
 * 2. the authority: everything up to the first `/`, `?`, `#`, whitespace, or
 *    character a URL cannot hold raw (`"` `<` `>` `` ` `` `\` `{` `}` `|`
 *    `^`), at most MAX_URL_AUTHORITY_CHARS;
 * 3. the userinfo is what precedes the authority's last `@` (WHATWG: a raw
 *    `@` in a password belongs to the password), the password what follows
 *    its first `:`.
 * Not redacted: an empty password, and the placeholders of gitleaks'
 * curl-auth-user allowlist (`password`, `pass`, `changeme`, `***`, `xxx`,
 * `<password>`, `$DB_PASSWORD`, `${DB_PASSWORD}`, `{{ password }}`, `$(cat …)`), plus `%VAR%`
 * and `[password]`, which documentation writes in their place.
 */
import { RE2JS } from 're2js';
import { MAX_URL_AUTHORITY_CHARS, MAX_URL_SCHEME_CHARS } from './bounds.js';
import { ALNUM, LETTER, SPACE, is } from './chars.js';
import { OPEN, type Span } from './generic.js';

const PLACEHOLDER = RE2JS.compile(
  String.raw`(?i)^(?:change(?:it|me)|pass(?:word)?|pwd|test|token|secret|\*+|x+|<[^>]*>|\[[^\]]*\]|(?-i:\$[A-Z_][A-Z0-9_]*)|\$\{[^}]*\}|\{\{[^}]*\}\}|%\w+%|\$\([^)]*\))$`,
);
/** Characters that end an authority besides whitespace. */
const AUTHORITY_END = '/?#"<>`\\{}|^';

export function urlPasswordAt(
  text: string,
  colon: number,
  final: boolean,
  globalAllowed: (secret: string) => boolean,
): Span | typeof OPEN | undefined {
  // 1. The scheme.
  let s = colon;
  while (s > 0 && colon - s < MAX_URL_SCHEME_CHARS) {
    const c = text.charAt(s - 1);
    if (!is(text, s - 1, ALNUM) && c !== '+' && c !== '.' && c !== '-') break;
    s--;
  }
  while (s < colon && !is(text, s, LETTER)) s++;
  if (s === colon) return undefined;
  // 2. The authority, its first ':' and last '@'.
  const from = colon + 3;
  const n = text.length;
  let lastAt = -1;
  let e = from;
  for (; e < n && e - from < MAX_URL_AUTHORITY_CHARS; e++) {
    const c = text.charAt(e);
    if (is(text, e, SPACE) || AUTHORITY_END.includes(c)) break;
    if (c === '@') lastAt = e;
  }
  if (e >= n && !final) return OPEN;
  // 3. The password.
  let firstColon = from;
  while (firstColon < lastAt && text.charAt(firstColon) !== ':') firstColon++;
  if (lastAt < 0 || firstColon + 1 >= lastAt) return undefined;
  const password = text.slice(firstColon + 1, lastAt);
  if (PLACEHOLDER.test(password) || globalAllowed(password)) return undefined;
  return { start: firstColon + 1, end: lastAt };
}
