#!/usr/bin/env node
/**
 * The `portcullis` command line. The only module that knows about argv,
 * stdout and exit codes.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import {
  buildConfig,
  ConfigError,
  loadConfigFile,
  readConfigDocument,
  type ConfigProblem,
} from '../config/load.js';
import { DEFAULT_MAX_TOKEN_LIFETIME_MS, type Config } from '../config/schema.js';
import { startGateway, type Gateway } from '../server/gateway.js';
import { stdioStartProblems } from '../server/upstreams.js';
import { buildPolicy, PolicyLoadError } from '../server/policy-loader.js';
import { startEverything, type DemoUpstream } from '../demo/everything.js';
import { MANIFEST_HELP, manifestApprove, manifestDiff, manifestPull } from './manifest.js';
import { AUDIT_HELP, auditQuery, auditVerify } from './audit.js';
import { AUDIT_REPLAY_HELP, auditReplay } from './audit-replay.js';
import { SIGNING_ALGORITHMS, type SigningAlgorithm } from '../auth/keys.js';
import {
  DEV_AUDIENCE,
  DEV_ISSUER,
  DEV_KEYS_FILE,
  DEV_SUBJECT,
  DEV_TENANT,
  ensureDevKeys,
  mintToken,
  parseDuration,
  writeKeys,
} from './dev.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

/** Each command's own usage, printed by `portcullis COMMAND --help` and, together, by `--help`. */
const COMMAND_HELP = {
  start: `Usage: portcullis start [options]     run the gateway

Options:
  --config FILE          YAML configuration (see docs/configuration.md)
  --host H               listen address (default 127.0.0.1)
  --port P               listen port (default 8080; 0 picks a free one)
  --admin-port P         admin listener port for /livez and /readyz (default 9090; 0 = free one)
  --server NAME=URL      an upstream MCP server at /mcp/NAME; repeat for more. URL is a
                         Streamable HTTP endpoint; sse:URL a legacy HTTP+SSE one;
                         stdio:COMMAND ARGS… a local program, run sandboxed, a process
                         per session (quote the whole value; see docs/stdio.md)
  --auth jwt|none        client authentication: jwt (the default) or none (only on a
                         loopback address, for local development)
  --jwks FILE_OR_URL     the token issuer's keys: a JWKS URL, or a JWKS/PEM file
  --issuer ISS           the "iss" tokens must carry
  --audience AUD         an "aud" accepted besides the gateway's own resource; repeatable
  --tenant-claim NAME    the claim naming the tenant (default: tenant)
  --demo                 also start a demo upstream (server-everything) as server "everything";
                         without --issuer, trust a dev key kept in .portcullis/ and print a token;
                         both stop when the process that started them (npm, a shell) is gone
  --log-level LEVEL      fatal | error | warn | info | debug | trace | silent

Signals: SIGTERM or SIGINT drains (stops accepting, lets calls finish, closes
streams with a retry hint) and exits; a second signal exits at once.
Reload: with --config, SIGHUP, or a change to the file or to a manifest it
names (the directories are watched), reads the file again. Its policy
(tenants, servers.NAME.manifest/pinning) applies live to new requests;
sessions stay open. A file with any error is refused and the running policy
kept. Other changes are logged as needing a restart and not applied.
`,
  'config check': `Usage: portcullis config check FILE  validate a configuration file, print every error

Exit status: 0 valid, 1 invalid (each problem printed with its key), 2 usage error.
`,
  'keys generate': `Usage: portcullis keys generate [options]  create a signing key (private JWKS + public .pub.json)

Options:
  --alg ES256|EdDSA      key type (default ES256)
  --kid KID              key id (default: derived from the type and date)
  --out FILE             write the private JWKS here (mode 600) and FILE.pub.json beside it;
                         without --out the private JWKS goes to stdout
  --add                  add the key to an existing FILE instead of refusing
`,
  'token mint': `Usage: portcullis token mint [options]  print a short-lived access token signed with a local key

Options (defaults fit start --demo):
  --keys FILE            private JWKS to sign with (default ${DEV_KEYS_FILE})
  --sub S                subject (default ${DEV_SUBJECT})
  --tenant T             tenant claim (default ${DEV_TENANT})
  --scope "A B"          space-separated scopes (default none)
  --ttl D                lifetime: 90s, 10m, 1h (default and most: ${DEFAULT_MAX_TOKEN_LIFETIME_MS / 60_000}m, the gateway's
                         default maximum; a longer one is refused)
  --config FILE          the gateway's configuration: its auth.jwt.maxLifetimeMs bounds --ttl
  --aud AUD              audience: the gateway's resource or a server's (default ${DEV_AUDIENCE})
  --iss ISS              issuer (default ${DEV_ISSUER})
  --client ID            client_id claim (default portcullis-cli)
`,
  revoke: `Usage: portcullis revoke [options]    revoke a token, a subject or a session on a running gateway

Options (through the admin API of a running gateway):
  --jti ID | --sub S --tenant T | --session ID
                         what to revoke: one token, every token of a subject, one session
  --ttl D                how long it stays revoked (default: the longest a token lives)
  --reason TEXT          recorded with the revocation
  --list                 print the live revocations instead
  --admin-url URL        the admin listener (default http://127.0.0.1:9090)
  --admin-token-file F   its credential; default: the PORTCULLIS_ADMIN_TOKEN variable
`,
  'pins reset': `Usage: portcullis pins reset --server NAME --tool TOOL [options]
                         forget a tool's pin (trust on first use, no manifest) on every replica:
                         the definition it shows next is trusted, so a changed tool is approved

Options (through the admin API of a running gateway):
  --server NAME          the server, as named in the configuration
  --tool TOOL            the tool
  --admin-url URL        the admin listener (default http://127.0.0.1:9090)
  --admin-token-file F   its credential; default: the PORTCULLIS_ADMIN_TOKEN variable
`,
  'pins list': `Usage: portcullis pins list [--server NAME] [options]
                         print the pins trusted on first use (servers without a manifest)

Options:
  --server NAME          only this server's
  --admin-url URL        the admin listener (default http://127.0.0.1:9090)
  --admin-token-file F   its credential; default: the PORTCULLIS_ADMIN_TOKEN variable
`,
  ...MANIFEST_HELP,
  ...AUDIT_HELP,
  ...AUDIT_REPLAY_HELP,
} as const;

