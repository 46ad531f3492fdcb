import { createSocket, type Socket } from 'node:dgram';
import { createServer, type Server, type Socket as TcpSocket } from 'node:net';
import dnsPacket from 'dns-packet';
import type { Logger } from '../core/index.js';

/**
 * weft-dp's DNS server (the transparent proxy redirects DNS here, port 15053): answers
 * `<service>.mesh` with the service's virtual IP, which the proxy's outbound listener routes to
 * the service; forwards every other name to the resolvers of /etc/resolv.conf (weft-dp's own
 * queries are not redirected: it runs as the data-plane user). UDP and TCP.
 */

const MESH_SUFFIX = '.mesh';
const TTL = 30;
const UPSTREAM_TIMEOUT_MS = 2000;

export interface DnsServerOptions {
  port: number;
  /** Addresses to bind (default 127.0.0.1, where the redirect sends IPv4 DNS). */
  addresses?: string[];
  /** Upstream resolvers, `ip` or `ip:port`. */
  upstreams: string[];
  log: Logger;
}

type Packet = dnsPacket.Packet;

export class MeshDns {
  private vips = new Map<string, string>();
  private readonly udp: Socket[] = [];
  private readonly tcp: Server[] = [];
  ports: number[] = [];

  constructor(private readonly o: DnsServerOptions) {}

  /** Replaces the service → VIP map (from the control plane). */
  setVips(vips: Record<string, string>): void {
    this.vips = new Map(Object.entries(vips).map(([s, ip]) => [s.toLowerCase(), ip]));
  }

  /** The answer to one query, or undefined to forward it. */
  private local(q: Packet): Packet | undefined {
    const question = q.questions?.[0];
    if (!question) return undefined;
    const name = question.name.replace(/\.$/, '').toLowerCase();
    if (!name.endsWith(MESH_SUFFIX)) return undefined;
    const service = name.slice(0, -MESH_SUFFIX.length);
    const vip = this.vips.get(service);
    const base = { id: q.id, type: 'response' as const, flags: dnsPacket.AUTHORITATIVE_ANSWER | ((q.flags ?? 0) & dnsPacket.RECURSION_DESIRED), questions: q.questions };
    // dns-packet takes the response code in the low four bits of the flags: 3 is NXDOMAIN.
    if (!vip) return { ...base, flags: base.flags | 3, answers: [] } as Packet;
    const answers = question.type === 'A' ? [{ type: 'A' as const, name: question.name, ttl: TTL, class: 'IN' as const, data: vip }] : [];
    return { ...base, answers } as Packet;
  }

  private async forward(raw: Buffer): Promise<Buffer | undefined> {
    for (const up of this.o.upstreams) {
      const [host, port] = up.includes(':') && !up.includes('::') ? [up.slice(0, up.lastIndexOf(':')), Number(up.slice(up.lastIndexOf(':') + 1))] : [up, 53];
      const answer = await new Promise<Buffer | undefined>((resolve) => {
        const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
        const t = setTimeout(() => {
          s.close();
          resolve(undefined);
        }, UPSTREAM_TIMEOUT_MS);
        s.once('message', (m) => {
          clearTimeout(t);
          s.close();
          resolve(m);
        });
        s.once('error', () => {
          clearTimeout(t);
          s.close();
          resolve(undefined);
        });
        s.send(raw, port, host);
      });
      if (answer) return answer;
      this.o.log.warn({ upstream: up }, 'upstream DNS resolver did not answer');
    }
    return undefined;
  }

  /** Answers one DNS message (local or forwarded); SERVFAIL when nothing answers. */
  async answer(raw: Buffer): Promise<Buffer | undefined> {
    let q: Packet;
    try {
      q = dnsPacket.decode(raw);
    } catch {
      return undefined; // not DNS: drop it
    }
    const local = this.local(q);
    if (local) return dnsPacket.encode(local);
    const forwarded = await this.forward(raw);
    if (forwarded) return forwarded;
    return dnsPacket.encode({ id: q.id, type: 'response', flags: 2 /* SERVFAIL */, questions: q.questions } as Packet);
  }

  async listen(): Promise<void> {
    for (const address of this.o.addresses ?? ['127.0.0.1']) {
      // Port 0 (tests): UDP picks a free port, which TCP may find taken; then try another.
      for (let attempt = 1; ; attempt++) {
        try {
          this.ports.push(await this.listenOn(address));
          break;
        } catch (err) {
          if (this.o.port !== 0 || attempt >= 5) throw err;
        }
      }
    }
    this.o.log.info({ ports: this.ports, upstreams: this.o.upstreams }, 'DNS listening');
  }

  /** UDP and TCP on the same port of one address. */
  private async listenOn(address: string): Promise<number> {
    const udp = createSocket(address.includes(':') ? 'udp6' : 'udp4');
    udp.on('message', (m, rinfo) => {
      void this.answer(m).then((a) => a && udp.send(a, rinfo.port, rinfo.address));
    });
    const port = await new Promise<number>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(this.o.port, address, () => resolve(udp.address().port));
    });
    udp.on('error', (err) => this.o.log.error({ err: err.message }, 'DNS (UDP) error'));
    // TCP: a two-byte length prefix per message.
    const tcp = createServer((sock) => this.tcpConnection(sock));
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(port, address, () => resolve());
      });
    } catch (err) {
      udp.close();
      throw err;
    }
    this.udp.push(udp);
    this.tcp.push(tcp);
    return port;
  }

  private tcpConnection(sock: TcpSocket): void {
    let buf = Buffer.alloc(0);
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const len = buf.readUInt16BE(0);
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.answer(Buffer.from(msg)).then((a) => {
          if (!a || sock.destroyed) return;
          const out = Buffer.alloc(2 + a.length);
          out.writeUInt16BE(a.length, 0);
          a.copy(out, 2);
          sock.write(out);
        });
      }
    });
  }

  close(): void {
    for (const u of this.udp) u.close();
    for (const t of this.tcp) t.close();
  }
}
