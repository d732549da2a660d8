/**
 * The path guard in front of the official filesystem server
 * (`@modelcontextprotocol/server-filesystem`, run by the gateway over stdio),
 * with the shapes published against such servers: a sibling directory whose
 * name starts with the root's (`data_secret` beside `data`), and a symbolic
 * link inside the root that points out of it. The guard refuses both at the
 * gateway, with -32602 naming it, before the server sees the call; a file
 * inside the root is read as the server reads it.
 *
 * The server runs in the gateway's sandbox, with the root bound in
 * (`writablePaths`); the sibling and the link's target are outside it, so
 * the sandbox hides them too: what the test shows is that the gateway
 * refuses first, and nothing of the call reaches the server.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile, realpath } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

import { startTestGateway, type SeenFrame } from './helpers/gateway.js';
import { FILESYSTEM_ENTRY } from './helpers/reference-servers.js';

async function tree(t: TestContext) {
  const top = await realpath(await mkdtemp(join(tmpdir(), 'portcullis-fs-')));
  t.after(() => rm(top, { recursive: true, force: true }));
  // As root, the server runs as a user of its own, which must be able to enter.
  await chmod(top, 0o755);
  const data = join(top, 'data');
  await mkdir(join(data, 'sub'), { recursive: true });
  await mkdir(join(top, 'data_secret'));
  await writeFile(join(data, 'notes.txt'), 'inside the root\n');
  await writeFile(join(data, 'sub', 'a.txt'), 'a\n');
  await writeFile(join(top, 'data_secret', 'key'), 'SECRET-KEY\n');
  await writeFile(join(top, 'outside.txt'), 'SECRET-OUTSIDE\n');
  // A link inside the root to a file outside it, and one to a directory outside it.
  await symlink(join(top, 'outside.txt'), join(data, 'innocent.txt'));
  await symlink(join(top, 'data_secret'), join(data, 'docs'));
  return { top, data };
}

async function connect(t: TestContext, data: string, frames: SeenFrame[]) {
  const guard = { kind: 'path', root: data, resolveSymlinks: true };
  const gateway = await startTestGateway(
    {
      fs: {
        transport: 'stdio',
        command: process.execPath,
        args: [FILESYSTEM_ENTRY, data],
        sandbox: { mode: 'required', writablePaths: [data] },
        warmPool: 0,
        tools: {
          read_text_file: { guards: [{ ...guard, argument: 'path', id: 'fs-root' }] },
          read_multiple_files: { guards: [{ ...guard, argument: 'paths', id: 'fs-root-many' }] },
          list_directory: { guards: [{ ...guard, argument: 'path', id: 'fs-root-list' }] },
        },
      },
    },
    {},
    frames,
  );
  t.after(() => gateway.close());
  const client = new Client({ name: 'guard-filesystem-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(gateway.urlFor('fs'))));
  t.after(() => client.close());
  return client;
}

const textOf = (result: object): string =>
  (((result as { content?: Array<{ text?: string }> }).content ?? [])[0]?.text ?? '').trim();

test('server-filesystem behind the path guard: sibling-prefix and symlink escapes are refused at the gateway, files inside are read', async (t) => {
  const { top, data } = await tree(t);
  const frames: SeenFrame[] = [];
  const client = await connect(t, data, frames);

  const refusals: Array<[string, Record<string, unknown>, string, string]> = [
    ['read_text_file', { path: join(top, 'data_secret', 'key') }, 'fs-root', '/path'],
    ['read_text_file', { path: `${data}_secret/key` }, 'fs-root', '/path'],
    ['read_text_file', { path: join(data, '..', 'data_secret', 'key') }, 'fs-root', '/path'],
    ['read_text_file', { path: join(data, 'innocent.txt') }, 'fs-root', '/path'],
    ['read_text_file', { path: join(data, 'docs', 'key') }, 'fs-root', '/path'],
    ['read_text_file', { path: '/proc/self/environ' }, 'fs-root', '/path'],
    ['list_directory', { path: join(data, 'docs') }, 'fs-root-list', '/path'],
    [
      'read_multiple_files',
      { paths: [join(data, 'notes.txt'), join(data, 'innocent.txt')] },
      'fs-root-many',
      '/paths/1',
    ],
  ];
  for (const [name, args, rule, path] of refusals) {
    const what = `${name} ${JSON.stringify(args)}`;
    const err = await client.callTool({ name, arguments: args }).then(
      (r) => assert.fail(`${what} was answered: ${JSON.stringify(r)}`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof McpError, `${what}: ${String(err)}`);
    assert.equal(err.code, -32602, what);
    const data_ = err.data as Record<string, unknown>;
    assert.deepEqual(
      [data_.code, data_.rule, data_.path],
      ['PORTCULLIS_ERR_POLICY_GUARD', rule, path],
      what,
    );
    assert.doesNotMatch(err.message, /SECRET/, what);
  }
  const calls = frames.filter(
    (f) => f.direction === 'client-to-server' && f.method === 'tools/call',
  );
  assert.equal(calls.length, refusals.length);
  assert.deepEqual(
    calls.filter((f) => f.outcome !== 'deny').map((f) => JSON.stringify(f.message)),
    [],
    'no refused call reached the server',
  );

  // Inside the root: answered by the server, as it reads the file.
  assert.equal(
    textOf(
      await client.callTool({
        name: 'read_text_file',
        arguments: { path: join(data, 'notes.txt') },
      }),
    ),
    'inside the root',
  );
  assert.equal(
    textOf(
      await client.callTool({
        name: 'read_text_file',
        arguments: { path: join(data, 'sub', '..', 'sub', 'a.txt') },
      }),
    ),
    'a',
  );
  const many = textOf(
    await client.callTool({
      name: 'read_multiple_files',
      arguments: { paths: [join(data, 'notes.txt'), join(data, 'sub', 'a.txt')] },
    }),
  );
  assert.match(many, /inside the root/);
  assert.doesNotMatch(many, /SECRET/);
  const listing = textOf(
    await client.callTool({ name: 'list_directory', arguments: { path: data } }),
  );
  assert.match(listing, /notes\.txt/);
});
