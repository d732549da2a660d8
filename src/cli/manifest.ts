/**
 * `portcullis manifest pull | diff | approve`: the command-line side of tool
 * manifests (policy/manifest.ts owns the format, pins and diff;
 * live-tools.ts reads the live server). Only argv, output and exit codes here.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { poisonFindings } from '../policy/text.js';
import type { Config, ServerConfig } from '../config/schema.js';
import {
  buildManifest,
  canonicalJson,
  diffManifests,
  entryFor,
  isApproved,
  lineDiff,
  ManifestError,
  MANIFEST_VERSION,
  readManifest,
  pinOf,
  samePin,
  toolDefinitionFrom,
  writeManifest,
  type Detector,
  type Manifest,
  type ManifestDiff,
  type ManifestTool,
  type PinnedField,
  type ToolDefinition,
} from '../policy/manifest.js';
import { parseDuration } from './dev.js';
import {
  DEFAULT_LIVE_TIMEOUT_MS,
  describeServer,
  listLiveTools,
  LiveError,
  type EraChoice,
  type LiveTools,
} from './live-tools.js';

/** The poisoned-description detector `pull` marks held tools with (the gateway's own). */
const detect: Detector = (description) =>
  poisonFindings(description).map(({ rule, reason }) => ({ rule, reason }));

export const MANIFEST_HELP = {
  'manifest pull': `Usage: portcullis manifest pull --config FILE --server NAME --out FILE [options]
                         write the live server's tools as a manifest (pins, verbs, held tools)

Options:
  --config FILE          the gateway's configuration: the server is reached as the gateway reaches it
  --server NAME          the configured server (servers.NAME)
  --out FILE             the manifest to write; an existing one keeps its verb and approved
                         edits for tools whose pin did not change
  --era auto|legacy|modern  how to talk to the server (default auto: initialize, and the
                         2026-07-28 era if the server refuses it)
  --timeout D            longest wait for one answer: 30s, 2m (default ${DEFAULT_LIVE_TIMEOUT_MS / 1000}s)
  --tenant T             the tenant a minted credential names (credential mode mint)

Exit status: 0 written, 1 the server or the old file could not be used, 2 usage error.
`,
  'manifest diff': `Usage: portcullis manifest diff --config FILE --server NAME [--manifest FILE] [options]
                         compare a manifest with the live server

Options:
  --manifest FILE        the manifest (default: servers.NAME.manifest in the configuration)
  --era, --timeout, --tenant   as for pull

Exit status: 0 identical, 1 different (each difference printed), 2 error.
`,
  'manifest approve': `Usage: portcullis manifest approve --manifest FILE (--tool NAME ... | --all) [options]
                         approve held tools; with --config and --server, take the live definitions

Options:
  --tool NAME            a tool to approve; repeatable
  --all                  every held tool (offline), or the whole live list (with --config)
  --config FILE --server NAME
                         read the live server and take its definition of each tool (re-pin)
  --by WHO               recorded as approved.by (default: the user name)
  --era, --timeout, --tenant   as for pull

Exit status: 0 approved, 1 a tool or the server could not be used, 2 usage error.
`,
} as const;

function fail(message: string, code: number): never {
  process.stderr.write(`portcullis: ${message}\n`);
  process.exit(code);
}

const COMMON_OPTIONS = {
  config: { type: 'string' },
  server: { type: 'string' },
  era: { type: 'string', default: 'auto' },
  timeout: { type: 'string' },
  tenant: { type: 'string' },
} as const;

interface Common {
  config?: string | undefined;
  server?: string | undefined;
  era: string;
  timeout?: string | undefined;
  tenant?: string | undefined;
}

interface Target {
  readonly config: Config;
  readonly name: string;
  readonly server: ServerConfig;
  /** `servers.NAME.manifest` as the file says, when it does. */
  readonly manifestKey: string | undefined;
}

/** The configuration and the named server in it; a bad file or an unknown name fails with `usage`. */
async function loadTarget(file: string, name: string, usage: number): Promise<Target> {
  let config: Config;
  try {
    config = await loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    fail(`--config: ${err.message}`, usage);
  }
  const server = config.servers[name];
  if (server === undefined) {
    fail(
      `unknown server '${name}' in ${file}; it configures: ${Object.keys(config.servers).join(', ')}`,
      usage,
    );
  }
  return { config, name, server, manifestKey: server.manifest };
}

function eraOf(value: string): EraChoice {
  if (value !== 'auto' && value !== 'legacy' && value !== 'modern')
    fail(`--era expects auto, legacy or modern, got '${value}'`, 2);
  return value;
}

function timeoutOf(value: string | undefined): number {
  if (value === undefined) return DEFAULT_LIVE_TIMEOUT_MS;
  const s = parseDuration(value);
  if (s === undefined || s < 1)
    fail(`--timeout expects a duration like 30s or 2m, got '${value}'`, 2);
  return s * 1000;
}

