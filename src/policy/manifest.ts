/**
 * Tool manifests (`portcullis manifest pull`) and their pins: the file
 * format, its JSON Schema, the canonical JSON a pin is the SHA-256 of, the
 * verb class derived from annotations, building a manifest from a live
 * `tools/list` (keeping the operator's edits), and the diff between a
 * manifest and a live server.
 *
 * Pure, except `readManifest` and `writeManifest`, which read and write the
 * file they are given and nothing else.
 *
 * What a pin covers, in order: name, title, description, inputSchema,
 * outputSchema, annotations — every field of a tool definition that tells
 * the agent what the tool is or how to call it, i.e. what a rug pull changes.
 * Pinned as the server sent them (before any cleaning), so a change hidden
 * in invisible characters is a change too. `icons`, `execution` and `_meta`
 * are not pinned.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject } from 'ajv';

export const MANIFEST_VERSION = 1;
/** The fields a pin covers, in the order they are written. */
export const PINNED_FIELDS = [
  'name',
  'title',
  'description',
  'inputSchema',
  'outputSchema',
  'annotations',
] as const;
export type PinnedField = (typeof PINNED_FIELDS)[number];

export type Verb = 'read' | 'write' | 'destructive';
export const VERBS: readonly Verb[] = ['read', 'write', 'destructive'];

/** A tool as `tools/list` describes it, reduced to what a pin covers. */
export interface ToolDefinition {
  readonly name: string;
  readonly title?: string;
  readonly description?: string;
  readonly inputSchema: Readonly<Record<string, unknown>>;
  readonly outputSchema?: Readonly<Record<string, unknown>>;
  readonly annotations?: Readonly<Record<string, unknown>>;
}

/** Why a tool is held: the detector's rule and its sentence. */
export interface HeldReason {
  readonly rule: string;
  readonly reason: string;
}

export interface ManifestTool extends ToolDefinition {
  /** read, write or destructive: derived from annotations by `pull`, the operator's to edit. */
  readonly verb: Verb;
  /** `sha256:<hex>` of the canonical JSON of the definition (a bare hex digest is read too). */
  readonly pin: string;
  /** Set by `pull` when a description looks poisoned: not callable until approved. */
  readonly held?: { readonly reasons: readonly HeldReason[] };
  /** Set by `manifest approve`: the operator took this exact definition. */
  readonly approved?: { readonly at: string; readonly by?: string };
}

export interface Manifest {
  readonly version: typeof MANIFEST_VERSION;
  readonly server: string;
  /** When `pull` (or `approve` with a live server) last read the server, ISO 8601. */
  readonly pulledAt: string;
  readonly tools: readonly ManifestTool[];
}

/** Finds held tools: the description's detector (policy/text.ts), plugged in by the caller. */
export type Detector = (description: string) => readonly HeldReason[];

const ISO_DATE_TIME = '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})$';
const PIN_PATTERN = '^(sha256:)?[0-9a-f]{64}$';

/** The manifest file's JSON Schema (2020-12). Unknown keys are refused, as in the config. */
export const manifestSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://portcullis.dev/schemas/manifest-v1.json',
  type: 'object',
  additionalProperties: false,
  required: ['version', 'server', 'pulledAt', 'tools'],
  properties: {
    version: { const: MANIFEST_VERSION },
    server: { type: 'string', minLength: 1 },
    pulledAt: { type: 'string', pattern: ISO_DATE_TIME },
    tools: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'inputSchema', 'verb', 'pin'],
        properties: {
          name: { type: 'string', minLength: 1 },
          title: { type: 'string' },
          description: { type: 'string' },
          inputSchema: { type: 'object' },
          outputSchema: { type: 'object' },
          annotations: { type: 'object' },
          verb: { enum: VERBS },
          pin: { type: 'string', pattern: PIN_PATTERN },
          held: {
            type: 'object',
            additionalProperties: false,
            required: ['reasons'],
            properties: {
              reasons: {
                type: 'array',
                minItems: 1,
                items: {
                  type: 'object',
                  additionalProperties: false,
                  required: ['rule', 'reason'],
                  properties: { rule: { type: 'string' }, reason: { type: 'string' } },
                },
              },
            },
          },
          approved: {
            type: 'object',
            additionalProperties: false,
            required: ['at'],
            properties: {
              at: { type: 'string', pattern: ISO_DATE_TIME },
              by: { type: 'string' },
            },
          },
        },
      },
    },
  },
} as const;

