/**
 * The operator's files in deploy/: the alert rules pass promtool's check and
 * their own unit tests, the example Prometheus config loads them, the Grafana
 * dashboard is well formed, and every metric the alerts and the dashboard
 * query is one the gateway exports (a renamed metric breaks this test, not a
 * production alert that silently never fires).
 *
 * promtool is required, not optional: CI installs it (Debian: `prometheus`).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { createMetrics } from '../src/telemetry/metrics.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PROMETHEUS_DIR = join(ROOT, 'deploy', 'prometheus');
const DASHBOARD = join(ROOT, 'deploy', 'grafana', 'portcullis-dashboard.json');
/** promtool runs the rule unit tests in well under a second; this bounds a hung one. */
const PROMTOOL_TIMEOUT_MS = 60_000;
/** Names Prometheus itself writes, not the gateway. */
const PROMETHEUS_METRICS = new Set(['up']);
const HISTOGRAM_SERIES_SUFFIXES = ['_bucket', '_sum', '_count'];

/** The alerts operators are promised (deploy/README.md); adding one means adding its tests. */
const EXPECTED_ALERTS = [
  'PortcullisAuthFailureSpike',
  'PortcullisPolicyDenialSpike',
  'PortcullisUpstreamErrors',
  'PortcullisAuditSinkFailing',
  'PortcullisAuditSpoolGrowing',
  'PortcullisAuditQueueBackpressure',
  'PortcullisCrashLooping',
  'PortcullisGatewayRestarting',
  'PortcullisStoreDown',
  'PortcullisStoreErrors',
  'PortcullisDown',
];

interface AlertRule {
  alert?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: Array<{ name: string; rules: AlertRule[] }>;
}
interface RuleTestFile {
  tests: Array<{
    alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }>;
  }>;
}
interface Target {
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  type: string;
  title?: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
}
interface Dashboard {
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
}

const execFileAsync = promisify(execFile);

