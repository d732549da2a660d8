// Closed-loop throughput with wrk (C, Debian package): a generated Lua script makes every
// request the same valid modern-era tools/call POST.
import { execFile, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { McpRequest } from './mcp.js';
import { launch } from './proc.js';

const execFileAsync = promisify(execFile);
/** wrk's own --timeout: a request slower than this counts as a timeout error. */
const WRK_REQUEST_TIMEOUT_S = 10;
/** Extra time granted to the wrk process beyond its own duration before it is killed. */
const WRK_KILL_SLACK_MS = 20_000;

export interface WrkResult {
  readonly requestsPerSec: number;
  readonly requests: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly non2xx: number;
  readonly socketErrors: number;
}

function luaString(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

export function writeWrkScript(dir: string, req: McpRequest, name = 'tools-call.lua'): string {
  const lines = ['wrk.method = "POST"', `wrk.body = ${luaString(req.body)}`];
  for (const [k, v] of Object.entries(req.headers)) {
    lines.push(`wrk.headers[${luaString(k)}] = ${luaString(v)}`);
  }
  const file = path.join(dir, name);
  writeFileSync(file, `${lines.join('\n')}\n`);
  return file;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  if (unit === 'us') return n / 1000;
  if (unit === 'ms') return n;
  if (unit === 's') return n * 1000;
  if (unit === 'm') return n * 60_000;
  throw new Error(`unknown wrk unit ${unit}`);
}

function percentile(out: string, p: number): number {
  const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
  if (m?.[1] === undefined || m[2] === undefined) throw new Error(`wrk: no ${p}% line`);
  return toMs(m[1], m[2]);
}

export function parseWrk(out: string): WrkResult {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(out)?.[1];
  const total = /(\d+) requests in /.exec(out)?.[1];
  if (rps === undefined || total === undefined) throw new Error(`wrk: unexpected output\n${out}`);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    requestsPerSec: Number(rps),
    requests: Number(total),
    p50Ms: percentile(out, 50),
    p90Ms: percentile(out, 90),
    p99Ms: percentile(out, 99),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
    socketErrors: errors === null ? 0 : errors.slice(1).reduce((s, n) => s + Number(n), 0),
  };
}

export async function runWrk(o: {
  url: string;
  script: string;
  connections: number;
  threads: number;
  durationS: number;
  cpus: string | undefined;
}): Promise<WrkResult> {
  const [cmd, args] = launch(o.cpus, 'wrk', [
    `-t${o.threads}`,
    `-c${o.connections}`,
    `-d${o.durationS}s`,
    `--timeout`,
    `${WRK_REQUEST_TIMEOUT_S}s`,
    '--latency',
    '-s',
    o.script,
    o.url,
  ]);
  const { stdout } = await execFileAsync(cmd, args, {
    timeout: o.durationS * 1000 + WRK_KILL_SLACK_MS,
    killSignal: 'SIGKILL',
  });
  return parseWrk(stdout);
}

/** wrk prints its version and exits 1. */
export function wrkVersion(): string {
  let out = '';
  try {
    out = execFileSync('wrk', ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    out = String((err as { stdout?: unknown }).stdout ?? '');
  }
  return out.split('\n')[0]?.split(' Copyright')[0]?.trim() || 'wrk';
}