/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

const ajv = new Ajv2020({ allErrors: true, strict: true });
const validateManifest = ajv.compile(manifestSchema);

// ---------------------------------------------------------------------------
// Canonical JSON and pins

/**
 * RFC 8785 (JCS) canonical JSON: object keys sorted by UTF-16 code units, no
 * whitespace, strings escaped as ECMAScript's JSON.stringify does (which is
 * what JCS prescribes), numbers in ECMAScript's shortest round-trip form.
 * Refuses what JSON cannot carry exactly (non-finite numbers, lone
 * surrogates, undefined in arrays, bigints, functions). An object property
 * whose value is undefined is absent, as in JSON.stringify.
 */
export function canonicalJson(value: unknown): string {
  switch (typeof value) {
    case 'string':
      // RFC 8785 §3.2.2.2 requires I-JSON input (RFC 7493 §2.1): no lone surrogates.
      if (LONE_SURROGATE.test(value))
        throw new TypeError('canonicalJson: lone surrogate in a string');
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`canonicalJson: ${value} is not JSON`);
      // ES Number::toString is JCS's number form; -0 is written 0.
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) {
        return `[${value
          .map((item: unknown) => {
            if (item === undefined) throw new TypeError('canonicalJson: undefined in an array');
            return canonicalJson(item);
          })
          .join(',')}]`;
      }
      const record = value as Record<string, unknown>;
      // Default sort compares UTF-16 code units, which is JCS's order (§3.2.3).
      const keys = Object.keys(record)
        .filter((k) => record[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${canonicalJson(k)}:${canonicalJson(record[k])}`).join(',')}}`;
    }
    default:
      throw new TypeError(`canonicalJson: a ${typeof value} is not JSON`);
  }
}

/** The pinned fields of a definition, and nothing else. */
export function definitionOf(tool: ToolDefinition): ToolDefinition {
  const out: Record<string, unknown> = {};
  for (const field of PINNED_FIELDS) if (tool[field] !== undefined) out[field] = tool[field];
  return out as unknown as ToolDefinition;
}

/** `sha256:<hex>` of the canonical JSON of the pinned fields of `def`. */
export function pinOf(def: ToolDefinition): string {
  const digest = createHash('sha256').update(canonicalJson(definitionOf(def)), 'utf8');
  return `sha256:${digest.digest('hex')}`;
}

/** Whether two pins name the same digest (`sha256:` prefix optional, hex case-insensitive). */
export function samePin(a: string, b: string): boolean {
  const bare = (p: string) => p.replace(/^sha256:/, '').toLowerCase();
  return bare(a) === bare(b);
}

// ---------------------------------------------------------------------------
// Verbs

/**
 * The verb class from a tool's annotations, with the defaults of the spec's
 * ToolAnnotations (spec/schema/2025-11-25/schema.ts, unchanged in
 * 2026-07-28): `readOnlyHint` defaults to false, and `destructiveHint`
 * (meaningful only when not read-only) to true. So:
 * - readOnlyHint true → read;
 * - else destructiveHint false → write (additive updates only);
 * - else (destructiveHint true or absent, annotations absent) → destructive.
 * A tool that says nothing is taken at the spec's word: destructive. The
 * hints are the server's claims (the spec: untrusted unless the server is);
 * the operator corrects them in the manifest.
 */
