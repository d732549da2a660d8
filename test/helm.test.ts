/**
 * helm/portcullis, with the real Helm (v4, test/helpers/helm.ts): the chart
 * lints (`helm lint --strict`) and renders (`helm template`) with its
 * defaults and with every ci/ file, every object it renders is valid against
 * the Kubernetes API schemas (kubernetes-models), and what the gateway needs
 * holds in what is rendered: its configuration (the rendered ConfigMap)
 * loads through the gateway's own `buildConfig` with the environment the
 * Deployment gives the pod; the image's command runs on it, mounted
 * read-only; probes, ports, Service, the restricted security context, the
 * drain within the grace period; Secrets referenced exist or are the user's;
 * the NetworkPolicies admit the gateway's own pods where they must. Besides:
 * the values schema (draft-07, with Ajv) accepts values.yaml and every ci/
 * file and refuses wrong types, unknown keys and what the chart cannot run,
 * every `.Values` path a template uses exists in values.yaml, and the checks
 * the templates make with `fail` stop a render. Only `helm install` on a
 * cluster is not run: there is none on these machines.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject } from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { buildConfig, parseConfigDocument } from '../src/config/load.js';
import type { Config } from '../src/config/schema.js';
import { helm } from './helpers/helm.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHART = join(ROOT, 'helm', 'portcullis');
const TEMPLATES = join(CHART, 'templates');
const require = createRequire(import.meta.url);

type Values = Record<string, unknown>;

const read = (...path: string[]) => readFileSync(join(CHART, ...path), 'utf8');
const isMap = (v: unknown): v is Values => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Helm's merge of a values file over the chart's values.yaml: maps merge
 * key by key, anything else (lists included) is replaced, and `null`
 * removes the key from the defaults.
 */
function helmMerge(base: Values, over: Values): Values {
  const out: Values = structuredClone(base);
  for (const [key, value] of Object.entries(over)) {
    if (value === null) delete out[key];
    else if (isMap(value) && isMap(out[key])) out[key] = helmMerge(out[key] as Values, value);
    else out[key] = structuredClone(value);
  }
  return out;
}

const defaults = parse(read('values.yaml')) as Values;
const schema = JSON.parse(read('values.schema.json')) as Record<string, unknown>;
// strict: unknown keywords, ignored keywords and missing types in the schema
// are errors. Union types (`[boolean, null]`) are plain draft-07.
const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
const validateValues = ajv.compile(schema);

const ciFiles = readdirSync(join(CHART, 'ci')).filter((f) => f.endsWith('.yaml'));
const ciValues = (file: string) => helmMerge(defaults, parse(read('ci', file)) as Values);

function schemaErrors(values: Values): ErrorObject[] {
  return validateValues(values) ? [] : [...(validateValues.errors ?? [])];
}
const describe = (errors: ErrorObject[]) =>
  errors.map((e) => `${e.instancePath || '(root)'} ${e.keyword}: ${e.message}`).join('\n');

/** Chart.yaml's fields, as Helm reads them (apiVersion v2). */
const CHART_FIELDS = [
  'apiVersion',
  'name',
  'version',
  'kubeVersion',
  'description',
  'type',
  'keywords',
  'home',
  'sources',
  'dependencies',
  'maintainers',
  'icon',
  'appVersion',
  'deprecated',
  'annotations',
];

test('Chart.yaml: apiVersion v2, the gateway version, Redis an optional dependency shipped with it', () => {
  const chart = parse(read('Chart.yaml')) as Values;
  for (const key of Object.keys(chart)) assert.ok(CHART_FIELDS.includes(key), `Chart.yaml: ${key}`);
  assert.equal(chart.apiVersion, 'v2');
  assert.equal(chart.name, 'portcullis');
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  assert.equal(chart.appVersion, pkg.version, "appVersion is the gateway's version");
  const deps = chart.dependencies as Array<Record<string, string>>;
  assert.equal(deps.length, 1);
  assert.equal(deps[0]?.name, 'redis');
  assert.equal(deps[0]?.repository, undefined, 'in charts/: nothing to fetch');
  assert.equal(deps[0]?.condition, 'redis.enabled');
  const sub = parse(read('charts', 'redis', 'Chart.yaml')) as Values;
  assert.equal(sub.name, 'redis');
  assert.equal(sub.version, deps[0]?.version);
  assert.equal((defaults.redis as Values).enabled, false, 'off unless asked for');
});

