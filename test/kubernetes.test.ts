/**
 * deploy/kubernetes, checked without a cluster (none on these machines):
 * each overlay renders with `kubectl kustomize`, every object it renders is
 * valid against the Kubernetes API schemas (kubernetes-models), and what the
 * gateway needs holds: its configuration (the rendered ConfigMap) loads with
 * the environment the Deployment gives it; the probes, ports and Service
 * agree with it; the pod runs restricted (non-root, read-only root, no
 * capabilities, RuntimeDefault seccomp) with writable state and /tmp
 * volumes; the preStop sleep, leaving rotation and the drain fit in the
 * grace period; the HA overlay shares Redis, forwards between replicas on
 * a port only they may reach, and keeps a PodDisruptionBudget.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { buildConfig, parseConfigDocument } from '../src/config/load.js';
import type { Config } from '../src/config/schema.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);
const require = createRequire(import.meta.url);

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

/** What the test gives the variables the Deployment sets from the pod and its Secret. */
const POD_ENV = { POD_IP: '10.1.2.3', PORTCULLIS_CLUSTER_SECRET: 'c'.repeat(48) };

async function render(overlay: string): Promise<K8sObject[]> {
  const { stdout } = await run('kubectl', [
    'kustomize',
    join(ROOT, 'deploy', 'kubernetes', 'overlays', overlay),
  ]);
  return parseAllDocuments(stdout).map((d) => d.toJS() as K8sObject);
}

/** Validates `o` against its kind's schema; throws naming what is wrong. */
function validate(o: K8sObject): void {
  const path = `kubernetes-models/${o.apiVersion}/${o.kind}`;
  const module = require(path) as Record<string, new (o: unknown) => { validate(): void }>;
  const Model = module[o.kind];
  assert.ok(Model, `a schema for ${o.apiVersion} ${o.kind}`);
  new Model(o).validate();
}

const byKind = (objects: K8sObject[], kind: string, name = 'portcullis') =>
  objects.find((o) => o.kind === kind && o.metadata.name === name);

interface Container {
  name: string;
  args?: string[];
  ports?: Array<{ name: string; containerPort: number }>;
  env?: Array<{ name: string; valueFrom?: Record<string, unknown> }>;
  securityContext?: Record<string, unknown>;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  readinessProbe?: { httpGet?: { path: string; port: string } };
  livenessProbe?: { httpGet?: { path: string; port: string } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}

function gatewayPod(objects: K8sObject[]) {
  const deployment = byKind(objects, 'Deployment') as K8sObject;
  const spec = deployment.spec as {
    replicas: number;
    template: {
      spec: {
        terminationGracePeriodSeconds: number;
        securityContext: Record<string, unknown>;
        containers: Container[];
        volumes: Array<{ name: string; configMap?: { name: string }; emptyDir?: unknown }>;
      };
    };
  };
  const container = spec.template.spec.containers[0] as Container;
  return { deployment, spec, pod: spec.template.spec, container };
}

function configOf(objects: K8sObject[]): Config {
  const { pod } = gatewayPod(objects);
  const volume = pod.volumes.find((v) => v.name === 'config');
  const map = objects.find(
    (o) => o.kind === 'ConfigMap' && o.metadata.name === volume?.configMap?.name,
  );
  assert.ok(map, 'the config volume is a rendered ConfigMap (its generated name)');
  return buildConfig(
    parseConfigDocument(map.data?.['portcullis.yaml'] as string, 'ConfigMap', POD_ENV),
  );
}

for (const overlay of ['single', 'ha']) {
  test(`overlays/${overlay}: renders, and every object is valid against the Kubernetes schemas`, async () => {
    const objects = await render(overlay);
    assert.ok(objects.length >= 5);
    for (const o of objects) {
      try {
        validate(o);
      } catch (err) {
        assert.fail(`${o.kind} ${o.metadata.name}: ${(err as Error).message}`);
      }
    }
  });

  test(`overlays/${overlay}: the pod runs the gateway restricted, with its configuration, probes and drain`, async () => {
    const objects = await render(overlay);
    const { pod, container } = gatewayPod(objects);
    const config = configOf(objects);
    // The configuration is mounted where the image's command reads it.
    assert.deepEqual(container.args, ['start', '--config', '/etc/portcullis/portcullis.yaml']);
    const mounts = new Map(container.volumeMounts?.map((m) => [m.mountPath, m]));
    assert.equal(mounts.get('/etc/portcullis')?.readOnly, true);
    for (const path of ['/var/lib/portcullis', '/tmp']) {
      const m = mounts.get(path);
      assert.ok(m, `${path} is a volume: the root filesystem is read-only`);
      assert.ok(pod.volumes.find((v) => v.name === m.name)?.emptyDir !== undefined);
    }
    // Restricted: non-root, nothing to escalate to, no capabilities, the runtime's seccomp.
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.securityContext.runAsUser, 10001);
    assert.deepEqual(pod.securityContext.seccompProfile, { type: 'RuntimeDefault' });
    assert.equal(container.securityContext?.allowPrivilegeEscalation, false);
    assert.equal(container.securityContext?.readOnlyRootFilesystem, true);
    assert.deepEqual(container.securityContext?.capabilities, { drop: ['ALL'] });
    // Ports, probes and the Service agree with the configuration.
    const ports = new Map(container.ports?.map((p) => [p.name, p.containerPort]));
    assert.equal(ports.get('mcp'), config.listen.port);
    assert.equal(ports.get('admin'), config.admin.port);
    assert.deepEqual(container.readinessProbe?.httpGet, { path: '/readyz', port: 'admin' });
    assert.deepEqual(container.livenessProbe?.httpGet, { path: '/livez', port: 'admin' });
    const service = byKind(objects, 'Service') as K8sObject;
    const servicePorts = service.spec?.ports as Array<{ targetPort: string }>;
    assert.deepEqual(servicePorts.map((p) => p.targetPort).sort(), ['admin', 'mcp']);
    assert.equal(service.spec?.sessionAffinity, 'None', 'no affinity: any replica serves');
    // preStop, leaving rotation and the drain fit in the grace period.
    const sleep = Number(container.lifecycle?.preStop?.exec?.command[1]);
    assert.deepEqual(container.lifecycle?.preStop?.exec?.command[0], 'sleep');
    assert.ok(
      pod.terminationGracePeriodSeconds * 1000 >
        sleep * 1000 + config.shutdown.leaveRotationMs + config.shutdown.drainTimeoutMs,
      'terminationGracePeriodSeconds covers the preStop sleep, leaving rotation and the drain',
    );
    assert.ok(config.shutdown.leaveRotationMs > 0, 'readiness turns 503 before connections close');
    assert.equal(config.listen.behindProxy, true, 'plain HTTP only behind the ingress');
  });
}

