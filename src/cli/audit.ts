/**
 * `portcullis audit …`: the operator's side of the audit trail. `verify`
 * proves a trail whole (or names its first bad record) from files or a
 * directory of them.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import { readAuditFiles, verifyLines, type VerifyReport } from '../audit/verify.js';

export const AUDIT_HELP = {
  'audit verify': `Usage: portcullis audit verify [options] FILE…|DIR
                         prove an audit trail was not altered, removed from or reordered

Checks every record's hash, that each follows the one before (seq, prevHash), and each signed
checkpoint. A directory is read in the order of its files' names (the order they were written).

Options:
  --jwks FILE_OR_URL     the gateway's public keys (its /.well-known/jwks.json, or the .pub.json
                         of \`portcullis keys generate\`): checkpoints must be signed by them
  --from-genesis         a chain must begin at seq 0 (nothing removed from its start; without
                         it, a start removed by retention is reported, not refused)
  --json                 print the report as JSON

Exit status: 0 the trail is whole, 1 a record is bad (the first one is named), 2 usage error.
`,
} as const;

async function loadJwks(where: string): Promise<JSONWebKeySet> {
  const text = /^https?:\/\//.test(where)
    ? await (await fetch(where, { signal: AbortSignal.timeout(10_000) })).text()
    : await readFile(where, 'utf8');
  const jwks = JSON.parse(text) as JSONWebKeySet;
  if (!Array.isArray(jwks.keys)) throw new Error(`${where}: not a JWKS (no "keys" array)`);
  return jwks;
}

function describe(report: VerifyReport): string {
  const out: string[] = [];
  for (const c of report.chains) {
    out.push(
      `chain ${c.chain}: ${c.records} records, seq ${c.firstSeq}..${c.lastSeq}, ` +
        `${c.checkpoints} checkpoints (${c.signedCheckpoints} signed)` +
        (c.startsLate ? `; begins at seq ${c.firstSeq} (earlier records not in the source)` : '') +
        (c.closed
          ? ''
          : '; no closing checkpoint (the gateway is running, stopped uncleanly, or the end was removed)'),
    );
  }
  for (const p of report.problems)
    out.push(`BAD ${p.where}${p.seq === undefined ? '' : ` (seq ${p.seq})`}: ${p.message}`);
  out.push(
    report.ok
      ? `ok: ${report.records} records verified`
      : `FAILED: ${report.problems.length} chain(s) broken`,
  );
  return out.join('\n') + '\n';
}

export async function auditVerify(args: string[], fail: (message: string) => never): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      jwks: { type: 'string' },
      'from-genesis': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length === 0) fail('audit verify: name the audit files or their directory');
  let jwks: JSONWebKeySet | undefined;
  if (values.jwks !== undefined) {
    try {
      jwks = await loadJwks(values.jwks);
    } catch (err) {
      fail(`audit verify: --jwks ${values.jwks}: ${(err as Error).message}`);
    }
  }
  let report: VerifyReport;
  try {
    report = await verifyLines(readAuditFiles(positionals), {
      jwks,
      fromGenesis: values['from-genesis'],
    });
  } catch (err) {
    fail(`audit verify: ${(err as Error).message}`);
  }
  process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : describe(report));
  if (!report.ok) process.exitCode = 1;
}
