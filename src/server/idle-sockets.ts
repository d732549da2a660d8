/**
 * The sockets of a listener that carry no request. Node's `server.close()`
 * closes the idle keep-alive sockets it knows of once, but a socket a client
 * has opened and not yet spoken on counts as busy (its first request "has
 * started"), and so does one a client connects in the same moment: either
 * would hold the drain until the hard stop. Such a socket holds nothing to
 * wait for, so while draining it is closed at once, and a socket is closed as
 * soon as its last response is out.
 */
import type { Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

export interface IdleSockets {
  /** From now on, no socket stays open without a response in progress. */
  closeIdle(): void;
}

export function trackIdleSockets(server: HttpServer | HttpsServer, tls: boolean): IdleSockets {
  /** Each open socket and how many of its responses are in progress. */
  const busy = new Map<Socket, number>();
  let closing = false;
  const endIfIdle = (socket: Socket) => {
    if (!closing || (busy.get(socket) ?? 0) > 0) return;
    // What was written is flushed before the socket goes.
    socket.end(() => socket.destroy());
  };
  // With TLS, the socket requests arrive on is the TLS one, known after the handshake.
  server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    busy.set(socket, 0);
    socket.once('close', () => busy.delete(socket));
    endIfIdle(socket);
  });
  server.on('request', (req, res) => {
    const socket = req.socket;
    busy.set(socket, (busy.get(socket) ?? 0) + 1);
    res.once('close', () => {
      if (busy.has(socket)) busy.set(socket, (busy.get(socket) ?? 1) - 1);
      endIfIdle(socket);
    });
  });
  return {
    closeIdle() {
      closing = true;
      for (const socket of busy.keys()) endIfIdle(socket);
    },
  };
}
