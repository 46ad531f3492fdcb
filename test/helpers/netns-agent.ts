/**
 * A tiny network actor for the transparent-proxy tests, run inside a network namespace
 * (`ip netns exec NS [setpriv --reuid U] node netns-agent.js <mode> <json>`):
 * - `serve [[host, port, label, "tcp"|"udp"], ...]`: answers every TCP connection and UDP
 *   datagram with its label; prints `ready` when all are bound.
 * - `tcp [host, port]` / `udp [host, port]`: one connection or query; prints the label that
 *   answered, or `error <code>`.
 */
import { createSocket } from 'node:dgram';
import { createConnection, createServer } from 'node:net';

const [mode, arg] = process.argv.slice(2);
const spec = JSON.parse(arg ?? '[]') as unknown[];

if (mode === 'serve') {
  let pending = spec.length;
  const ready = () => --pending === 0 && process.stdout.write('ready\n');
  for (const [host, port, label, proto] of spec as [string, number, string, string][]) {
    if (proto === 'udp') {
      const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      s.on('message', (_m, rinfo) => s.send(label, rinfo.port, rinfo.address));
      s.on('error', () => undefined);
      s.bind(port, host, ready);
    } else {
      // A client may reset at once (the install probe does): that must not end the agent.
      createServer((c) => c.on('error', () => undefined).end(label)).listen({ port, host, ipv6Only: host === '::' ? false : undefined }, ready);
    }
  }
} else if (mode === 'tcp') {
  const [host, port] = spec as [string, number];
  let got = '';
  const c = createConnection({ host, port, timeout: 3000 });
  c.on('data', (d: Buffer) => (got += d.toString()));
  c.on('end', () => process.stdout.write(`${got}\n`));
  c.on('timeout', () => {
    process.stdout.write('error ETIMEDOUT\n');
    c.destroy();
  });
  c.on('error', (e: NodeJS.ErrnoException) => process.stdout.write(`error ${e.code ?? e.message}\n`));
} else if (mode === 'udp') {
  const [host, port] = spec as [string, number];
  const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const t = setTimeout(() => {
    process.stdout.write('error ETIMEDOUT\n');
    s.close();
  }, 3000);
  s.on('message', (m) => {
    clearTimeout(t);
    process.stdout.write(`${m.toString()}\n`);
    s.close();
  });
  s.send('query', port, host);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
