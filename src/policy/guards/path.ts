/**
 * The `path` guard: a file path a server will open (the reference
 * `@modelcontextprotocol/server-filesystem`, or any tool taking a path) must
 * stay inside one root directory.
 *
 * The value is judged under every reading a server might give it, and every
 * reading must stay inside: as written, after each round of percent-decoding
 * (`%252e%252e%252f` is `../` decoded twice; at most `MAX_DECODE_ROUNDS`),
 * and each of those in Unicode NFKC form (`‥` U+2025 becomes `..`). In every
 * reading a backslash counts as a separator, the stricter of the POSIX and
 * Windows views. In order, a reading is refused for:
 * 1. NUL (C libraries end the path there, so the server opens a prefix) and
 *    other control characters;
 * 2. look-alikes of `.`, `/` and `\` (fullwidth U+FF0E, U+FF0F, U+FF3C,
 *    division slash U+2215, fraction slash U+2044, …): a later normalizing
 *    step could turn them into real ones, and no honest path needs them;
 *    percent-escapes that are not UTF-8 (`%c0%ae`, the overlong `.` that old
 *    decoders accepted; JavaScript strings cannot hold overlong forms
 *    themselves) and IIS-style `%u002e` escapes;
 * 3. a Windows drive (`C:`), a UNC or other `//`-led path (POSIX leaves a
 *    leading `//` to the implementation), a URL (`file://…`, any
 *    `scheme://`): a URL is refused rather than decoded, because whether and
 *    how the server decodes it is the server's choice;
 * 4. a leading `~` or `~user`: the server or a shell may expand it;
 * 5. leaving the root: a relative path is taken from the root; an absolute
 *    one must start with the root's segments (compared segment by segment,
 *    so `/srv/data_secret` is not inside `/srv/data`). After that, `.` and
 *    empty segments are dropped and a `..` that climbs above the root at any
 *    point is refused, even if later segments come back: `a/../b` is fine
 *    (it never leaves), `../data/b` is not;
 * 6. the trees `/dev`, `/proc`, `/sys` and `/run`, even when the root is
 *    `/`: devices, process memory and control sockets (`/run/docker.sock`)
 *    are not files a tool should read. A root inside them is an option
 *    error.
 *
 * With `resolveSymlinks`, the check also asks the host: the real path of the
 * deepest existing ancestor (`fs.promises.realpath`) joined with the
 * segments that do not exist yet must lie inside the real path of the root,
 * so a symbolic link inside the root that points out of it is caught; a
 * dangling link is refused (writing through it creates its target, which
 * may be anywhere).
 *
 * What this does not stop: a link created or swapped between this check and
 * the server's open (time of check to time of use); hard links, bind mounts
 * and mount points inside the root that lead elsewhere; without
 * `resolveSymlinks`, any symbolic link at all; a server that opens paths in
 * a way other than these readings (its own `~` or environment expansion,
 * globbing, a base directory other than the root).
 */
import { lstat, realpath } from 'node:fs/promises';
import { posix } from 'node:path';
import { GuardOptionError, type AsyncGuardCheck, type GuardCheck } from './types.js';

/** Longest path judged (UTF-16 units): Linux PATH_MAX is 4096 bytes. */
export const MAX_PATH_CHARS = 4_096;
/** Percent-decoding rounds tried; a value still changing after them is refused. */
export const MAX_DECODE_ROUNDS = 4;
/** Top-level trees refused whatever the root (see the module header, step 6). */
export const REFUSED_TREES: readonly string[] = ['dev', 'proc', 'sys', 'run'];

/** Characters that normalize, or pass for, `.` `/` `\` (refused, step 2). */
const LOOKALIKES: ReadonlyMap<number, string> = new Map([
  [0x2024, 'one dot leader'],
  [0x2025, 'two dot leader'],
  [0x2044, 'fraction slash'],
  [0x2215, 'division slash'],
  [0x2216, 'set minus'],
  [0x29f8, 'big solidus'],
  [0x29f9, 'big reverse solidus'],
  [0xfe52, 'small full stop'],
  [0xfe68, 'small reverse solidus'],
  [0xff0e, 'fullwidth full stop'],
  [0xff0f, 'fullwidth solidus'],
  [0xff3c, 'fullwidth reverse solidus'],
]);
const PERCENT_RUN = /(?:%[0-9A-Fa-f]{2})+/g;
const IIS_ESCAPE = /%u[0-9A-Fa-f]{4}/;
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