type CommandName = keyof typeof COMMAND_HELP;

const HELP = `portcullis ${VERSION} — a security gateway for the Model Context Protocol

Usage:
  portcullis start [options]           run the gateway
  portcullis config check FILE         validate a configuration file, print every error
  portcullis keys generate [options]   create a signing key (private JWKS + public .pub.json)
  portcullis token mint [options]      print a short-lived access token signed with a local key
  portcullis revoke [options]          revoke a token, a subject or a session on a running gateway
  portcullis manifest pull|diff|approve  a server's tool manifest: write it, compare it, approve tools
  portcullis pins reset|list           pins trusted on first use: approve a changed tool, list them
  portcullis audit verify SOURCE…      prove audit trails whole, or name each one's first bad record
  portcullis audit query --from SOURCE  print the audit records that match a filter
  portcullis audit replay [options]    re-issue a recorded session's calls, compare the answers
  portcullis COMMAND --help            that command's options
  portcullis --help | --version

${Object.values(COMMAND_HELP).join('\n')}
Examples:
  portcullis start --demo
  portcullis start --server docs=http://127.0.0.1:3001/mcp --auth none
  portcullis start --auth none --server 'files=stdio:mcp-server-filesystem /srv/shared'
  portcullis start --server docs=http://127.0.0.1:3001/mcp \
    --issuer https://login.example.com --jwks https://login.example.com/jwks
  portcullis config check config/portcullis.example.yaml
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`portcullis: ${message}\n`);
  process.exit(code);
}

/**
 * A command line as words: split on whitespace; single or double quotes keep
 * a word together (no other escapes; no shell runs it).
 */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let current: string | undefined;
  let lastEnd = -1;
  for (const m of line.matchAll(pattern)) {
    const word = m[1] ?? m[2] ?? m[3] ?? '';
    // Pieces with no space between them are one word: --opt="a b".
    if (current !== undefined && m.index === lastEnd) current += word;
    else {
      if (current !== undefined) words.push(current);
      current = word;
    }
    lastEnd = m.index + m[0].length;
  }
  if (current !== undefined) words.push(current);
  return words;
}

/** `--server` values: NAME=URL (Streamable HTTP), NAME=sse:URL, NAME=stdio:COMMAND ARGS… */
function parseServers(values: string[] | undefined): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) fail(`--server expects NAME=URL, NAME=sse:URL or NAME=stdio:COMMAND, got '${v}'`);
    const name = v.slice(0, eq);
    const target = v.slice(eq + 1);
    if (out[name]) fail(`--server ${name} given twice`);
    if (target.startsWith('stdio:')) {
      const [command, ...args] = splitCommandLine(target.slice('stdio:'.length));
      if (command === undefined) fail(`--server ${name}=stdio: needs a command`);
      // Started from a shell, a relative path means the shell's directory (read-only inside).
      out[name] = { transport: 'stdio', command, args, cwd: process.cwd() };
    } else if (target.startsWith('sse:')) {
      out[name] = { transport: 'sse', url: target.slice('sse:'.length) };
    } else {
      out[name] = { url: target };
    }
  }
  return out;
}

async function configCheck(args: string[]): Promise<void> {
  const file = args[0];
  if (!file || args.length > 1) fail('usage: portcullis config check FILE');
  try {
    const config = await loadConfigFile(file);
    // The host too: a stdio server that cannot start here is a problem, one that will fail later a warning.
    const host = Object.entries(config.servers).flatMap(([name, server]) =>
      stdioStartProblems(server).map((p) => ({ ...p, path: `servers.${name}.${p.key}` })),
    );
    for (const p of host.filter((h) => !h.fatal))
      process.stderr.write(`${file}: warning: ${p.path}: ${p.message}\n`);
    const fatal = host.filter((h) => h.fatal);
    if (fatal.length > 0) throw new ConfigError(file, fatal);
    // The manifests the servers name, read and checked as the gateway will.
    try {
      buildPolicy(config);
    } catch (err) {
      if (err instanceof PolicyLoadError) throw new ConfigError(file, [...err.problems]);
      throw err;
    }
    process.stdout.write(`${file}: ok (${Object.keys(config.servers).length} server(s))\n`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${file}: ${err.problems.length} problem(s)\n`);
    for (const p of err.problems) process.stderr.write(`  ${p.path}: ${p.message}\n`);
    process.exit(1);
  }
}

