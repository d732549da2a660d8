/**
 * A stdio MCP server as a channel: one child process, newline-delimited
 * JSON-RPC on stdin/stdout (spec/2025-11-25/basic/transports.mdx, "stdio":
 * messages MUST NOT contain embedded newlines; the server MUST NOT write
 * anything else to stdout), stderr into the log. By default the child runs
 * in a bubblewrap sandbox (sandbox.ts) with a clean environment.
 *
 * Rules, in order of precedence:
 * 1. The child never inherits the gateway's environment: only PATH, HOME,
 *    LANG and the configured allowlist reach it.
 * 2. Anything on stdout that is not one JSON-RPC message per line is logged
 *    and dropped, never forwarded.
 * 3. stderr is logged line by line, with secrets masked and at most a few
 *    lines a second; the rest is counted and summarised.
 * 4. Shutdown closes stdin, waits, then SIGTERM, then SIGKILL (spec,
 *    "Shutdown").
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import {
  ChannelClosedError,
  ChannelListeners,
  type JsonRpcMessage,
  type MessageChannel,
} from './channel.js';
import { nestedDeeperThan } from '../mcp/depth.js';
import { childrenByParent } from './procfs.js';
import type { SandboxPlan } from './sandbox.js';

/** stderr lines logged per second per process; the rest are counted. */
const STDERR_LINES_PER_SECOND = 20;
/** A stderr line is cut to this many characters in the log. */
const STDERR_LINE_CHARS = 1_000;
/** How much garbage on stdout is logged per second. */
const GARBAGE_LOGS_PER_SECOND = 5;

/** `Bearer …`, JWTs, and `secret=…`-like pairs: masked before a stderr line is logged. */
const SECRET_PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/\b(Bearer|Basic|DPoP)\s+[A-Za-z0-9._~+/=-]+/gi, '$1 [redacted]'],
  [/\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, '[redacted-jwt]'],
  [
    /\b([A-Za-z0-9_-]*(?:secret|token|password|passwd|api[_-]?key|credential)[A-Za-z0-9_-]*)(\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)/gi,
    '$1$2[redacted]',
  ],
];