export function verbOf(annotations: Readonly<Record<string, unknown>> | undefined): Verb {
  if (annotations?.readOnlyHint === true) return 'read';
  if (annotations?.destructiveHint === false) return 'write';
  return 'destructive';
}

// ---------------------------------------------------------------------------
// Building from a live server

/** A `tools/list` entry as a definition; throws on one that is not a tool. */
export function toolDefinitionFrom(raw: unknown): ToolDefinition {
  const t = raw as Record<string, unknown> | null;
  if (t === null || typeof t !== 'object' || Array.isArray(t))
    throw new TypeError('a tools/list entry is not an object');
  if (typeof t.name !== 'string' || t.name === '')
    throw new TypeError('a tools/list entry has no name');
  const isObject = (v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(t.inputSchema)) throw new TypeError(`tool '${t.name}' has no inputSchema object`);
  const def: Record<string, unknown> = { name: t.name, inputSchema: t.inputSchema };
  for (const field of ['title', 'description'] as const) {
    if (t[field] === undefined) continue;
    if (typeof t[field] !== 'string')
      throw new TypeError(`tool '${t.name}': ${field} is not a string`);
    def[field] = t[field];
  }
  for (const field of ['outputSchema', 'annotations'] as const) {
    if (t[field] === undefined) continue;
    if (!isObject(t[field])) throw new TypeError(`tool '${t.name}': ${field} is not an object`);
    def[field] = t[field];
  }
  return def as unknown as ToolDefinition;
}

export interface BuildOptions {
  readonly server: string;
  /** ISO 8601 time of the pull. */
  readonly now: string;
  /** The file being replaced: the operator's `verb` and `approved` survive for unchanged pins. */
  readonly previous?: Manifest | undefined;
  /** Marks poisoned descriptions held (policy/text.ts); without it nothing is held. */
  readonly detect?: Detector | undefined;
}

/** What changed against the file being replaced. */
export interface BuildSummary {
  readonly tools: number;
  /** Held and not approved: what agents cannot call. */
  readonly held: number;
  /** Tools whose pin differs from the previous file's, or that it did not list. */
  readonly changed: number;
  /** Previous tools the server no longer lists. */
  readonly removed: number;
}

/**
 * One manifest entry for `def`. From `kept` (the previous entry, when its pin
 * is the same) come its verb, its approval and its held reasons: a hold is
 * never lost to a re-pull, whatever the detector says now.
 */
export function entryFor(
  def: ToolDefinition,
  detect: Detector | undefined,
  kept?: Partial<Pick<ManifestTool, 'verb' | 'approved' | 'held'>>,
): ManifestTool {
  const reasons: HeldReason[] = (kept?.held?.reasons ?? []).map((r) => ({ ...r }));
  for (const r of detect === undefined ? [] : detect(def.description ?? '')) {
    if (!reasons.some((x) => x.rule === r.rule && x.reason === r.reason))
      reasons.push({ rule: r.rule, reason: r.reason });
  }
  return {
    ...definitionOf(def),
    verb: kept?.verb ?? verbOf(def.annotations),
    pin: pinOf(def),
    ...(reasons.length > 0 ? { held: { reasons } } : {}),
    ...(kept?.approved === undefined ? {} : { approved: kept.approved }),
  };
}

/**
 * The manifest of a live tool list. A tool whose pin is the previous file's
 * keeps that file's `verb` and `approved` (the operator's edits); any other
 * starts over: verb from annotations, no approval. Held reasons of an
 * unchanged tool are kept, and the detector's added.
 */