test('overlays/single: one replica, the in-process store', async () => {
  const objects = await render('single');
  assert.equal(gatewayPod(objects).spec.replicas, 1);
  assert.equal(configOf(objects).store.kind, 'memory');
  assert.equal(
    byKind(objects, 'PodDisruptionBudget'),
    undefined,
    'no PDB that would block a drain',
  );
});

test('overlays/ha: replicas share the Redis it runs, and forward on a port only they reach', async () => {
  const objects = await render('ha');
  const { spec, container } = gatewayPod(objects);
  const config = configOf(objects);
  assert.ok(spec.replicas >= 2);
  assert.equal(config.store.kind, 'redis');
  const redisHost = new URL(config.store.kind === 'redis' ? config.store.url : '').hostname;
  assert.ok(
    byKind(objects, 'Service', redisHost),
    `store.url names the rendered Service ${redisHost}`,
  );
  // Each replica advertises its own pod address, and all share one secret from a Secret.
  assert.equal(config.cluster?.advertise, `http://${POD_ENV.POD_IP}:${config.cluster?.port}`);
  const env = new Map(container.env?.map((e) => [e.name, e.valueFrom]));
  assert.deepEqual(env.get('POD_IP'), { fieldRef: { fieldPath: 'status.podIP' } });
  assert.ok(env.get('PORTCULLIS_CLUSTER_SECRET')?.secretKeyRef, 'the cluster secret is a Secret');
  const ports = new Map(container.ports?.map((p) => [p.name, p.containerPort]));
  assert.equal(ports.get('cluster'), config.cluster?.port);
  const policy = byKind(objects, 'NetworkPolicy') as K8sObject;
  const rules = policy.spec?.ingress as Array<{
    from?: Array<{ podSelector: { matchLabels: Record<string, string> } }>;
    ports: Array<{ port: number }>;
  }>;
  const toCluster = rules.filter((r) => r.ports.some((p) => p.port === config.cluster?.port));
  assert.equal(toCluster.length, 1);
  assert.deepEqual(toCluster[0]?.from?.[0]?.podSelector.matchLabels, {
    'app.kubernetes.io/name': 'portcullis',
  });
  const pdb = byKind(objects, 'PodDisruptionBudget') as K8sObject;
  assert.equal(pdb.spec?.maxUnavailable, 1);
  const selector = (pdb.spec?.selector as { matchLabels: Record<string, string> }).matchLabels;
  const podLabels = (spec.template as unknown as { metadata: { labels: Record<string, string> } })
    .metadata.labels;
  for (const [k, v] of Object.entries(selector))
    assert.equal(podLabels[k], v, 'the PDB selects the pods');
  assert.ok(byKind(objects, 'HorizontalPodAutoscaler'));
});
