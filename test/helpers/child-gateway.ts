/**
 * `portcullis start --config FILE` in a child process, as an operator runs it:
 * the built CLI (dist/), JSON logs on stdout, stopped by a signal. For what
 * only a real process shows: SIGTERM and its drain, a crash, an exit code.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
/** A cold start of Node and the gateway. */
const START_TIMEOUT_MS = 15_000;

export interface ChildGateway {
  /** The public listener's base URL. */
  readonly url: string;
  /** The gateway's JSON log records so far. */
  readonly logs: ReadonlyArray<Record<string, unknown>>;
  /** SIGTERM; resolves with the exit code and how long the exit took. */
  stop(): Promise<{ code: number | null; ms: number }>;
  /** Sends SIGTERM and returns at once; `exited` settles when the process is gone. */
  signal(): void;
  /** SIGKILL: gone at once, nothing drained or cleaned up (a crash, an OOM kill). */
  kill(): Promise<void>;
  readonly exited: Promise<number | null>;
  /** What it wrote on stderr so far (a crash's stack). */
  stderr(): string;
}

/** Calls `onRecord` with each line of `stream` that is a JSON object (the gateway's log records). */
export function onJsonLines(
  stream: NodeJS.ReadableStream,
  onRecord: (record: Record<string, unknown>) => void,
): void {
  createInterface({ input: stream }).on('line', (line) => {
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      return;
    }
    if (typeof record === 'object' && record !== null) onRecord(record as Record<string, unknown>);
  });
}

/** Starts the gateway on `config`; `args` are added after it (e.g. `--port 0`). Killed after the test. */
export async function startChildGateway(
  t: TestContext,
  config: string,
  args: readonly string[] = ['--port', '0', '--admin-port', '0'],
): Promise<ChildGateway> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = spawn(process.execPath, [CLI, 'start', '--config', config, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  const logs: Array<Record<string, unknown>> = [];
  const listening = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no "gateway listening":\n${stderr}`)),
      START_TIMEOUT_MS,
    );
    onJsonLines(child.stdout, (record) => {
      logs.push(record);
      if (record.msg === 'gateway listening') {
        clearTimeout(timer);
        resolve(record.url as string);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code}):\n${stderr}`));
    });
  });
  const url = await listening;
  return {
    url,
    logs,
    exited,
    stderr: () => stderr,
    signal() {
      child.kill('SIGTERM');
    },
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
    async stop() {
      const signalled = Date.now();
      child.kill('SIGTERM');
      const code = await exited;
      return { code, ms: Date.now() - signalled };
    },
  };
}