/** How often a demo gateway checks that the process that started it still runs. */
const PARENT_CHECK_INTERVAL_MS = 500;

/** With the dev identity: a token for the person at the terminal, and how it was made. */
interface DevToken {
  readonly token: string;
  readonly ttlS: number;
  readonly keysFile: string;
  readonly created: boolean;
  /** The listener's resource: a token for any other audience is refused. */
  readonly audience: string;
  readonly scope: string;
}

/** The command that mints another token like the banner's (same audience, scopes and key). */
function mintHint(dev: DevToken): string {
  const words = ['npx portcullis token mint', '--aud', dev.audience];
  if (dev.scope !== '') words.push('--scope', `"${dev.scope}"`);
  if (dev.keysFile !== DEV_KEYS_FILE) words.push('--keys', dev.keysFile);
  return words.join(' ');
}

function authLines(config: Config, dev: DevToken | undefined): string[] {
  if (config.auth.mode === 'none') {
    return [`Authentication: none — any local process may connect; loopback only.`];
  }
  if (dev === undefined) {
    return [
      `Authentication: jwt — tokens from ${config.auth.jwt.issuer ?? '?'}, for ${config.auth.resource ?? 'this gateway'}.`,
    ];
  }
  return [
    `Authentication: jwt — tokens from the dev issuer "${DEV_ISSUER}", signed with the key in`,
    `  ${dev.keysFile}${dev.created ? ' (just created)' : ''}; keep it private, it is for development only.`,
    `A token for you, valid ${Math.round(dev.ttlS / 60)} minutes:`,
    `  ${dev.token}`,
    `A new one: ${mintHint(dev)}`,
  ];
}

