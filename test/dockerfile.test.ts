/**
 * The Dockerfile, checked without a Docker engine (there is none on these
 * machines; docs/deployment.md says what was not run): two stages, the
 * runtime stage as a non-root user with bubblewrap and tini, the ports the
 * gateway listens on by default, a HEALTHCHECK on /livez whose command is
 * run here against a real gateway, and a build context that leaves local
 * state and keys out.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { DEFAULT_ADMIN_PORT, DEFAULT_PORT } from '../src/config/schema.js';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { freePort } from './helpers/redis.js';

const run = promisify(execFile);
const repo = join(import.meta.dirname, '..');

interface Instruction {
  op: string;
  args: string;
}

/** The Dockerfile's instructions, continuation lines joined, comments left out, by stage. */
function stages(): Instruction[][] {
  const text = readFileSync(join(repo, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const out: Instruction[][] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const [, op = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    if (op.toUpperCase() === 'FROM') out.push([]);
    out[out.length - 1]?.push({ op: op.toUpperCase(), args });
  }
  return out;
}

const all = (stage: Instruction[], op: string) => stage.filter((i) => i.op === op);
const one = (stage: Instruction[], op: string): string => {
  const found = all(stage, op);
  assert.equal(found.length, 1, `one ${op} in the stage`);
  return (found[0] as Instruction).args;
};

let upstream: ModernServer;
let gw: TestGateway;

before(async () => {
  upstream = await startModernServer();
  gw = await startTestGateway({ docs: upstream.url });
});

after(async () => {
  await gw.close();
  await upstream.close();
});

test('two stages: the build, and a runtime that copies only what the build made', () => {
  const [build, runtime] = stages();
  assert.ok(build && runtime, 'a build stage and a runtime stage');
  assert.equal(stages().length, 2);
  assert.match(one(build, 'FROM'), /^node:20\S* AS build$/, 'the build stage is on Node 20');
  assert.match(one(runtime, 'FROM'), /^node:20\S*$/, 'the runtime is on Node 20');
  const copies = all(runtime, 'COPY').map((c) => c.args);
  for (const what of ['node_modules', 'dist', 'package.json'])
    assert.ok(
      copies.some((c) => c.startsWith('--from=build ') && c.includes(`/app/${what}`)),
      `${what} comes from the build stage`,
    );
  assert.ok(
    all(build, 'RUN').some((r) => /npm prune --omit=dev/.test(r.args)),
    'development dependencies are pruned',
  );
});

test('the runtime runs as a non-root user, with bubblewrap and tini', () => {
  const runtime = stages()[1] as Instruction[];
  const user = one(runtime, 'USER');
  const [uid, gid] = user.split(':').map(Number);
  assert.ok(uid !== undefined && Number.isInteger(uid) && uid > 0, `numeric non-root uid: ${user}`);
  assert.ok(gid !== undefined && Number.isInteger(gid) && gid > 0, `numeric non-root gid: ${user}`);
  const installs = all(runtime, 'RUN')
    .map((r) => r.args)
    .join(' ');
  assert.match(installs, /apt-get install[^&]*\bbubblewrap\b/, 'bubblewrap is installed');
  assert.match(installs, /apt-get install[^&]*\btini\b/, 'tini is installed');
  const entrypoint = JSON.parse(one(runtime, 'ENTRYPOINT')) as string[];
  assert.equal(entrypoint[0], '/usr/bin/tini', 'tini is process 1: signals reach the gateway');
  assert.deepEqual(entrypoint.slice(-2), ['node', '/app/dist/cli/main.js']);
  assert.ok(existsSync(join(repo, 'dist/cli/main.js')), 'the entry point is what the build makes');
  assert.deepEqual(JSON.parse(one(runtime, 'CMD')), [
    'start',
    '--config',
    '/etc/portcullis/portcullis.yaml',
  ]);
});

test("the exposed ports are the gateway's defaults", () => {
  const runtime = stages()[1] as Instruction[];
  assert.deepEqual(
    one(runtime, 'EXPOSE').split(/\s+/).map(Number).sort(),
    [DEFAULT_PORT, DEFAULT_ADMIN_PORT].sort(),
  );
});

test('the HEALTHCHECK command passes against a live gateway and fails without one', async () => {
  const runtime = stages()[1] as Instruction[];
  const healthcheck = one(runtime, 'HEALTHCHECK');
  const [, cmd = ''] = /CMD\s+(\[.*\])$/.exec(healthcheck) ?? [];
  const argv = JSON.parse(cmd) as string[];
  const script = argv[2] as string;
  assert.equal(argv[0], 'node');
  assert.match(script, new RegExp(`http://127\\.0\\.0\\.1:${DEFAULT_ADMIN_PORT}/livez`));
  // The same script, aimed at this test's gateway and at a port nothing listens on.
  assert.ok(gw.adminUrl, 'the test gateway has its admin listener');
  const admin = new URL(gw.adminUrl);
  const at = (port: string) => script.replace(`:${DEFAULT_ADMIN_PORT}/`, `:${port}/`);
  await run(process.execPath, ['-e', at(admin.port)]);
  await assert.rejects(run(process.execPath, ['-e', at(String(await freePort()))]), {
    code: 1,
  });
});

test('the build context leaves out local state, keys and what the image does not need', () => {
  const ignored = readFileSync(join(repo, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  for (const must of ['.git', 'node_modules', 'dist', '.portcullis'])
    assert.ok(ignored.includes(must), `.dockerignore leaves out ${must}`);
  // What the build copies from the context exists and is not left out.
  const build = stages()[0] as Instruction[];
  const runtime = stages()[1] as Instruction[];
  const sources = [...all(build, 'COPY'), ...all(runtime, 'COPY')]
    .filter((c) => !c.args.startsWith('--from='))
    .flatMap((c) => c.args.split(/\s+/).slice(0, -1));
  assert.ok(sources.length > 0);
  for (const source of sources) {
    assert.ok(existsSync(join(repo, source)), `${source} exists`);
    assert.ok(!ignored.includes(source.split('/')[0] as string), `${source} is in the context`);
  }
});
