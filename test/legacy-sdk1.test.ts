/**
 * The legacy era end to end: the official TypeScript SDK 1.x client, over
 * Streamable HTTP and over the 2024-11-05 HTTP+SSE transport, through the
 * gateway to @modelcontextprotocol/server-everything (Streamable HTTP).
 */
import { before, after, describe } from 'node:test';
import { everythingFeatures } from './helpers/everything-features.js';
import { startEverything } from './helpers/everything.js';
import { startTestGateway, type SeenFrame, type TestGateway } from './helpers/gateway.js';

let upstream: Awaited<ReturnType<typeof startEverything>>;
let gateway: TestGateway;
const frames: SeenFrame[] = [];

before(async () => {
  upstream = await startEverything();
  gateway = await startTestGateway({ everything: upstream.url }, {}, frames);
});
after(async () => {
  await gateway?.close();
  await upstream?.stop();
});

for (const client of ['streamable-http', 'legacy-sse'] as const) {
  describe(`server-everything over Streamable HTTP, ${client} client`, () => {
    everythingFeatures({ gateway: () => gateway, server: 'everything', client, frames });
  });
}
