// Shared by the bench servers: listen on 127.0.0.1 port 0 and print {"port":N} for run.ts.
import type { Server } from 'node:http';

export function listenAndAnnounce(server: Server): void {
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (address !== null && typeof address === 'object') {
      process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
    }
  });
}