test('values.schema.json is a valid draft-07 schema and accepts values.yaml and every ci/ file', () => {
  assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#');
  assert.equal(ajv.validateSchema(schema), true, JSON.stringify(ajv.errors));
  // Strict where it matters: the top level refuses unknown keys.
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(schemaErrors(defaults), [], 'values.yaml');
  assert.ok(ciFiles.length >= 2, `at least two ci/ files (${ciFiles.join(', ')})`);
  for (const file of ciFiles) {
    const errors = schemaErrors(ciValues(file));
    assert.equal(errors.length, 0, `ci/${file}:\n${describe(errors)}`);
  }
});

test('the schema refuses wrong types, unknown keys and what the chart cannot run', () => {
  // Each case is values.yaml with one change; the control cases show the
  // same change is accepted once what it needs is there, so a refusal comes
  // from the rule named, not from something else in the file.
  const cases: Array<{ why: string; over: Values; path: string; ok?: boolean }> = [
    { why: 'a wrong type', over: { replicaCount: 'three' }, path: '/replicaCount' },
    { why: 'an unknown top-level key', over: { replicas: 3 }, path: '' },
    {
      why: 'a typo in a nested key',
      over: { cluster: { existingSecret: { nmae: 'x' } } },
      path: '/cluster/existingSecret',
    },
    {
      why: 'a wrong enum value',
      over: { image: { pullPolicy: 'Sometimes' } },
      path: '/image/pullPolicy',
    },
    {
      why: 'a probe given its own handler (the chart sets httpGet)',
      over: { readinessProbe: { httpGet: { path: '/' } } },
      path: '/readinessProbe',
    },
    { why: 'several replicas on the in-process store', over: { replicaCount: 3 }, path: '/redis' },
    {
      why: 'several replicas with an external Redis',
      over: { replicaCount: 3, redis: { external: { url: 'redis://redis:6379' } } },
      path: '',
      ok: true,
    },
    {
      why: 'an autoscaler on the in-process store',
      over: { autoscaling: { enabled: true } },
      path: '/redis',
    },
    {
      why: 'an autoscaler with the Redis dependency',
      over: { autoscaling: { enabled: true }, redis: { enabled: true } },
      path: '',
      ok: true,
    },
    {
      why: 'forwarding without the Secret of its shared secret',
      over: { cluster: { enabled: true }, redis: { enabled: true } },
      path: '/cluster/existingSecret/name',
    },
    {
      why: 'forwarding with Redis and its Secret',
      over: {
        cluster: { enabled: true, existingSecret: { name: 'c' } },
        redis: { enabled: true },
      },
      path: '',
      ok: true,
    },
    {
      why: 'a store URL in config (the chart sets it from redis.*)',
      over: { config: { store: { url: 'redis://x:6379' } } },
      path: '/config/store/url',
    },
    {
      why: 'a cluster section in config (the chart sets it from cluster.*)',
      over: { config: { cluster: { port: 9091 } } },
      path: '/config/cluster',
    },
    {
      why: 'an admin token in values (a Secret is named instead)',
      over: { config: { admin: { token: 'x'.repeat(40) } } },
      path: '/config/admin/token',
    },
    {
      why: 'the admin listener off (the probes use it)',
      over: { config: { admin: { enabled: false } } },
      path: '/config/admin/enabled',
    },
    {
      why: 'both a ServiceMonitor and a PodMonitor',
      over: { monitoring: { serviceMonitor: { enabled: true }, podMonitor: { enabled: true } } },
      path: '',
    },
    {
      why: 'a Redis URL that is not one',
      over: { redis: { external: { url: 'http://redis:6379' } } },
      path: '/redis/external/url',
    },
  ];
  for (const c of cases) {
    const errors = schemaErrors(helmMerge(defaults, c.over));
    if (c.ok) {
      assert.equal(errors.length, 0, `${c.why} is accepted:\n${describe(errors)}`);
      continue;
    }
    assert.ok(errors.length > 0, `${c.why} is refused`);
    assert.ok(
      errors.some((e) => e.instancePath === c.path),
      `${c.why}: an error at ${c.path || '(root)'}, got\n${describe(errors)}`,
    );
  }
});

