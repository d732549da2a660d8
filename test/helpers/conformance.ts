/**
 * Runs the official MCP conformance CLI (`@modelcontextprotocol/conformance`,
 * the pinned devDependency, 0.2.x) in server mode against a URL and reports
 * the result per scenario and per check.
 *
 * What runs is one of: a suite (`--suite active`), a spec revision's frozen
 * requirement set (`--requirements 2026-07-28`), or one scenario. For a
 * requirement set, which scenarios are scored and which are only run and
 * reported (`not_scored`) is read from the package's own
 * `requirements/<revision>.yaml`, the file the CLI itself runs from.
 *
 * The CLI needs Node >= 22 and the build machines run Node 20, so it is started
 * as `npx -y node@22 <cli> server --url <url> <selection> -o <tmpdir>` (the npm
 * package `node@22` ships a Node 22 binary; npx caches it). Each scenario's
 * checks are read from the `checks.json` the CLI writes into a temp directory
 * (removed afterwards); stdout gives the scenarios that were started, so a
 * scenario that crashed before writing results still counts as failed, and so
 * does a scenario of the requirement set that never started.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { parse as parseYaml } from 'yaml';

/**
 * Upper bound for one CLI run. A whole requirement set takes about ten seconds
 * against a healthy server; this only bounds a hung CLI or server.
 */
export const DEFAULT_CONFORMANCE_TIMEOUT_MS = 90_000;
/** How much of the CLI's output a timeout error quotes. */
const OUTPUT_TAIL_CHARS = 4_000;

/** A check status as the CLI writes it. Only FAILURE fails a scenario; WARNING is a SHOULD-level finding. */
export type CheckStatus = 'SUCCESS' | 'FAILURE' | 'WARNING' | 'INFO' | 'SKIPPED';

/** One check as the CLI records it in `checks.json`. A scenario may record the same id more than once. */
export interface ConformanceCheck {
  id: string;
  name: string;
  description: string;
  status: CheckStatus;
  timestamp?: string;
  errorMessage?: string | null;
  details?: Record<string, unknown>;
}

/** The spec revisions the pinned CLI ships a requirement set for (`conformance list`). */
export type RequirementsRevision = '2025-11-25' | '2026-07-28';

/** A scenario the requirement set runs and reports but never scores, and why (`extension`, `pending`, …). */
export interface NotScoredScenario {
  scenario: string;
  reason: string;
}

/** The server leg of a frozen requirement set. */
export interface RequirementSet {
  revision: RequirementsRevision;
  /** Scenarios conformance to the revision requires, in file order. */
  scored: string[];
  /** Scenarios run for visibility only. */
  notScored: NotScoredScenario[];
}

export interface ScenarioResult {
  scenario: string;
  /**
   * False for a requirement set's `not_scored` scenarios. Suite and single
   * scenario runs score everything they run (the CLI's exit code counts all).
   */
  scored: boolean;
  /** True when no check is a FAILURE (the CLI's own rule; a scenario whose checks are all SKIPPED passes). */
  passed: boolean;
  /** Never empty: a scenario that wrote no checks gets one synthetic FAILURE named after it, as the CLI does. */
  checks: ConformanceCheck[];
  /** How many checks are SUCCESS. */
  successes: number;
  /** `<check id>: <message>` for every FAILURE. */
  failures: string[];
  /** `<check id>: <message>` for every WARNING. */
  warnings: string[];
}

export interface ConformanceRun {
  /** What was run, for messages: `suite active`, `requirements 2026-07-28`, `scenario ping`. */
  selection: string;
  /** Set for `requirements` runs. */
  requirements?: RequirementSet;
  /** Scenario names that passed, in run order. */
  passed: string[];
  /** Scenario names that failed, in run order. */
  failed: string[];
  scenarios: ScenarioResult[];
  /** Human-readable list of failures and warnings, one line each; empty when all is clean. */
  summary: string;
  /** The CLI's stdout and stderr, interleaved as they arrived. */
  raw: string;
  /**
   * The CLI's exit code: for a requirement set 1 when a scored scenario has a
   * FAILURE (not-scored ones never count), otherwise 1 when any scenario failed.
   */
  exitCode: number | null;
}

