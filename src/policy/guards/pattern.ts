/**
 * The `pattern` guard: the operator's own regular expressions over one
 * string argument, on RE2 (`re2js`): matching is linear in the text, so no
 * pattern and no argument can make it backtrack (no ReDoS by construction).
 *
 * - `deny`: the value is refused when any of these is found in it;
 * - `allow`: the value must match this one whole (it is anchored at both
 *   ends; write `.*` where anything may follow).
 *
 * Patterns use RE2 syntax; `(?i)` makes one case-insensitive. They are
 * compiled at load; a pattern RE2 does not accept refuses the config.
 *
 * A deny pattern is searched only when the value holds one of the strings
 * every match must contain (../regex-prefilter.ts): most arguments match no
 * deny pattern, and proving it with a folded `includes` costs about 1 µs
 * where an RE2 search of a 1 KiB argument costs about 13 µs a pattern.
 */
import { RE2JS } from 're2js';
import { mayMatch, requiredLiterals } from '../regex-prefilter.js';
import { GuardOptionError, type GuardCheck } from './types.js';

export interface PatternGuardOptions {
  readonly deny?: readonly string[];
  readonly allow?: string;
}

function compile(pattern: string, what: string): RE2JS {
  try {
    return RE2JS.compile(pattern);
  } catch (err) {
    throw new GuardOptionError(`${what}: ${(err as Error).message}`);
  }
}

export function compilePatternGuard(options: PatternGuardOptions): GuardCheck {
  const deny = (options.deny ?? []).map((p, i) => ({
    source: p,
    re: compile(p, `deny[${i}]`),
    required: requiredLiterals(p),
  }));
  const allow = options.allow === undefined ? undefined : compile(options.allow, 'allow');
  if (deny.length === 0 && allow === undefined)
    throw new GuardOptionError('a pattern guard needs deny or allow');
  return (value) => {
    if (typeof value !== 'string') return 'not a string';
    for (const { source, re, required } of deny) {
      if (required !== undefined && !mayMatch(required, value)) continue;
      if (re.matcher(value).find()) return `matches the denied pattern ${JSON.stringify(source)}`;
    }
    if (allow && !allow.matcher(value).matches()) return 'does not match the allowed pattern';
    return undefined;
  };
}