function banner(
  gateway: Gateway,
  config: Config,
  demo: DemoUpstream | undefined,
  dev: DevToken | undefined,
): string {
  const names = Object.keys(config.servers);
  const first = names[0] ?? 'NAME';
  const url = gateway.urlFor(first);
  const token = dev?.token ?? (config.auth.mode === 'jwt' ? 'YOUR_TOKEN' : undefined);
  const headerFlag = token === undefined ? '' : ` --header "Authorization: Bearer ${token}"`;
  const headersJson =
    token === undefined ? '' : `, "headers": { "Authorization": "Bearer ${token}" }`;
  const lines = [
    '',
    `Portcullis ${VERSION} is listening on ${gateway.url}`,
    ...names.map((n) => `  ${n.padEnd(12)} ${gateway.urlFor(n)}`),
    `  (legacy HTTP+SSE clients: ${gateway.urlFor(first)}/sse)`,
    gateway.adminUrl ? `  health       ${gateway.adminUrl}/livez  ${gateway.adminUrl}/readyz` : '',
    demo ? `  (demo upstream: server-everything, started with the gateway)` : '',
    '',
    ...authLines(config, dev),
    config.tenants === undefined
      ? 'Policy: no tenants are configured, so every authenticated principal may use every server and tool (docs/policy.md).'
      : `Policy: ${Object.keys(config.tenants).length} tenant(s) configured; anything not granted to a tenant is denied.`,
    '',
    'Point an MCP client at it, for example:',
    `  claude mcp add --transport http ${first} ${url}${headerFlag}`,
    token === undefined
      ? `  npx @modelcontextprotocol/inspector --transport http --server-url ${url}`
      : `  npx @modelcontextprotocol/inspector (Streamable HTTP, ${url}, the token as Bearer Token)`,
    '  or in a client config file:',
    `  { "mcpServers": { "${first}": { "type": "http", "url": "${url}"${headersJson} } } }`,
    '',
    'Ctrl-C drains and stops.',
    '',
  ];
  return lines.filter((l, i, a) => l !== '' || a[i - 1] !== '').join('\n');
}

async function keysGenerate(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      alg: { type: 'string', default: 'ES256' },
      kid: { type: 'string' },
      out: { type: 'string' },
      add: { type: 'boolean' },
    },
    strict: true,
  });
  if (!(SIGNING_ALGORITHMS as readonly string[]).includes(values.alg)) {
    fail(`--alg expects ${SIGNING_ALGORITHMS.join(' or ')}, got '${values.alg}'`);
  }
  const alg = values.alg as SigningAlgorithm;
  if (values.out === undefined) {
    if (values.add) fail('--add needs --out FILE');
    const { generateSigningKey } = await import('../auth/keys.js');
    const key = await generateSigningKey(alg, values.kid);
    process.stdout.write(`${JSON.stringify({ keys: [key] }, null, 2)}\n`);
    return;
  }
  try {
    const { kid, publicFile } = await writeKeys(values.out, alg, {
      ...(values.kid === undefined ? {} : { kid: values.kid }),
      add: values.add ?? false,
    });
    process.stdout.write(
      `${values.out}: ${alg} key "${kid}" (private; keep it readable by the gateway only)\n` +
        `${publicFile}: the public keys (what verifiers need)\n`,
    );
  } catch (err) {
    fail((err as Error).message, 1);
  }
}

async function tokenMint(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      keys: { type: 'string', default: DEV_KEYS_FILE },
      sub: { type: 'string', default: DEV_SUBJECT },
      tenant: { type: 'string', default: DEV_TENANT },
      scope: { type: 'string', default: '' },
      ttl: { type: 'string', default: '15m' },
      aud: { type: 'string', default: DEV_AUDIENCE },
      iss: { type: 'string', default: DEV_ISSUER },
      client: { type: 'string' },
      config: { type: 'string' },
    },
    strict: true,
  });
  const ttlS = parseDuration(values.ttl);
  if (ttlS === undefined || ttlS < 1)
    fail(`--ttl expects a duration like 90s, 10m or 1h, got '${values.ttl}'`);
  // A token the gateway would refuse as living too long is no use to anyone: say so now.
  let maxLifetimeMs = DEFAULT_MAX_TOKEN_LIFETIME_MS;
  if (values.config !== undefined) {
    try {
      maxLifetimeMs = (await loadConfigFile(values.config)).auth.jwt.maxLifetimeMs;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      fail(`--config: ${err.message}`);
    }
  }
  if (ttlS * 1000 > maxLifetimeMs) {
    const where =
      values.config === undefined
        ? "the gateway's default auth.jwt.maxLifetimeMs"
        : `auth.jwt.maxLifetimeMs in ${values.config}`;
    fail(
      `--ttl ${values.ttl} is longer than the ${maxLifetimeMs / 1000} s a token may live ` +
        `(${where}); the gateway would refuse it. Give a shorter --ttl` +
        (values.config === undefined ? ', or --config FILE for a gateway allowing longer' : ''),
    );
  }
  try {
    const token = await mintToken({
      keysFile: values.keys,
      issuer: values.iss,
      audience: values.aud,
      subject: values.sub,
      tenant: values.tenant,
      scope: values.scope,
      ttlS,
      ...(values.client === undefined ? {} : { clientId: values.client }),
    });
    process.stdout.write(`${token}\n`);
  } catch (err) {
    const hint =
      values.keys === DEV_KEYS_FILE ? ' (run `portcullis start --demo` once, or pass --keys)' : '';
    fail(`cannot mint: ${(err as Error).message}${hint}`, 1);
  }
}

