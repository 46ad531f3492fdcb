import { readFileSync } from 'node:fs';
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

/**
 * A connection that has sent no byte this long after it was accepted counts as idle at shutdown:
 * clients open spare connections they may never use (Node's fetch did, in the ADS bench) and
 * probes connect and wait, and Node's HTTP server, like the ADS port with TLS (a handshake never
 * begun), waits for them. Go's http.Server does the same after 5 s; a client that meant to send a
 * request would have within a second, and one cut before sending anything can retry.
 */
export const SILENT_IS_IDLE_MS = 1000;

/** How often, during a shutdown, connections that have become idle are closed. */
export const SHUTDOWN_SWEEP_MS = 100;

/** Destroys the tracked connections that have sent nothing since accept, for `SILENT_IS_IDLE_MS` or more. */
export function cutSilent(connections: ReadonlyMap<Socket, number>, now = performance.now()): void {
  for (const [socket, at] of connections) if (socket.bytesRead === 0 && now - at >= SILENT_IS_IDLE_MS) socket.destroy();
}

/**
 * The soft limit on open files from a `/proc/<pid>/limits` text ("Max open files"), or undefined
 * when it names none or says unlimited.
 */
export function openFileLimitOf(limits: string): number | undefined {
  const m = /^Max open files\s+(\d+)\s/m.exec(limits);
  return m ? Number(m[1]) : undefined;
}

/** This process's soft limit on open files (Linux; undefined elsewhere). */
export function openFileLimit(): number | undefined {
  try {
    return openFileLimitOf(readFileSync('/proc/self/limits', 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Below this many open files weft-cp warns at start: each xDS connection holds one. Node raises its
 * soft limit to the hard one as it starts, so what counts is the hard limit (systemd's default is
 * 524288; a container runtime or an old init may set 1024 or 4096).
 */
export const LOW_OPEN_FILE_LIMIT = 4096;
