#!/usr/bin/env node
/**
 * The `portcullis` command line. The only module that knows about argv,
 * stdout and exit codes.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { buildConfig, ConfigError, loadConfigFile, readConfigDocument } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { startGateway, type Gateway } from '../server/gateway.js';
import { startEverything, type DemoUpstream } from '../demo/everything.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

const HELP = `portcullis ${VERSION} — a security gateway for the Model Context Protocol

Usage:
  portcullis start [options]           run the gateway
  portcullis config check FILE         validate a configuration file, print every error
  portcullis --help | --version

Options for start:
  --config FILE          YAML configuration (see docs/configuration.md)
  --host H               listen address (default 127.0.0.1)
  --port P               listen port (default 8080; 0 picks a free one)
  --admin-port P         admin listener port for /livez and /readyz (default 9090; 0 = free one)
  --server NAME=URL      an upstream MCP server at /mcp/NAME; repeat for more
  --auth none            no client authentication (only on a loopback address)
  --demo                 also start a demo upstream (server-everything) as server "everything"
  --log-level LEVEL      fatal | error | warn | info | debug | trace | silent

Examples:
  portcullis start --demo
  portcullis start --server docs=http://127.0.0.1:3001/mcp --auth none
  portcullis config check config/portcullis.example.yaml

Signals: SIGTERM or SIGINT drains (stops accepting, lets calls finish, closes
streams with a retry hint) and exits; a second signal exits at once.
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`portcullis: ${message}\n`);
  process.exit(code);
}

function parseServers(values: string[] | undefined): Record<string, { url: string }> {
  const out: Record<string, { url: string }> = {};
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) fail(`--server expects NAME=URL, got '${v}'`);
    const name = v.slice(0, eq);
    if (out[name]) fail(`--server ${name} given twice`);
    out[name] = { url: v.slice(eq + 1) };
  }
  return out;
}

async function configCheck(args: string[]): Promise<void> {
  const file = args[0];
  if (!file || args.length > 1) fail('usage: portcullis config check FILE');
  try {
    const config = await loadConfigFile(file);
    process.stdout.write(`${file}: ok (${Object.keys(config.servers).length} server(s))\n`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${file}: ${err.problems.length} problem(s)\n`);
    for (const p of err.problems) process.stderr.write(`  ${p.path}: ${p.message}\n`);
    process.exit(1);
  }
}

function banner(gateway: Gateway, config: Config, demo: DemoUpstream | undefined): string {
  const names = Object.keys(config.servers);
  const first = names[0] ?? 'NAME';
  const lines = [
    '',
    `Portcullis ${VERSION} is listening on ${gateway.url}`,
    ...names.map((n) => `  ${n.padEnd(12)} ${gateway.urlFor(n)}`),
    gateway.adminUrl ? `  health       ${gateway.adminUrl}/livez  ${gateway.adminUrl}/readyz` : '',
    demo ? `  (demo upstream: server-everything, started with the gateway)` : '',
    '',
    `Authentication: ${config.auth.mode} — any local process may connect; loopback only.`,
    '',
    'Point an MCP client at it, for example:',
    `  npx @modelcontextprotocol/inspector --transport http --server-url ${gateway.urlFor(first)}`,
    `  claude mcp add --transport http ${first} ${gateway.urlFor(first)}`,
    '  or in a client config file:',
    `  { "mcpServers": { "${first}": { "type": "http", "url": "${gateway.urlFor(first)}" } } }`,
    '',
    'Ctrl-C drains and stops.',
    '',
  ];
  return lines.filter((l, i, a) => l !== '' || a[i - 1] !== '').join('\n');
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
      demo: { type: 'boolean' },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  if (values.auth !== undefined && values.auth !== 'none') {
    fail(`--auth ${values.auth} is not available; use --auth none on a loopback address`);
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
  try {
    const document = values.config ? await readConfigDocument(values.config) : {};
    if (document === null || typeof document !== 'object' || Array.isArray(document)) {
      throw new ConfigError(values.config ?? 'command line', [
        { path: '(root)', message: 'must be a mapping' },
      ]);
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
    config = buildConfig(
      {
        ...base,
        listen,
        admin,
        log,
        auth,
        servers: { ...(base.servers as object | undefined), ...servers },
      },
      values.config ?? 'command line',
    );
  } catch (err) {
    await demo?.stop();
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }

  const log = pino({ level: config.log.level });
  let gateway: Gateway;
  try {
    gateway = await startGateway(config, { log });
  } catch (err) {
    await demo?.stop();
    fail(`cannot start: ${(err as Error).message}`, 1);
  }
  if (demo) log.info({ pid: demo.child.pid, url: demo.url }, 'demo upstream running');
  process.stderr.write(banner(gateway, config, demo));

  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
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
  demo?.child.once('exit', (code, sig) => {
    if (signals === 0) log.error({ code, signal: sig }, 'demo upstream exited');
  });
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
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
      if (rest.includes('--help') || rest.includes('-h')) {
        process.stdout.write(HELP);
        return;
      }
      return start(rest);
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