export function buildManifest(
  live: readonly ToolDefinition[],
  options: BuildOptions,
): { manifest: Manifest; summary: BuildSummary } {
  const before = new Map((options.previous?.tools ?? []).map((t) => [t.name, t]));
  let changed = 0;
  const tools = live.map((def) => {
    const old = before.get(def.name);
    const pin = pinOf(def);
    const same = old !== undefined && samePin(old.pin, pin);
    if (!same) changed++;
    return entryFor(def, options.detect, same ? old : undefined);
  });
  const names = new Set(live.map((d) => d.name));
  const removed = [...before.keys()].filter((n) => !names.has(n)).length;
  return {
    manifest: {
      version: MANIFEST_VERSION,
      server: options.server,
      pulledAt: options.now,
      tools: tools.sort((a, b) => compareNames(a.name, b.name)),
    },
    summary: {
      tools: tools.length,
      held: tools.filter((t) => !isApproved(t)).length,
      changed,
      removed,
    },
  };
}

/** Whether a tool may be called as the manifest stands: not held, or approved. */
export function isApproved(tool: ManifestTool): boolean {
  return tool.held === undefined || tool.approved !== undefined;
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------
// Diff

export interface ChangedTool {
  readonly name: string;
  /** The pinned fields that differ, in PINNED_FIELDS order. */
  readonly fields: readonly PinnedField[];
  readonly old: ManifestTool;
  readonly live: ToolDefinition;
}

export interface RenamedTool {
  readonly from: string;
  readonly to: string;
  readonly old: ManifestTool;
  readonly live: ToolDefinition;
}

export interface ManifestDiff {
  /** Live tools the manifest does not list (renames excluded). */
  readonly added: readonly ToolDefinition[];
  /** Manifest tools the live server does not list (renames excluded). */
  readonly removed: readonly ManifestTool[];
  /** Same name, different pin. */
  readonly changed: readonly ChangedTool[];
  /** A removed tool and an added one whose definitions are equal but for the name. */
  readonly renamed: readonly RenamedTool[];
  readonly unchanged: readonly string[];
  readonly identical: boolean;
}

/** Canonical JSON of a definition without its name: equal for a tool renamed and nothing else. */
function bodyKey(def: ToolDefinition): string {
  const { name: _name, ...rest } = definitionOf(def);
  return canonicalJson(rest);
}

/**
 * What differs between a manifest and a live tool list. A renamed-looking
 * pair is reported as such, not as an addition and a removal, but it is
 * still a new name: the gateway treats it as one (not callable until approved).
 */
export function diffManifests(
  old: Pick<Manifest, 'tools'>,
  live: readonly ToolDefinition[],
): ManifestDiff {
  const oldByName = new Map(old.tools.map((t) => [t.name, t]));
  const liveNames = new Set(live.map((d) => d.name));
  const changed: ChangedTool[] = [];
  const unchanged: string[] = [];
  let added: ToolDefinition[] = [];
  for (const def of live) {
    const o = oldByName.get(def.name);
    if (o === undefined) {
      added.push(def);
      continue;
    }
    if (samePin(o.pin, pinOf(def))) {
      unchanged.push(def.name);
      continue;
    }
    const fields = PINNED_FIELDS.filter(
      (f) => f !== 'name' && !sameValue(o[f], def[f]),
    ) as PinnedField[];
    changed.push({ name: def.name, fields, old: o, live: def });
  }
  let removed = old.tools.filter((t) => !liveNames.has(t.name));
  const renamed: RenamedTool[] = [];
  for (const r of [...removed]) {
    const key = bodyKey(r);
    const match = added.find((a) => bodyKey(a) === key);
    if (match === undefined) continue;
    renamed.push({ from: r.name, to: match.name, old: r, live: match });
    added = added.filter((a) => a !== match);
    removed = removed.filter((x) => x !== r);
  }
  const byName = <T extends { name: string }>(xs: T[]) =>
    xs.sort((a, b) => compareNames(a.name, b.name));
  return {
    added: byName(added),
    removed: byName(removed),
    changed: byName(changed),
    renamed: renamed.sort((a, b) => compareNames(a.from, b.from)),
    unchanged: unchanged.sort(compareNames),
    identical:
      added.length === 0 && removed.length === 0 && changed.length === 0 && renamed.length === 0,
  };
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === undefined || b === undefined) return a === b;
  return canonicalJson(a) === canonicalJson(b);
}

