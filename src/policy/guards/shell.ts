/**
 * The `shell` guard: a command line (or one argument) that a server will hand
 * to `sh -c`, read the way a POSIX shell reads it, refused as soon as the
 * shell would do anything but run one program with literal arguments.
 *
 * The value is tokenized with sh quoting: single quotes make everything
 * literal; inside double quotes `$`, backtick and backslash stay special;
 * outside quotes a backslash makes the next character literal. In order:
 * 1. Line breaks, NUL and other control characters are refused anywhere, even
 *    quoted: a newline ends a command, NUL truncates the line in C, and no
 *    command an agent should send contains either.
 * 2. Scanning left to right, the first of these refuses the value:
 *    - expansion: `$(…)`, backticks, `$((…))`, `${…}`, `$NAME`, `$1`, `$'…'`,
 *      anywhere but inside single quotes; also a `$` followed by nothing
 *      special, and a lone `$` at the end: sh leaves those literal, but a
 *      server that splices the value into a longer line decides what the
 *      next character is, and the escaped form (`\$` or `'$'`) is always
 *      available;
 *    - unquoted operators `;` `&` `|` `<` `>` `(` `)` (pipes, lists,
 *      redirections, subshells, here-documents `<<`, process substitution);
 *    - unquoted `{` and `}`: they group commands, and bash's brace expansion
 *      turns one word into several (`{rm,-rf,/}` runs `rm -rf /` without a
 *      space); quote them (`'{}'`) to pass them literally;
 *    - unquoted glob characters `*` `?` `[`: pathname expansion replaces the
 *      word with file names the file system chooses (`cat /etc/pass??`);
 *    - an unquoted `~` at the start of a word or just after `=` (bash
 *      expands `name=~` even in arguments): it names a home directory;
 *    - an unquoted `#` at the start of a word: a comment hides the rest;
 *    - an unbalanced quote, or a backslash at the very end: the line cannot
 *      be parsed the way the server's shell will.
 * 3. A first word of the form `NAME=…` is refused: it is an assignment that
 *    changes the program's environment (`LD_PRELOAD=… ls`).
 * 4. With `programs`, the first word after unquoting must be one of them,
 *    exactly (so `/bin/rm` matches only a listed `/bin/rm`), and an empty
 *    command is refused.
 *
 * What this does not stop (say so where it is configured): what an allowed
 * program does with its arguments (`find -exec`, `git -c core.pager=…`,
 * `tar --to-command`, `env`, `xargs`, `sh` itself: allowlisting any of these
 * admits anything); a server that splices the value inside its own quotes
 * (`sh -c "grep '${value}'"`), where a quote in the value closes the
 * server's quote: the guard judges the value as a line of its own; shells
 * that are not POSIX sh (csh, fish, PowerShell, the old Bourne `^` pipe).
 */
import { GuardOptionError, type GuardCheck } from './types.js';

