/**
 * The `path` guard (src/policy/guards/path.ts): the two published escapes
 * from `@modelcontextprotocol/server-filesystem`'s allowed directories (a
 * sibling directory sharing the root's name as a prefix, CVE-2025-53110; a
 * symbolic link inside the root pointing out of it, CVE-2025-53109),
 * reproduced against the guard, plus traversal under every encoding a
 * server might decode; ordinary paths inside the root pass.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compilePathGuard, judgePath } from '../src/policy/guards/path.js';
import { GuardOptionError } from '../src/policy/guards/types.js';
import { PATH_ATTACKS, PATH_BENIGN } from './fixtures/attack-corpus.js';

const ROOT = '/srv/data';
const check = compilePathGuard({ root: ROOT });

// [value, a piece of the expected reason]

test('path: every traversal in the corpus is refused, under every encoding', () => {
  assert.ok(PATH_ATTACKS.length >= 25);
  for (const [value, expected] of PATH_ATTACKS) {
    const reason = check(value);
    assert.ok(reason?.includes(expected), `${JSON.stringify(value)}: got ${String(reason)}`);
  }
});

test('path: ordinary paths inside the root pass and normalize to where they lead', () => {
  assert.ok(PATH_BENIGN.length >= 10);
  for (const [value, target] of PATH_BENIGN) {
    assert.equal(check(value), undefined, JSON.stringify(value));
    assert.deepEqual(judgePath(value, ROOT), { targets: [target] }, JSON.stringify(value));
  }
});

test('path: a name with an escape is judged both as written and decoded', () => {
  assert.deepEqual(judgePath('a%2fb', ROOT), { targets: ['/srv/data/a%2fb', '/srv/data/a/b'] });
  assert.equal(check('a%2f..%2f..%2fx'), 'climbs out of the root');
});

test('path: a value that is not a string is refused', () => {
  for (const value of [1, null, ['a'], { path: 'a' }]) assert.equal(check(value), 'not a string');
});

test('path: the sibling-prefix directory of server-filesystem is outside the root', () => {
  const guard = compilePathGuard({ root: '/tmp/x/allowed' });
  assert.equal(guard('/tmp/x/allowed_secret'), 'outside the root /tmp/x/allowed');
  assert.equal(guard('/tmp/x/allowed_secret/key.pem'), 'outside the root /tmp/x/allowed');
  assert.equal(guard('/tmp/x/allowed/../allowed_secret'), 'climbs out of the root');
  assert.equal(guard('/tmp/x/allowed/ok.txt'), undefined);
  // A trailing slash on the root changes nothing.
  assert.equal(
    compilePathGuard({ root: '/tmp/x/allowed/' })('/tmp/x/allowed_secret'),
    'outside the root /tmp/x/allowed',
  );
});

test('path: device, proc and run trees are refused even when the root is /', () => {
  const guard = compilePathGuard({ root: '/' });
  assert.equal(guard('/etc/hostname'), undefined);
  assert.equal(guard('proc/self/environ'), 'a device or proc path');
  for (const value of ['/dev/sda', '/proc/self/mem', '/sys/kernel', '/run/docker.sock', '/dev'])
    assert.equal(guard(value), 'a device or proc path', value);
  assert.equal(guard('/..'), 'climbs out of the root');
});

test('path: options that cannot work are refused at compile', () => {
  assert.throws(() => compilePathGuard({ root: 'relative/dir' }), GuardOptionError);
  assert.throws(() => compilePathGuard({ root: '' }), GuardOptionError);
  assert.throws(() => compilePathGuard({ root: 'C:\\data' }), GuardOptionError);
  assert.throws(() => compilePathGuard({ root: '/proc/self' }), GuardOptionError);
  assert.throws(
    () => compilePathGuard({ root: '/srv', resolveSymlinks: 'yes' as unknown as boolean }),
    GuardOptionError,
  );
});

test('path: a symbolic link inside the root that points out of it is refused with resolveSymlinks', async (t) => {
  const base = await mkdtemp(path.join(tmpdir(), 'portcullis-path-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const root = path.join(base, 'allowed');
  const outside = path.join(base, 'outside');
  await mkdir(path.join(root, 'sub'), { recursive: true });
  await mkdir(outside);
  await writeFile(path.join(outside, 'secret.txt'), 'secret');
  await writeFile(path.join(root, 'sub', 'ok.txt'), 'ok');
  await symlink(outside, path.join(root, 'escape'));
  await symlink(path.join(root, 'sub'), path.join(root, 'inner'));
  await symlink(path.join(outside, 'not-yet'), path.join(root, 'dangling'));
  await symlink(path.join(root, 'loop-b'), path.join(root, 'loop-a'));
  await symlink(path.join(root, 'loop-a'), path.join(root, 'loop-b'));

  const lexical = compilePathGuard({ root });
  const resolving = compilePathGuard({ root, resolveSymlinks: true });
  // Lexically the link is inside: only the host can tell.
  assert.equal(lexical('escape/secret.txt'), undefined);
  assert.equal(await resolving('escape/secret.txt'), 'a symbolic link leads outside the root');
  assert.equal(await resolving('escape'), 'a symbolic link leads outside the root');
  assert.equal(
    await resolving('escape/new/dir/file.txt'),
    'a symbolic link leads outside the root',
  );
  assert.match(String(await resolving('dangling')), /points nowhere/);
  assert.equal(await resolving('loop-a/x'), 'a symbolic link loop');

  assert.equal(await resolving('sub/ok.txt'), undefined);
  assert.equal(await resolving('inner/ok.txt'), undefined);
  assert.equal(await resolving('sub/new-file.txt'), undefined);
  assert.equal(await resolving('new/dir/file.txt'), undefined);
  assert.equal(await resolving(path.join(root, 'sub')), undefined);
  assert.equal(await resolving('sub/ok.txt/under-a-file'), undefined);
  assert.equal(await resolving('../outside/secret.txt'), 'climbs out of the root');
});

test('path: a root reached through a symbolic link is compared by its real path', async (t) => {
  const base = await realpath(await mkdtemp(path.join(tmpdir(), 'portcullis-path-')));
  t.after(() => rm(base, { recursive: true, force: true }));
  const real = path.join(base, 'real');
  await mkdir(real);
  await writeFile(path.join(real, 'a.txt'), 'a');
  await symlink(real, path.join(base, 'link'));
  const resolving = compilePathGuard({ root: path.join(base, 'link'), resolveSymlinks: true });
  assert.equal(await resolving('a.txt'), undefined);
  assert.equal(await resolving(path.join(base, 'link', 'a.txt')), undefined);

  const missing = compilePathGuard({ root: path.join(base, 'missing'), resolveSymlinks: true });
  assert.equal(await missing('a.txt'), 'the root cannot be resolved on this host (ENOENT)');
});
