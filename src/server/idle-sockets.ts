/**
 * The sockets of a listener that carry no request. Node's `server.close()`
 * closes the idle keep-alive sockets it knows of once, but a socket a client
 * has opened and not yet spoken on counts as busy (its first request "has
 * started"), and so does one a client connects in the same moment: either
 * would hold the drain until the hard stop. Such a socket holds nothing to
 * wait for, so while draining it is closed at once, and a socket is closed as
 * soon as its last response is out.
 *
 * Nothing is done per request until the drain starts: the hot path keeps one
 * listener per socket, none per request (a listener and a closure per request
 * made more of each request outlive young-generation collections).
 */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

/** How long a socket accepted but silent when the drain starts may still bring its request. */
const FIRST_REQUEST_GRACE_MS = 1_000;

export interface IdleSockets {
  /** From now on, no socket stays open without a response in progress. */
  closeIdle(): void;
}

/** The response a socket is writing now, if any (Node keeps it on the socket while it is in progress). */
function responseOf(socket: Socket): ServerResponse | undefined {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined;
}

export function trackIdleSockets(server: HttpServer | HttpsServer, tls: boolean): IdleSockets {
  const sockets = new Set<Socket>();
  /** Sockets that have carried a request: between two, one is idle for sure. */
  const spoke = new WeakSet<Socket>();
  let closing = false;
  const endIfIdle = (socket: Socket, waited = false): void => {
    if (!closing || socket.destroyed) return;
    const res = responseOf(socket);
    if (res !== undefined && !res.writableFinished) {
      // Closed once this response is out, unless another one has begun by then.
      res.once('close', () => endIfIdle(socket));
      return;
    }
    if (!spoke.has(socket) && !waited) {
      // Accepted just now, its request may be on the wire: cut, a load balancer
      // could not tell whether it was sent, and would not retry a POST elsewhere.
      setTimeout(() => endIfIdle(socket, true), FIRST_REQUEST_GRACE_MS).unref();
      return;
    }
    // What was written is flushed before the socket goes.
    socket.end(() => socket.destroy());
  };
  server.on('request', (req: IncomingMessage) => spoke.add(req.socket));
  // With TLS, the socket requests arrive on is the TLS one, known after the handshake.
  server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    endIfIdle(socket);
  });
  return {
    closeIdle() {
      if (closing) return;
      closing = true;
      // A request that still arrives is answered and its socket closed after it.
      server.on('request', (req: IncomingMessage, res: ServerResponse) => {
        // Taken now: a closed response no longer names its socket.
        const socket = req.socket;
        res.once('close', () => endIfIdle(socket));
      });
      for (const socket of sockets) endIfIdle(socket);
    },
  };
}
