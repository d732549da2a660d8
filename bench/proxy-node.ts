// The Node floor: the least a Node reverse proxy can do. A bare node:http server hands method,
// path, headers and the request body stream to one undici Pool and streams the upstream
// response straight back into the ServerResponse. No parsing, no policy, no logging: anything
// a Node gateway costs on top of this is its own logic.
//
// Usage: node --import tsx bench/proxy-node.ts --upstream http://127.0.0.1:PORT
// Prints one JSON line {"port":N} on stdout when listening on 127.0.0.1 (port 0).
import http from 'node:http';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { listenAndAnnounce } from './listen.js';

const KEEP_ALIVE_TIMEOUT_MS = 65_000;

// undici refuses these request headers; node:http manages them on the response side.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'expect',
  'proxy-connection',
  'te',
  'trailer',
]);

const { values } = parseArgs({ options: { upstream: { type: 'string' } } });
if (values.upstream === undefined) throw new Error('--upstream is required');

// connections unlimited (undici's default) so thousands of held SSE streams each get a socket.
const pool = new Pool(values.upstream, { pipelining: 1 });

function forwardHeaders(raw: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (name === 'host' || HOP_BY_HOP.has(name)) continue;
    out[name] = raw[i + 1] as string;
  }
  return out;
}

const server = http.createServer((req, res) => {
  const method = req.method ?? 'GET';
  pool.stream(
    {
      method,
      path: req.url ?? '/',
      headers: forwardHeaders(req.rawHeaders),
      body: method === 'GET' || method === 'HEAD' ? null : req,
    },
    ({ statusCode, headers }) => {
      for (const name of HOP_BY_HOP) delete headers[name];
      res.writeHead(statusCode, headers as http.OutgoingHttpHeaders);
      // Returning the response makes undici write the body into it; if the client leaves
      // first, undici sees the premature close and aborts the upstream request.
      return res;
    },
    (err) => {
      if (err === null) return;
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    },
  );
});
server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
server.headersTimeout = KEEP_ALIVE_TIMEOUT_MS + 1_000;

listenAndAnnounce(server);

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    server.closeAllConnections();
    server.close();
    void pool.destroy().finally(() => process.exit(0));
  });
}