/** The live definitions, or a failure with the code given, telling the operator what happened. */
async function liveDefinitions(
  target: Target,
  common: Common,
  code: number,
): Promise<{ live: LiveTools; defs: ToolDefinition[] }> {
  let live: LiveTools;
  try {
    live = await listLiveTools({
      config: target.config,
      server: target.name,
      era: eraOf(common.era),
      timeoutMs: timeoutOf(common.timeout),
      ...(common.tenant === undefined ? {} : { tenant: common.tenant }),
    });
  } catch (err) {
    if (!(err instanceof LiveError)) throw err;
    // The operator may see where the server lives; agents never do.
    const where = err.kind === 'unreachable' ? ` (${describeServer(target.server)})` : '';
    fail(`${err.message}${where}`, code);
  }
  const defs: ToolDefinition[] = [];
  const names = new Set<string>();
  for (const raw of live.tools) {
    let def: ToolDefinition;
    try {
      def = toolDefinitionFrom(raw);
    } catch (err) {
      fail(`server '${target.name}': ${(err as Error).message}`, code);
    }
    if (names.has(def.name)) fail(`server '${target.name}' lists tool '${def.name}' twice`, code);
    names.add(def.name);
    defs.push(def);
  }
  return { live, defs };
}

function readOrFail(file: string, code: number): Manifest {
  try {
    return readManifest(file);
  } catch (err) {
    if (err instanceof ManifestError) fail(err.message, code);
    throw err;
  }
}

function writeOrFail(file: string, m: Manifest): void {
  try {
    writeManifest(file, m);
  } catch (err) {
    fail(`cannot write ${file}: ${(err as Error).message}`, 1);
  }
}

function need(value: string | undefined, flag: string, command: string): string {
  if (value === undefined)
    fail(`manifest ${command} needs ${flag}; try: portcullis manifest ${command} --help`, 2);
  return value;
}

export async function manifestPull(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { ...COMMON_OPTIONS, out: { type: 'string' } },
    strict: true,
  });
  const out = need(values.out, '--out FILE', 'pull');
  const target = await loadTarget(
    need(values.config, '--config FILE', 'pull'),
    need(values.server, '--server NAME', 'pull'),
    2,
  );
  eraOf(values.era);
  timeoutOf(values.timeout);
  // The old file is read first: an unreadable one is never overwritten, edits and all.
  const previous = existsSync(out) ? readOrFail(out, 1) : undefined;
  if (previous !== undefined && previous.server !== target.name) {
    fail(
      `${out} is the manifest of server '${previous.server}', not '${target.name}'; choose another --out`,
      1,
    );
  }
  const { live, defs } = await liveDefinitions(target, values, 1);
  const { manifest, summary } = buildManifest(defs, {
    server: target.name,
    now: new Date().toISOString(),
    previous,
    detect,
  });
  writeOrFail(out, manifest);
  const parts = [`${summary.tools} tools`, `${summary.held} held`];
  if (previous !== undefined) {
    parts.push(`${summary.changed} changed since the old file`);
    if (summary.removed > 0) parts.push(`${summary.removed} removed`);
  }
  process.stdout.write(
    `${out}: ${parts.join(', ')} (server '${target.name}', ${live.era} era, protocol ${live.protocolVersion})\n`,
  );
  for (const t of manifest.tools.filter((x) => !isApproved(x))) {
    for (const r of t.held?.reasons ?? [])
      process.stdout.write(`  held ${t.name}: ${r.rule}: ${r.reason}\n`);
  }
  if (manifest.tools.some((x) => !isApproved(x))) {
    process.stdout.write(
      `Held tools are not callable until approved: portcullis manifest approve --manifest ${out} --tool NAME\n`,
    );
  }
}

/** A value as text for a line diff: strings as they are, JSON pretty-printed with sorted keys. */
function asText(value: unknown): string {
  if (value === undefined) return '(absent)';
  if (typeof value === 'string') return value;
  return JSON.stringify(JSON.parse(canonicalJson(value)), sortedReplacer, 2);
}

function sortedReplacer(_key: string, value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(
    Object.keys(record)
      .sort()
      .map((k) => [k, record[k]]),
  );
}

function printDiff(diff: ManifestDiff, file: string, server: string): void {
  const w = (s: string) => process.stdout.write(`${s}\n`);
  if (diff.identical) {
    w(`${file}: identical to server '${server}' (${diff.unchanged.length} tools)`);
    return;
  }
  w(
    `${file}: server '${server}' differs: ${diff.added.length} added, ${diff.removed.length} removed, ` +
      `${diff.changed.length} changed, ${diff.renamed.length} renamed`,
  );
  for (const a of diff.added) w(`+ ${a.name} (added)`);
  for (const r of diff.removed) w(`- ${r.name} (removed)`);
  for (const r of diff.renamed)
    w(`~ ${r.from} -> ${r.to} (renamed: same definition, new name; not callable until approved)`);
  for (const c of diff.changed) {
    w(`~ ${c.name} (changed: ${c.fields.join(', ')})`);
    for (const field of c.fields as PinnedField[]) {
      w(`    ${field}:`);
      for (const d of lineDiff(asText(c.old[field]), asText(c.live[field])))
        w(`    ${d.op} ${d.line}`);
    }
  }
}