/** Exactly one of `suite`, `requirements` or `scenario`. */
export type ConformanceSelection =
  | { suite: 'active' | 'all' | 'pending' | 'draft' }
  | { requirements: RequirementsRevision }
  | { scenario: string };

export interface RunConformanceOptions {
  /** Kill the CLI after this long. Default {@link DEFAULT_CONFORMANCE_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/** A FAILURE or WARNING check of one scenario: what a known-gap list records. */
export interface Finding {
  scenario: string;
  check: string;
  status: 'FAILURE' | 'WARNING';
  /** The first message recorded for it. */
  message: string;
}

// The CLI prints this line right before it runs each scenario, in every selection mode.
const SCENARIO_START = /^Running client scenario '([^']+)' against server:/gm;
// Result directories are named `server-<scenario>-<ISO timestamp with : and . as ->`.
const RESULT_DIR = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;
// eslint-disable-next-line no-control-regex
const ANSI_ESCAPE = /\u001b\[[0-9;]*m/g;

function conformancePackageDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('@modelcontextprotocol/conformance/package.json'));
}

function conformanceCliPath(): string {
  const dir = conformancePackageDir();
  const require = createRequire(import.meta.url);
  const manifest = require(join(dir, 'package.json')) as { bin: Record<string, string> };
  const bin = manifest.bin.conformance;
  if (bin === undefined) throw new Error(`no "conformance" bin in ${dir}/package.json`);
  return join(dir, bin);
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * The server leg of a revision's requirement set, from the pinned package's
 * `requirements/<revision>.yaml` (`server:` is scored, `not_scored:` entries
 * with `leg: server` are run and reported only).
 */
export async function readRequirements(revision: RequirementsRevision): Promise<RequirementSet> {
  const path = join(conformancePackageDir(), 'requirements', `${revision}.yaml`);
  const doc = parseYaml(await readFile(path, 'utf8')) as {
    server?: unknown;
    not_scored?: unknown;
  } | null;
  const scored = doc?.server;
  const notScored = doc?.not_scored ?? [];
  if (!isStringArray(scored) || !Array.isArray(notScored)) {
    throw new Error(`${path}: expected a "server" list of names and a "not_scored" list`);
  }
  return {
    revision,
    scored,
    notScored: notScored.flatMap((entry: unknown): NotScoredScenario[] => {
      const { scenario, leg, reason } = (entry ?? {}) as Record<string, unknown>;
      if (typeof scenario !== 'string' || typeof leg !== 'string' || typeof reason !== 'string') {
        throw new Error(`${path}: not_scored entry without scenario/leg/reason: ${String(entry)}`);
      }
      return leg === 'server' ? [{ scenario, reason }] : [];
    }),
  };
}

interface CliOutcome {
  raw: string;
  exitCode: number | null;
}

function runCli(args: string[], timeoutMs: number): Promise<CliOutcome> {
  return new Promise((resolve, reject) => {
    // Own process group: npx starts the Node 22 binary as a grandchild, and a
    // timeout must end that one too, not only npx.
    const child = spawn('npx', ['-y', 'node@22', conformanceCliPath(), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, NO_COLOR: '1' },
    });
    let raw = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (raw += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (raw += chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (exitCode) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(
          new Error(
            `conformance CLI timed out after ${timeoutMs} ms (${args.join(' ')}); output tail:\n${raw.slice(-OUTPUT_TAIL_CHARS)}`,
          ),
        );
      } else {
        resolve({ raw: raw.replace(ANSI_ESCAPE, ''), exitCode });
      }
    });
  });
}

