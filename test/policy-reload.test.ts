/**
 * Hot reload of the policy, end to end: a JWT gateway started from a
 * configuration file, an SDK 1.x client of tenant acme with a session open
 * against server-everything, and the file rewritten under it. A good file's
 * grants apply to the open session without a restart; a bad one (YAML,
 * schema, a CEL condition that does not compile) is refused with its
 * problems logged, and the running policy stays; a change outside the policy
 * is named as needing a restart and not applied; a stream in flight across a
 * reload finishes. Every wait is on the gateway's own log record.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import pino from 'pino';
import { stringify } from 'yaml';

import { loadConfigFile } from '../src/config/load.js';
import type { Config } from '../src/config/schema.js';
import type { DemoUpstream } from '../src/demo/everything.js';
import { startGateway, type Gateway } from '../src/server/gateway.js';
import { buildManifest, formatManifest, toolDefinitionFrom } from '../src/policy/manifest.js';
import { startEverything } from './helpers/everything.js';
import { ISSUER, mint, newKey, writeJwks, type SigningKey } from './helpers/tokens.js';

/** Bound on waiting for a log record; never reached when the gateway does what it should. */
const WAIT_MS = 10_000;

type LogRecord = Record<string, unknown>;

/** The gateway's log records, parsed, and a way to wait for one. */
class Records {
  readonly all: LogRecord[] = [];
  private waiters: Array<{ match: (r: LogRecord) => boolean; found: (r: LogRecord) => void }> = [];

  write(line: string): void {
    const record = JSON.parse(line) as LogRecord;
    this.all.push(record);
    for (const w of this.waiters.filter((w) => w.match(record))) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.found(record);
    }
  }

  /** How many records there are: `waitFor(…, from)` looks at those written since. */
  get mark(): number {
    return this.all.length;
  }

  waitFor(match: (r: LogRecord) => boolean, from: number, what: string): Promise<LogRecord> {
    const seen = this.all.slice(from).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        found: (r: LogRecord) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no log record: ${what}, within ${WAIT_MS} ms`));
      }, WAIT_MS);
      this.waiters.push(waiter);
    });
  }
}

interface Problem {
  file: string;
  path: string;
  message: string;
}

const reloaded = (changed: string) => (r: LogRecord) =>
  r.event === 'config.reloaded' && (r.changed as string[]).includes(changed);
const refused = (path: RegExp) => (r: LogRecord) =>
  r.event === 'config.reload_failed' && (r.problems as Problem[]).some((p) => path.test(p.path));

let dir: string;
let file: string;
let key: SigningKey;
let jwksFile: string;
let everything: DemoUpstream;
let gateway: Gateway;
const records = new Records();

/** The configuration document, with acme's tools on server `http` and any other top-level keys. */
function document(tools: string[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { servers, ...rest } = extra as { servers?: Record<string, unknown> };
  return {
    listen: { host: '127.0.0.1', port: 0 },
    admin: { port: 0, publicMetrics: true },
    auth: { mode: 'jwt', jwt: { issuer: ISSUER, jwksFile } },
    servers: { http: { url: everything.url }, ...servers },
    // The in-flight call below holds a sampling request open across a reload.
    tenants: { acme: { servers: { http: { tools, sampling: true } } }, globex: { servers: {} } },
    ...rest,
  };
}

/** Replaces the file the way editors and `kubectl cp` do: a new file renamed over it. */
async function replaceFile(text: string): Promise<void> {
  const tmp = join(dir, '.portcullis.yaml.tmp');
  await writeFile(tmp, text);
  await rename(tmp, file);
}

async function connect(): Promise<Client> {
  const token = await mint(key, gateway.url, { claims: { tenant: 'acme', sub: 'acme-agent' } });
  const client = new Client(
    { name: 'reload-test', version: '1.0.0' },
    { capabilities: { sampling: {} } },
  );
  await client.connect(
    new StreamableHTTPClientTransport(new URL(gateway.url + '/mcp/http'), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    }),
  );
  return client;
}

/** A manifest of these tools as server-everything lists them, written by rename. */
async function writeManifestOf(path: string, names: string[]): Promise<void> {
  const client = new Client({ name: 'manifest-pull', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(everything.url)));
  const { tools } = await client.listTools();
  await client.close();
  const { manifest } = buildManifest(
    tools.filter((tool) => names.includes(tool.name)).map((tool) => toolDefinitionFrom(tool)),
    { server: 'http', now: new Date().toISOString() },
  );
  await writeFile(`${path}.tmp`, formatManifest(manifest));
  await rename(`${path}.tmp`, path);
}

async function rpcError(promise: Promise<unknown>): Promise<McpError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof McpError, `expected a JSON-RPC error, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the request to be refused');
}