export async function manifestDiff(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { ...COMMON_OPTIONS, manifest: { type: 'string' } },
    strict: true,
  });
  const target = await loadTarget(
    need(values.config, '--config FILE', 'diff'),
    need(values.server, '--server NAME', 'diff'),
    2,
  );
  const file = values.manifest ?? target.manifestKey;
  if (file === undefined) {
    fail(
      `servers.${target.name}.manifest is not set in ${values.config as string}; give --manifest FILE`,
      2,
    );
  }
  eraOf(values.era);
  timeoutOf(values.timeout);
  const manifest = readOrFail(file, 2);
  const { defs } = await liveDefinitions(target, values, 2);
  const diff = diffManifests(manifest, defs);
  printDiff(diff, file, target.name);
  process.exitCode = diff.identical ? 0 : 1;
}

function whoAmI(): string | undefined {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER;
  }
}

export async function manifestApprove(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...COMMON_OPTIONS,
      manifest: { type: 'string' },
      tool: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      by: { type: 'string' },
    },
    strict: true,
  });
  const file = need(values.manifest, '--manifest FILE', 'approve');
  const named = values.tool ?? [];
  if (values.all === true && named.length > 0) fail('give --tool NAME ... or --all, not both', 2);
  if (values.all !== true && named.length === 0)
    fail('manifest approve needs --tool NAME ... or --all', 2);
  if ((values.config === undefined) !== (values.server === undefined))
    fail(
      '--config and --server go together: they name the live server to take definitions from',
      2,
    );
  eraOf(values.era);
  timeoutOf(values.timeout);
  const manifest = readOrFail(file, 1);
  const now = new Date().toISOString();
  const by = values.by ?? whoAmI();
  const approved = { at: now, ...(by === undefined ? {} : { by }) };
  const w = (s: string) => process.stdout.write(`${s}\n`);

  if (values.config === undefined) {
    // Offline: the definitions in the file are the ones approved; nothing is re-pinned.
    const byName = new Map(manifest.tools.map((t) => [t.name, t]));
    const missing = named.filter((n) => !byName.has(n));
    if (missing.length > 0)
      fail(`${file} lists no tool ${missing.map((n) => `'${n}'`).join(', ')}`, 1);
    const chosen = new Set(
      values.all === true ? manifest.tools.filter((t) => !isApproved(t)).map((t) => t.name) : named,
    );
    const tools = manifest.tools.map((t) => (chosen.has(t.name) ? { ...t, approved } : t));
    writeOrFail(file, { ...manifest, tools });
    for (const n of [...chosen].sort())
      w(`approved ${n}${byName.get(n)?.held ? ' (was held)' : ''}`);
    w(`${file}: ${chosen.size} tool(s) approved`);
    return;
  }

  const target = await loadTarget(values.config, values.server as string, 2);
  if (manifest.version !== MANIFEST_VERSION || manifest.server !== target.name)
    fail(`${file} is the manifest of server '${manifest.server}', not '${target.name}'`, 1);
  const { defs } = await liveDefinitions(target, values, 1);
  const liveByName = new Map(defs.map((d) => [d.name, d]));
  const oldByName = new Map(manifest.tools.map((t) => [t.name, t]));
  const missing = named.filter((n) => !liveByName.has(n));
  if (missing.length > 0) {
    fail(
      `server '${target.name}' does not list ${missing.map((n) => `'${n}'`).join(', ')}: ` +
        'only a live definition can be approved (--all also drops tools the server no longer lists)',
      1,
    );
  }
  const chosen = values.all === true ? [...liveByName.keys()] : named;
  const next = new Map<string, ManifestTool>(oldByName);
  const lines: string[] = [];
  for (const name of chosen) {
    const def = liveByName.get(name) as ToolDefinition;
    const old = oldByName.get(name);
    const same = old !== undefined && samePin(old.pin, pinOf(def));
    if (values.all === true && same && isApproved(old)) continue;
    // The operator's verb stands while the annotations it was judged on do.
    const keepVerb =
      old !== undefined &&
      canonicalJson(old.annotations ?? {}) === canonicalJson(def.annotations ?? {});
    const entry = entryFor(def, detect, {
      ...(keepVerb ? { verb: old.verb } : {}),
      // The same definition keeps its hold on record; approved, it is callable.
      ...(same ? { held: old.held } : {}),
    });
    next.set(name, { ...entry, approved });
    lines.push(
      `approved ${name} (${old === undefined ? 'new' : same ? 'unchanged definition' : 're-pinned'})`,
    );
  }
  if (values.all === true) {
    for (const name of oldByName.keys()) {
      if (liveByName.has(name)) continue;
      next.delete(name);
      lines.push(`dropped ${name} (the server no longer lists it)`);
    }
  }
  writeOrFail(file, { ...manifest, pulledAt: now, tools: [...next.values()] });
  for (const l of lines) w(l);
  w(`${file}: ${lines.length} change(s)`);
}
