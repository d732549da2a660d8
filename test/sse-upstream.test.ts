/**
 * A legacy HTTP+SSE server behind the gateway: @modelcontextprotocol/server-everything
 * in its `sse` mode, bridged (the gateway follows the `endpoint` event and
 * POSTs there), used by the official SDK's Streamable HTTP client and its
 * legacy SSE client.
 */
import { before, after, describe } from 'node:test';
import { everythingFeatures } from './helpers/everything-features.js';
import { startEverything } from './helpers/everything.js';
import { startTestGateway, type SeenFrame, type TestGateway } from './helpers/gateway.js';

let upstream: Awaited<ReturnType<typeof startEverything>>;
let gateway: TestGateway;
const frames: SeenFrame[] = [];

before(async () => {
  upstream = await startEverything(undefined, 'sse');
  gateway = await startTestGateway(
    { everything: { transport: 'sse', url: upstream.url } },
    {},
    frames,
  );
});
after(async () => {
  await gateway?.close();
  await upstream?.stop();
});

for (const client of ['streamable-http', 'legacy-sse'] as const) {
  describe(`server-everything over legacy HTTP+SSE, ${client} client`, () => {
    everythingFeatures({ gateway: () => gateway, server: 'everything', client, frames });
  });
}