async function revoke(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      jti: { type: 'string' },
      sub: { type: 'string' },
      tenant: { type: 'string' },
      session: { type: 'string' },
      ttl: { type: 'string' },
      reason: { type: 'string' },
      list: { type: 'boolean' },
      'admin-url': { type: 'string', default: 'http://127.0.0.1:9090' },
      'admin-token-file': { type: 'string' },
    },
    strict: true,
  });
  const token =
    values['admin-token-file'] !== undefined
      ? readFileSync(values['admin-token-file'], 'utf8').trim()
      : process.env.PORTCULLIS_ADMIN_TOKEN;
  if (!token)
    fail('the admin credential is needed: --admin-token-file F or PORTCULLIS_ADMIN_TOKEN');
  const url = `${values['admin-url'].replace(/\/$/, '')}/admin/revocations`;
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  let res: Response;
  try {
    if (values.list) {
      res = await fetch(url, { headers });
    } else {
      const chosen = (['jti', 'sub', 'session'] as const).filter((k) => values[k] !== undefined);
      if (chosen.length !== 1) fail('give exactly one of --jti, --sub, --session (or --list)');
      const kind = chosen[0] as 'jti' | 'sub' | 'session';
      if (kind === 'sub' && values.tenant === undefined) fail('--sub needs --tenant');
      let ttlMs: number | undefined;
      if (values.ttl !== undefined) {
        const s = parseDuration(values.ttl);
        if (s === undefined || s < 1)
          fail(`--ttl expects a duration like 10m or 1h, got '${values.ttl}'`);
        ttlMs = s * 1000;
      }
      res = await fetch(url, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          kind,
          id: values[kind],
          ...(values.tenant === undefined ? {} : { tenant: values.tenant }),
          ...(ttlMs === undefined ? {} : { ttlMs }),
          ...(values.reason === undefined ? {} : { reason: values.reason }),
        }),
      });
    }
  } catch (err) {
    fail(`cannot reach the admin API at ${url}: ${(err as Error).message}`, 1);
  }
  const text = await res.text();
  if (!res.ok) fail(`the admin API answered ${res.status}: ${text}`, 1);
  process.stdout.write(`${text}\n`);
}

/** `pins reset` and `pins list`: the admin API's /admin/pins routes. */
async function pins(sub: 'reset' | 'list', args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      server: { type: 'string' },
      tool: { type: 'string' },
      'admin-url': { type: 'string', default: 'http://127.0.0.1:9090' },
      'admin-token-file': { type: 'string' },
    },
    strict: true,
  });
  if (sub === 'reset' && (values.server === undefined || values.tool === undefined))
    fail('pins reset needs --server NAME and --tool TOOL');
  if (sub === 'list' && values.tool !== undefined) fail('pins list takes --server only');
  const token =
    values['admin-token-file'] !== undefined
      ? readFileSync(values['admin-token-file'], 'utf8').trim()
      : process.env.PORTCULLIS_ADMIN_TOKEN;
  if (!token)
    fail('the admin credential is needed: --admin-token-file F or PORTCULLIS_ADMIN_TOKEN');
  const base = `${values['admin-url'].replace(/\/$/, '')}/admin/pins`;
  const url =
    sub === 'reset'
      ? `${base}/${encodeURIComponent(values.server as string)}/${encodeURIComponent(values.tool as string)}`
      : values.server === undefined
        ? base
        : `${base}?server=${encodeURIComponent(values.server)}`;
  let res: Response;
  try {
    res = await fetch(url, {
      method: sub === 'reset' ? 'DELETE' : 'GET',
      headers: { authorization: `Bearer ${token}` },
    });
  } catch (err) {
    fail(`cannot reach the admin API at ${url}: ${(err as Error).message}`, 1);
  }
  const text = await res.text();
  if (!res.ok) fail(`the admin API answered ${res.status}: ${text}`, 1);
  process.stdout.write(`${text}\n`);
}

