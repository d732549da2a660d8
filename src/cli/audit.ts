/**
 * `portcullis audit …`: the operator's side of the audit trail. `verify`
 * proves trails whole (or names each one's first bad record) from files, a
 * directory of them, a Redis stream or a PostgreSQL table; `query` shows the
 * records matching a filter, from files or PostgreSQL. Only argv, output and
 * exit codes here: src/audit/ owns reading, checking and filtering.
 */
import { once } from 'node:events';
import { readFile, stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import {
  AUDIT_DECISIONS,
  formatRecord,
  parseTimeBound,
  queryAudit,
  type QuerySource,
} from '../audit/query.js';
import {
  DEFAULT_AUDIT_QUERY_LIMIT,
  parseAuditUrl,
  readPostgres,
  readRedisStream,
  type AuditQuery,
} from '../audit/readers.js';
import type { AuditDecision } from '../audit/types.js';
import {
  readAuditFiles,
  verifyLines,
  type SourceLine,
  type VerifyReport,
} from '../audit/verify.js';

/** Bound on fetching `--jwks` from a URL. */
const JWKS_FETCH_TIMEOUT_MS = 10_000;

export const AUDIT_HELP = {
  'audit verify': `Usage: portcullis audit verify [options] SOURCE…
                         prove audit trails were not altered, removed from or reordered

Checks every record's hash, that each follows the one before (seq, prevHash), and each signed
checkpoint. Each SOURCE is verified on its own and reported under its name:
  DIR                    the file sink's directory, read in the order of its files' names (the
                         order they were written)
  FILE…                  audit files, read as one trail in the order given
  redis://HOST:PORT/DB?key=KEY
                         the redis-stream sink's stream (default key portcullis:audit; rediss://
                         for TLS)
  postgres://USER@HOST:PORT/DB?table=NAME
                         the postgres sink's table (default portcullis_audit; SCHEMA.NAME for
                         another schema), read by chain and seq
A source with no records (a gateway writes a checkpoint as it starts), or one that cannot be read
to its end, is bad. A password in a URL is not printed.

Options:
  --jwks FILE_OR_URL     the gateway's public keys (its /.well-known/jwks.json, or the .pub.json
                         of \`portcullis keys generate\`): checkpoints must be signed by them
  --from-genesis         a chain must begin at seq 0 (nothing removed from its start; without
                         it, a start removed by retention is reported, not refused)
  --json                 print the reports as JSON: {"ok", "sources": [{"source", "ok",
                         "records", "chains", "problems"}, …]}

Exit status: 0 every source is whole, 1 a source is bad (its first bad record in each chain is
named), 2 usage error.
`,
  'audit query': `Usage: portcullis audit query --from DIR|FILE…|postgres://… [filters] [options]
                         print the audit records that match every filter given, oldest first

Reads what the store holds and does not check it: \`portcullis audit verify\` proves it whole.
Checkpoints are never shown.

Source:
  --from DIR|FILE…       the file sink's directory, or audit files in the order they were written
                         (files after the first may follow as arguments, as a shell glob gives
                         them); streamed, a trail of any size is read in bounded memory
  --from postgres://USER@HOST:PORT/DB?table=NAME
                         the postgres sink's table (default portcullis_audit; SCHEMA.NAME for
                         another schema), filtered by its indexed columns

Filters (each given must hold; values are matched exactly):
  --tenant T             records of tenant T
  --subject S            records of subject S (the token's sub)
  --tool X               records naming tool X (a tools/call and its answer)
  --session ID           records of MCP session ID
  --decision D           records decided D: allow, deny or shadow-deny (denied by a rule in
                         shadow mode, let through)
  --since WHEN           records at or after WHEN: a duration back from now (90s, 30m, 1h, 7d)
                         or an ISO 8601 date or time with its offset (2026-05-01 is midnight UTC,
                         2026-05-01T12:00:00Z, 2026-05-01T14:00+02:00)
  --until WHEN           records before WHEN, as --since

Options:
  --limit N              at most N records (default ${DEFAULT_AUDIT_QUERY_LIMIT}); when more match, stderr says so
  --json                 print each record's stored line as it is (JSON lines, for jq or a SIEM)

Without --json, one line per record: time, tenant/subject, server, direction (in/out), method (a
request refused before any message: "refused PATH"), tool, decision, then rule=, status=, id=
(the JSON-RPC id, as JSON) and error= when the record has them; "-" for what it does not say.

Exit status: 0 done (no record matches: "no records match" on stderr), 1 the source could not
be read, 2 usage error.

Examples:
  portcullis audit query --from /var/log/portcullis/audit --tenant acme --since 1h
  portcullis audit query --from 'postgres://audit@db/portcullis' --tool shell --decision deny \\
    --since 2026-05-01 --until 2026-05-02 --json | jq -r .rule
`,
} as const;

type Fail = (message: string) => never;

async function loadJwks(where: string): Promise<JSONWebKeySet> {
  const text = /^https?:\/\//.test(where)
    ? await (await fetch(where, { signal: AbortSignal.timeout(JWKS_FETCH_TIMEOUT_MS) })).text()
    : await readFile(where, 'utf8');
  const jwks = JSON.parse(text) as JSONWebKeySet;
  if (!Array.isArray(jwks.keys)) throw new Error(`${where}: not a JWKS (no "keys" array)`);
  return jwks;
}

/** An argument that names a store by URL rather than a path. */
const URL_ARGUMENT = /^[a-z][a-z0-9+.-]*:\/\//i;

/** A URL as it may be printed: its password replaced. */
function printable(url: string): string {
  const parsed = new URL(url);
  if (parsed.password === '') return url;
  parsed.password = 'redacted';
  return parsed.toString();
}

/** Whether `path` is a directory; a path that cannot be read is a usage error, found before any work. */
async function isDirectory(command: string, path: string, fail: Fail): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    fail(`audit ${command}: ${(err as Error).message}`);
  }
}