async function readChecks(dir: string): Promise<Map<string, ConformanceCheck[]>> {
  const byScenario = new Map<string, ConformanceCheck[]>();
  for (const entry of await readdir(dir)) {
    const scenario = RESULT_DIR.exec(entry)?.[1];
    if (scenario === undefined) continue;
    const checks = JSON.parse(
      await readFile(join(dir, entry, 'checks.json'), 'utf8'),
    ) as ConformanceCheck[];
    byScenario.set(scenario, checks);
  }
  return byScenario;
}

function describeCheck(check: ConformanceCheck): string {
  return `${check.id}: ${check.errorMessage ?? check.description}`;
}

function selectionArgs(selection: ConformanceSelection): { args: string[]; label: string } {
  if ('requirements' in selection) {
    return {
      args: ['--requirements', selection.requirements],
      label: `requirements ${selection.requirements}`,
    };
  }
  if ('suite' in selection) {
    return { args: ['--suite', selection.suite], label: `suite ${selection.suite}` };
  }
  return { args: ['--scenario', selection.scenario], label: `scenario ${selection.scenario}` };
}

function scenarioResult(
  scenario: string,
  scored: boolean,
  recorded: ConformanceCheck[] | undefined,
) {
  const checks: ConformanceCheck[] =
    recorded !== undefined && recorded.length > 0
      ? recorded
      : [
          {
            id: scenario,
            name: scenario,
            description: 'no checks recorded: the scenario did not run or crashed, see raw output',
            status: 'FAILURE',
          },
        ];
  const failures = checks.filter((c) => c.status === 'FAILURE').map(describeCheck);
  const warnings = checks.filter((c) => c.status === 'WARNING').map(describeCheck);
  return {
    scenario,
    scored,
    passed: failures.length === 0,
    checks,
    successes: checks.filter((c) => c.status === 'SUCCESS').length,
    failures,
    warnings,
  } satisfies ScenarioResult;
}

/**
 * Runs the conformance CLI's server scenarios chosen by `selection` against
 * `url` (a Streamable HTTP MCP endpoint, e.g. `http://127.0.0.1:1234/mcp`).
 */
export async function runConformance(
  url: string,
  selection: ConformanceSelection,
  options: RunConformanceOptions = {},
): Promise<ConformanceRun> {
  const { args, label } = selectionArgs(selection);
  const requirements =
    'requirements' in selection ? await readRequirements(selection.requirements) : undefined;
  const outputDir = await mkdtemp(join(tmpdir(), 'portcullis-conformance-'));
  try {
    const { raw, exitCode } = await runCli(
      ['server', '--url', url, ...args, '--output-dir', outputDir],
      options.timeoutMs ?? DEFAULT_CONFORMANCE_TIMEOUT_MS,
    );
    const checksByScenario = await readChecks(outputDir);
    const ran = [...raw.matchAll(SCENARIO_START)].map((match) => match[1] ?? '');
    for (const scenario of checksByScenario.keys()) {
      if (!ran.includes(scenario)) ran.push(scenario);
    }
    if (ran.length === 0) {
      throw new Error(`conformance CLI ran no scenario (exit ${exitCode}); output:\n${raw}`);
    }

    let names = ran;
    let isScored: (scenario: string) => boolean = () => true;
    if (requirements !== undefined) {
      const notScored = new Set(requirements.notScored.map((n) => n.scenario));
      const listed = [...requirements.scored, ...notScored];
      // The yaml and the CLI must agree, or "scored" below would be a guess.
      const unlisted = ran.filter((s) => !listed.includes(s));
      if (unlisted.length > 0) {
        throw new Error(
          `conformance CLI ran scenarios that ${label} does not list: ${unlisted.join(', ')}`,
        );
      }
      names = [...ran, ...listed.filter((s) => !ran.includes(s))];
      isScored = (scenario) => !notScored.has(scenario);
    }

    const scenarios = names.map((s) => scenarioResult(s, isScored(s), checksByScenario.get(s)));
    const summary = scenarios
      .flatMap((s) => [
        ...s.failures.map((line) => `FAIL ${s.scenario} — ${line}`),
        ...s.warnings.map((line) => `WARN ${s.scenario} — ${line}`),
      ])
      .join('\n');
    return {
      selection: label,
      ...(requirements !== undefined ? { requirements } : {}),
      passed: scenarios.filter((s) => s.passed).map((s) => s.scenario),
      failed: scenarios.filter((s) => !s.passed).map((s) => s.scenario),
      scenarios,
      summary,
      raw,
      exitCode,
    };
  } finally {
    await rm(outputDir, { recursive: true, force: true });
  }
}

