/**
 * The legacy era end to end: the official TypeScript SDK 1.x client, over
 * Streamable HTTP and over the 2024-11-05 HTTP+SSE transport, through the
 * gateway to @modelcontextprotocol/server-everything (Streamable HTTP).
 */
import { before, after } from 'node:test';
import { everythingFeaturesPerClient } from './helpers/everything-features.js';
import { startEverything } from './helpers/everything.js';
import { startTestGateway } from './helpers/gateway.js';

let upstream: Awaited<ReturnType<typeof startEverything>>;

before(async () => {
  upstream = await startEverything();
});
after(async () => {
  await upstream?.stop();
});

everythingFeaturesPerClient('server-everything over Streamable HTTP', 'everything', (frames) =>
  startTestGateway({ everything: upstream.url }, {}, frames),
);