/** Runs promtool in deploy/prometheus (the rule and test files name each other relatively). */
async function promtool(...args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await execFileAsync('promtool', args, {
      cwd: PROMETHEUS_DIR,
      timeout: PROMTOOL_TIMEOUT_MS,
    });
    return stdout + stderr;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') {
      assert.fail('promtool is not on PATH: install it (Debian: apt-get install prometheus)');
    }
    assert.fail(`promtool ${args.join(' ')} failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

function readRules(): AlertRule[] {
  const file = parseYaml(readFileSync(join(PROMETHEUS_DIR, 'alerts.yml'), 'utf8')) as RuleFile;
  return file.groups.flatMap((g) => g.rules);
}

function readDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
}

/** Every panel that shows data: rows are only headings, their children count. */
function dataPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => (p.type === 'row' ? dataPanels(p.panels ?? []) : [p]));
}

function variableQuery(v: Variable): string {
  return typeof v.query === 'string' ? v.query : (v.query?.query ?? '');
}

/** What the gateway's registry serves, with the series a histogram is exported as. */
async function exportedNames(): Promise<Set<string>> {
  const metrics = createMetrics();
  const names = new Set(PROMETHEUS_METRICS);
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    if (String(m.type) === 'histogram') {
      for (const suffix of HISTOGRAM_SERIES_SUFFIXES) names.add(m.name + suffix);
    }
  }
  return names;
}

/** Every `portcullis_…` identifier in a text (a query, or an annotation naming a metric). */
function prefixedNames(text: string): string[] {
  return text.match(/portcullis_[a-z0-9_]+/g) ?? [];
}

/**
 * The metric names a PromQL expression uses: the prefixed ones, and every name
 * written before a `{` selector (which catches an unprefixed one).
 */
function metricNames(promql: string): string[] {
  const selected = [...promql.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\s*\{/g)].map((m) => m[1]!);
  return [...prefixedNames(promql), ...selected];
}

function assertExported(exported: Set<string>, where: string, names: string[]): void {
  for (const name of names) {
    assert.ok(exported.has(name), `${where} uses ${name}, which the gateway does not export`);
  }
}

test('promtool accepts the alert rules', async () => {
  const out = await promtool('check', 'rules', 'alerts.yml');
  assert.match(out, new RegExp(`SUCCESS: ${EXPECTED_ALERTS.length} rules found`));
});

test('the alert rules pass their promtool unit tests', async () => {
  const out = await promtool('test', 'rules', 'alerts.test.yml');
  assert.match(out, /SUCCESS/);
});

test('promtool accepts the example Prometheus config, and it loads the alert rules', async () => {
  const out = await promtool('check', 'config', 'prometheus.yml');
  assert.match(out, /SUCCESS: 1 rule files found/);
  const config = parseYaml(readFileSync(join(PROMETHEUS_DIR, 'prometheus.yml'), 'utf8')) as {
    scrape_configs: Array<{ job_name: string }>;
  };
  assert.deepEqual(
    config.scrape_configs.map((s) => s.job_name),
    ['portcullis'],
  );
});

test('every alert is the one promised, with a severity, a summary, a description and the runbook', () => {
  const rules = readRules();
  assert.deepEqual(
    rules.map((r) => r.alert),
    EXPECTED_ALERTS,
  );
  for (const rule of rules) {
    assert.match(rule.labels?.severity ?? '', /^(warning|critical)$/, `${rule.alert}: severity`);
    assert.ok(rule.annotations?.summary, `${rule.alert}: summary`);
    assert.ok(rule.annotations?.description, `${rule.alert}: description`);
    assert.equal(rule.annotations?.runbook, 'docs/audit.md#alerts', `${rule.alert}: runbook`);
  }
});

test('every alert has a unit test where it fires and one where it stays silent', () => {
  const file = parseYaml(
    readFileSync(join(PROMETHEUS_DIR, 'alerts.test.yml'), 'utf8'),
  ) as RuleTestFile;
  const cases = file.tests.flatMap((t) => t.alert_rule_test ?? []);
  for (const alert of EXPECTED_ALERTS) {
    const mine = cases.filter((c) => c.alertname === alert);
    assert.ok(
      mine.some((c) => (c.exp_alerts ?? []).length > 0),
      `${alert}: no case where it fires`,
    );
    assert.ok(
      mine.some((c) => (c.exp_alerts ?? []).length === 0),
      `${alert}: no case where it stays silent`,
    );
  }
});

test('the alerts use only metrics the gateway exports', async () => {
  const exported = await exportedNames();
  for (const rule of readRules()) {
    assertExported(exported, `alert ${rule.alert}`, metricNames(rule.expr));
    for (const [key, text] of Object.entries(rule.annotations ?? {})) {
      assertExported(exported, `alert ${rule.alert} (${key})`, prefixedNames(text));
    }
  }
});

test('the dashboard uses only metrics the gateway exports', async () => {
  const exported = await exportedNames();
  const dashboard = readDashboard();
  for (const panel of dataPanels(dashboard.panels)) {
    for (const target of panel.targets ?? []) {
      assertExported(exported, `panel "${panel.title}"`, metricNames(target.expr ?? ''));
    }
  }
  for (const v of dashboard.templating.list) {
    assertExported(exported, `variable $${v.name}`, metricNames(variableQuery(v)));
  }
});

test('every dashboard panel has a title, the templated data source and a query', () => {
  const dashboard = readDashboard();
  assert.equal(dashboard.schemaVersion, 39);
  const panels = dataPanels(dashboard.panels);
  assert.ok(panels.length > 0);
  for (const panel of panels) {
    assert.ok(panel.title, `a ${panel.type} panel has no title`);
    assert.deepEqual(
      panel.datasource,
      { type: 'prometheus', uid: '${datasource}' },
      `panel "${panel.title}": datasource`,
    );
    assert.ok((panel.targets ?? []).length > 0, `panel "${panel.title}" has no query`);
    for (const target of panel.targets ?? []) {
      assert.ok(target.expr, `panel "${panel.title}": a target without expr`);
      assert.equal(target.datasource?.uid, '${datasource}', `panel "${panel.title}": target`);
    }
  }
});

test('the dashboard picks its data source, server and tenant from variables', () => {
  const vars = new Map(readDashboard().templating.list.map((v) => [v.name, v]));
  assert.equal(vars.get('datasource')?.type, 'datasource');
  assert.equal(vars.get('datasource')?.query, 'prometheus');
  for (const [name, label] of [
    ['server', 'server'],
    ['tenant', 'tenant'],
  ] as const) {
    const v = vars.get(name);
    assert.equal(v?.type, 'query', `$${name}`);
    assert.match(variableQuery(v!), new RegExp(`^label_values\\(.+, ${label}\\)$`), `$${name}`);
  }
});
