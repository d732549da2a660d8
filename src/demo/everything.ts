/**
 * The demo upstream behind `npm start`: `@modelcontextprotocol/server-everything`
 * as a child process on loopback, started and stopped with the gateway.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const DEMO_START_TIMEOUT_MS = 15_000;

export interface DemoUpstream {
  /** The MCP endpoint, e.g. `http://127.0.0.1:41234/mcp`. */
  readonly url: string;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

/** server-everything's transports over HTTP: Streamable HTTP (at /mcp) or the legacy HTTP+SSE (at /sse). */
export type EverythingTransport = 'streamableHttp' | 'sse';

export async function startEverything(
  onOutput: (line: string) => void = () => undefined,
  transport: EverythingTransport = 'streamableHttp',
): Promise<DemoUpstream> {
  const entry = fileURLToPath(new URL('./everything-child.js', import.meta.url));
  // Under tsx (tests) the .ts source runs; the built CLI runs the .js next to this file.
  const child = fork(
    entry.replace(/\.js$/, import.meta.url.endsWith('.ts') ? '.ts' : '.js'),
    [transport],
    {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      execArgv: import.meta.url.endsWith('.ts') ? ['--import', 'tsx'] : [],
    },
  );
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) if (line.trim()) onOutput(line);
    });
  }
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`demo upstream did not start within ${DEMO_START_TIMEOUT_MS} ms`));
    }, DEMO_START_TIMEOUT_MS);
    child.once('message', (m: { port?: number }) => {
      clearTimeout(timer);
      if (typeof m.port === 'number') resolve(m.port);
      else reject(new Error('demo upstream sent no port'));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`demo upstream exited with code ${code}`));
    });
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    url: `http://127.0.0.1:${port}/${transport === 'sse' ? 'sse' : 'mcp'}`,
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}
