/**
 * Runs the official MCP conformance CLI (`@modelcontextprotocol/conformance`,
 * the pinned devDependency) in server mode against a URL and reports the
 * result per scenario and per check.
 *
 * The CLI needs Node >= 22 and the build machines run Node 20, so it is started
 * as `npx -y node@22 <cli> server --url <url> --suite all -o <tmpdir>` (the
 * npm package `node@22` ships a Node 22 binary; npx caches it). Each scenario's
 * checks are read from the `checks.json` the CLI writes into a temp directory
 * (removed afterwards); stdout gives the list of scenarios that were started,
 * so a scenario that crashed before writing results still counts as failed.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** Upper bound for a whole `--suite all` run (it takes a few seconds against a healthy server). */
export const DEFAULT_CONFORMANCE_TIMEOUT_MS = 180_000;
/** How much of the CLI's output a timeout error quotes. */
const OUTPUT_TAIL_CHARS = 4_000;

/** One check as the CLI records it in `checks.json`. */
export interface ConformanceCheck {
  id: string;
  name: string;
  description: string;
  status: 'SUCCESS' | 'FAILURE' | 'WARNING' | 'INFO' | 'SKIPPED';
  timestamp?: string;
  errorMessage?: string;
  details?: Record<string, unknown>;
}

export interface ScenarioResult {
  scenario: string;
  /** True when the scenario produced checks and none of them is a FAILURE (the CLI's own rule). */
  passed: boolean;
  checks: ConformanceCheck[];
  /** `<check id>: <message>` for every FAILURE (or why there are no checks at all). */
  failures: string[];
  /** `<check id>: <message>` for every WARNING (SHOULD-level findings; they do not fail a scenario). */
  warnings: string[];
}

export interface ConformanceRun {
  /** Scenario names that passed, in run order. */
  passed: string[];
  /** Scenario names that failed, in run order. */
  failed: string[];
  scenarios: ScenarioResult[];
  /** Human-readable list of failures and warnings, one line each; empty when all is clean. */
  summary: string;
  /** The CLI's stdout and stderr, interleaved as they arrived. */
  raw: string;
  /** The CLI's exit code (0 when every scenario passed). */
  exitCode: number | null;
}

export interface RunConformanceOptions {
  /** `all` (default: active + pending), `active`, or `pending`. Ignored when `scenario` is set. */
  suite?: 'all' | 'active' | 'pending';
  /** Run a single scenario by name, e.g. `server-sse-polling`. */
  scenario?: string;
  /** Kill the CLI after this long. Default {@link DEFAULT_CONFORMANCE_TIMEOUT_MS}. */
  timeoutMs?: number;
}

// The CLI prints this line right before it runs each scenario, in both modes.
const SCENARIO_START = /^Running client scenario '([^']+)' against server:/gm;
// Result directories are named `server-<scenario>-<ISO timestamp with : and . as ->`.
const RESULT_DIR = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;
// eslint-disable-next-line no-control-regex
const ANSI_ESCAPE = /\u001b\[[0-9;]*m/g;

function conformanceCliPath(): string {
  const require = createRequire(import.meta.url);
  const manifestPath = require.resolve('@modelcontextprotocol/conformance/package.json');
  const manifest = require(manifestPath) as { bin: Record<string, string> };
  const bin = manifest.bin.conformance;
  if (bin === undefined) throw new Error(`no "conformance" bin in ${manifestPath}`);
  return join(dirname(manifestPath), bin);
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
            `conformance CLI timed out after ${timeoutMs} ms; output tail:\n${raw.slice(-OUTPUT_TAIL_CHARS)}`,
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

function describe(check: ConformanceCheck): string {
  return `${check.id}: ${check.errorMessage ?? check.description}`;
}

/**
 * Runs the conformance CLI's server scenarios against `url` (a Streamable HTTP
 * MCP endpoint, e.g. `http://127.0.0.1:1234/mcp`).
 */
export async function runConformance(
  url: string,
  options: RunConformanceOptions = {},
): Promise<ConformanceRun> {
  const outputDir = await mkdtemp(join(tmpdir(), 'portcullis-conformance-'));
  try {
    const selection =
      options.scenario !== undefined
        ? ['--scenario', options.scenario]
        : ['--suite', options.suite ?? 'all'];
    const { raw, exitCode } = await runCli(
      ['server', '--url', url, ...selection, '--output-dir', outputDir],
      options.timeoutMs ?? DEFAULT_CONFORMANCE_TIMEOUT_MS,
    );
    const checksByScenario = await readChecks(outputDir);
    const started = [...raw.matchAll(SCENARIO_START)].map((match) => match[1] ?? '');
    for (const scenario of checksByScenario.keys()) {
      if (!started.includes(scenario)) started.push(scenario);
    }
    if (started.length === 0) {
      throw new Error(`conformance CLI ran no scenario (exit ${exitCode}); output:\n${raw}`);
    }

    const scenarios = started.map((scenario): ScenarioResult => {
      const checks = checksByScenario.get(scenario);
      if (checks === undefined || checks.length === 0) {
        return {
          scenario,
          passed: false,
          checks: [],
          failures: ['no checks recorded: the scenario crashed, see raw output'],
          warnings: [],
        };
      }
      const failures = checks.filter((c) => c.status === 'FAILURE').map(describe);
      const warnings = checks.filter((c) => c.status === 'WARNING').map(describe);
      return { scenario, passed: failures.length === 0, checks, failures, warnings };
    });

    const summary = scenarios
      .flatMap((s) => [
        ...s.failures.map((line) => `FAIL ${s.scenario} — ${line}`),
        ...s.warnings.map((line) => `WARN ${s.scenario} — ${line}`),
      ])
      .join('\n');
    return {
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
