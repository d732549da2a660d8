/**
 * `/metrics` after a known workload, read two ways: the text the admin
 * listener serves, and a real Prometheus (the Debian package's binary)
 * scraping it and answering queries. Requests are counted by server,
 * tenant, method and decision; gateway and upstream time are histograms of
 * their own; upstream errors carry the gateway's code; and label values
 * never come from the client: a flood of invented tools, methods and
 * tenants adds no series.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startModernServer, type ModernServer } from './fixtures/modern-server.js';
import { startKeyedGateway, type KeyedGateway } from './helpers/auth-gateway.js';
import { modernCall, modernHeaders, post } from './helpers/requests.js';
import { freePort } from './helpers/redis.js';

let upstream: ModernServer;
let keyed: KeyedGateway;
let dir: string;
/** A port nothing listens on: the `down` server's upstream. */
let deadPort: number;

async function call(server: string, tool: string, bearer: string, id: number, method?: string) {
  const body = modernCall(tool, { text: 'hi' }, id);
  const headers: Record<string, string> = {
    ...modernHeaders(tool),
    authorization: `Bearer ${bearer}`,
  };
  if (method !== undefined) {
    body.method = method;
    headers['mcp-method'] = method;
    delete headers['mcp-name'];
  }
  const res = await post(keyed.gw.urlFor(server), body, headers);
  await res.text();
  return res.status;
}

async function scrape(): Promise<string> {
  const res = await fetch(`${keyed.gw.adminUrl}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

/** The value of the one series of `name` whose labels include all of `labels`. */
function valueOf(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
      return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

before(async () => {
  upstream = await startModernServer();
  dir = await mkdtemp(join(tmpdir(), 'portcullis-metrics-'));
  deadPort = await freePort();
  keyed = await startKeyedGateway(
    { docs: upstream.url, down: `http://127.0.0.1:${deadPort}/mcp` },
    {
      tenants: {
        acme: {
          servers: { docs: { tools: ['*'] }, down: { tools: ['*'] } },
          rules: [{ id: 'no-slow', when: 'target == "slow"' }],
        },
      },
    },
  );
  const acme = await keyed.token('acme', 'alice');
  for (let i = 0; i < 5; i++) assert.equal(await call('docs', 'echo', acme, i), 200);
  // Denied by a rule: a JSON-RPC error in a 200.
  assert.equal(await call('docs', 'slow', acme, 10), 200);
  assert.equal(await call('down', 'echo', acme, 11), 502);
  // What an attacker controls: tool names, method names, tenant claims.
  for (let i = 0; i < 50; i++) {
    await call('docs', `invented-tool-${i}`, acme, 100 + i);
    await call('docs', 'echo', acme, 200 + i, `invented/method-${i}`);
    await call('docs', 'echo', await keyed.token(`invented-tenant-${i}`, 'eve'), 300 + i);
  }
  const noToken = await post(
    keyed.gw.urlFor('docs'),
    modernCall('echo', {}, 1),
    modernHeaders('echo'),
  );
  assert.equal(noToken.status, 401);
});

