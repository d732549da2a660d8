/**
 * `maxLength` and `minLength` for the argument schemas, with the same
 * meaning and the same errors as ajv's own, but without counting what need
 * not be counted.
 *
 * JSON Schema measures a string in code points (2020-12 validation §6.3.1),
 * so ajv counts every string it checks, one UTF-16 unit at a time: about
 * 3 µs for a 1 KiB argument, on every call. A string's code-point count is
 * at most its UTF-16 length and at least half of it, so most strings are
 * decided by their length alone:
 *   - maxLength N: length ≤ N passes without counting;
 *   - minLength N: length < N fails, length ≥ 2N passes, without counting.
 * Only the strings between those bounds are counted, as ajv counts them
 * (a surrogate pair is one code point, a lone surrogate one).
 */
import { _, str, type KeywordCxt, type KeywordDefinition } from 'ajv';

/** Code points in `s`, counted as ajv counts them. */
export function codePointLength(s: string): number {
  let pairs = 0;
  const last = s.length - 1;
  for (let i = 0; i < last; i++) {
    const unit = s.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      pairs++;
      i++;
    }
  }
  return s.length - pairs;
}

export const lengthKeywords: KeywordDefinition = {
  keyword: ['maxLength', 'minLength'],
  type: 'string',
  schemaType: 'number',
  error: {
    message: ({ keyword, schemaCode }) =>
      str`must NOT have ${keyword === 'maxLength' ? 'more' : 'fewer'} than ${schemaCode} characters`,
    params: ({ schemaCode }) => _`{limit: ${schemaCode}}`,
  },
  code(cxt: KeywordCxt) {
    const { keyword, data, schemaCode, gen } = cxt;
    const count = gen.scopeValue('func', { ref: codePointLength });
    cxt.fail(
      keyword === 'maxLength'
        ? _`${data}.length > ${schemaCode} && ${count}(${data}) > ${schemaCode}`
        : _`${data}.length < ${schemaCode} || (${data}.length < 2 * ${schemaCode} && ${count}(${data}) < ${schemaCode})`,
    );
  },
};

/** Replaces an ajv instance's length keywords with these. */
export function useLengthKeywords<
  T extends { removeKeyword(k: string): T; addKeyword(d: KeywordDefinition): T },
>(ajv: T): T {
  return ajv.removeKeyword('maxLength').removeKeyword('minLength').addKeyword(lengthKeywords);
}
