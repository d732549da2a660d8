/**
 * docker-compose.yml, checked without a Docker engine (none on these
 * machines; docs/deployment.md says what was not run). Its services are the
 * ones promised; each gateway mounts its configuration where the image reads
 * it and its state where the image keeps it; that configuration loads, with
 * the environment compose gives each replica, and names the other services
 * by the names and ports compose gives them; nginx spreads over both
 * replicas with no affinity, and its configuration passes `nginx -t`;
 * Prometheus scrapes both; Grafana is provisioned from deploy/. The
 * development OAuth server is run for real: a token it issues is accepted by
 * a gateway with the compose file's auth section.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pino from 'pino';
import { parse as parseYaml } from 'yaml';
import { buildConfig, readConfigDocument } from '../src/config/load.js';
import { startGateway } from '../src/server/gateway.js';
import { startEverything } from './helpers/everything.js';
import { freePort } from './helpers/redis.js';
import { initializeBody, post } from './helpers/requests.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

interface Service {
  build?: string | { context: string; dockerfile?: string };
  image?: string;
  hostname?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  tmpfs?: string[];
  read_only?: boolean;
  stop_grace_period?: string;
  healthcheck?: { test?: string[]; disable?: boolean };
  depends_on?: Record<string, { condition: string }> | string[];
  command?: string[];
  entrypoint?: string[];
}

const compose = parseYaml(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), {
  merge: true,
}) as { services: Record<string, Service>; volumes: Record<string, unknown> };
const services = compose.services;
const GATEWAYS = ['gateway-1', 'gateway-2'];
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

/** `${NAME:-default}` as compose resolves it with NAME unset. */
function composeValue(value: string): string {
  return value.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1');
}

function envOf(name: string): NodeJS.ProcessEnv {
  const env = services[name]?.environment ?? {};
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, composeValue(String(v))]));
}

/** The container path a host path is mounted at, in a service. */
function mountOf(service: Service, host: string): string | undefined {
  for (const v of service.volumes ?? []) {
    const [from, to] = v.split(':');
    if (from === host) return to;
  }
  return undefined;
}

async function gatewayConfig(name: string) {
  return buildConfig(
    await readConfigDocument(join(ROOT, 'deploy/compose/portcullis.yaml'), envOf(name)),
  );
}

test('the services promised, and only nginx, oauth, prometheus and grafana published, on loopback', () => {
  assert.deepEqual(Object.keys(services).sort(), [
    'demo',
    'gateway-1',
    'gateway-2',
    'grafana',
    'nginx',
    'oauth',
    'prometheus',
    'redis',
  ]);
  for (const [name, s] of Object.entries(services)) {
    for (const p of s.ports ?? [])
      assert.match(p, /^127\.0\.0\.1:/, `${name} publishes ${p} on loopback only`);
    if (['gateway-1', 'gateway-2', 'redis', 'demo'].includes(name))
      assert.equal(s.ports, undefined, `${name} is not published`);
  }
});

test('each gateway runs the image, with its configuration and state where the image expects them', async () => {
  const cmdConfig = /CMD \["start", "--config", "([^"]+)"\]/.exec(dockerfile)?.[1];
  const volume = /VOLUME \["([^"]+)"\]/.exec(dockerfile)?.[1];
  assert.ok(cmdConfig && volume);
  for (const name of GATEWAYS) {
    const s = services[name] as Service;
    assert.equal(s.build, '.', `${name} is built from the Dockerfile`);
    assert.equal(s.hostname, name);
    assert.equal(s.environment?.PORTCULLIS_HOSTNAME, name);
    assert.equal(mountOf(s, './deploy/compose/portcullis.yaml'), cmdConfig);
    assert.ok(
      s.volumes?.some((v) => v === `${name}-state:${volume}`),
      `${name} keeps its state in a volume of its own`,
    );
    assert.ok(`${name}-state` in compose.volumes);
    assert.equal(s.read_only, true, 'the root filesystem is read-only');
    assert.deepEqual(s.tmpfs, ['/tmp']);
    // The image's health check (on /livez) is the one compose waits on.
    assert.equal(s.healthcheck, undefined);
    const deps = s.depends_on as Record<string, { condition: string }>;
    assert.equal(deps.redis?.condition, 'service_healthy');
    assert.equal(deps.oauth?.condition, 'service_healthy');
    // Time for SIGTERM's whole drain before compose kills it.
    const config = await gatewayConfig(name);
    const graceMs = Number(/^(\d+)s$/.exec(s.stop_grace_period ?? '')?.[1]) * 1000;
    assert.ok(
      graceMs > config.shutdown.leaveRotationMs + config.shutdown.drainTimeoutMs,
      `stop_grace_period ${s.stop_grace_period} covers leaving rotation and the drain`,
    );
  }
  const health = /HEALTHCHECK[\s\S]*?http:\/\/127\.0\.0\.1:(\d+)\/livez/.exec(dockerfile)?.[1];
  assert.equal(Number(health), (await gatewayConfig('gateway-1')).admin.port);
});