/** Every FAILURE and WARNING of a run, one per scenario, check id and status, in run order. */
export function findings(run: ConformanceRun): Finding[] {
  const seen = new Set<string>();
  const found: Finding[] = [];
  for (const s of run.scenarios) {
    for (const c of s.checks) {
      if (c.status !== 'FAILURE' && c.status !== 'WARNING') continue;
      const key = `${s.scenario}\0${c.id}\0${c.status}`;
      if (seen.has(key)) continue;
      seen.add(key);
      found.push({
        scenario: s.scenario,
        check: c.id,
        status: c.status,
        message: c.errorMessage ?? c.description,
      });
    }
  }
  return found;
}

function countByStatus(checks: ConformanceCheck[]): Map<string, Map<CheckStatus, number>> {
  const counts = new Map<string, Map<CheckStatus, number>>();
  for (const c of checks) {
    const byStatus = counts.get(c.id) ?? new Map<CheckStatus, number>();
    byStatus.set(c.status, (byStatus.get(c.status) ?? 0) + 1);
    counts.set(c.id, byStatus);
  }
  return counts;
}

function statusesOf(byStatus: Map<CheckStatus, number> | undefined): string {
  if (byStatus === undefined) return 'absent';
  return [...byStatus].map(([status, n]) => (n === 1 ? status : `${n}× ${status}`)).join(', ');
}

/**
 * Where `candidate` (the gateway run) is worse than `baseline` (the direct
 * run of the same selection against the same server), one line each, in the
 * baseline's order. Worse is, per scenario: it did not run; it has fewer
 * SUCCESS checks; a check id is SUCCESS fewer times; a check id is FAILURE or
 * WARNING more times (so a new failing check counts even if successes grew
 * elsewhere). Check ids are counted because a scenario may record one id
 * several times. Empty when the candidate is no worse.
 */
export function degradations(baseline: ConformanceRun, candidate: ConformanceRun): string[] {
  const lines: string[] = [];
  for (const base of baseline.scenarios) {
    const other = candidate.scenarios.find((s) => s.scenario === base.scenario);
    if (other === undefined) {
      lines.push(`${base.scenario}: not run (${base.successes} SUCCESS checks directly)`);
      continue;
    }
    if (other.successes < base.successes) {
      lines.push(
        `${base.scenario}: ${base.successes} SUCCESS checks directly, ${other.successes} through the gateway`,
      );
    }
    const baseCounts = countByStatus(base.checks);
    const otherCounts = countByStatus(other.checks);
    const ids = [...new Set([...baseCounts.keys(), ...otherCounts.keys()])];
    for (const id of ids) {
      const b = baseCounts.get(id);
      const o = otherCounts.get(id);
      const n = (counts: typeof b, status: CheckStatus) => counts?.get(status) ?? 0;
      const worse =
        n(o, 'SUCCESS') < n(b, 'SUCCESS') ||
        n(o, 'FAILURE') > n(b, 'FAILURE') ||
        n(o, 'WARNING') > n(b, 'WARNING');
      if (!worse) continue;
      const messages = other.checks
        .filter((c) => c.id === id && c.status !== 'SUCCESS')
        .map((c) => c.errorMessage ?? c.description);
      const detail = messages.length > 0 ? ` — ${[...new Set(messages)].join(' | ')}` : '';
      lines.push(
        `${base.scenario} / ${id}: ${statusesOf(b)} directly, ${statusesOf(o)} through the gateway${detail}`,
      );
    }
  }
  return lines;
}