/**
 * A line diff (longest common subsequence): each line of `a` and `b` marked
 * ' ' (both), '-' (only in a) or '+' (only in b), in order.
 */
export function lineDiff(a: string, b: string): Array<{ op: ' ' | '-' | '+'; line: string }> {
  const x = a.split('\n');
  const y = b.split('\n');
  const n = x.length;
  const m = y.length;
  // lcs[i][j]: length of the LCS of x[i..] and y[j..].
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    const row = lcs[i] as number[];
    const below = lcs[i + 1] as number[];
    for (let j = m - 1; j >= 0; j--) {
      row[j] =
        x[i] === y[j]
          ? (below[j + 1] as number) + 1
          : Math.max(below[j] as number, row[j + 1] as number);
    }
  }
  const out: Array<{ op: ' ' | '-' | '+'; line: string }> = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      out.push({ op: ' ', line: x[i] as string });
      i++;
      j++;
    } else if (i < n && (j === m || (lcs[i + 1]?.[j] as number) >= (lcs[i]?.[j + 1] as number))) {
      // Removals before additions, as diff(1) prints a change.
      out.push({ op: '-', line: x[i] as string });
      i++;
    } else {
      out.push({ op: '+', line: y[j] as string });
      j++;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// The file

export interface ManifestProblem {
  /** JSONPath of the value at fault, e.g. `$.tools[2].verb`. */
  readonly path: string;
  readonly message: string;
}

export class ManifestError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly ManifestProblem[],
  ) {
    super(
      `${file}: ${problems.length} problem(s)\n${problems.map((p) => `  ${p.path}: ${p.message}`).join('\n')}`,
    );
    this.name = 'ManifestError';
  }
}

function jsonPath(pointer: string, extra?: string): string {
  let out = '$';
  const segments = pointer === '' ? [] : pointer.split('/').slice(1);
  if (extra !== undefined) segments.push(extra);
  for (const raw of segments) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(seg)
      ? `[${seg}]`
      : /^[A-Za-z_$][\w$]*$/.test(seg)
        ? `.${seg}`
        : `[${JSON.stringify(seg)}]`;
  }
  return out;
}

function describe(err: ErrorObject): ManifestProblem {
  switch (err.keyword) {
    case 'additionalProperties':
      return {
        path: jsonPath(err.instancePath, String(err.params.additionalProperty)),
        message: 'unknown key',
      };
    case 'required':
      return {
        path: jsonPath(err.instancePath, String(err.params.missingProperty)),
        message: 'is required',
      };
    case 'enum':
      return {
        path: jsonPath(err.instancePath),
        message: `must be one of ${(err.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`,
      };
    case 'const':
      return {
        path: jsonPath(err.instancePath),
        message: `must be ${JSON.stringify(err.params.allowedValue)}`,
      };
    case 'pattern':
      if (err.instancePath.endsWith('/pin'))
        return { path: jsonPath(err.instancePath), message: 'must be sha256:<64 hex digits>' };
      return {
        path: jsonPath(err.instancePath),
        message: 'must be an ISO 8601 date-time (2025-01-31T12:00:00Z)',
      };
    default:
      return { path: jsonPath(err.instancePath), message: err.message ?? err.keyword };
  }
}