test("the gateways' configuration loads for each replica and names the other services as compose does", async () => {
  for (const name of GATEWAYS) {
    const config = await gatewayConfig(name);
    assert.equal(config.store.kind, 'redis');
    const redis = new URL(config.store.kind === 'redis' ? config.store.url : '');
    assert.equal(redis.hostname, 'redis');
    assert.ok(services[redis.hostname], 'redis is a service');
    assert.equal(redis.port || '6379', '6379');

    assert.equal(config.cluster?.advertise, `http://${name}:${config.cluster?.port}`);
    assert.ok((config.cluster?.secret ?? '').length >= 32);

    const oauth = envOf('oauth');
    assert.equal(config.auth.mode, 'jwt');
    const jwt = config.auth.mode === 'jwt' ? config.auth.jwt : undefined;
    assert.equal(jwt?.issuer, oauth.OAUTH_ISSUER);
    const jwks = new URL(jwt?.jwksUrl as string);
    assert.equal(jwks.hostname, 'oauth');
    assert.equal(jwks.port, oauth.OAUTH_PORT);
    assert.equal(config.auth.resource, oauth.OAUTH_RESOURCE, 'tokens are issued for the gateway');

    const demo = new URL(config.servers.everything?.url as string);
    assert.equal(demo.hostname, 'demo');
    assert.equal(demo.port, envOf('demo').PORT);

    // Agents reach nginx on the host's port 8080: that is the resource and an allowed Host.
    const published = (services.nginx?.ports ?? [])[0]?.split(':');
    assert.equal(config.auth.resource, `http://localhost:${published?.[1]}`);
    assert.ok(config.listen.allowedHosts?.includes(`localhost:${published?.[1]}`));
    assert.ok(config.admin.allowedHosts?.includes(`${name}:${config.admin.port}`));
  }
});

test('nginx spreads over both replicas with no affinity, and its configuration passes nginx -t', async (t) => {
  const conf = readFileSync(join(ROOT, 'deploy/compose/nginx.conf'), 'utf8');
  assert.equal(
    mountOf(services.nginx as Service, './deploy/compose/nginx.conf'),
    '/etc/nginx/nginx.conf',
  );
  const port = (await gatewayConfig('gateway-1')).listen.port;
  const upstream = /upstream gateways \{([\s\S]*?)\}/.exec(conf)?.[1] ?? '';
  const servers = [...upstream.matchAll(/^\s*server\s+(\S+);/gm)].map((m) => m[1]);
  assert.deepEqual(
    servers,
    GATEWAYS.map((g) => `${g}:${port}`),
  );
  assert.doesNotMatch(upstream, /\b(ip_hash|hash|sticky|least_conn)\b/, 'no affinity');
  assert.match(conf, /proxy_buffering off;/, 'streams pass as they come');
  const listen = /listen (\d+);/.exec(conf)?.[1];
  assert.equal((services.nginx?.ports ?? [])[0], `127.0.0.1:8080:${listen}`);

  // The same file with the service names resolvable here, checked by the real nginx.
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-compose-nginx-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'nginx.conf');
  await writeFile(file, conf.replace(/gateway-\d/g, '127.0.0.1'));
  await run('/usr/sbin/nginx', [
    '-t',
    '-c',
    file,
    '-p',
    dir,
    '-g',
    `pid ${join(dir, 'pid')}; error_log stderr;`,
  ]);
});

