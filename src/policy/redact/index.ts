/**
 * Response redaction: secrets found in what an upstream server returns are
 * replaced before an agent sees them. Pure and self-contained: no I/O, no
 * configuration read, nothing compiled after `compileRedactor`.
 *
 * API:
 * - `compileRedactor({ disable?, replacement? })` compiles the rules once
 *   (rules.ts lists them, with their gitleaks ids and how each is adapted).
 *   `disable` names rule ids not to run (an unknown id throws
 *   REDACT_UNKNOWN_RULE, so a typo does not leave a rule silently on);
 *   `replacement(rule)` gives the text that stands for a finding, called once
 *   per rule at compile; the default is `[REDACTED:<rule-id>]`.
 * - `redactor.redactText(text)` → `{ text, findings }`, or `undefined` when
 *   nothing was found (the common case allocates nothing).
 * - `redactor.redactResult(result)` → a copy of an MCP result (tool call,
 *   embedded resource, structuredContent, resources/read) with only the
 *   changed strings replaced, or `undefined`; result.ts says what is read and
 *   when a result is refused (RedactError).
 * - `redactor.stream()` → `{ push(chunk), end(), findings }` for text in
 *   pieces; stream.ts says what it holds back and for how long.
 * - A Finding is `{ rule, path, start, end }`: the rule id, the JSON pointer
 *   of the string (`''` for a text), the span in it. Never the secret.
 *
 * Linear time: the keyword pass is one table read a character; every
 * pattern runs on RE2 (`re2js`), and the three rules written as code read a
 * bounded stretch per keyword occurrence (scan.ts, generic.ts, pem.ts,
 * url.ts). The tests run 1 MiB of near-misses for each family of rules.
 *
 * The gateway maps RedactError codes to its own: REDACT_TOO_DEEP and
 * REDACT_TOO_MANY_STRINGS mean the result could not be vouched for and must
 * not be passed on.
 */
import { RULE_SPECS } from './rules.js';
import { redactResult } from './result.js';
import { compileRules, replaceSpans, scanText } from './scan.js';
import { createStream } from './stream.js';
import {
  RedactError,
  type Finding,
  type RedactRule,
  type Redactor,
  type RedactorOptions,
} from './types.js';

export {
  MAX_PEM_BLOCK_CHARS,
  MAX_RESULT_DEPTH,
  MAX_RESULT_STRINGS,
  MAX_TOKEN_RUN_CHARS,
} from './bounds.js';
export { GITLEAKS_COMMIT } from './rules.js';
export {
  RedactError,
  type Finding,
  type RedactErrorCode,
  type RedactRule,
  type RedactStream,
  type Redactor,
  type RedactorOptions,
} from './types.js';

/** Every rule, in order of precedence. */
export const REDACT_RULES: readonly RedactRule[] = Object.freeze(
  RULE_SPECS.map(({ id, description, source }) => Object.freeze({ id, description, source })),
);

const FINAL = { final: true, startsHere: true } as const;

function defaultReplacement(rule: RedactRule): string {
  return `[REDACTED:${rule.id}]`;
}

/** Compiles the rules once; see the module header. */
export function compileRedactor(options: RedactorOptions = {}): Redactor {
  const known = new Set(REDACT_RULES.map((r) => r.id));
  const unknown = (options.disable ?? []).filter((id) => !known.has(id));
  if (unknown.length > 0)
    throw new RedactError(
      'REDACT_UNKNOWN_RULE',
      `no redaction rule is named ${unknown.map((id) => JSON.stringify(id)).join(', ')}`,
    );
  const disabled = new Set(options.disable ?? []);
  const enabled = new Set<number>();
  REDACT_RULES.forEach((r, i) => {
    if (!disabled.has(r.id)) enabled.add(i);
  });
  const replace = options.replacement ?? defaultReplacement;
  const replacements = REDACT_RULES.map((rule) => {
    let text: unknown;
    try {
      text = replace(rule);
    } catch (err) {
      throw new RedactError(
        'REDACT_BAD_REPLACEMENT',
        `replacement threw for rule ${rule.id}: ${(err as Error).message}`,
      );
    }
    if (typeof text !== 'string')
      throw new RedactError(
        'REDACT_BAD_REPLACEMENT',
        `replacement for rule ${rule.id} is not a string`,
      );
    return text;
  });
  const ids = REDACT_RULES.map((r) => r.id);
  const compiled = compileRules(enabled);

  return {
    rules: REDACT_RULES.filter((_, i) => enabled.has(i)),
    redactText(text: string) {
      const spans = scanText(compiled, text, FINAL);
      if (spans.length === 0) return undefined;
      const findings: Finding[] = spans.map((s) => ({
        rule: ids[s.rule] as string,
        path: '',
        start: s.start,
        end: s.end,
      }));
      return { text: replaceSpans(text, spans, replacements), findings };
    },
    redactResult(result: unknown) {
      return redactResult(compiled, replacements, ids, result);
    },
    stream() {
      return createStream(compiled, replacements, ids);
    },
  };
}