async function reloadCounts(): Promise<{ ok: number; failed: number; lastSuccessful: number }> {
  const text = await (await fetch(`${gateway.adminUrl as string}/metrics`)).text();
  const value = (name: string): number => {
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    assert.ok(line, `${name} is exported`);
    return Number(line.slice(name.length + 1));
  };
  return {
    ok: value('portcullis_config_reloads_total{result="ok"}'),
    failed: value('portcullis_config_reloads_total{result="failed"}'),
    lastSuccessful: value('portcullis_config_last_reload_successful'),
  };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-reload-'));
  file = join(dir, 'portcullis.yaml');
  key = await newKey('ES256');
  jwksFile = await writeJwks(dir, key);
  everything = await startEverything();
  await writeFile(file, stringify(document(['echo', 'trigger-sampling-request'])));
  const config = await loadConfigFile(file);
  const log = pino({ level: 'debug' }, { write: (line: string) => records.write(line) });
  gateway = await startGateway(config, { configFile: file, log });
});

after(async () => {
  await gateway.close();
  await everything.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('hot reload, one open session of tenant acme throughout', () => {
  let client: Client;
  before(async () => {
    client = await connect();
  });
  after(() => client.close());

  test('granted echo only: get-sum does not exist for acme', async () => {
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), ['echo', 'trigger-sampling-request']);
    const err = await rpcError(client.callTool({ name: 'get-sum', arguments: { a: 1, b: 2 } }));
    assert.equal(err.code, -32602);
    assert.match(err.message, /Tool not found: get-sum/);
  });

  test('a rewrite granting get-sum applies to the open session; a stream in flight finishes', async () => {
    // A call in flight across the reload: the server asks the client for a sampling, and the
    // client answers only once the new policy is in force.
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    let asked!: () => void;
    const wasAsked = new Promise<void>((resolve) => (asked = resolve));
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      asked();
      await answered;
      return { model: 'm', role: 'assistant', content: { type: 'text', text: 'sampled reply' } };
    });
    const inFlight = client.callTool({
      name: 'trigger-sampling-request',
      arguments: { prompt: 'hold on', maxTokens: 5 },
    });
    await wasAsked;

    const mark = records.mark;
    await replaceFile(stringify(document(['echo', 'get-sum', 'trigger-sampling-request'])));
    const record = await records.waitFor(reloaded('tenants.acme'), mark, 'config.reloaded');
    assert.deepEqual(record.changed, ['tenants.acme']);
    assert.equal(record.file, file);

    const sum = await client.callTool({ name: 'get-sum', arguments: { a: 2, b: 3 } });
    assert.match(JSON.stringify(sum.content), /5/);
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), [
      'echo',
      'get-sum',
      'trigger-sampling-request',
    ]);

    answer();
    const result = await inFlight;
    assert.match(JSON.stringify(result.content), /sampled reply/);
    assert.ok(!records.all.slice(mark).some((r) => r.event === 'config.restart_required'));
  });

  const broken: Array<{ what: string; text: () => string; path: RegExp; message: RegExp }> = [
    {
      what: 'bad YAML',
      text: () => 'tenants: [unclosed\n  servers: {\n',
      path: /^line \d+|\(root\)$/,
      message: /./,
    },
    {
      what: 'a schema error',
      text: () =>
        stringify({
          ...document(['echo', 'get-sum']),
          tenants: { acme: { servers: { http: { tools: ['echo'] } }, bogus: true } },
        }),
      path: /^tenants\.acme\.bogus$/,
      message: /unknown key/,
    },
    {
      what: 'a CEL condition that does not compile',
      text: () =>
        stringify({
          ...document(['echo']),
          tenants: {
            acme: {
              servers: { http: { tools: ['echo'] } },
              rules: [{ id: 'no-tenant-var', when: 'tenant == 1' }],
            },
          },
        }),
      path: /^tenants\.acme\.rules\[0\]\.when$/,
      message: /tenant/,
    },
  ];

  for (const b of broken) {
    test(`${b.what} is refused, its problems logged, the running policy kept`, async () => {
      const mark = records.mark;
      await writeFile(file, b.text());
      const record = await records.waitFor(
        refused(b.path),
        mark,
        `config.reload_failed (${b.what})`,
      );
      assert.equal(record.level, 50, 'logged at error level');
      assert.equal(record.file, file);
      const problem = (record.problems as Problem[]).find((p) => b.path.test(p.path));
      assert.ok(problem);
      assert.match(problem.message, b.message);
      assert.equal(problem.file, file);
      assert.match(String(record.msg), /running policy is kept/);

      // Called directly, reload() answers the same.
      const direct = await gateway.reload();
      assert.equal(direct.ok, false);
      assert.ok(!direct.ok && direct.problems.some((p) => b.path.test(p.path)));

      // The policy of the last good file: get-sum callable, get-env still absent.
      const sum = await client.callTool({ name: 'get-sum', arguments: { a: 1, b: 1 } });
      assert.match(JSON.stringify(sum.content), /2/);
      const err = await rpcError(client.callTool({ name: 'get-env', arguments: {} }));
      assert.equal(err.code, -32602);
      assert.equal(
        (await client.listTools()).tools.some((t) => t.name === 'get-sum'),
        true,
      );
    });
  }

  test('reload() called directly returns what it did; the metric counts both results', async () => {
    const mark = records.mark;
    await writeFile(file, stringify(document(['echo', 'get-sum', 'trigger-sampling-request'])));
    await records.waitFor((r) => r.event === 'config.reloaded', mark, 'config.reloaded');
    // The file as the policy in force: nothing changed since the last good one.
    const before = await reloadCounts();
    assert.deepEqual(await gateway.reload(), { ok: true, changed: [], restartRequired: [] });
    const now = await reloadCounts();
    assert.equal(now.ok, before.ok + 1);
    assert.equal(now.failed, before.failed);
    // Each broken file was refused twice: once on its change, once by reload().
    assert.ok(now.failed >= 6, `failed: ${now.failed}`);
    assert.equal(now.lastSuccessful, 1);
  });

  test('a change outside the policy is named as needing a restart and not applied', async () => {
    const mark = records.mark;
    await writeFile(
      file,
      stringify(
        document(['echo', 'get-sum', 'trigger-sampling-request'], {
          sessions: { idleTimeoutMs: 5_000 },
          servers: {
            http: { url: everything.url, requiredScopes: ['admin'] },
            extra: { url: everything.url },
          },
          tenants: {
            acme: { servers: { http: { tools: ['echo', 'get-sum'] }, extra: { tools: ['*'] } } },
            globex: { servers: {} },
          },
        }),
      ),
    );
    const warning = await records.waitFor(
      (r) => r.event === 'config.restart_required',
      mark,
      'config.restart_required',
    );
    assert.equal(warning.level, 40, 'a warning');
    assert.deepEqual(warning.keys, ['sessions', 'servers.extra', 'servers.http.requiredScopes']);
    assert.match(String(warning.msg), /need a restart: sessions, servers\.extra/);
    const done = await records.waitFor(reloaded('tenants.acme'), mark, 'config.reloaded');
    assert.deepEqual(done.changed, ['tenants.acme']);

    // Not applied: the session needs no scope "admin", and server "extra" is not served.
    const sum = await client.callTool({ name: 'get-sum', arguments: { a: 4, b: 4 } });
    assert.match(JSON.stringify(sum.content), /8/);
    const token = await mint(key, gateway.url, { claims: { tenant: 'acme', sub: 'acme-agent' } });
    const res = await fetch(`${gateway.url}/mcp/extra`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    assert.equal(res.status, 404);
    await res.body?.cancel();
    // The policy part did apply: trigger-sampling-request is no longer granted.
    const err = await rpcError(
      client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'x' } }),
    );
    assert.equal(err.code, -32602);

    const direct = await gateway.reload();
    assert.deepEqual(direct, {
      ok: true,
      changed: [],
      restartRequired: ['sessions', 'servers.extra', 'servers.http.requiredScopes'],
    });
  });
});

