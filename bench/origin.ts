// The benchmark's upstream: a minimal modern-era (2026-07-28, stateless) MCP server on bare
// node:http, kept as light as possible so that the proxies, not the origin, are measured.
//
//   POST /mcp  tools/call echo       → 200 application/json result
//   POST /mcp  tools/call progress   → 200 text/event-stream: N progress events spaced by a delay, then the result
//   POST /mcp  tools/call hold       → 200 text/event-stream: one progress event, then open until the client leaves
//   POST /mcp  subscriptions/listen  → 200 text/event-stream: the acknowledgement, then open until the client leaves
//   GET  /stats                      → open streams and requests served (read by run.ts, never under load)
//
// Usage: node --import tsx bench/origin.ts [--sse-events 3] [--sse-delay-ms 100]
// Prints one JSON line {"port":N} on stdout when listening on 127.0.0.1 (port 0).
import http from 'node:http';
import { parseArgs } from 'node:util';
import { TOOL_ECHO, TOOL_HOLD, TOOL_PROGRESS } from './mcp.js';
import { listenAndAnnounce } from './listen.js';

const KEEP_ALIVE_TIMEOUT_MS = 65_000;

const { values } = parseArgs({
  options: {
    'sse-events': { type: 'string', default: '3' },
    'sse-delay-ms': { type: 'string', default: '100' },
  },
});
const sseEvents = Number(values['sse-events']);
const sseDelayMs = Number(values['sse-delay-ms']);

const SSE_HEADERS = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
};

let openStreams = 0;
let served = 0;

interface JsonRpcRequest {
  id?: string | number;
  method?: string;
  params?: {
    name?: string;
    arguments?: { message?: unknown };
    _meta?: { progressToken?: unknown };
  };
}

function event(message: unknown): string {
  return `event: message\ndata: ${JSON.stringify(message)}\n\n`;
}

function toolResult(id: string | number, text: string): unknown {
  return {
    jsonrpc: '2.0',
    id,
    result: { resultType: 'complete', content: [{ type: 'text', text }], isError: false },
  };
}

function progress(token: unknown, step: number, total: number): unknown {
  return {
    jsonrpc: '2.0',
    method: 'notifications/progress',
    params: { progressToken: token, progress: step, total, message: `step ${step}` },
  };
}

function sendJson(res: http.ServerResponse, status: number, message: unknown): void {
  const body = JSON.stringify(message);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function openStream(res: http.ServerResponse, onClose: () => void): void {
  openStreams++;
  res.writeHead(200, SSE_HEADERS);
  res.once('close', () => {
    openStreams--;
    onClose();
  });
}

function streamProgress(res: http.ServerResponse, id: string | number, token: unknown): void {
  let step = 0;
  let timer: NodeJS.Timeout | undefined;
  openStream(res, () => clearTimeout(timer));
  const tick = (): void => {
    step++;
    if (step <= sseEvents) {
      res.write(event(progress(token, step, sseEvents)));
      timer = setTimeout(tick, sseDelayMs);
    } else {
      res.end(event(toolResult(id, 'done')));
    }
  };
  tick();
}

function handle(req: http.IncomingMessage, res: http.ServerResponse, raw: string): void {
  let msg: JsonRpcRequest;
  try {
    msg = JSON.parse(raw) as JsonRpcRequest;
  } catch {
    sendJson(res, 400, {
      jsonrpc: '2.0',
      id: null,
      error: { code: -32700, message: 'Parse error' },
    });
    return;
  }
  const id = msg.id;
  if (id === undefined) {
    res.writeHead(202).end();
    return;
  }
  if (msg.method === 'tools/call') {
    const name = msg.params?.name;
    if (name === TOOL_ECHO) {
      const text = msg.params?.arguments?.message;
      sendJson(res, 200, toolResult(id, `echo: ${typeof text === 'string' ? text : ''}`));
      return;
    }
    if (name === TOOL_PROGRESS) {
      streamProgress(res, id, msg.params?._meta?.progressToken ?? id);
      return;
    }
    if (name === TOOL_HOLD) {
      openStream(res, () => undefined);
      res.write(event(progress(msg.params?._meta?.progressToken ?? id, 0, 1)));
      return;
    }
  } else if (msg.method === 'subscriptions/listen') {
    openStream(res, () => undefined);
    res.write(
      event({
        jsonrpc: '2.0',
        method: 'notifications/subscriptions/acknowledged',
        params: {
          _meta: { 'io.modelcontextprotocol/subscriptionId': id },
          notifications: { toolsListChanged: true },
        },
      }),
    );
    return;
  }
  sendJson(res, 200, { jsonrpc: '2.0', id, error: { code: -32601, message: 'Method not found' } });
}

const server = http.createServer((req, res) => {
  served++;
  if (req.method === 'POST' && req.url === '/mcp') {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => handle(req, res, Buffer.concat(chunks).toString()));
    return;
  }
  if (req.method === 'GET' && req.url === '/stats') {
    sendJson(res, 200, { openStreams, served, rssBytes: process.memoryUsage.rss() });
    return;
  }
  res.writeHead(404).end();
});
// Longer than every proxy's pooled keep-alive, so a pooled socket is never closed under it.
server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
server.headersTimeout = KEEP_ALIVE_TIMEOUT_MS + 1_000;
server.maxConnections = 50_000;

listenAndAnnounce(server);

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
