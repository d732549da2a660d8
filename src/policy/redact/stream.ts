/**
 * The chunked scanner: text that arrives in pieces (a streamed tool result,
 * a log tail), redacted as it comes, with a secret split across pieces found
 * as if the text had come whole.
 *
 * What it keeps: `pending`, the text not yet emitted, and `context`, the last
 * STREAM_CONTEXT_CHARS of raw text already emitted (so a secret just after
 * the cut is judged with the name or URL before it). Each scan reads
 * context + pending and emits up to the cut, which is the earliest of:
 * 1. where the scan says findings are not settled (scan.ts, `holdFrom`): the
 *    last characters that could begin a keyword, less the furthest any secret
 *    starts before its keyword (85, openai-api-key); a keyword whose pattern
 *    window, token run, PEM block or URL authority reaches the end;
 * 2. the start of a finding that 1. would cut through.
 * So what is held back is, with a keyword's occurrence near the end, at most
 * that rule's bound after it (a few hundred characters; a generic value 150,
 * a URL authority 256), and at most MAX_PEM_BLOCK_CHARS or
 * MAX_TOKEN_RUN_CHARS (16 KiB) while a private key block or an unbounded
 * token run (a JWT) is open; without one, under 100 characters. When a block
 * or run reaches its bound it is settled as `redactText` would (a truncated
 * key; a run that long is not a generic-api-key value), except that a JWT
 * longer than MAX_TOKEN_RUN_CHARS may pass a stream unredacted.
 *
 * A push scans only when the new text is at least STREAM_RESCAN_GROWTH of
 * what a scan reads, so a hostile upstream's one-character pieces cost a
 * constant factor; the price is that text may wait for a quarter more before
 * it is emitted. `end()` scans what is left as the end of the text.
 */
import { STREAM_CONTEXT_CHARS, STREAM_RESCAN_GROWTH } from './bounds.js';
import {
  replaceSpans,
  scanText,
  type CompiledRules,
  type HoldState,
  type RuleSpan,
} from './scan.js';
import { RedactError, type Finding, type RedactStream } from './types.js';

export function createStream(
  c: CompiledRules,
  replacements: readonly string[],
  ids: readonly string[],
): RedactStream {
  let context = '';
  let pending = '';
  /** Offset in the pushed text of `pending`'s first character. */
  let consumed = 0;
  /** context + pending's length at the last scan. */
  let scanned = 0;
  let startsHere = true;
  let ended = false;
  const findings: Finding[] = [];
  const state: HoldState = { holdFrom: 0 };

  const flush = (final: boolean): string => {
    const text = context + pending;
    const offset = context.length;
    const spans = scanText(c, text, { final, startsHere }, state);
    let cut = Math.max(offset, final ? text.length : state.holdFrom);
    const applied: RuleSpan[] = [];
    for (const s of spans) {
      if (s.end <= offset) continue; // emitted in an earlier round
      if (s.start >= cut) break;
      if (s.end > cut) {
        // Settled up to the cut but not beyond it: hold the whole finding.
        cut = Math.max(offset, s.start);
        break;
      }
      applied.push(s);
    }
    const out = replaceSpans(text, applied, replacements, offset, cut);
    for (const s of applied)
      findings.push({
        rule: ids[s.rule] as string,
        path: '',
        start: consumed + Math.max(s.start, offset) - offset,
        end: consumed + s.end - offset,
      });
    consumed += cut - offset;
    const kept = text.slice(0, cut);
    if (kept.length > STREAM_CONTEXT_CHARS) startsHere = false;
    context = kept.slice(-STREAM_CONTEXT_CHARS);
    pending = text.slice(cut);
    scanned = context.length + pending.length;
    return out;
  };

  const ensureOpen = (): void => {
    if (ended) throw new RedactError('REDACT_STREAM_ENDED', 'the stream has ended');
  };

  return {
    push(chunk: string): string {
      ensureOpen();
      if (chunk === '') return '';
      pending += chunk;
      const total = context.length + pending.length;
      if (total - scanned < scanned * STREAM_RESCAN_GROWTH) return '';
      return flush(false);
    },
    end(): string {
      ensureOpen();
      ended = true;
      return flush(true);
    },
    get findings(): readonly Finding[] {
      return findings;
    },
  };
}
