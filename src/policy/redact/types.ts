/**
 * The redactor's public types and its one error class.
 */
import type { RuleSource } from './rules.js';

/** A rule, as `replacement` and REDACT_RULES describe it. */
export interface RedactRule {
  /** gitleaks' rule id where the pattern is gitleaks', else ours. */
  readonly id: string;
  readonly description: string;
  readonly source: RuleSource;
}

/** One redacted span. Never carries the secret. */
export interface Finding {
  readonly rule: string;
  /** JSON pointer (RFC 6901) of the string in the result; `''` for a text or a stream. */
  readonly path: string;
  /** `[start, end)` in the original string, in UTF-16 code units (a stream's: in all it was pushed). */
  readonly start: number;
  readonly end: number;
}

export interface RedactorOptions {
  /** Rule ids not to run. An id no rule has is an error. */
  readonly disable?: readonly string[];
  /** The text that replaces a rule's findings; called once per rule, at compile. */
  readonly replacement?: (rule: RedactRule) => string;
}

/** Text that arrives in pieces (see stream.ts). */
export interface RedactStream {
  /** Takes the next piece; returns what is now safe to emit (maybe `''`). */
  push(chunk: string): string;
  /** No more pieces: returns the rest. */
  end(): string;
  /** What has been redacted so far, with offsets in the text pushed. */
  readonly findings: readonly Finding[];
}

export interface Redactor {
  /** The rules this redactor runs, in order of precedence. */
  readonly rules: readonly RedactRule[];
  /** `undefined` when nothing was found (and then nothing is allocated). */
  redactText(text: string): { text: string; findings: Finding[] } | undefined;
  /**
   * A copy of an MCP result with its secrets redacted (result.ts lists what
   * is read); the input is never changed. `undefined` when nothing was found.
   * Throws RedactError REDACT_TOO_DEEP or REDACT_TOO_MANY_STRINGS for a
   * result it will not walk whole.
   */
  redactResult(result: unknown): { result: unknown; findings: Finding[] } | undefined;
  stream(): RedactStream;
}

export type RedactErrorCode =
  /** `disable` names a rule there is not. */
  | 'REDACT_UNKNOWN_RULE'
  /** `replacement` returned something other than a string, or threw. */
  | 'REDACT_BAD_REPLACEMENT'
  /** A result nests deeper than MAX_RESULT_DEPTH. */
  | 'REDACT_TOO_DEEP'
  /** A result holds more than MAX_RESULT_STRINGS strings. */
  | 'REDACT_TOO_MANY_STRINGS'
  /** `push` or `end` after `end`. */
  | 'REDACT_STREAM_ENDED';

/** Every error the redactor throws; callers `switch (err.code)`. */
export class RedactError extends Error {
  constructor(
    readonly code: RedactErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'RedactError';
  }
}