test('a manifest file the configuration names is watched: a change to it reloads', async (t) => {
  // `servers.<name>.manifest` is read defensively: laid over the loaded file here, as a
  // schema that knows the key gives it.
  const local = await mkdtemp(join(tmpdir(), 'portcullis-reload-manifest-'));
  t.after(() => rm(local, { recursive: true, force: true }));
  const configFile = join(local, 'portcullis.yaml');
  await mkdir(join(local, 'manifests'));
  const manifest = join(local, 'manifests', 'http.json');
  await writeManifestOf(manifest, ['echo', 'get-sum']);
  await writeFile(configFile, stringify({ ...document(['echo']), admin: { enabled: false } }));
  const withManifest = async (path: string): Promise<Config> => {
    const loaded = await loadConfigFile(path);
    return {
      ...loaded,
      servers: { http: { ...loaded.servers.http, manifest } },
    } as unknown as Config;
  };
  const logs = new Records();
  const gw = await startGateway(await withManifest(configFile), {
    configFile,
    loadConfig: withManifest,
    log: pino({ level: 'debug' }, { write: (line: string) => logs.write(line) }),
  });
  t.after(() => gw.close());

  // Replaced by rename, as `portcullis manifest pull` and `approve` write it.
  await writeManifestOf(manifest, ['echo']);
  const record = await logs.waitFor(reloaded('servers.http.manifest'), 0, 'config.reloaded');
  assert.deepEqual(record.changed, ['servers.http.manifest']);
  assert.deepEqual(await gw.reload(), { ok: true, changed: [], restartRequired: [] });
});

