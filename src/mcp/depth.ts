/**
 * How deep a JSON text nests, checked before anything walks the parsed value.
 * V8's `JSON.parse` takes any depth, but `JSON.stringify` and every recursive
 * consumer after it (an SDK's schema check, a policy step) run out of stack
 * near a few thousand levels: a 20 KB message nested 10,000 deep, from an
 * upstream or a client, would throw a RangeError wherever it is touched
 * next. So the gateway refuses such a message where it enters, in either
 * direction.
 */

/**
 * Deepest nesting of arrays and objects a message may have. JSON Schemas of
 * real tools (the deepest thing MCP carries) stay well below; recursion
 * limits of the runtimes that consume it are far above.
 */
export const MAX_JSON_DEPTH = 128;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_ARRAY = 0x5b;
const OPEN_OBJECT = 0x7b;
const CLOSE_ARRAY = 0x5d;
const CLOSE_OBJECT = 0x7d;

/**
 * Whether `json` nests arrays and objects deeper than `max`. Only scanned when
 * it can: each level opens with a `[` or a `{`, so a text with at most `max`
 * of them is not, and counting them is a few native `indexOf` calls (what
 * almost every message costs: a `tools/call` has a handful). Otherwise one
 * linear pass, no allocation (text: strings skipped with `indexOf`; bytes: a
 * plain loop, faster there). Bytes are UTF-8: every byte of a multi-byte
 * character is >= 0x80, never a bracket or a quote. Malformed JSON gives some
 * answer; the parser refuses it anyway.
 */
export function nestedDeeperThan(json: string | Buffer, max = MAX_JSON_DEPTH): boolean {
  if (json.length <= max || !opensMoreThan(json, max)) return false;
  return typeof json === 'string' ? textDeeperThan(json, max) : bytesDeeperThan(json, max);
}

/** Whether `json` holds more than `max` opening brackets, counted by native search. */
function opensMoreThan(json: string | Buffer, max: number): boolean {
  let count = 0;
  if (typeof json === 'string') {
    for (const opener of TEXT_OPENERS) {
      for (let i = json.indexOf(opener); i !== -1; i = json.indexOf(opener, i + 1))
        if (++count > max) return true;
    }
  } else {
    // A Buffer searched for a byte stays native; searched for a string, it converts it each call.
    for (const opener of BYTE_OPENERS) {
      for (let i = json.indexOf(opener); i !== -1; i = json.indexOf(opener, i + 1))
        if (++count > max) return true;
    }
  }
  return false;
}

const TEXT_OPENERS = ['[', '{'];
const BYTE_OPENERS = [OPEN_ARRAY, OPEN_OBJECT];

function textDeeperThan(text: string, max: number): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      i = closingQuote(text, i + 1);
      if (i === -1) return false;
    } else if (c === OPEN_ARRAY || c === OPEN_OBJECT) {
      if (++depth > max) return true;
    } else if (c === CLOSE_ARRAY || c === CLOSE_OBJECT) {
      depth--;
    }
  }
  return false;
}

/** The index of the quote that ends the string starting at `from`, or -1. */
function closingQuote(text: string, from: number): number {
  for (let i = from; ; i++) {
    i = text.indexOf('"', i);
    if (i === -1) return -1;
    // Escaped if an odd number of backslashes precede it.
    let slashes = 0;
    while (i - slashes - 1 >= from && text.charCodeAt(i - slashes - 1) === BACKSLASH) slashes++;
    if (slashes % 2 === 0) return i;
  }
}

function bytesDeeperThan(bytes: Buffer, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) {
      inString = true;
    } else if (c === OPEN_ARRAY || c === OPEN_OBJECT) {
      if (++depth > max) return true;
    } else if (c === CLOSE_ARRAY || c === CLOSE_OBJECT) {
      depth--;
    }
  }
  return false;
}

/**
 * The ids of the responses in a parsed message or batch: the requests a
 * refused message would have answered, which get an error in its place.
 */
export function responseIds(value: unknown): Array<string | number> {
  const ids: Array<string | number> = [];
  for (const m of Array.isArray(value) ? value : [value]) {
    const { id, method } = (m ?? {}) as { id?: unknown; method?: unknown };
    if (method === undefined && (typeof id === 'string' || typeof id === 'number')) ids.push(id);
  }
  return ids;
}
