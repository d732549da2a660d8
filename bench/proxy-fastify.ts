// The stack Portcullis is built on, with none of its logic: fastify + @fastify/http-proxy
// (reply-from on undici) forwarding every path to the origin, logger off, defaults otherwise
// except the upstream pool size.
//
// Usage: node --import tsx bench/proxy-fastify.ts --upstream http://127.0.0.1:PORT
// Prints one JSON line {"port":N} on stdout when listening on 127.0.0.1 (port 0).
import { parseArgs } from 'node:util';
import fastify from 'fastify';
import proxy from '@fastify/http-proxy';

const KEEP_ALIVE_TIMEOUT_MS = 65_000;
// reply-from's default pool is 128 connections: past 128 held streams, new requests would wait
// for a free upstream socket. Raised so the idle-stream measurement is about memory, not queueing.
const UPSTREAM_MAX_CONNECTIONS = 16_384;

const { values } = parseArgs({ options: { upstream: { type: 'string' } } });
if (values.upstream === undefined) throw new Error('--upstream is required');

const app = fastify({ logger: false, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS });
await app.register(proxy, {
  upstream: values.upstream,
  undici: { connections: UPSTREAM_MAX_CONNECTIONS, pipelining: 1 },
});
await app.listen({ host: '127.0.0.1', port: 0 });

const address = app.server.address();
if (address !== null && typeof address === 'object') {
  process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    app.server.closeAllConnections();
    void app.close().finally(() => process.exit(0));
  });
}