/** Checks a parsed manifest: the schema, then what a schema cannot say. Every problem, with its path. */
export function manifestProblems(document: unknown): ManifestProblem[] {
  if (!validateManifest(document)) return (validateManifest.errors ?? []).map(describe);
  const m = document as Manifest;
  const problems: ManifestProblem[] = [];
  const seen = new Map<string, number>();
  m.tools.forEach((t, i) => {
    const first = seen.get(t.name);
    if (first !== undefined)
      problems.push({ path: `$.tools[${i}].name`, message: `'${t.name}' is also tools[${first}]` });
    else seen.set(t.name, i);
    let pin: string | undefined;
    try {
      pin = pinOf(t);
    } catch (err) {
      problems.push({ path: `$.tools[${i}]`, message: (err as Error).message });
    }
    if (pin !== undefined && !samePin(pin, t.pin)) {
      problems.push({
        path: `$.tools[${i}].pin`,
        message:
          `does not match the definition in the file (edited by hand?): ` +
          `re-pin with portcullis manifest approve --tool ${t.name}`,
      });
    }
    if (t.approved !== undefined && Number.isNaN(Date.parse(t.approved.at)))
      problems.push({ path: `$.tools[${i}].approved.at`, message: 'is not a valid date' });
  });
  if (Number.isNaN(Date.parse(m.pulledAt)))
    problems.push({ path: '$.pulledAt', message: 'is not a valid date' });
  return problems;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * Reads and validates a manifest file (I/O: reads `file`). Throws a
 * ManifestError listing every problem; returns the manifest deeply frozen.
 */
export function readManifest(file: string): Manifest {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ManifestError(file, [
      { path: '$', message: `cannot read: ${(err as Error).message}` },
    ]);
  }
  return parseManifest(text, file);
}

/** Parses and validates manifest text; `file` names it in errors. */
export function parseManifest(text: string, file = 'manifest'): Manifest {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new ManifestError(file, [{ path: '$', message: `not JSON: ${(err as Error).message}` }]);
  }
  const problems = manifestProblems(document);
  if (problems.length > 0) throw new ManifestError(file, problems);
  return deepFreeze(document as Manifest);
}

/** Keys of a JSON value sorted at every depth, so a re-pull writes the same bytes. */
function sortedDeep(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedDeep);
  if (value === null || typeof value !== 'object') return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(
    Object.keys(record)
      .sort()
      .filter((k) => record[k] !== undefined)
      .map((k) => [k, sortedDeep(record[k])]),
  );
}

/** The tool fields in the order they are written: what an operator reads and edits first. */
const TOOL_KEY_ORDER = [
  'name',
  'verb',
  'pin',
  'held',
  'approved',
  'title',
  'description',
  'annotations',
  'inputSchema',
  'outputSchema',
] as const;

/** The manifest as its file's text: fixed key order, nested keys sorted, 2-space indent, final newline. */
export function formatManifest(m: Manifest): string {
  const tools = [...m.tools]
    .sort((a, b) => compareNames(a.name, b.name))
    .map((t) => {
      const out: Record<string, unknown> = {};
      for (const k of TOOL_KEY_ORDER) {
        const v = t[k];
        if (v === undefined) continue;
        out[k] = k === 'held' || k === 'approved' ? v : sortedDeep(v);
      }
      return out;
    });
  const ordered = { version: m.version, server: m.server, pulledAt: m.pulledAt, tools };
  return `${JSON.stringify(ordered, null, 2)}\n`;
}

/** Mode of a written manifest: the operator's to edit, anyone's to read (it holds no secret). */
export const MANIFEST_FILE_MODE = 0o644;

/**
 * Writes a manifest atomically (I/O: writes `file` and a temporary file beside
 * it): the text goes to a temporary file in the same directory, which is then
 * renamed over `file`, so a reader sees the old file or the new one, never half.
 * The manifest is validated first: nothing invalid is written.
 */
export function writeManifest(file: string, m: Manifest): void {
  const text = formatManifest(m);
  const problems = manifestProblems(JSON.parse(text));
  if (problems.length > 0) throw new ManifestError(file, problems);
  const tmp = path.join(
    path.dirname(file),
    `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
  );
  try {
    writeFileSync(tmp, text, { mode: MANIFEST_FILE_MODE, flag: 'wx' });
    // The umask may have taken bits away; the mode is the documented one.
    chmodSync(tmp, MANIFEST_FILE_MODE);
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