test('Prometheus scrapes both replicas on their admin port; Grafana is provisioned from deploy/', async () => {
  const prometheus = services.prometheus as Service;
  assert.equal(mountOf(prometheus, './deploy/prometheus'), '/etc/prometheus');
  assert.deepEqual(prometheus.command, ['--config.file=/etc/prometheus/prometheus.yml']);
  const scrape = parseYaml(
    readFileSync(join(ROOT, 'deploy/prometheus/prometheus.yml'), 'utf8'),
  ) as {
    scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }>;
  };
  const job = scrape.scrape_configs.find((j) => j.job_name === 'portcullis');
  const admin = (await gatewayConfig('gateway-1')).admin.port;
  assert.deepEqual(
    job?.static_configs[0]?.targets,
    GATEWAYS.map((g) => `${g}:${admin}`),
  );

  const grafana = services.grafana as Service;
  const dashboards = parseYaml(
    readFileSync(join(ROOT, 'deploy/grafana/provisioning/dashboards.yml'), 'utf8'),
  ) as { providers: Array<{ options: { path: string } }> };
  const folder = dashboards.providers[0]?.options.path;
  assert.equal(
    mountOf(grafana, './deploy/grafana/portcullis-dashboard.json'),
    `${folder}/portcullis-dashboard.json`,
  );
  assert.equal(
    mountOf(grafana, './deploy/grafana/provisioning/dashboards.yml'),
    '/etc/grafana/provisioning/dashboards/dashboards.yml',
  );
  assert.equal(
    mountOf(grafana, './deploy/grafana/provisioning/datasources.yml'),
    '/etc/grafana/provisioning/datasources/datasources.yml',
  );
  const sources = parseYaml(
    readFileSync(join(ROOT, 'deploy/grafana/provisioning/datasources.yml'), 'utf8'),
  ) as { datasources: Array<{ url: string }> };
  assert.equal(sources.datasources[0]?.url, 'http://prometheus:9090', 'the prometheus service');
  for (const s of Object.values(services))
    for (const v of s.volumes ?? []) {
      const from = v.split(':')[0] as string;
      if (from.startsWith('./')) assert.ok(existsSync(join(ROOT, from)), `${from} exists`);
    }
});

test("the development OAuth server issues tokens the compose gateways' auth section accepts", async (t) => {
  const oauth = services.oauth as Service;
  assert.deepEqual(oauth.build, { context: '.', dockerfile: 'deploy/compose/oauth.Dockerfile' });
  const image = readFileSync(join(ROOT, 'deploy/compose/oauth.Dockerfile'), 'utf8');
  const entry = /CMD \["node", "dist\/(demo\/[\w-]+)\.js"\]/.exec(image)?.[1];
  assert.equal(entry, 'demo/oauth-main');
  assert.ok(existsSync(join(ROOT, 'src', `${entry}.ts`)));

  // The service as compose runs it (its environment), on a free port here.
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...envOf('oauth'), OAUTH_PORT: String(port) };
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src', `${entry}.ts`)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let said = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      said += d;
      if (said.includes('grant_type=client_credentials')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`oauth exited ${code}: ${said}`)));
  });
  const creds = /-u (\S+):(\S+) /.exec(said);
  assert.ok(creds, 'it prints the client credentials to use');
  const tokenRes = await fetch(`http://127.0.0.1:${port}/token`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${creds[1]}:${creds[2]}`).toString('base64')}`,
    },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      resource: env.OAUTH_RESOURCE as string,
    }),
  });
  assert.equal(tokenRes.status, 200);
  const { access_token: token } = (await tokenRes.json()) as { access_token: string };

  // A gateway with the compose file's auth section, its JWKS fetched from this server.
  const upstream = await startEverything();
  t.after(() => upstream.stop());
  const doc = (await readConfigDocument(
    join(ROOT, 'deploy/compose/portcullis.yaml'),
    envOf('gateway-1'),
  )) as Record<string, { jwt?: Record<string, unknown> }>;
  const auth = doc.auth as { jwt: Record<string, unknown> };
  const gw = await startGateway(
    buildConfig({
      listen: { host: '127.0.0.1', port: 0, allowedHosts: ['*'] },
      admin: { enabled: false },
      auth: { ...auth, jwt: { ...auth.jwt, jwksUrl: `http://127.0.0.1:${port}/jwks` } },
      servers: { everything: { url: upstream.url } },
    }),
    { log: pino({ level: 'silent' }) },
  );
  t.after(() => gw.close());
  const refused = await post(gw.urlFor('everything'), initializeBody(1));
  assert.equal(refused.status, 401, 'no token, no entry');
  await refused.body?.cancel();
  const init = await post(gw.urlFor('everything'), initializeBody(1), {
    authorization: `Bearer ${token}`,
  });
  assert.equal(init.status, 200, await init.clone().text());
  await init.body?.cancel();
});