after(async () => {
  await keyed.close();
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

test('requests are counted by server, tenant, method and decision', async () => {
  const text = await scrape();
  const requests = 'portcullis_requests_total';
  assert.equal(
    valueOf(text, requests, {
      server: 'docs',
      tenant: 'acme',
      method: 'tools/call',
      decision: 'allow',
    }),
    5 + 50,
    'five echoes and fifty calls of invented tools (forwarded: the tenant may call any tool)',
  );
  assert.equal(
    valueOf(text, requests, {
      server: 'docs',
      tenant: 'acme',
      method: 'tools/call',
      decision: 'deny',
    }),
    1,
  );
  assert.equal(
    valueOf(text, requests, { server: 'none', tenant: 'other', decision: 'refuse' }),
    50,
    'unknown tenants are one label value (refused: no server is theirs)',
  );
  assert.ok(
    (valueOf(text, requests, { server: 'none', method: 'none', decision: 'refuse' }) ?? 0) >= 1,
    'the request without a token is a refusal',
  );
  assert.equal(
    valueOf(text, 'portcullis_upstream_errors_total', {
      server: 'down',
      code: 'PORTCULLIS_ERR_UPSTREAM_UNREACHABLE',
    }),
    1,
  );
  assert.equal(
    valueOf(text, 'portcullis_policy_decisions_total', { rule: 'no-slow', decision: 'deny' }),
    1,
  );
});

test('gateway time and upstream time are histograms of their own', async () => {
  const text = await scrape();
  const labels = { server: 'docs', method: 'tools/call' };
  const upstreamCount = valueOf(text, 'portcullis_upstream_duration_seconds_count', labels);
  const gatewayCount = valueOf(text, 'portcullis_gateway_duration_seconds_count', labels);
  assert.ok((upstreamCount ?? 0) >= 5, `upstream observations: ${upstreamCount}`);
  assert.equal(gatewayCount, upstreamCount);
  assert.ok(
    (valueOf(text, 'portcullis_gateway_duration_seconds_bucket', { ...labels, le: '+Inf' }) ?? 0) >=
      5,
  );
  assert.match(text, /^portcullis_active_sessions \d+$/m);
  assert.match(text, /^portcullis_active_streams \d+$/m);
});

test('no label value comes from the client: invented tools, methods and tenants add no series', async () => {
  const text = await scrape();
  assert.doesNotMatch(text, /invented/);
  const series = text.split('\n').filter((l) => l.startsWith('portcullis_requests_total{'));
  // docs×{acme allow, acme deny, other deny, acme other-method}, down×acme allow, the refusal.
  assert.ok(series.length <= 8, `requests series: ${series.length}\n${series.join('\n')}`);
  assert.ok(
    valueOf(text, 'portcullis_requests_total', { method: 'other' }) !== undefined,
    'invented methods are counted under "other"',
  );
});

test('a real Prometheus scrapes the admin listener and answers for the workload', async () => {
  const port = await freePort();
  const target = new URL(keyed.gw.adminUrl as string).host;
  const config = join(dir, 'prometheus.yml');
  await writeFile(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      'scrape_configs:',
      '  - job_name: portcullis',
      '    static_configs:',
      `      - targets: ['${target}']`,
      '',
    ].join('\n'),
  );
  const prometheus: ChildProcess = spawn(
    'prometheus',
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  prometheus.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const spawned = new Promise<void>((resolve, reject) => {
    prometheus.once('spawn', resolve);
    prometheus.once('error', (err) =>
      reject(new Error(`prometheus could not start (Debian package "prometheus"): ${err.message}`)),
    );
  });
  try {
    await spawned;
    const query = async (q: string) => {
      const res = await fetch(
        `http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`,
      );
      const body = (await res.json()) as {
        data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
      };
      return body.data.result;
    };
    const q =
      'portcullis_requests_total{server="docs",tenant="acme",method="tools/call",decision="allow"}';
    let result: Awaited<ReturnType<typeof query>> = [];
    for (let i = 0; i < 60 && result.length === 0; i++) {
      await sleep(500);
      result = await query(q).catch(() => []);
    }
    assert.equal(result.length, 1, `Prometheus has the series (stderr: ${stderr.slice(-500)})`);
    assert.equal(result[0]?.metric.job, 'portcullis');
    assert.equal(result[0]?.value[1], '55');
    const up = await query('up{job="portcullis"}');
    assert.equal(up[0]?.value[1], '1');
    const quantile = await query(
      'histogram_quantile(0.5, sum by (le) (portcullis_upstream_duration_seconds_bucket{server="docs"}))',
    );
    assert.ok(Number(quantile[0]?.value[1]) > 0, 'a median upstream time');
  } finally {
    prometheus.kill('SIGTERM');
    await new Promise((resolve) => prometheus.once('exit', resolve));
  }
});