interface VerifySource {
  /** How the source is named in the report. */
  readonly name: string;
  lines(): AsyncIterable<SourceLine>;
}

/**
 * The sources of `audit verify`, each checked before any is read: a URL is
 * one source, a directory one, and files given one after another are one
 * trail (a chain split across files is checked across them).
 */
async function verifySources(args: readonly string[], fail: Fail): Promise<VerifySource[]> {
  const sources: VerifySource[] = [];
  let files: string[] = [];
  const endFiles = (): void => {
    if (files.length === 0) return;
    const run = files;
    files = [];
    sources.push({
      name:
        run.length === 1 ? (run[0] as string) : `${run[0]} … ${run.at(-1)} (${run.length} files)`,
      lines: () => readAuditFiles(run),
    });
  };
  for (const arg of args) {
    if (URL_ARGUMENT.test(arg)) {
      endFiles();
      let location: ReturnType<typeof parseAuditUrl>;
      try {
        location = parseAuditUrl(arg);
      } catch (err) {
        fail(`audit verify: ${(err as Error).message}`);
      }
      const name = printable(arg);
      sources.push({
        name,
        lines: () => (location.kind === 'redis' ? readRedisStream(arg) : readPostgres(arg)),
      });
      continue;
    }
    if (await isDirectory('verify', arg, fail)) {
      endFiles();
      sources.push({ name: arg, lines: () => readAuditFiles([arg]) });
    } else files.push(arg);
  }
  endFiles();
  return sources;
}

type SourceReport = { source: string } & VerifyReport;

/**
 * One source verified. A read that fails part-way (a connection lost, a
 * stream entry that is not a record) ends the source there: what was read is
 * reported, and the failure is one more problem.
 */
async function verifySource(
  source: VerifySource,
  options: Parameters<typeof verifyLines>[1],
): Promise<SourceReport> {
  let readError: Error | undefined;
  async function* untilError(): AsyncIterable<SourceLine> {
    try {
      yield* source.lines();
    } catch (err) {
      readError = err instanceof Error ? err : new Error(String(err));
    }
  }
  const report = await verifyLines(untilError(), options);
  const problems = [...report.problems];
  if (readError !== undefined)
    problems.push({ where: source.name, message: `could not be read: ${readError.message}` });
  else if (report.records === 0)
    problems.push({
      where: source.name,
      message:
        'no records: nothing to verify (a gateway writes a checkpoint as it starts; is the path, ?key= or ?table= right?)',
    });
  return { source: source.name, ...report, ok: problems.length === 0, problems };
}

function describe(report: SourceReport): string {
  const out: string[] = [`${report.source}:`];
  for (const c of report.chains) {
    out.push(
      `  chain ${c.chain}: ${c.records} records, seq ${c.firstSeq}..${c.lastSeq}, ` +
        `${c.checkpoints} checkpoints (${c.signedCheckpoints} signed)` +
        (c.startsLate ? `; begins at seq ${c.firstSeq} (earlier records not in the source)` : '') +
        (c.closed
          ? ''
          : '; no closing checkpoint (the gateway is running, stopped uncleanly, or the end was removed)'),
    );
  }
  for (const p of report.problems)
    out.push(`  BAD ${p.where}${p.seq === undefined ? '' : ` (seq ${p.seq})`}: ${p.message}`);
  out.push(
    report.ok
      ? `  ok: ${report.records} records verified`
      : `  FAILED: ${report.problems.length} problem(s)`,
  );
  return out.join('\n') + '\n';
}

export async function auditVerify(args: string[], fail: Fail): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      jwks: { type: 'string' },
      'from-genesis': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length === 0)
    fail('audit verify: name the sources: FILE…, DIR, redis://… or postgres://…');
  const sources = await verifySources(positionals, fail);
  let jwks: JSONWebKeySet | undefined;
  if (values.jwks !== undefined) {
    try {
      jwks = await loadJwks(values.jwks);
    } catch (err) {
      fail(`audit verify: --jwks ${values.jwks}: ${(err as Error).message}`);
    }
  }
  const reports: SourceReport[] = [];
  for (const source of sources) {
    const report = await verifySource(source, { jwks, fromGenesis: values['from-genesis'] });
    reports.push(report);
    if (!values.json) process.stdout.write(describe(report));
  }
  const bad = reports.filter((r) => !r.ok).length;
  if (values.json) {
    process.stdout.write(JSON.stringify({ ok: bad === 0, sources: reports }, null, 2) + '\n');
  } else if (reports.length > 1) {
    process.stdout.write(
      bad === 0
        ? `ok: ${reports.length} sources verified\n`
        : `FAILED: ${bad} of ${reports.length} sources bad\n`,
    );
  }
  if (bad > 0) process.exitCode = 1;
}