/** The configuration keys `start` sets from flags, and the flag that sets each. */
const FLAG_OF_KEY: ReadonlyArray<readonly [key: string, flag: string]> = [
  ['listen.host', '--host'],
  ['listen.port', '--port'],
  ['admin.port', '--admin-port'],
  ['log.level', '--log-level'],
  ['auth.mode', '--auth'],
  ['auth.jwt.jwksUrl', '--jwks'],
  ['auth.jwt.jwksFile', '--jwks'],
  ['auth.jwt.issuer', '--issuer'],
  ['auth.jwt.audiences', '--audience'],
  ['auth.jwt.tenantClaim', '--tenant-claim'],
];

/**
 * A problem of a run with flags only, told in the flags the user typed: the
 * key a flag set is named by that flag; a key no flag sets says a file is needed.
 */
function inFlagTerms(problem: ConfigProblem): string {
  let message = problem.message;
  for (const [key, flag] of FLAG_OF_KEY) message = message.split(key).join(flag);
  const server = /^servers\.([^.]+)(?:\.(.+))?$/.exec(problem.path);
  if (server) {
    return `--server ${server[1]}${server[2] === undefined ? '' : ` (${server[2]})`}: ${message}`;
  }
  const hit = FLAG_OF_KEY.find(
    ([key]) => problem.path === key || problem.path.startsWith(`${key}.`),
  );
  if (hit) return `${hit[1]}: ${message}`;
  return `${problem.path} (no flag sets it; use --config FILE): ${message}`;
}

/** A listener's port taken: which one, and the flag and key that move it. */
function portInUse(err: unknown, config: Config): string | undefined {
  const e = err as NodeJS.ErrnoException & { port?: number };
  if (e?.code !== 'EADDRINUSE') return undefined;
  const publicPort = e.port === config.listen.port;
  const adminPort = config.admin.enabled && e.port === config.admin.port;
  if (publicPort && adminPort) {
    return `listen.port and admin.port are both ${e.port}; give each its own (--port, --admin-port)`;
  }
  const [what, flag, key] = adminPort
    ? ['the admin listener', '--admin-port', 'admin.port']
    : ['the listener', '--port', 'listen.port'];
  return (
    `${what}'s port ${e.port ?? '?'} is in use by another program; ` +
    `choose another with ${flag} P (0 picks a free one) or ${key} in the configuration file`
  );
}

