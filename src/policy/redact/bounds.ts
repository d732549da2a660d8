/**
 * Every bound the redactor works within, in one place, with its reason.
 */

/**
 * Longest private key block read, from `-----BEGIN` to the end of its END
 * line (UTF-16 code units, 16 KiB). An RSA-8192 key is about 6.5 KB as PKCS#8
 * or OpenSSH PEM, a GnuPG RSA-4096 secret key with one subkey about 7 KB
 * armoured; this leaves room for PEM headers and for `\n` escapes in JSON.
 * A BEGIN line with no END within it is taken as a truncated key.
 */
export const MAX_PEM_BLOCK_CHARS = 16 * 1024;

/** Longest PEM BEGIN line: `-----BEGIN`, gitleaks' 100 label characters, `PRIVATE KEY BLOCK-----`. */
export const MAX_PEM_HEADER_CHARS = 10 + 100 + 22;

/**
 * Longest single run of token characters the rules without a length bound
 * (jwt, three Slack formats, the base64 form of generic-api-key's value) are
 * guaranteed to see whole in a stream (16 KiB). `redactText` has no such
 * limit for JWTs; generic-api-key values longer than this are not taken.
 */
export const MAX_TOKEN_RUN_CHARS = 16 * 1024;

/** Longest URL authority (`user:password@host:port,…`) read for a password. */
export const MAX_URL_AUTHORITY_CHARS = 256;

/** Longest URL scheme read before `://` (RFC 3986 sets none; registered ones are short). */
export const MAX_URL_SCHEME_CHARS = 32;

/**
 * Raw text a stream keeps before what it has emitted, so that a secret that
 * starts after the cut is judged with what precedes it: a generic-api-key
 * name (50 + 20 characters and its punctuation, about 110) or a URL's scheme,
 * `://` and user (32 + 3 + 256).
 */
export const STREAM_CONTEXT_CHARS = 320;

/**
 * A stream rescans only once the new text is at least this share of what it
 * rescans (the context and what it holds), so that an upstream sending one
 * character at a time costs a constant factor (about 5), not the held length
 * per character. What it holds meanwhile grows by at most that share.
 */
export const STREAM_RESCAN_GROWTH = 0.25;

/** Deepest nesting `redactResult` walks (the gateway refuses messages deeper than 128). */
export const MAX_RESULT_DEPTH = 128;

/** Most strings `redactResult` scans in one result. */
export const MAX_RESULT_STRINGS = 65_536;