/** The `--from` of `audit query`: one postgres:// URL, or files and directories. */
async function querySource(from: readonly string[], fail: Fail): Promise<QuerySource> {
  if (from.length === 0) fail('audit query: name the source: --from DIR|FILE… or postgres://…');
  const urls = from.filter((f) => URL_ARGUMENT.test(f));
  if (urls.length > 0) {
    if (from.length > 1)
      fail('audit query: --from takes one postgres:// URL, or audit files and directories');
    const url = urls[0] as string;
    let kind: string;
    try {
      kind = parseAuditUrl(url).kind;
    } catch (err) {
      fail(`audit query: --from: ${(err as Error).message}`);
    }
    if (kind !== 'postgres')
      fail(
        'audit query: --from reads audit files or a postgres:// table (a Redis stream can be verified, not queried)',
      );
    return { kind: 'postgres', url };
  }
  for (const path of from) await isDirectory('query', path, fail);
  return { kind: 'files', paths: from };
}

function timeBound(option: string, text: string | undefined, now: number, fail: Fail) {
  if (text === undefined) return undefined;
  const at = parseTimeBound(text, now);
  if (at === undefined)
    fail(
      `audit query: --${option} '${text}' is neither a duration (30m, 1h, 7d) nor an ISO 8601 time with its offset (2026-05-01T12:00:00Z)`,
    );
  return at;
}

/** Writes to stdout, waiting while its buffer is full (a `--json` dump may be long). */
async function print(text: string): Promise<void> {
  if (!process.stdout.write(text)) await once(process.stdout, 'drain');
}

export async function auditQuery(args: string[], fail: Fail): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      from: { type: 'string', multiple: true },
      tenant: { type: 'string' },
      subject: { type: 'string' },
      tool: { type: 'string' },
      session: { type: 'string' },
      decision: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (values.from === undefined && positionals.length > 0)
    fail(`audit query: name the source with --from (got '${positionals[0]}')`);
  const source = await querySource([...(values.from ?? []), ...positionals], fail);

  const decision = values.decision;
  if (decision !== undefined && !AUDIT_DECISIONS.includes(decision as AuditDecision))
    fail(`audit query: --decision must be one of ${AUDIT_DECISIONS.join(', ')}, not '${decision}'`);
  let limit = DEFAULT_AUDIT_QUERY_LIMIT;
  if (values.limit !== undefined) {
    limit = /^\d+$/.test(values.limit) ? Number(values.limit) : NaN;
    // One more is asked for, to tell the operator more match.
    if (!Number.isSafeInteger(limit + 1) || limit < 1)
      fail(`audit query: --limit must be a positive integer, not '${values.limit}'`);
  }
  const now = Date.now();
  const since = timeBound('since', values.since, now, fail);
  const until = timeBound('until', values.until, now, fail);
  if (since !== undefined && until !== undefined && since.getTime() >= until.getTime())
    fail('audit query: --since must be before --until');
  for (const option of ['tenant', 'subject', 'tool', 'session'] as const) {
    if (values[option] === '') fail(`audit query: --${option} is empty`);
  }

  const filter: AuditQuery = {
    ...(values.tenant === undefined ? {} : { tenant: values.tenant }),
    ...(values.subject === undefined ? {} : { subject: values.subject }),
    ...(values.tool === undefined ? {} : { tool: values.tool }),
    ...(values.session === undefined ? {} : { session: values.session }),
    ...(decision === undefined ? {} : { decision: decision as AuditDecision }),
    ...(since === undefined ? {} : { since }),
    ...(until === undefined ? {} : { until }),
    limit: limit + 1,
  };

  // `| head` closes the pipe: that ends the output, it is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  let shown = 0;
  let more = false;
  const unreadable = { count: 0, first: '' };
  try {
    for await (const { line, record } of queryAudit(source, filter, {
      onUnreadable: (where) => {
        if (unreadable.count++ === 0) unreadable.first = where;
      },
    })) {
      if (shown === limit) {
        more = true;
        break;
      }
      shown++;
      await print((values.json ? line : formatRecord(record)) + '\n');
    }
  } catch (err) {
    process.stderr.write(`portcullis: audit query: ${(err as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  if (unreadable.count > 0)
    process.stderr.write(
      `portcullis: audit query: ${unreadable.count} line(s) are not audit records and were left out ` +
        `(the first: ${unreadable.first}); run portcullis audit verify\n`,
    );
  if (shown === 0) process.stderr.write('no records match\n');
  else if (more)
    process.stderr.write(
      `more records match: the first ${limit} are shown (raise --limit or narrow the filter)\n`,
    );
}