async function start(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      'admin-port': { type: 'string' },
      server: { type: 'string', multiple: true },
      auth: { type: 'string' },
      jwks: { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string', multiple: true },
      'tenant-claim': { type: 'string' },
      demo: { type: 'boolean' },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  if (values.auth !== undefined && values.auth !== 'none' && values.auth !== 'jwt') {
    fail(`--auth expects jwt or none, got '${values.auth}'`);
  }
  if (values.auth === 'none') {
    for (const flag of ['jwks', 'issuer', 'audience', 'tenant-claim'] as const) {
      if (values[flag] !== undefined) fail(`--${flag} needs JWT authentication; drop --auth none`);
    }
  }
  const port = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 65535)
      fail(`${flag} expects a port number, got '${v}'`);
    return n;
  };

  let demo: DemoUpstream | undefined;
  const servers = parseServers(values.server);
  if (values.demo) {
    if (servers.everything)
      fail('--demo adds server "everything"; choose another name for --server');
    demo = await startEverything();
    servers.everything = { url: demo.url };
  }

  let config: Config;
  let devKeys: Awaited<ReturnType<typeof ensureDevKeys>> | undefined;
  // The flags laid over the file's document: at start, and the same way again on each reload.
  const withFlags = async (document: unknown, source: string): Promise<Config> => {
    if (document === null || typeof document !== 'object' || Array.isArray(document)) {
      throw new ConfigError(source, [{ path: '(root)', message: 'must be a mapping' }]);
    }
    const base = document as Record<string, unknown>;
    const listen = { ...(base.listen as object | undefined) } as Record<string, unknown>;
    if (values.host !== undefined) listen.host = values.host;
    const p = port('--port', values.port);
    if (p !== undefined) listen.port = p;
    const admin = { ...(base.admin as object | undefined) } as Record<string, unknown>;
    const ap = port('--admin-port', values['admin-port']);
    if (ap !== undefined) admin.port = ap;
    const log = { ...(base.log as object | undefined) } as Record<string, unknown>;
    if (values['log-level'] !== undefined) log.level = values['log-level'];
    const auth = { ...(base.auth as object | undefined) } as Record<string, unknown>;
    if (values.auth !== undefined) auth.mode = values.auth;
    const jwt = { ...(auth.jwt as object | undefined) } as Record<string, unknown>;
    if (values.jwks !== undefined) {
      const remote = /^https?:\/\//.test(values.jwks);
      delete jwt[remote ? 'jwksFile' : 'jwksUrl'];
      jwt[remote ? 'jwksUrl' : 'jwksFile'] = values.jwks;
    }
    if (values.issuer !== undefined) jwt.issuer = values.issuer;
    if (values.audience !== undefined) jwt.audiences = values.audience;
    if (values['tenant-claim'] !== undefined) jwt.tenantClaim = values['tenant-claim'];
    if (values.demo && auth.mode !== 'none' && jwt.issuer === undefined) {
      // The demo runs with real JWT authentication: a local dev key is the issuer.
      devKeys ??= await ensureDevKeys();
      jwt.issuer = DEV_ISSUER;
      jwt.jwksFile = devKeys.publicFile;
      delete jwt.jwksUrl;
    }
    if (Object.keys(jwt).length > 0) auth.jwt = jwt;
    return buildConfig(
      {
        ...base,
        listen,
        admin,
        log,
        auth,
        servers: { ...(base.servers as object | undefined), ...servers },
      },
      source,
    );
  };
  try {
    const document = values.config ? await readConfigDocument(values.config) : {};
    config = await withFlags(document, values.config ?? 'command line');
  } catch (err) {
    await demo?.stop();
    if (err instanceof ConfigError) {
      process.stderr.write(
        values.config === undefined
          ? `Invalid command line:\n${err.problems.map((p) => `  ${inFlagTerms(p)}`).join('\n')}\n`
          : `${err.message}\n`,
      );
      process.exit(2);
    }
    throw err;
  }

  const log = pino({ level: config.log.level });
  let gateway: Gateway;
  try {
    gateway = await startGateway(config, {
      log,
      ...(values.config === undefined
        ? {}
        : {
            configFile: values.config,
            loadConfig: async (file: string) => withFlags(await readConfigDocument(file), file),
          }),
    });
  } catch (err) {
    await demo?.stop();
    const message = portInUse(err, config) ?? (err as Error).message;
    // The issuer's keys from a file named by --jwks: say which flag named it.
    const fromFlag =
      values.config === undefined && values.jwks !== undefined && message.includes(values.jwks);
    fail(`cannot start: ${fromFlag ? '--jwks: ' : ''}${message}`, 1);
  }
  if (demo) log.info({ pid: demo.child.pid, url: demo.url }, 'demo upstream running');
  let dev: DevToken | undefined;
  if (devKeys !== undefined) {
    const ttlS = Math.floor(config.auth.jwt.maxLifetimeMs / 1000);
    const audience = config.auth.resource ?? gateway.url;
    const scope = config.auth.requiredScopes.join(' ');
    dev = {
      token: await mintToken({
        keysFile: devKeys.keysFile,
        issuer: DEV_ISSUER,
        audience,
        subject: DEV_SUBJECT,
        tenant: DEV_TENANT,
        scope,
        ttlS,
      }),
      ttlS,
      keysFile: devKeys.keysFile,
      created: devKeys.created,
      audience,
      scope,
    };
  }
  process.stderr.write(banner(gateway, config, demo, dev));

  let signals = 0;
  const stop = (signal: NodeJS.Signals | 'parent gone') => {
    if (++signals > 1) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    log.info({ signal }, 'shutting down');
    gateway
      .close()
      .then(() => demo?.stop())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The reload logs its own outcome; a refused file leaves the running policy in force.
  process.on('SIGHUP', () => {
    if (values.config === undefined) {
      log.warn({ signal: 'SIGHUP' }, 'SIGHUP: started without --config, nothing to reload');
      return;
    }
    log.info({ signal: 'SIGHUP' }, 'SIGHUP: reloading the configuration');
    void gateway.reload();
  });
  if (demo) {
    // `npm start` runs the demo under npm and a shell; stopping npm ends the shell but
    // never reaches this process, which would be left running with its upstream. A
    // demo belongs to whoever started it: when that parent is gone, drain and stop.
    const parent = process.ppid;
    const watch = setInterval(() => {
      if (process.ppid !== parent) {
        clearInterval(watch);
        stop('parent gone');
      }
    }, PARENT_CHECK_INTERVAL_MS);
    watch.unref();
  }
  demo?.child.once('exit', (code, sig) => {
    if (signals === 0) log.error({ code, signal: sig }, 'demo upstream exited');
  });
}

