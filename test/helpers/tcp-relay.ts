import { connect, createServer, type Socket } from 'node:net';

export interface Relay {
  address: string;
  /** Stops passing bytes both ways, closing nothing: a peer whose host lost power or whose network dropped. */
  freeze(): void;
  /**
   * Stops passing what the server sends on the connections open now (it waits, unread, as behind
   * a slow link or a busy client), while the client's bytes still go through.
   */
  holdToClient(): void;
  /** Passes again what `holdToClient` held, and what the server sends after. */
  releaseToClient(): void;
  /** Connections made from now on go to `target` (a control plane that moved). */
  retarget(target: string): void;
  close(): void;
}

const hostPort = (target: string): [string, number] => [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];

/**
 * A TCP relay in front of a port that can stop passing bytes, both ways, without closing
 * anything: what each end sees of a peer whose host lost power or whose network dropped (no FIN,
 * no RST, nothing). Or one way only: what the server sends is held up.
 */
export async function relayTo(target: string): Promise<Relay> {
  let [host, port] = hostPort(target);
  const pairs = new Set<[Socket, Socket]>();
  const held = new Set<[Socket, Socket]>();
  const server = createServer((down) => {
    const up = connect(port, host);
    // Nothing listening there (a control plane that stopped): the client's connection is refused too.
    let connected = false;
    up.once('connect', () => (connected = true));
    up.once('error', () => {
      if (!connected) down.destroy();
    });
    const pair: [Socket, Socket] = [down, up];
    for (const s of pair) {
      s.on('error', () => {});
      // Forgotten once both ends are closed. One end closing is passed on by the pipe, unless the
      // relay is frozen: then the other end sees nothing, as across a dead network.
      s.on('close', () => {
        if (!down.destroyed || !up.destroyed) return;
        pairs.delete(pair);
        held.delete(pair);
      });
    }
    down.pipe(up);
    up.pipe(down);
    pairs.add(pair);
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
    holdToClient() {
      for (const pair of pairs) {
        if (held.has(pair)) continue;
        held.add(pair);
        pair[1].unpipe(pair[0]);
        pair[1].pause();
      }
    },
    releaseToClient() {
      for (const [down, up] of held) up.pipe(down);
      held.clear();
    },
    retarget(next) {
      [host, port] = hostPort(next);
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