function redact(line: string): string {
  let out = line;
  for (const [pattern, replacement] of SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

export interface StdioOptions {
  /** The server's name, for logs. */
  readonly server: string;
  /** What to run: the command line, wrapped by the sandbox plan. */
  readonly plan: SandboxPlan;
  /** Longest line accepted on stdout; longer ones are dropped. */
  readonly maxLineBytes: number;
  /** Time stdin-close, then SIGTERM, each get before the next step. */
  readonly shutdownStepMs: number;
  readonly log: Logger;
}

/** Counts events per second and says whether one more may be logged. */
class RateLimit {
  private windowStart = 0;
  private count = 0;
  suppressed = 0;
  constructor(private readonly perSecond: number) {}
  allow(now: number): boolean {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.count = 0;
    }
    if (this.count < this.perSecond) {
      this.count++;
      return true;
    }
    this.suppressed++;
    return false;
  }
}

/**
 * The wrappers a sandboxed server runs under (prlimit execs bwrap, which forks its init;
 * for a server below a directory only root may enter, a bwrap and setpriv before them).
 */
const WRAPPERS = new Set(['bwrap', 'prlimit', 'setpriv']);

/**
 * The server's own process(es) under `root`: `root` itself when it is the
 * server, else the first processes below the wrappers, found through /proc.
 */
export function serverProcesses(root: number | undefined): number[] {
  if (root === undefined) return [];
  const children = childrenByParent();
  const found: number[] = [];
  const walk = (pid: number): void => {
    let comm = '';
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      return;
    }
    if (!WRAPPERS.has(comm)) {
      found.push(pid);
      return;
    }
    for (const child of children.get(pid) ?? []) walk(child);
  };
  walk(root);
  return found;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

export class StdioChannel extends ChannelListeners implements MessageChannel {
  private readonly child: ChildProcessWithoutNullStreams;
  private closing: Promise<void> | undefined;
  private stdoutRest = '';
  private stderrRest = '';
  private readonly stderrLimit = new RateLimit(STDERR_LINES_PER_SECOND);
  private readonly garbageLimit = new RateLimit(GARBAGE_LOGS_PER_SECOND);
  private readonly summaryTimer: NodeJS.Timeout;
  private readonly log: Logger;

  constructor(private readonly options: StdioOptions) {
    super();
    const { plan } = options;
    this.log = options.log.child({ server: options.server });
    this.child = spawn(plan.command, plan.args, {
      env: plan.env,
      cwd: plan.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(plan.uid === undefined ? {} : { uid: plan.uid, gid: plan.gid }),
    });
    this.child.stdin.on('error', () => undefined);
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => this.onStdout(chunk));
    this.child.stderr.on('data', (chunk: string) => this.onStderr(chunk));
    this.child.once('error', (err) =>
      this.end(new ChannelClosedError(`cannot start: ${err.message}`, 'could not be started')),
    );
    this.child.once('exit', (code, signal) => {
      this.flushStderr();
      this.end(
        this.closing
          ? undefined
          : new ChannelClosedError(
              `server '${options.server}' exited (${signal ?? `code ${code ?? '?'}`})`,
              `exited (${signal ?? `code ${code ?? '?'}`})`,
            ),
      );
    });
    this.summaryTimer = setInterval(() => this.summarise(), 1000);
    this.summaryTimer.unref();
    this.log.info({ pid: this.child.pid, sandboxed: plan.sandboxed }, 'stdio server started');
  }

  send(message: JsonRpcMessage): void {
    if (this.ended || this.closing)
      throw new ChannelClosedError(
        `server '${this.options.server}' is not running`,
        'is not running',
      );
    // JSON.stringify never emits a raw newline: the framing holds.
    this.child.stdin.write(`${JSON.stringify(message)}\n`);
  }

  pause(): void {
    this.child.stdout.pause();
  }

  resume(): void {
    this.child.stdout.resume();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.ended) return;
      const exited = new Promise<void>((resolve) => this.onClose(() => resolve()));
      const step = (ms: number) =>
        Promise.race([
          exited.then(() => true),
          new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref()),
        ]);
      this.child.stdin.end();
      if (await step(this.options.shutdownStepMs)) return;
      // To the server itself: bwrap does not pass signals on, and killing it would
      // SIGKILL the server through --die-with-parent.
      for (const pid of serverProcesses(this.child.pid)) signal(pid, 'SIGTERM');
      if (await step(this.options.shutdownStepMs)) return;
      this.log.warn({ pid: this.child.pid }, 'stdio server ignored SIGTERM; killing it');
      // Killing the sandbox's outer process ends its PID namespace, and everything in it.
      this.child.kill('SIGKILL');
      await exited;
    })();
    return this.closing;
  }

  private end(reason: Error | undefined): void {
    if (this.ended) return;
    clearInterval(this.summaryTimer);
    this.summarise();
    if (reason) this.log.warn({ pid: this.child.pid, err: reason.message }, 'stdio server ended');
    else this.log.info({ pid: this.child.pid }, 'stdio server stopped');
    this.markEnded(reason);
  }

  private onStdout(chunk: string): void {
    let text = this.stdoutRest + chunk;
    let newline = text.indexOf('\n');
    while (newline !== -1) {
      const line = text.slice(0, newline);
      text = text.slice(newline + 1);
      this.onLine(line);
      newline = text.indexOf('\n');
    }
    if (text.length > this.options.maxLineBytes) {
      this.garbage('an oversized line', text.length);
      text = '';
    }
    this.stdoutRest = text;
  }

  private onLine(raw: string): void {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      return this.garbage('a line that is not JSON', line.length, line);
    }
    if (
      message === null ||
      typeof message !== 'object' ||
      Array.isArray(message) ||
      (message as { jsonrpc?: unknown }).jsonrpc !== '2.0'
    ) {
      return this.garbage('JSON that is not a JSON-RPC message', line.length, line);
    }
    if (nestedDeeperThan(line)) return this.refuseTooDeep(message, this.options.server, this.log);
    this.emitMessage(message as JsonRpcMessage);
  }

  private garbage(what: string, bytes: number, sample?: string): void {
    if (!this.garbageLimit.allow(Date.now())) return;
    this.log.warn(
      {
        pid: this.child.pid,
        bytes,
        sample: sample === undefined ? undefined : redact(sample.slice(0, 200)),
      },
      `dropped ${what} from stdout (a stdio server must write only JSON-RPC messages there)`,
    );
  }

  private onStderr(chunk: string): void {
    let text = this.stderrRest + chunk;
    let newline = text.indexOf('\n');
    while (newline !== -1) {
      this.stderrLine(text.slice(0, newline));
      text = text.slice(newline + 1);
      newline = text.indexOf('\n');
    }
    // A line with no end in sight is logged in pieces, never held without bound.
    if (text.length > STDERR_LINE_CHARS) {
      this.stderrLine(text);
      text = '';
    }
    this.stderrRest = text;
  }

  private flushStderr(): void {
    if (this.stderrRest !== '') this.stderrLine(this.stderrRest);
    this.stderrRest = '';
  }

  private stderrLine(line: string): void {
    if (line.trim() === '' || !this.stderrLimit.allow(Date.now())) return;
    this.log.info(
      { pid: this.child.pid, stderr: redact(line.slice(0, STDERR_LINE_CHARS)) },
      'stdio server stderr',
    );
  }

  private summarise(): void {
    for (const [limit, what] of [
      [this.stderrLimit, 'stderr lines'],
      [this.garbageLimit, 'stdout garbage reports'],
    ] as const) {
      if (limit.suppressed > 0) {
        this.log.warn(
          { pid: this.child.pid, suppressed: limit.suppressed },
          `stdio server: ${what} suppressed (rate limit)`,
        );
        limit.suppressed = 0;
      }
    }
  }
}
