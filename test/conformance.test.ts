/**
 * The official MCP conformance CLI (server scenarios, `--suite all`) against
 * the SDK 1.x conformance fixture: first directly, then through the gateway.
 * The direct run proves the fixture is complete; the gateway run must pass the
 * very same scenarios, and keep every check that succeeded directly a SUCCESS
 * (priming event, `retry`, Last-Event-ID resumption would otherwise degrade to
 * a WARNING without failing a scenario).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startConformanceServer } from './fixtures/conformance-server.js';
import { runConformance, type ConformanceRun } from './helpers/conformance.js';
import { startTestGateway } from './helpers/gateway.js';

/** A whole `--suite all` run takes seconds; this only bounds a hung CLI or server. */
const TEST_TIMEOUT_MS = 300_000;

/** `conformance list --server` of the pinned CLI (0.1.16); `--suite all` runs all of them. */
const SERVER_SCENARIOS = [
  'server-initialize',
  'logging-set-level',
  'ping',
  'completion-complete',
  'tools-list',
  'tools-call-simple-text',
  'tools-call-image',
  'tools-call-audio',
  'tools-call-embedded-resource',
  'tools-call-mixed-content',
  'tools-call-with-logging',
  'tools-call-error',
  'tools-call-with-progress',
  'tools-call-sampling',
  'tools-call-elicitation',
  'json-schema-2020-12',
  'elicitation-sep1034-defaults',
  'server-sse-polling',
  'server-sse-multiple-streams',
  'elicitation-sep1330-enums',
  'resources-list',
  'resources-read-text',
  'resources-read-binary',
  'resources-templates-read',
  'resources-subscribe',
  'resources-unsubscribe',
  'prompts-list',
  'prompts-get-simple',
  'prompts-get-with-args',
  'prompts-get-embedded-resource',
  'prompts-get-with-image',
  'dns-rebinding-protection',
];

function successfulChecks(run: ConformanceRun): Set<string> {
  return new Set(
    run.scenarios.flatMap((s) =>
      s.checks.filter((c) => c.status === 'SUCCESS').map((c) => `${s.scenario} / ${c.id}`),
    ),
  );
}

function failureReport(run: ConformanceRun): string {
  return `failed scenarios: ${run.failed.join(', ')}\n${run.summary}`;
}

test(
  'conformance CLI passes every server scenario directly against the fixture',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const upstream = await startConformanceServer();
    t.after(() => upstream.close());

    const run = await runConformance(upstream.url);

    assert.deepEqual(run.failed, [], failureReport(run));
    assert.deepEqual([...run.passed].sort(), [...SERVER_SCENARIOS].sort(), run.raw);
    assert.equal(run.exitCode, 0, run.raw);
  },
);

test(
  'conformance CLI passes the same server scenarios through the gateway',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const upstream = await startConformanceServer();
    t.after(() => upstream.close());
    const gateway = await startTestGateway({ conformance: upstream.url });
    t.after(() => gateway.close());

    const direct = await runConformance(upstream.url);
    assert.deepEqual(direct.failed, [], `direct run: ${failureReport(direct)}`);

    const viaGateway = await runConformance(gateway.urlFor('conformance'));
    assert.deepEqual(viaGateway.failed, [], `through the gateway: ${failureReport(viaGateway)}`);
    assert.deepEqual(
      [...viaGateway.passed].sort(),
      [...direct.passed].sort(),
      'the gateway run must pass exactly the scenarios the direct run passes',
    );

    const viaGatewaySuccesses = successfulChecks(viaGateway);
    const degraded = [...successfulChecks(direct)].filter((id) => !viaGatewaySuccesses.has(id));
    assert.deepEqual(
      degraded,
      [],
      `checks that succeed directly but not through the gateway:\n${viaGateway.summary}`,
    );
  },
);
