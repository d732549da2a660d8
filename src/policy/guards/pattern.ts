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
 */
import { RE2JS } from 're2js';
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
  }));
  const allow = options.allow === undefined ? undefined : compile(options.allow, 'allow');
  if (deny.length === 0 && allow === undefined)
    throw new GuardOptionError('a pattern guard needs deny or allow');
  return (value) => {
    if (typeof value !== 'string') return 'not a string';
    for (const { source, re } of deny)
      if (re.matcher(value).find()) return `matches the denied pattern ${JSON.stringify(source)}`;
    if (allow && !allow.matcher(value).matches()) return 'does not match the allowed pattern';
    return undefined;
  };
}