test('a file mounted as Kubernetes mounts a ConfigMap (a symlink through ..data, swapped) is seen to change', async (t) => {
  const mount = await mkdtemp(join(tmpdir(), 'portcullis-reload-configmap-'));
  t.after(() => rm(mount, { recursive: true, force: true }));
  const version = async (name: string, tools: string[]): Promise<void> => {
    await mkdir(join(mount, name));
    await writeFile(
      join(mount, name, 'portcullis.yaml'),
      stringify({ ...document(tools), admin: { enabled: false } }),
    );
  };
  // What the kubelet's atomic writer does: a timestamped directory, `..data` linking to it,
  // the file a link through `..data`; an update links `..data_tmp` and renames it over `..data`.
  await version('..v1', ['echo']);
  await symlink('..v1', join(mount, '..data'));
  await symlink(join('..data', 'portcullis.yaml'), join(mount, 'portcullis.yaml'));
  const configFile = join(mount, 'portcullis.yaml');
  const logs = new Records();
  const gw = await startGateway(await loadConfigFile(configFile), {
    configFile,
    log: pino({ level: 'debug' }, { write: (line: string) => logs.write(line) }),
  });
  t.after(() => gw.close());

  await version('..v2', ['echo', 'get-sum']);
  await symlink('..v2', join(mount, '..data_tmp'));
  await rename(join(mount, '..data_tmp'), join(mount, '..data'));
  await rm(join(mount, '..v1'), { recursive: true });
  const record = await logs.waitFor(reloaded('tenants.acme'), 0, 'config.reloaded');
  assert.deepEqual(record.changed, ['tenants.acme']);
});

test('a gateway started without a configuration file refuses reload()', async (t) => {
  const config = await loadConfigFile(file);
  const gw = await startGateway(
    { ...config, admin: { ...config.admin, enabled: false } },
    {
      log: pino({ level: 'silent' }),
    },
  );
  t.after(() => gw.close());
  const result = await gw.reload();
  assert.equal(result.ok, false);
  assert.match(
    !result.ok ? (result.problems[0]?.message ?? '') : '',
    /without a configuration file/,
  );
});
