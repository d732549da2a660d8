/**
 * Child-process entry for the demo upstream: runs
 * `@modelcontextprotocol/server-everything` in Streamable HTTP mode (or, given
 * `sse`, its legacy HTTP+SSE mode), bound to
 * loopback on a free port (the package itself listens on every interface on
 * a fixed port), and reports the port to the parent over IPC.
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';

const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(this: net.Server, ...args: unknown[]) {
  const callback = args.find((a) => typeof a === 'function') as (() => void) | undefined;
  this.once('listening', () => {
    const { port } = this.address() as AddressInfo;
    process.send?.({ port });
  });
  return originalListen.call(this, { host: '127.0.0.1', port: 0 }, callback);
} as typeof net.Server.prototype.listen;

// The IPC channel closes when the gateway is gone, even killed with SIGKILL: go with it.
process.once('disconnect', () => process.exit(0));

// Quiet the demo server's own console chatter unless asked; the parent logs what matters.
process.env.PORT = '0';
const transport = process.argv[2] === 'sse' ? 'sse' : 'streamableHttp';
await import(`@modelcontextprotocol/server-everything/dist/transports/${transport}.js` as string);
