/**
 * Quoting a value for the language it is spliced into, so that a virtual
 * tool's template (./virtual.ts) never concatenates raw input: each function
 * returns text the target's parser reads back as exactly the value, one
 * token, whatever the value holds; or throws QuoteError for a value the
 * target cannot hold at all.
 */

/** A value the target language cannot represent (NUL in PostgreSQL text, an empty identifier). */
export class QuoteError extends Error {
  override name = 'QuoteError';
}

/** PostgreSQL's NAMEDATALEN - 1: a longer identifier is silently truncated, so it names another. */
export const MAX_PG_IDENTIFIER_BYTES = 63;

function refuseNul(value: string, what: string): void {
  if (value.includes('\0')) throw new QuoteError(`${what} cannot hold a NUL character`);
}

/**
 * A PostgreSQL string literal, by the rules of the server's own
 * `quote_literal`: single quotes doubled; when the value holds a backslash,
 * the escape-string form `E'…'` with backslashes doubled too, so the literal
 * means the same whether `standard_conforming_strings` is on or off.
 */
export function quotePgLiteral(value: string): string {
  refuseNul(value, 'a PostgreSQL string');
  const quoted = value.replaceAll("'", "''");
  if (!value.includes('\\')) return `'${quoted}'`;
  return `E'${quoted.replaceAll('\\', '\\\\')}'`;
}

/**
 * A PostgreSQL identifier, always in its quoted form (`"…"`, double quotes
 * doubled): never a keyword, never case-folded. Refused when empty or longer
 * than the server keeps.
 */
export function quotePgIdentifier(value: string): string {
  refuseNul(value, 'a PostgreSQL identifier');
  if (value === '') throw new QuoteError('a PostgreSQL identifier cannot be empty');
  if (Buffer.byteLength(value, 'utf8') > MAX_PG_IDENTIFIER_BYTES)
    throw new QuoteError(
      `a PostgreSQL identifier is at most ${MAX_PG_IDENTIFIER_BYTES} bytes (a longer one is truncated)`,
    );
  return `"${value.replaceAll('"', '""')}"`;
}

/**
 * One POSIX shell word: single-quoted, each `'` written as `'\''` (close,
 * an escaped quote, reopen). Inside single quotes nothing is special.
 */
export function quoteShell(value: string): string {
  refuseNul(value, 'a shell word');
  return `'${value.replaceAll("'", "'\\''")}'`;
}
