/**
 * The official MCP conformance CLI (0.2, server scenarios) against conformance
 * fixtures, each run twice: directly, then through the gateway, with the same
 * selection against the same server. Three selections:
 *
 * - `--suite active` and `--requirements 2025-11-25` against the SDK 1.x
 *   fixture: the direct run passes every scenario (the fixture is complete);
 * - `--requirements 2026-07-28` against the SDK 2.x fixture: the direct run's
 *   FAILURE and WARNING checks are exactly {@link KNOWN_GAPS_2026_07_28}, so a
 *   new gap and a closed one both fail this test.
 *
 * The rule for all three: through the gateway no scenario may be worse than
 * directly — not fewer SUCCESS checks, no check that is SUCCESS directly
 * anything else through the gateway, no check failing more often (see
 * `degradations`). A WARNING counts: the priming event, `retry` or
 * Last-Event-ID resumption degrade to one without failing a scenario.
 *
 * The sets use separate fixtures and gateways and run two at a time; within a
 * set the direct and gateway runs are sequential, because scenarios mutate the
 * server (list changes, subscriptions).
 */
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';

import { startConformanceServer } from './fixtures/conformance-server.js';
import { startConformanceModernServer } from './fixtures/conformance-modern-server.js';
import {
  degradations,
  findings,
  readRequirements,
  runConformance,
  type ConformanceRun,
  type ConformanceSelection,
  type Finding,
} from './helpers/conformance.js';
import { startTestGateway } from './helpers/gateway.js';

/** One set, direct + gateway, takes seconds to about twenty; this only bounds a hung CLI or server. */
const TEST_TIMEOUT_MS = 120_000;