/** `COMMAND --help`: that command's usage; the whole help for a command it does not know. */
function helpFor(command: string | undefined, sub: string | undefined): string {
  const groups: Record<string, CommandName> = {
    config: 'config check',
    keys: 'keys generate',
    token: 'token mint',
  };
  if (command === 'pins') {
    const one = `pins ${sub ?? ''}`;
    if (one === 'pins reset' || one === 'pins list') return COMMAND_HELP[one];
    return `${COMMAND_HELP['pins reset']}\n${COMMAND_HELP['pins list']}`;
  }
  if (command === 'start' || command === 'revoke') return COMMAND_HELP[command];
  if (command === 'audit') {
    const one = `audit ${sub ?? ''}`;
    if (one in AUDIT_HELP) return AUDIT_HELP[one as keyof typeof AUDIT_HELP];
    if (one in AUDIT_REPLAY_HELP) return AUDIT_REPLAY_HELP['audit replay'];
    return [...Object.values(AUDIT_HELP), ...Object.values(AUDIT_REPLAY_HELP)].join('\n');
  }
  if (command === 'manifest') {
    const one = `manifest ${sub ?? ''}`;
    if (one in MANIFEST_HELP) return MANIFEST_HELP[one as keyof typeof MANIFEST_HELP];
    return Object.values(MANIFEST_HELP).join('\n');
  }
  const only = command === undefined ? undefined : groups[command];
  // Each group has one subcommand: `token --help` and `token mint --help` say the same.
  if (
    only !== undefined &&
    (sub === undefined || sub.startsWith('-') || `${command} ${sub}` === only)
  )
    return COMMAND_HELP[only];
  return HELP;
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(helpFor(command, rest[0]));
    return;
  }
  switch (command) {
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(HELP);
      return;
    case '--version':
    case '-v':
      process.stdout.write(`${VERSION}\n`);
      return;
    case 'start':
      return start(rest);
    case 'keys':
      if (rest[0] === 'generate') return keysGenerate(rest.slice(1));
      fail(`unknown keys command '${rest[0] ?? ''}'; try: portcullis keys generate`);
      break;
    case 'token':
      if (rest[0] === 'mint') return tokenMint(rest.slice(1));
      fail(`unknown token command '${rest[0] ?? ''}'; try: portcullis token mint`);
      break;
    case 'revoke':
      return revoke(rest);
    case 'manifest':
      if (rest[0] === 'pull') return manifestPull(rest.slice(1));
      if (rest[0] === 'diff') return manifestDiff(rest.slice(1));
      if (rest[0] === 'approve') return manifestApprove(rest.slice(1));
      fail(
        `unknown manifest command '${rest[0] ?? ''}'; try: portcullis manifest pull|diff|approve`,
      );
      break;
    case 'pins':
      if (rest[0] === 'reset' || rest[0] === 'list') return pins(rest[0], rest.slice(1));
      fail(`unknown pins command '${rest[0] ?? ''}'; try: portcullis pins reset|list`);
      break;
    case 'audit':
      if (rest[0] === 'verify') return auditVerify(rest.slice(1), fail);
      if (rest[0] === 'query') return auditQuery(rest.slice(1), fail);
      if (rest[0] === 'replay') return auditReplay(rest.slice(1), fail);
      fail(`unknown audit command '${rest[0] ?? ''}'; try: portcullis audit verify|query|replay`);
      break;
    case 'config':
      if (rest[0] === 'check') return configCheck(rest.slice(1));
      fail(`unknown config command '${rest[0] ?? ''}'; try: portcullis config check FILE`);
      break;
    default:
      fail(`unknown command '${command}'; try: portcullis --help`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS')) {
    fail(`${err.message}; try: portcullis --help`);
  }
  process.stderr.write(`portcullis: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