/** Longest piece of the value a reason quotes (characters). */
const MAX_EXCERPT_CHARS = 40;
/** A shell variable name, as in an assignment `NAME=value`. */
const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Characters after `$` that name a special parameter (`$1`, `$@`, `$?`, …). */
const SPECIAL_PARAMETER = /^[0-9@*#?$!-]$/;

export interface ShellGuardOptions {
  /** Allowed first words (argv[0]), exact names such as `git` or `/usr/bin/ls`. */
  readonly programs?: readonly string[];
}

/**
 * The words of a command line after unquoting, with the name of the
 * assignment the first word makes (`FOO` for `FOO=1 ls`, not for `'FOO=1'`),
 * or why the line is refused.
 */
export type ShellWords =
  | {
      readonly words: readonly string[];
      readonly leadingAssignment: string | undefined;
      readonly reason?: undefined;
    }
  | { readonly reason: string };

/**
 * Compile a `shell` guard: undefined for a value a POSIX shell would run as
 * one program with literal arguments, a reason otherwise.
 */
export function compileShellGuard(options: ShellGuardOptions): GuardCheck {
  const programs = compilePrograms(options.programs);
  return (value) => {
    if (typeof value !== 'string') return 'not a string';
    const split = shellWords(value);
    if (split.reason !== undefined) return split.reason;
    if (split.leadingAssignment !== undefined)
      return `an environment assignment \`${excerpt(split.leadingAssignment)}=\` before the command`;
    const [first] = split.words;
    if (first === undefined) return programs === undefined ? undefined : 'an empty command';
    if (programs !== undefined && !programs.has(first))
      return `program '${excerpt(first)}' not allowed`;
    return undefined;
  };
}

function compilePrograms(programs: readonly string[] | undefined): Set<string> | undefined {
  if (programs === undefined) return undefined;
  if (!Array.isArray(programs) || programs.length === 0)
    throw new GuardOptionError(
      'a shell guard: programs must be a non-empty list (deny the tool to refuse every command)',
    );
  for (const [i, program] of programs.entries()) {
    // `git log` or `'git'` is a command line pasted where a name belongs: a
    // config mistake that would silently match nothing, so said at load.
    if (typeof program !== 'string' || program === '' || /[\s\0'"\\$`]/.test(program))
      throw new GuardOptionError(
        `a shell guard: programs[${i}] must be a plain program name without spaces or quotes`,
      );
  }
  return new Set(programs);
}

/**
 * Split a command line into words with POSIX sh quoting, refusing what a
 * shell would expand or treat as an operator (see the module header).
 */
export function shellWords(line: string): ShellWords {
  const control = controlCharacter(line);
  if (control !== undefined) return { reason: control };

  const words: string[] = [];
  let word = '';
  let inWord = false;
  // Whether everything in the current word so far was unquoted and
  // unescaped: only then can a `=` make it an assignment.
  let plainSoFar = true;
  let state: 'none' | 'single' | 'double' = 'none';
  let afterEquals = false;
  // Kept apart from the words because unquoting erases the difference
  // between `FOO=1` (an assignment) and `'FOO=1'` (a program name).
  let leadingAssignment: string | undefined;

  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (state === 'single') {
      if (c === "'") state = 'none';
      else word += c;
      continue;
    }
    if (state === 'double') {
      if (c === '"') state = 'none';
      else if (c === '$') return { reason: dollarReason(line, i, 'double') };
      else if (c === '`') return { reason: 'command substitution with backticks' };
      else if (c === '\\' && i + 1 < line.length && '$`"\\'.includes(line[i + 1] as string)) {
        word += line[i + 1];
        i++;
      } else word += c;
      continue;
    }

    const wasAfterEquals = afterEquals;
    afterEquals = false;
    if (c === ' ' || c === '\t') {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      plainSoFar = true;
      continue;
    }
    if (c === '~' && (!inWord || wasAfterEquals)) return { reason: 'tilde expansion `~`' };
    if (c === '#' && !inWord) return { reason: 'a `#` at word start (a comment hides the rest)' };
    switch (c) {
      case '\\':
        if (i + 1 >= line.length) return { reason: 'a trailing backslash' };
        word += line[i + 1];
        i++;
        plainSoFar = false;
        break;
      case "'":
        state = 'single';
        plainSoFar = false;
        break;
      case '"':
        state = 'double';
        plainSoFar = false;
        break;
      case '$':
        return { reason: dollarReason(line, i, 'none') };
      case '`':
        return { reason: 'command substitution with backticks' };
      case ';':
      case '&':
      case '|':
      case '<':
      case '>':
      case '(':
      case ')':
        return { reason: operatorReason(line, i) };
      case '{':
      case '}':
        return { reason: `unquoted \`${c}\`` };
      case '*':
      case '?':
      case '[':
        return { reason: `unquoted glob \`${c}\`` };
      case '=':
        if (words.length === 0 && inWord && plainSoFar && SHELL_NAME.test(word))
          leadingAssignment ??= word;
        word += c;
        afterEquals = true;
        break;
      default:
        word += c;
    }
    inWord = true;
  }

  if (state === 'single') return { reason: 'an unbalanced single quote' };
  if (state === 'double') return { reason: 'an unbalanced double quote' };
  if (inWord) words.push(word);
  return { words, leadingAssignment };
}

function controlCharacter(line: string): string | undefined {
  for (let i = 0; i < line.length; i++) {
    const code = line.charCodeAt(i);
    if (code === 0) return 'a NUL character';
    if (code === 0x0a) return 'a newline';
    if (code === 0x0d) return 'a carriage return';
    if ((code < 0x20 && code !== 0x09) || code === 0x7f)
      return `a control character (U+${code.toString(16).toUpperCase().padStart(4, '0')})`;
  }
  return undefined;
}

function dollarReason(line: string, at: number, state: 'none' | 'double'): string {
  const next = line[at + 1];
  if (next === undefined) return 'a `$` at the end (it would join whatever follows it)';
  if (next === '(')
    return line[at + 2] === '(' ? 'arithmetic expansion `$((`' : 'command substitution `$(`';
  if (next === '{') return 'parameter expansion `${`';
  if (state === 'none' && next === "'") return "ANSI-C quoting `$'`";
  if (state === 'none' && next === '"') return 'locale quoting `$"`';
  const name = /^[A-Za-z_][A-Za-z0-9_]*/.exec(line.slice(at + 1));
  if (name !== null) return `parameter expansion \`$${excerpt(name[0])}\``;
  if (SPECIAL_PARAMETER.test(next)) return `parameter expansion \`$${next}\``;
  return 'a `$` outside single quotes';
}

function operatorReason(line: string, at: number): string {
  const c = line[at] as string;
  const next = line[at + 1];
  if ((c === '<' || c === '>') && next === '(') return `process substitution \`${c}(\``;
  if (c === '<' && next === '<') return 'a here-document `<<`';
  if ((c === '&' || c === '|' || c === '>' || c === ';') && next === c)
    return `unquoted \`${c}${c}\``;
  return `unquoted \`${c}\``;
}

function excerpt(text: string): string {
  const chars = [...text];
  return chars.length <= MAX_EXCERPT_CHARS
    ? text
    : `${chars.slice(0, MAX_EXCERPT_CHARS).join('')}…`;
}