export interface PathGuardOptions {
  /** Absolute POSIX directory every path must stay inside. */
  readonly root: string;
  /** Also resolve symbolic links on this host (default false). */
  readonly resolveSymlinks?: boolean;
}

/** Where a path leads (every distinct reading, absolute, normalized), or why it is refused. */
export type PathJudgement =
  | { readonly targets: readonly string[]; readonly reason?: undefined }
  | { readonly reason: string };

/**
 * Compile a `path` guard. Synchronous, with no file system access, unless
 * `resolveSymlinks` is true.
 */
export function compilePathGuard(
  options: PathGuardOptions & { readonly resolveSymlinks: true },
): AsyncGuardCheck;
export function compilePathGuard(
  options: PathGuardOptions & { readonly resolveSymlinks?: false },
): GuardCheck;
export function compilePathGuard(options: PathGuardOptions): GuardCheck | AsyncGuardCheck;
export function compilePathGuard(options: PathGuardOptions): GuardCheck | AsyncGuardCheck {
  const root = compileRoot(options.root);
  const { resolveSymlinks = false } = options;
  if (typeof resolveSymlinks !== 'boolean')
    throw new GuardOptionError('a path guard: resolveSymlinks must be true or false');
  if (!resolveSymlinks)
    return (value) => {
      const judged = judgePath(value, root);
      return judged.reason;
    };
  return async (value) => {
    const judged = judgePath(value, root);
    if (judged.reason !== undefined) return judged.reason;
    let realRoot: string;
    try {
      // Asked on every call: the root itself may be a link that changes.
      realRoot = await realpath(root);
    } catch (err) {
      return `the root cannot be resolved on this host (${errorCode(err)})`;
    }
    for (const target of judged.targets) {
      const reason = await judgeRealPath(target, realRoot);
      if (reason !== undefined) return reason;
    }
    return undefined;
  };
}

function compileRoot(root: unknown): string {
  if (typeof root !== 'string' || !root.startsWith('/'))
    throw new GuardOptionError('a path guard: root must be an absolute POSIX path');
  if (/[\0\\]/.test(root))
    throw new GuardOptionError('a path guard: root must not contain NUL or a backslash');
  const normalized = posix.normalize(root).replace(/\/+$/, '') || '/';
  const top = segmentsOf(normalized)[0];
  if (top !== undefined && REFUSED_TREES.includes(top))
    throw new GuardOptionError(
      `a path guard: root ${normalized} is inside /${top}, which the guard always refuses`,
    );
  return normalized;
}

/**
 * The pure part: judge `value` as a path inside `root` (an absolute,
 * normalized POSIX path) under every reading described in the module
 * header, without touching the file system.
 */
export function judgePath(value: unknown, root: string): PathJudgement {
  if (typeof value !== 'string') return { reason: 'not a string' };
  if (value === '') return { reason: 'an empty path' };
  if (value.length > MAX_PATH_CHARS) return { reason: `longer than ${MAX_PATH_CHARS} characters` };

  const readings = [value];
  let current = value;
  for (let round = 0; ; round++) {
    if (IIS_ESCAPE.test(current)) return { reason: 'an IIS-style `%u` escape' };
    const decoded = decodePercent(current);
    if (decoded === undefined)
      return { reason: 'percent-escapes that are not UTF-8 (an overlong encoding?)' };
    if (decoded === current) break;
    if (round === MAX_DECODE_ROUNDS)
      return { reason: `percent-encoded more than ${MAX_DECODE_ROUNDS} times` };
    readings.push(decoded);
    current = decoded;
  }
  for (const reading of [...readings]) {
    const nfkc = reading.normalize('NFKC');
    if (nfkc !== reading) readings.push(nfkc);
  }

  const rootSegments = segmentsOf(root);
  const targets = new Set<string>();
  for (const reading of readings) {
    const judged = judgeReading(reading, root, rootSegments);
    if (typeof judged === 'object') return judged;
    targets.add(judged);
  }
  return { targets: [...targets] };
}

