/**
 * Name and URI matching for grants: compiled once at load into a function
 * that allocates nothing per call and runs in time linear in the input (no
 * regular expressions, so no pattern an operator writes can backtrack on a
 * hostile name).
 *
 * A grant pattern is an exact string or a glob whose only wildcard is `*`
 * (any run of characters, `/` included); `"*"` alone grants everything. A
 * resource template (RFC 6570) is matched by its expressions, each matching
 * one or more characters: `{var}`, `{.var}` and `{;var}` within one path
 * segment (no `/`, `?` or `#`); `{/var}` path segments (no `?` or `#`);
 * `{?var}` and `{&var}` a query (no `#`); `{+var}` and `{#var}` anything.
 */

export type Matcher = (value: string) => boolean;

export const MATCH_NOTHING: Matcher = () => false;
export const MATCH_ALL: Matcher = () => true;

/** `*` splits a glob into literal pieces that must appear in order. */
function globMatcher(pieces: readonly string[]): Matcher {
  const first = pieces[0] ?? '';
  const last = pieces[pieces.length - 1] ?? '';
  const middle = pieces.slice(1, -1);
  const fixed = first.length + last.length;
  return (value) => {
    if (value.length < fixed || !value.startsWith(first) || !value.endsWith(last)) return false;
    let at = first.length;
    const end = value.length - last.length;
    for (const piece of middle) {
      const found = value.indexOf(piece, at);
      if (found === -1 || found + piece.length > end) return false;
      at = found + piece.length;
    }
    return true;
  };
}

/** One matcher for a list of exact names and globs. */
export function compilePatterns(patterns: readonly string[] | undefined): Matcher {
  if (!patterns || patterns.length === 0) return MATCH_NOTHING;
  if (patterns.includes('*')) return MATCH_ALL;
  const exact = new Set<string>();
  const globs: Matcher[] = [];
  for (const p of patterns) {
    if (p.includes('*')) globs.push(globMatcher(p.split('*')));
    else exact.add(p);
  }
  if (globs.length === 0) return (value) => exact.has(value);
  return (value) => {
    if (exact.has(value)) return true;
    // A loop, not globs.some(g => g(value)): no closure per call.
    for (const g of globs) if (g(value)) return true;
    return false;
  };
}

/** What an expression may expand to: characters it may not contain. */
type Expansion = ReadonlySet<string>;
type TemplatePart = { literal: string } | { stops: Expansion };

const ANYTHING: Expansion = new Set();
/** `{?x}` and `{&x}`: a query, up to a fragment. */
const QUERY: Expansion = new Set(['#']);
/** `{/x}`: path segments. */
const PATH: Expansion = new Set(['?', '#']);
/** `{x}`, `{.x}`, `{;x}`: within one path segment. */
const SEGMENT: Expansion = new Set(['/', '?', '#']);

function expansionOf(op: string | undefined): Expansion {
  if (op === '+' || op === '#') return ANYTHING;
  if (op === '?' || op === '&') return QUERY;
  if (op === '/') return PATH;
  return SEGMENT;
}

function parseTemplate(template: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let at = 0;
  while (at < template.length) {
    const open = template.indexOf('{', at);
    if (open === -1) {
      parts.push({ literal: template.slice(at) });
      break;
    }
    if (open > at) parts.push({ literal: template.slice(at, open) });
    const close = template.indexOf('}', open);
    if (close === -1) {
      // Not a template after all: the rest is literal.
      parts.push({ literal: template.slice(open) });
      break;
    }
    parts.push({ stops: expansionOf(template[open + 1]) });
    at = close + 1;
  }
  return parts;
}

/**
 * Whether `uri` is an expansion of `template`. Expressions are matched
 * greedily-shortest against the next literal, so the work is linear in the
 * URI for the templates servers publish (literal separators between
 * expressions).
 */
function matchesTemplate(parts: readonly TemplatePart[], uri: string): boolean {
  let at = 0;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as TemplatePart;
    if ('literal' in part) {
      if (!uri.startsWith(part.literal, at)) return false;
      at += part.literal.length;
      continue;
    }
    const next = parts[i + 1];
    const nextLiteral = next && 'literal' in next ? next.literal : undefined;
    let end: number;
    if (nextLiteral === undefined) {
      end = uri.length;
    } else {
      end = uri.indexOf(nextLiteral, at + 1);
      if (end === -1) return false;
    }
    if (end <= at) return false;
    if (part.stops.size > 0) {
      for (let c = at; c < end; c++) if (part.stops.has(uri[c] as string)) return false;
    }
    at = end;
  }
  return at === uri.length;
}

/** A matcher for the URIs that expand any of the given resource templates. */
export function compileTemplates(templates: readonly string[]): Matcher {
  if (templates.length === 0) return MATCH_NOTHING;
  const parsed = templates.map(parseTemplate);
  return (uri) => parsed.some((parts) => matchesTemplate(parts, uri));
}