/** `.Values` paths under these keys are free-form: the gateway's configuration. */
const FREE_FORM = ['config'];

test('every .Values path the templates use exists in values.yaml, and every value is used', () => {
  const sourcesIn = (dir: string, prefix: string[]) =>
    readdirSync(dir)
      .filter((f) => /\.(ya?ml|tpl|txt)$/.test(f))
      .map((f) => ({ f, prefix, text: readFileSync(join(dir, f), 'utf8') }));
  // The Redis subchart's .Values are the parent's `redis` block.
  const sources = [
    ...sourcesIn(TEMPLATES, []),
    ...sourcesIn(join(CHART, 'charts', 'redis', 'templates'), ['redis']),
  ];
  assert.ok(sources.some((s) => s.f === '_helpers.tpl'));
  const used = new Set<string>();
  for (const { f, prefix, text } of sources) {
    for (const m of text.matchAll(/\.Values((?:\.[A-Za-z0-9_]+)+)/g)) {
      const path = [...prefix, ...(m[1] as string).slice(1).split('.')];
      used.add(path[0] as string);
      let node: unknown = defaults;
      for (const [i, key] of path.entries()) {
        if (i > 0 && FREE_FORM.includes(path[0] as string)) break;
        assert.ok(
          isMap(node) && Object.hasOwn(node, key),
          `${f}: .Values.${path.join('.')} is not in values.yaml (no ${key})`,
        );
        node = node[key];
      }
    }
  }
  assert.ok(used.size >= 20, `the templates read the values (${used.size} top-level keys)`);
  // The other way round: no value that no template reads.
  for (const key of Object.keys(defaults))
    assert.ok(used.has(key), `values.yaml's ${key} is used by a template`);
});

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