/** One reading: the absolute target it names, or `{ reason }`. */
function judgeReading(
  reading: string,
  root: string,
  rootSegments: readonly string[],
): string | { reason: string } {
  for (const char of reading) {
    const code = char.codePointAt(0) as number;
    if (code === 0) return { reason: 'a NUL byte (C libraries end the path there)' };
    if (code < 0x20 || code === 0x7f) return { reason: 'a control character' };
    const lookalike = LOOKALIKES.get(code);
    if (lookalike !== undefined)
      return {
        reason: `a look-alike of a dot or slash (U+${code.toString(16).toUpperCase()} ${lookalike})`,
      };
  }
  const path = reading.replaceAll('\\', '/');
  if (/^[A-Za-z]:/.test(path)) return { reason: 'a Windows drive path' };
  if (path.startsWith('//')) return { reason: 'a UNC or network path (leading `//`)' };
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(path) ?? /^(file):/i.exec(path);
  if (scheme !== null) return { reason: `a URL (\`${scheme[1]?.slice(0, 16)}:\`), not a path` };
  if (path.startsWith('~')) return { reason: 'starts with `~` (home directory expansion)' };

  const segments = segmentsOf(path);
  let rest = segments;
  if (path.startsWith('/')) {
    for (const [i, expected] of rootSegments.entries()) {
      const segment = segments[i];
      if (segment === '..') return { reason: 'climbs out of the root' };
      if (segment !== expected) return { reason: `outside the root ${root}` };
    }
    rest = segments.slice(rootSegments.length);
  }
  const inside: string[] = [];
  for (const segment of rest) {
    if (segment !== '..') inside.push(segment);
    else if (inside.pop() === undefined) return { reason: 'climbs out of the root' };
  }
  const target = [...rootSegments, ...inside];
  if (refusedTree(target)) return { reason: 'a device or proc path' };
  return `/${target.join('/')}`;
}

/** A path's segments without empty ones and `.` (a normalization that never changes the target). */
function segmentsOf(path: string): string[] {
  return path.split('/').filter((segment) => segment !== '' && segment !== '.');
}

function refusedTree(segments: readonly string[]): boolean {
  const top = segments[0];
  return top !== undefined && REFUSED_TREES.includes(top);
}

/** One round of percent-decoding, or undefined if the bytes are not UTF-8. */
function decodePercent(text: string): string | undefined {
  let invalid = false;
  const decoded = text.replace(PERCENT_RUN, (run) => {
    const bytes = new Uint8Array(run.length / 3);
    for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(run.slice(i * 3 + 1, i * 3 + 3), 16);
    try {
      return STRICT_UTF8.decode(bytes);
    } catch {
      invalid = true;
      return run;
    }
  });
  return invalid ? undefined : decoded;
}

/**
 * The host's view of a lexically clean target: the real path of its deepest
 * existing ancestor, plus the segments not created yet, must stay inside the
 * real root.
 */
async function judgeRealPath(target: string, realRoot: string): Promise<string | undefined> {
  let existing = target;
  const missing: string[] = [];
  let real: string;
  for (;;) {
    try {
      real = await realpath(existing);
      break;
    } catch (err) {
      const code = errorCode(err);
      if (code === 'ELOOP') return 'a symbolic link loop';
      if (code !== 'ENOENT' && code !== 'ENOTDIR')
        return `the path cannot be resolved on this host (${code})`;
    }
    if (await isSymbolicLink(existing))
      return 'a symbolic link that points nowhere (writing through it creates its target)';
    if (existing === '/') return 'the path cannot be resolved on this host';
    missing.unshift(posix.basename(existing));
    existing = posix.dirname(existing);
  }
  const realSegments = segmentsOf(posix.join(real, ...missing));
  const rootSegments = segmentsOf(realRoot);
  if (!rootSegments.every((segment, i) => realSegments[i] === segment))
    return 'a symbolic link leads outside the root';
  if (refusedTree(realSegments)) return 'a device or proc path';
  return undefined;
}

async function isSymbolicLink(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isSymbolicLink();
  } catch {
    return false;
  }
}

function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : 'error';
}