/** `--suite active` of the pinned CLI (0.2.0-alpha.12) against a 2025-era server, in run order. */
const ACTIVE_SUITE_SCENARIOS = [
  'server-initialize',
  'server-session-lifecycle',
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
  'elicitation-sep1034-defaults',
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

/** Not-scored scenarios of 2025-11-25 that the SDK 1.x fixture passes; they must keep passing. */
const NOT_SCORED_PASSING_2025_11_25 = [
  'server-session-lifecycle',
  'json-schema-2020-12',
  'server-sse-polling',
];

interface KnownGap {
  scenario: string;
  check: string;
  status: Finding['status'];
  /** One line: why the SDK 2.x fixture cannot pass this check. */
  reason: string;
}

const NO_TASKS_EXTENSION =
  'SDK 2.4.0 has no tasks extension (SEP-2663, not scored for 2026-07-28), so the fixture has no task tools';

/** FAILURE entries with {@link NO_TASKS_EXTENSION} as the reason, for the checks of one `tasks-*` scenario. */
function tasksExtensionGaps(scenario: string, checks: string[]): KnownGap[] {
  return checks.map((check) => ({
    scenario,
    check,
    status: 'FAILURE',
    reason: NO_TASKS_EXTENSION,
  }));
}

/**
 * Every FAILURE and WARNING check the SDK 2.x conformance fixture gets
 * directly under `--requirements 2026-07-28` (scored and not-scored
 * scenarios), each with the reason (every scored scenario passes). A
 * mismatch prints the entries to add or remove, ready to paste.
 */
const KNOWN_GAPS_2026_07_28: readonly KnownGap[] = [
  ...tasksExtensionGaps('tasks-lifecycle', [
    'tasks-sync-tool-call',
    'sep-2663-result-type-task-on-create',
    'sep-2663-tasks-get-status-working',
    'sep-2663-tasks-get-status-completed',
    'sep-2663-tool-error-uses-completed-status',
    'sep-2663-tasks-get-status-failed',
    'sep-2663-cancel-ack-empty-result',
    'tasks-cancel-terminal-idempotent-ack',
  ]),
  ...tasksExtensionGaps('tasks-capability-negotiation', [
    'tasks-extension-advertised',
    'sep-2663-tasks-methods-non-declaring',
    'sep-2663-server-rejects-undeclared-client',
    'tasks-per-request-meta-opt-in',
  ]),
  ...tasksExtensionGaps('tasks-wire-fields', [
    'tasks-wire-field-renames',
    'tasks-no-early-ttl-expiry',
    'tasks-no-related-task-meta-on-inlined-result',
  ]),
  ...tasksExtensionGaps('tasks-request-state-removal', ['tasks-request-state-removal-setup']),
  ...tasksExtensionGaps('tasks-mrtr-input', [
    'sep-2663-tasks-get-status-input-required',
    'tasks-mrtr-tasks-update-resumes',
    'tasks-mrtr-partial-fulfillment',
  ]),
  ...tasksExtensionGaps('tasks-request-headers', [
    'tasks-headers-tolerate-mcp-method-on-tools-call',
    'sep-2663-routing-headers-accepted-on-tasks-get',
    'sep-2663-server-rejects-mismatched-mcp-name-on-tasks-get',
  ]),
  ...tasksExtensionGaps('tasks-dispatch-and-envelope', [
    'tasks-server-directed-creation-no-hint',
    'sep-2663-legacy-task-param-ignored',
    'tasks-immediate-result-shortcut',
    'tasks-result-type-complete-on-non-task-responses',
    'sep-2663-durable-create-strong-consistency',
    'sep-2663-tasks-get-invalid-task-id-32602',
  ]),
  ...tasksExtensionGaps('tasks-required-task-error', [
    'sep-2663-server-returns-missing-capability-when-required',
  ]),
  ...tasksExtensionGaps('tasks-mrtr-composition', [
    'sep-2663-mrtr-synchronous-before-task-creation',
  ]),
];

function key(f: { scenario: string; check: string; status: string }): string {
  return `${f.scenario} / ${f.check} [${f.status}]`;
}

function gapEntry(f: Finding): string {
  const reason = `TODO: ${f.message.split('\n')[0] ?? ''}`.slice(0, 160);
  return `  { scenario: '${f.scenario}', check: '${f.check}', status: '${f.status}', reason: ${JSON.stringify(reason)} },`;
}

function failureReport(run: ConformanceRun): string {
  return `${run.selection}: failed scenarios: ${run.failed.join(', ')}\n${run.summary}`;
}

interface Upstream {
  url: string;
  close(): Promise<void>;
}

/** Starts the fixture and a gateway in front of it, runs `selection` directly, then through the gateway. */
async function runBoth(
  t: TestContext,
  startUpstream: () => Promise<Upstream>,
  selection: ConformanceSelection,
): Promise<{ direct: ConformanceRun; viaGateway: ConformanceRun }> {
  const upstream = await startUpstream();
  t.after(() => upstream.close());
  const gateway = await startTestGateway({ conformance: upstream.url });
  t.after(() => gateway.close());

  const direct = await runConformance(upstream.url, selection);
  const viaGateway = await runConformance(gateway.urlFor('conformance'), selection);
  return { direct, viaGateway };
}

function assertNoWorseThroughGateway(direct: ConformanceRun, viaGateway: ConformanceRun): void {
  const worse = degradations(direct, viaGateway);
  assert.deepEqual(
    worse,
    [],
    `${direct.selection}: worse through the gateway than directly:\n${worse.join('\n')}`,
  );
}

describe('conformance CLI 0.2: directly and through the gateway', { concurrency: 2 }, () => {
  test(
    'requirements 2026-07-28: the SDK 2.x fixture fails exactly its known gaps, the gateway is no worse',
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      const { direct, viaGateway } = await runBoth(t, startConformanceModernServer, {
        requirements: '2026-07-28',
      });

      await t.test('the direct run fails exactly the known gaps', () => {
        const found = findings(direct);
        const known = new Set(KNOWN_GAPS_2026_07_28.map(key));
        const foundKeys = new Set(found.map(key));
        const newGaps = found.filter((f) => !known.has(key(f)));
        const closedGaps = KNOWN_GAPS_2026_07_28.filter((g) => !foundKeys.has(key(g)));
        assert.deepEqual(
          { newGaps: newGaps.map(key), closedGaps: closedGaps.map(key) },
          { newGaps: [], closedGaps: [] },
          [
            'the direct run does not match KNOWN_GAPS_2026_07_28.',
            ...(newGaps.length > 0 ? ['add (with a real reason):', ...newGaps.map(gapEntry)] : []),
            ...(closedGaps.length > 0
              ? ['remove (now SUCCESS):', ...closedGaps.map((g) => `  ${key(g)}`)]
              : []),
          ].join('\n'),
        );
      });

      await t.test('through the gateway no scenario or check is worse', () => {
        assertNoWorseThroughGateway(direct, viaGateway);
      });
    },
  );

  test(
    'suite active: the SDK 1.x fixture passes every scenario, the gateway is no worse',
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      const { direct, viaGateway } = await runBoth(t, startConformanceServer, { suite: 'active' });

      await t.test('the direct run passes every scenario of the suite', () => {
        assert.deepEqual(direct.failed, [], failureReport(direct));
        assert.deepEqual(direct.passed, ACTIVE_SUITE_SCENARIOS, direct.raw);
        assert.equal(direct.exitCode, 0, direct.raw);
      });

      await t.test('through the gateway no scenario or check is worse', () => {
        assertNoWorseThroughGateway(direct, viaGateway);
      });
    },
  );

  test(
    'requirements 2025-11-25: the SDK 1.x fixture passes every scenario, the gateway is no worse',
    { timeout: TEST_TIMEOUT_MS },
    async (t) => {
      const requirements = await readRequirements('2025-11-25');
      const { direct, viaGateway } = await runBoth(t, startConformanceServer, {
        requirements: '2025-11-25',
      });

      await t.test('the direct run passes every scored scenario and the not-scored ones', () => {
        const scored = direct.scenarios.filter((s) => s.scored).map((s) => s.scenario);
        assert.deepEqual([...scored].sort(), [...requirements.scored].sort());
        assert.deepEqual(
          direct.failed.filter((s) => scored.includes(s)),
          [],
          failureReport(direct),
        );
        assert.deepEqual(
          NOT_SCORED_PASSING_2025_11_25.filter((s) => !direct.passed.includes(s)),
          [],
          failureReport(direct),
        );
        assert.equal(direct.exitCode, 0, direct.raw);
      });

      await t.test('through the gateway no scenario or check is worse', () => {
        assertNoWorseThroughGateway(direct, viaGateway);
      });
    },
  );
});