interface Container {
  name: string;
  image: string;
  args?: string[];
  ports?: Array<{ name: string; containerPort: number }>;
  env?: Array<{
    name: string;
    valueFrom?: {
      secretKeyRef?: { name: string; key: string };
      fieldRef?: { fieldPath: string };
    };
  }>;
  securityContext?: Record<string, unknown>;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  startupProbe?: { httpGet?: { path: string; port: string } };
  readinessProbe?: { httpGet?: { path: string; port: string } };
  livenessProbe?: { httpGet?: { path: string; port: string } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}

interface PodSpec {
  terminationGracePeriodSeconds: number;
  automountServiceAccountToken?: boolean;
  securityContext: Record<string, unknown>;
  containers: Container[];
  volumes: Array<{ name: string; configMap?: { name: string }; emptyDir?: unknown }>;
}

interface Deployment extends K8sObject {
  spec: {
    replicas?: number;
    template: {
      metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
      spec: PodSpec;
    };
  };
}

const RELEASE = 'rel';

/** `helm template` of the chart with a ci/ file (or the defaults), as objects. */
async function render(file?: string, ...set: string[]): Promise<K8sObject[]> {
  const args = ['template', RELEASE, CHART, '--namespace', 'mcp'];
  if (file !== undefined) args.push('-f', join(CHART, 'ci', file));
  for (const s of set) args.push('--set', s);
  const out = await helm(...args);
  return parseAllDocuments(out)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

/** Validates `o` against its kind's schema; throws naming what is wrong. */
function validate(o: K8sObject): void {
  const module = require(`kubernetes-models/${o.apiVersion}/${o.kind}`) as Record<
    string,
    new (o: unknown) => { validate(): void }
  >;
  const Model = module[o.kind];
  assert.ok(Model, `a schema for ${o.apiVersion} ${o.kind}`);
  new Model(o).validate();
}

const find = (objects: K8sObject[], kind: string, name: string) =>
  objects.find((o) => o.kind === kind && o.metadata.name === name);

const gatewayName = `${RELEASE}-portcullis`;

function gateway(objects: K8sObject[]): {
  deployment: Deployment;
  pod: PodSpec;
  container: Container;
} {
  const deployment = find(objects, 'Deployment', gatewayName) as Deployment;
  assert.ok(deployment, 'the gateway Deployment');
  const pod = deployment.spec.template.spec;
  const container = pod.containers.find((c) => c.name === 'portcullis') as Container;
  assert.ok(container, 'the gateway container');
  return { deployment, pod, container };
}

/** What the test gives the variables the Deployment sets from the pod and its Secrets. */
const POD_ENV: Record<string, string> = {
  POD_IP: '10.1.2.3',
  PORTCULLIS_CLUSTER_SECRET: 'c'.repeat(48),
  PORTCULLIS_ADMIN_TOKEN: 'a1'.repeat(32),
  PORTCULLIS_REDIS_URL: 'rediss://:pw@redis.example.internal:6380/0',
  PORTCULLIS_REDIS_PASSWORD: 'pw',
};

/** The configuration the rendered ConfigMap holds, loaded as the gateway loads it in the pod. */
function renderedConfig(objects: K8sObject[], container: Container, source: string): Config {
  const map = find(objects, 'ConfigMap', `${gatewayName}-config`);
  const text = map?.data?.['portcullis.yaml'];
  assert.ok(text, `${source}: the ConfigMap holds portcullis.yaml`);
  // Every ${NAME} it references is one the Deployment sets.
  const set = new Set((container.env ?? []).map((e) => e.name));
  for (const m of text.matchAll(/\$\{([A-Z_][A-Z0-9_]*)\}/g))
    assert.ok(set.has(m[1] as string), `${source}: the Deployment sets ${m[1]}`);
  const env = Object.fromEntries([...set].map((n) => [n, POD_ENV[n] ?? '']));
  return buildConfig(parseConfigDocument(text, source, env), source);
}

const CASES = [undefined, ...ciFiles];
const label = (file: string | undefined) => (file === undefined ? 'values.yaml' : `ci/${file}`);

test('helm lint --strict passes with the defaults and with every ci/ file', async () => {
  for (const file of CASES) {
    const args = ['lint', '--strict', CHART];
    if (file !== undefined) args.push('-f', join(CHART, 'ci', file));
    const out = await helm(...args);
    assert.match(out, /1 chart\(s\) linted, 0 chart\(s\) failed/, `${label(file)}:\n${out}`);
    assert.doesNotMatch(out, /\[(WARNING|ERROR)\]/, `${label(file)}:\n${out}`);
  }
});

test('every object helm template renders is valid against the Kubernetes schemas', async () => {
  const kinds = new Set<string>();
  for (const file of CASES) {
    for (const o of await render(file)) {
      kinds.add(o.kind);
      if (o.apiVersion === 'monitoring.coreos.com/v1') {
        // Prometheus Operator's kinds are not in kubernetes-models: their shape, by hand.
        const spec = o.spec as { selector?: { matchLabels?: Record<string, string> } };
        assert.equal(spec.selector?.matchLabels?.['app.kubernetes.io/instance'], RELEASE);
        continue;
      }
      assert.doesNotThrow(() => validate(o), `${label(file)}: ${o.kind} ${o.metadata.name}`);
    }
  }
  // Between them the cases render every kind the chart can make but the ServiceMonitor.
  for (const kind of [
    'Deployment',
    'Service',
    'ConfigMap',
    'ServiceAccount',
    'Secret',
    'NetworkPolicy',
    'HorizontalPodAutoscaler',
    'PodDisruptionBudget',
    'PodMonitor',
  ])
    assert.ok(kinds.has(kind), `some case renders a ${kind}`);
  const monitored = await render(undefined, 'monitoring.serviceMonitor.enabled=true');
  const monitor = monitored.find((o) => o.kind === 'ServiceMonitor');
  assert.ok(monitor, 'monitoring.serviceMonitor.enabled renders a ServiceMonitor');
});

test('the gateway runs the image command on the rendered configuration, restricted, probed and drained', async () => {
  const cmd = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').match(/^CMD (\[.*\])$/m);
  const imageCommand = JSON.parse(cmd?.[1] as string) as string[];
  for (const file of CASES) {
    const name = label(file);
    const objects = await render(file);
    const values = file === undefined ? defaults : ciValues(file);
    const { deployment, pod, container } = gateway(objects);
    assert.deepEqual(container.args, imageCommand, `${name}: the Dockerfile's CMD`);
    assert.equal(container.image, `portcullis:${(parse(read('Chart.yaml')) as Values).appVersion}`);
    // The configuration: the rendered ConfigMap, read-only at /etc/portcullis.
    const config = renderedConfig(objects, container, name);
    const mount = (n: string) => container.volumeMounts?.find((m) => m.name === n);
    const volume = (n: string) => pod.volumes.find((v) => v.name === n);
    assert.deepEqual(mount('config'), {
      name: 'config',
      mountPath: '/etc/portcullis',
      readOnly: true,
    });
    assert.equal(volume('config')?.configMap?.name, `${gatewayName}-config`);
    assert.equal(mount('state')?.mountPath, '/var/lib/portcullis');
    assert.equal(mount('tmp')?.mountPath, '/tmp');
    assert.ok(
      volume('state')?.emptyDir && volume('tmp')?.emptyDir,
      `${name}: state and /tmp are emptyDirs`,
    );
    assert.match(
      deployment.spec.template.metadata.annotations?.['checksum/config'] ?? '',
      /^[0-9a-f]{64}$/,
      `${name}: pods roll when the configuration changes`,
    );
    // Ports: the configuration's listeners; the Service in front, with no affinity.
    const port = (n: string) => container.ports?.find((p) => p.name === n)?.containerPort;
    assert.equal(port('mcp'), config.listen.port);
    assert.equal(port('admin'), config.admin.port);
    const service = find(objects, 'Service', gatewayName) as K8sObject;
    const spec = service.spec as {
      sessionAffinity?: string;
      ports: Array<{ name: string; targetPort: string }>;
    };
    assert.equal(spec.sessionAffinity ?? 'None', 'None', `${name}: any replica serves any session`);
    assert.deepEqual(spec.ports.map((p) => p.targetPort).sort(), ['admin', 'mcp']);
    assert.equal(config.admin.enabled, true, 'the probes need the admin listener');
    assert.equal(config.listen.behindProxy, true, 'plain HTTP only behind the ingress');
    // Probes and the preStop sleep.
    assert.deepEqual(container.startupProbe?.httpGet, { path: '/livez', port: 'admin' });
    assert.deepEqual(container.livenessProbe?.httpGet, { path: '/livez', port: 'admin' });
    assert.deepEqual(container.readinessProbe?.httpGet, { path: '/readyz', port: 'admin' });
    const sleep = container.lifecycle?.preStop?.exec?.command;
    assert.deepEqual(sleep, ['sleep', String(values.preStopSleepSeconds)]);
    assert.ok(config.shutdown.leaveRotationMs > 0, 'readiness turns 503 before connections close');
    assert.ok(
      pod.terminationGracePeriodSeconds * 1000 >
        Number(sleep?.[1]) * 1000 +
          config.shutdown.leaveRotationMs +
          config.shutdown.drainTimeoutMs,
      `${name}: the grace period covers the preStop sleep, leaving rotation and the drain`,
    );
    // Restricted.
    assert.equal(pod.automountServiceAccountToken, false);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.securityContext.runAsUser, 10001, "the image's user");
    assert.deepEqual(pod.securityContext.seccompProfile, { type: 'RuntimeDefault' });
    assert.equal(container.securityContext?.allowPrivilegeEscalation, false);
    assert.equal(container.securityContext?.readOnlyRootFilesystem, true);
    assert.deepEqual(container.securityContext?.capabilities, { drop: ['ALL'] });
    const podIp = container.env?.find((e) => e.name === 'POD_IP');
    assert.equal(podIp?.valueFrom?.fieldRef?.fieldPath, 'status.podIP');
    // Several replicas: they share Redis; forwarding advertises the pod's own address.
    const replicas =
      deployment.spec.replicas ?? (values.autoscaling as { minReplicas: number }).minReplicas;
    if (replicas > 1) assert.equal(config.store.kind, 'redis', `${name}: replicas share Redis`);
    if (config.cluster !== undefined) {
      assert.equal(config.store.kind, 'redis');
      assert.equal(config.cluster.advertise, `http://${POD_ENV.POD_IP}:${config.cluster.port}`);
      assert.equal(config.cluster.secret, POD_ENV.PORTCULLIS_CLUSTER_SECRET);
      assert.equal(port('cluster'), config.cluster.port);
    }
  }
});

test('every Secret the pods read is rendered by the chart or named in the values', async () => {
  for (const file of CASES) {
    const objects = await render(file);
    const rendered = new Set(
      objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name),
    );
    const text = readFileSync(join(CHART, 'ci', file ?? '../values.yaml'), 'utf8');
    for (const d of objects.filter((o) => o.kind === 'Deployment') as Deployment[]) {
      for (const c of d.spec.template.spec.containers)
        for (const e of c.env ?? []) {
          const ref = e.valueFrom?.secretKeyRef;
          if (ref === undefined) continue;
          assert.ok(
            rendered.has(ref.name) || text.includes(`name: ${ref.name}`),
            `${label(file)}: ${d.metadata.name} reads Secret ${ref.name}, which nothing makes or names`,
          );
        }
    }
    for (const secret of objects.filter((o) => o.kind === 'Secret')) {
      const password = Buffer.from(secret.data?.password ?? '', 'base64').toString();
      assert.match(password, /^[A-Za-z0-9]{40}$/, 'a random password, safe in a redis:// URL');
    }
  }
});

