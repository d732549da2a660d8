/**
 * The `shell` guard (src/policy/guards/shell.ts): every way of making sh do
 * more than run one program with literal arguments is refused, with a
 * reason naming what was found; ordinary command lines, quoted
 * metacharacters included, pass; the programs allowlist judges argv[0]
 * after unquoting.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileShellGuard, shellWords } from '../src/policy/guards/shell.js';
import { GuardOptionError } from '../src/policy/guards/types.js';
import { SHELL_ATTACKS, SHELL_BENIGN } from './fixtures/attack-corpus.js';

const open = compileShellGuard({});

// [value, a piece of the expected reason]

test('shell: every attack in the corpus is refused with the reason for what it does', () => {
  assert.ok(SHELL_ATTACKS.length >= 30);
  for (const [value, expected] of SHELL_ATTACKS) {
    const reason = open(value);
    assert.ok(reason?.includes(expected), `${JSON.stringify(value)}: got ${String(reason)}`);
  }
});

test('shell: ordinary command lines pass, metacharacters inside quotes included', () => {
  assert.ok(SHELL_BENIGN.length >= 15);
  for (const value of SHELL_BENIGN) assert.equal(open(value), undefined, JSON.stringify(value));
});

test('shell: a value that is not a string is refused', () => {
  for (const value of [42, null, ['ls'], { cmd: 'ls' }, true])
    assert.equal(open(value), 'not a string');
});

test('shell: words are unquoted the way sh unquotes them', () => {
  assert.deepEqual(shellWords(`a 'b c' "d \\$ \\e" f\\ g ''`), {
    words: ['a', 'b c', 'd $ \\e', 'f g', ''],
    leadingAssignment: undefined,
  });
  assert.deepEqual(shellWords('FOO=1 ls'), { words: ['FOO=1', 'ls'], leadingAssignment: 'FOO' });
  // A quoted name is not an assignment: `'FOO'=1` is a program name.
  assert.deepEqual(shellWords("'FOO'=1 ls"), {
    words: ['FOO=1', 'ls'],
    leadingAssignment: undefined,
  });
});

test('shell: with programs, argv[0] after unquoting must be listed exactly', () => {
  const check = compileShellGuard({ programs: ['git', 'ls', '/usr/bin/grep'] });
  assert.equal(check('git status'), undefined);
  assert.equal(check("'git' status"), undefined);
  assert.equal(check('l\\s -la'), undefined);
  assert.equal(check('/usr/bin/grep -r x .'), undefined);
  assert.equal(check('rm -rf /'), "program 'rm' not allowed");
  assert.equal(check('/bin/ls'), "program '/bin/ls' not allowed");
  assert.equal(check('grep x'), "program 'grep' not allowed");
  assert.equal(check('./git status'), "program './git' not allowed");
  assert.equal(check(''), 'an empty command');
  assert.equal(check('   '), 'an empty command');
  assert.equal(
    check('GIT_SSH_COMMAND=x git fetch'),
    'an environment assignment `GIT_SSH_COMMAND=` before the command',
  );
  assert.equal(check('git status; rm -rf /'), 'unquoted `;`');
});

test('shell: a long program name is cut short in the reason', () => {
  const check = compileShellGuard({ programs: ['ls'] });
  const reason = check('x'.repeat(500));
  assert.ok(reason !== undefined && reason.length < 80, reason);
});

test('shell: options that cannot work are refused at compile', () => {
  assert.throws(() => compileShellGuard({ programs: [] }), GuardOptionError);
  assert.throws(() => compileShellGuard({ programs: ['git log'] }), GuardOptionError);
  assert.throws(() => compileShellGuard({ programs: [''] }), GuardOptionError);
  assert.throws(() => compileShellGuard({ programs: [7 as unknown as string] }), GuardOptionError);
});
