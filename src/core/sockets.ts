import type { Server, Socket } from 'node:net';

/**
 * Every connection `server` accepts from now on, with when it was accepted (`performance.now()`),
 * until it closes. For shutdowns that must cut what the server itself will not: Node's HTTP server
 * counts a connection that never sent a request as busy, and grpc-js's forceShutdown misses those
 * still in their TLS handshake.
 */
export function trackSockets(server: Server): ReadonlyMap<Socket, number> {
  const accepted = new Map<Socket, number>();
  server.on('connection', (socket: Socket) => {
    accepted.set(socket, performance.now());
    socket.once('close', () => accepted.delete(socket));
  });
  return accepted;
}
