/**
 * `portcullis audit replay`: the recorded calls of a session, a trace or a
 * subject, sent again to an MCP endpoint and each answer compared with the
 * recorded one (src/audit/replay.ts has the rules, docs/audit.md "Replay"
 * the operator's account).
 */
import type { KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import { loadCaptureKey } from '../audit/capture.js';
import {
  DEFAULT_REPLAY_TIMEOUT_MS,
  ReplaySelectionError,
  replay,
  type Difference,
  type ReplayReport,
  type ReplaySelector,
} from '../audit/replay.js';

export const AUDIT_REPLAY_HELP = {
  'audit replay': `Usage: portcullis audit replay --from DIR --capture DIR --key-file F --target URL SELECTOR [options]
                         send recorded calls again; compare each answer with the recorded one

Every call sent is proven the recorded one first: the trail verifies, its capture entry decrypts
only as the capture of its record, and the message agrees with the record (id, method, target,
argsHash). Legacy calls go in a fresh session opened with the recorded initialize; modern calls
are sent stateless with their recorded _meta and the era's headers. A call the gateway refused
when recorded is skipped, never sent.

Selector (one of):
  --session ID           a legacy session (the records' session)
  --trace ID             a W3C trace id (the records' traceId): how modern, stateless calls are found
  --subject S            a principal's calls (with --since, --until, --tenant to narrow them)
Narrowing:
  --tenant T  --server NAME
  --since D  --until D   ISO 8601 time, or a duration ago (90m, 24h, 7d)

Options:
  --from DIR|FILE        the audit files (repeatable)
  --capture DIR          the capture directory (audit.capture.dir)
  --key-file F           the capture key (audit.capture.keyFile)
  --target URL           the MCP endpoint: a gateway's /mcp/<server>, or the upstream's own
  --token T | --token-file F
                         sent as "authorization: Bearer …"
  --jwks FILE            the gateway's public keys (.pub.json of \`portcullis keys generate\`, or its
                         /.well-known/jwks.json saved): the trail's checkpoints must be signed by them
  --ignore PATH          an answer path not compared, e.g. result.content[*].text (repeatable)
  --timeout-ms MS        bound on each answer (default ${DEFAULT_REPLAY_TIMEOUT_MS})
  --json                 print the report as JSON

Compared: the answer without jsonrpc, id and result._meta (server info and other metadata).

Exit status: 0 every call replayed gives the same answer, 1 a call differs or cannot be replayed
(or the trail does not verify, or nothing matches), 2 usage error.
`,
} as const;

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** A difference's value in text output: its JSON, cut to this many characters. */
const MAX_VALUE_CHARS = 80;
/** Differences printed per call in text output (all of them are in --json). */
const MAX_PRINTED_DIFFERENCES = 20;

/** An ISO 8601 time, or a duration before now, as an ISO string; undefined if it is neither. */
function timeOf(value: string, now = Date.now()): string | undefined {
  const d = DURATION.exec(value);
  if (d) return new Date(now - Number(d[1]) * (UNIT_MS[d[2] as string] as number)).toISOString();
  const t = Date.parse(value);
  return Number.isNaN(t) ? undefined : new Date(t).toISOString();
}

function shown(value: unknown): string {
  if (value === undefined) return '(absent)';
  const text = JSON.stringify(value);
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS - 1)}…` : text;
}

function describeDifferences(diffs: readonly Difference[]): string[] {
  const out = diffs
    .slice(0, MAX_PRINTED_DIFFERENCES)
    .map((d) => `    ${d.path}: ${shown(d.old)} → ${shown(d.new)}`);
  if (diffs.length > MAX_PRINTED_DIFFERENCES)
    out.push(`    … and ${diffs.length - MAX_PRINTED_DIFFERENCES} more (--json has them all)`);
  return out;
}

function describe(report: ReplayReport): string {
  const out: string[] = [];
  if (!report.trail.ok) {
    for (const p of report.trail.problems)
      out.push(`BAD ${p.where}${p.seq === undefined ? '' : ` (seq ${p.seq})`}: ${p.message}`);
    out.push(
      'FAILED: the audit trail does not verify; nothing was replayed (portcullis audit verify names the first bad record)',
    );
    return out.join('\n') + '\n';
  }
  if (report.calls.length === 0) {
    out.push('FAILED: nothing to replay: no recorded request matches the selection');
    return out.join('\n') + '\n';
  }
  out.push(
    `replaying ${report.calls.length} recorded call(s) to ${report.target} (trail: ${report.trail.records} records verified)`,
  );
  for (const c of report.calls) {
    const name = `seq ${c.seq} ${c.method}${c.tool === undefined ? '' : ` ${c.tool}`} (id ${JSON.stringify(c.rpcId)})`;
    if (c.outcome === 'same') out.push(`${name}: same`);
    else if (c.outcome === 'differs') {
      out.push(`${name}: DIFFERS`);
      out.push(...describeDifferences(c.differences ?? []));
    } else if (c.outcome === 'failed') out.push(`${name}: CANNOT REPLAY: ${c.reason ?? ''}`);
    else out.push(`${name}: skipped: ${c.reason ?? ''}`);
  }
  const s = report.summary;
  out.push(
    `${report.ok ? 'ok' : 'FAILED'}: ${s.calls} call(s): ${s.same} same, ${s.differs} differ, ` +
      `${s.failed} cannot be replayed, ${s.skipped} skipped`,
  );
  return out.join('\n') + '\n';
}

/**
 * `portcullis audit replay …`. Sets the exit status (1 when a call differs or
 * cannot be replayed); `fail` is a usage error. `out` receives the report.
 */
export async function auditReplay(
  args: string[],
  fail: (message: string) => never,
  out: { write(text: string): unknown } = process.stdout,
): Promise<void> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      from: { type: 'string', multiple: true },
      capture: { type: 'string' },
      'key-file': { type: 'string' },
      target: { type: 'string' },
      session: { type: 'string' },
      trace: { type: 'string' },
      subject: { type: 'string' },
      tenant: { type: 'string' },
      server: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      ignore: { type: 'string', multiple: true },
      jwks: { type: 'string' },
      'timeout-ms': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  const need = (name: 'capture' | 'key-file' | 'target'): string =>
    values[name] ?? fail(`audit replay: --${name} is required`);
  if (values.from === undefined || values.from.length === 0)
    fail('audit replay: --from is required (the audit files or their directory)');
  const captureDir = need('capture');
  const keyFile = need('key-file');
  const target = need('target');
  if (!/^https?:\/\//.test(target)) fail(`audit replay: --target expects an http(s) URL`);
  const chosen = (['session', 'trace', 'subject'] as const).filter((k) => values[k] !== undefined);
  if (chosen.length !== 1) fail('audit replay: give exactly one of --session, --trace, --subject');
  if (values.token !== undefined && values['token-file'] !== undefined)
    fail('audit replay: give --token or --token-file, not both');

  const select: ReplaySelector = {};
  for (const k of ['session', 'trace', 'subject', 'tenant', 'server'] as const)
    if (values[k] !== undefined) select[k] = values[k];
  for (const k of ['since', 'until'] as const) {
    const v = values[k];
    if (v === undefined) continue;
    select[k] = timeOf(v) ?? fail(`audit replay: --${k} expects an ISO 8601 time or 90m, 24h, 7d`);
  }
  let timeoutMs = DEFAULT_REPLAY_TIMEOUT_MS;
  if (values['timeout-ms'] !== undefined) {
    timeoutMs = Number(values['timeout-ms']);
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0)
      fail('audit replay: --timeout-ms expects a positive integer');
  }

  let token = values.token;
  if (values['token-file'] !== undefined) {
    try {
      token = (await readFile(values['token-file'], 'utf8')).trim();
    } catch (err) {
      fail(`audit replay: --token-file: ${(err as Error).message}`);
    }
  }
  let jwks: JSONWebKeySet | undefined;
  if (values.jwks !== undefined) {
    try {
      jwks = JSON.parse(await readFile(values.jwks, 'utf8')) as JSONWebKeySet;
      if (!Array.isArray(jwks.keys)) throw new Error('not a JWKS (no "keys" array)');
    } catch (err) {
      fail(`audit replay: --jwks ${values.jwks}: ${(err as Error).message}`);
    }
  }
  let key: KeyObject;
  try {
    key = await loadCaptureKey(keyFile);
  } catch (err) {
    fail(
      `audit replay: --key-file: ${(err as Error).message.replace('audit.capture.keyFile ', '')}`,
    );
  }

  let report: ReplayReport;
  try {
    report = await replay({
      from: values.from,
      captureDir,
      key,
      select,
      target,
      ...(token === undefined ? {} : { token }),
      timeoutMs,
      ignore: values.ignore ?? [],
      ...(jwks === undefined ? {} : { jwks }),
    });
  } catch (err) {
    if (err instanceof ReplaySelectionError) fail(`audit replay: ${err.message}`);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES')
      fail(`audit replay: ${(err as Error).message}`);
    throw err;
  }
  out.write(values.json ? JSON.stringify(report, null, 2) + '\n' : describe(report));
  if (!report.ok) process.exitCode = 1;
}
