// Thousands of concurrent idle SSE streams, held on raw sockets by run.ts itself (a socket and
// a few closures each, so the client side stays small): each stream is a modern POST that the
// origin answers with one event and then holds open until the client leaves.
import net from 'node:net';
import { idleRequest, rawHttpRequest, withHeaders, type IdleMethod } from './mcp.js';

const OPEN_TIMEOUT_MS = 10_000;
/** Failures tolerated (beyond this share of the streams asked for) before opening stops. */
const MAX_FAILED_SHARE = 0.02;

export interface IdleStreams {
  readonly opened: number;
  readonly failed: number;
  /** Streams that were open and then closed by the other side while they were being held. */
  dropped(): number;
  readonly firstError?: string;
  close(): void;
}

function openOne(
  url: URL,
  request: string,
  timeoutMs: number,
  onDrop: () => void,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname);
    let head = '';
    let ready = false;
    const fail = (err: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`no first event within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.setNoDelay(true);
    socket.once('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      if (ready) return;
      head += chunk.toString('latin1');
      const headerEnd = head.indexOf('\r\n\r\n');
      if (headerEnd === -1) return;
      if (!head.startsWith('HTTP/1.1 200')) {
        fail(new Error(head.slice(0, 200).replace(/\r\n/g, ' | ')));
        return;
      }
      // The first complete SSE event after the headers means the stream is live end to end.
      if (head.indexOf('\n\n', headerEnd + 4) === -1) return;
      ready = true;
      head = '';
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err) => {
      if (!ready) fail(err);
    });
    socket.once('close', () => {
      if (ready) onDrop();
      else fail(new Error('closed before the first event'));
    });
  });
}

export async function openIdleStreams(o: {
  url: string;
  method: IdleMethod;
  count: number;
  concurrency: number;
  /** No new stream is started after this many ms. */
  budgetMs: number;
  /** Added to every request: the target's credentials. */
  headers?: Record<string, string> | undefined;
}): Promise<IdleStreams> {
  const stopAt = Date.now() + o.budgetMs;
  const timeoutMs = Math.min(OPEN_TIMEOUT_MS, o.budgetMs);
  const maxFailed = Math.ceil(o.count * MAX_FAILED_SHARE) + 3;
  const url = new URL(o.url);
  const request = rawHttpRequest(url, withHeaders(idleRequest(o.method), o.headers));
  const sockets: net.Socket[] = [];
  let failed = 0;
  let dropped = 0;
  let closing = false;
  let firstError: string | undefined;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < o.count && Date.now() < stopAt && failed < maxFailed) {
      next++;
      try {
        sockets.push(
          await openOne(url, request, timeoutMs, () => {
            if (!closing) dropped++;
          }),
        );
      } catch (err) {
        failed++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  return {
    opened: sockets.length,
    failed,
    dropped: () => dropped,
    ...(firstError === undefined ? {} : { firstError }),
    close: () => {
      closing = true;
      for (const s of sockets) s.destroy();
    },
  };
}