test("the NetworkPolicies let the gateway's own pods reach the cluster port and Redis, and no one else", async () => {
  const objects = await render('autoscaled-redis.yaml');
  const { deployment, container } = gateway(objects);
  const podLabels = deployment.spec.template.metadata.labels;
  const matches = (selector: Record<string, string> | undefined) =>
    selector !== undefined && Object.entries(selector).every(([k, v]) => podLabels[k] === v);
  type Rule = {
    ports: Array<{ port: number }>;
    from?: Array<{ podSelector?: { matchLabels?: Record<string, string> } }>;
  };
  const rules = (name: string) =>
    (find(objects, 'NetworkPolicy', name)?.spec as { ingress: Rule[] }).ingress;
  const clusterPort = container.ports?.find((p) => p.name === 'cluster')?.containerPort;
  const cluster = rules(gatewayName).find((r) => r.ports.some((p) => p.port === clusterPort));
  assert.ok(cluster?.from?.length === 1 && matches(cluster.from[0]?.podSelector?.matchLabels));
  const redis = rules(`${RELEASE}-redis`);
  assert.equal(redis.length, 1);
  assert.ok(redis[0]?.from?.length === 1 && matches(redis[0].from[0]?.podSelector?.matchLabels));
  // The selectors do not match the Redis pod itself, nor any pod of another release.
  const redisPod = (find(objects, 'Deployment', `${RELEASE}-redis`) as Deployment).spec.template
    .metadata.labels;
  const redisFrom = redis[0]?.from?.[0]?.podSelector?.matchLabels ?? {};
  assert.ok(!Object.entries(redisFrom).every(([k, v]) => redisPod[k] === v));
  assert.equal(redisFrom['app.kubernetes.io/instance'], RELEASE);
  // The gateway reaches that Redis with the password of its Secret.
  const config = renderedConfig(objects, container, 'ci/autoscaled-redis.yaml');
  assert.equal(config.store.kind, 'redis');
  assert.equal(config.store.url, `redis://:pw@${RELEASE}-redis:6379`);
  assert.ok(find(objects, 'Service', `${RELEASE}-redis`));
});

test('helm template refuses what the chart cannot run, with a message that says what to change', async () => {
  const refusals: Array<{ set: string[]; message: RegExp }> = [
    {
      set: ['terminationGracePeriodSeconds=12'],
      message: /terminationGracePeriodSeconds \(12 s\) must exceed preStopSleepSeconds/,
    },
    {
      set: ['monitoring.podMonitor.enabled=true', 'config.admin.publicMetrics=false'],
      message:
        /a ServiceMonitor or PodMonitor needs config.admin.publicMetrics or adminToken.existingSecret/,
    },
    // The schema's refusal, as Helm reports it.
    { set: ['replicaCount=2'], message: /values don't meet the specifications of the schema/ },
  ];
  for (const { set, message } of refusals)
    await assert.rejects(render(undefined, ...set), message, set.join(' '));
  // And the same values render once what they need is there.
  await render(undefined, 'terminationGracePeriodSeconds=21');
  await render(undefined, 'replicaCount=2', 'redis.enabled=true');
});
