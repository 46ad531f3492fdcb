import { connect, createServer, type Socket } from 'node:net';

/**
 * A TCP relay in front of a port that can stop passing bytes, both ways, without closing
 * anything: what each end sees of a peer whose host lost power or whose network dropped (no FIN,
 * no RST, nothing). Or one way only: what the server sends is held up.
 */
export async function relayTo(target: string): Promise<{ address: string; freeze(): void; holdToClient(): void; releaseToClient(): void; close(): void }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs: [Socket, Socket][] = [];
  const server = createServer((down) => {
    const up = connect(port, host);
    for (const s of [down, up]) s.on('error', () => {});
    down.pipe(up);
    up.pipe(down);
    pairs.push([down, up]);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: relayPort } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${relayPort}`,
    freeze() {
      for (const [down, up] of pairs) {
        down.unpipe(up);
        up.unpipe(down);
        down.pause();
        up.pause();
      }
    },
    /**
     * Stops passing what the server sends (it waits, unread, as behind a slow link or a busy
     * client), while the client's bytes still go through.
     */
    holdToClient() {
      for (const [down, up] of pairs) {
        up.unpipe(down);
        up.pause();
      }
    },
    releaseToClient() {
      for (const [down, up] of pairs) up.pipe(down);
    },
    close() {
      for (const [down, up] of pairs) {
        down.destroy();
        up.destroy();
      }
      server.close();
    },
  };
}
