import { createSocket } from 'node:dgram';
import { createConnection, createServer, isIPv4, type Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { families, type IpFamily, type TransparentProxyConfig } from './rules.js';

/**
 * After install, prove that redirection works in this network namespace: a connection to an
 * outside address must land on the outbound redirect port (and a DNS query on the DNS port).
 * A short-lived listener on that port answers with a token; if the port is taken (the proxy
 * already runs), any answer from an address nothing else would answer on proves the redirect.
 *
 * Inbound redirection cannot be proven from inside the namespace (the packet has to come from
 * outside); the rules for it are checked by `check` instead.
 */

const TOKEN = 'weft-redirect-probe';
const TIMEOUT_MS = 2000;

export interface VerifyResult {
  problems: string[];
  /** What could not be verified, and why (not failures). */
  notes: string[];
}

const LOOPBACK: Record<IpFamily, string> = { ipv4: '127.0.0.1', ipv6: '::1' };

/**
 * A destination that is routable but not local: a neighbour address on a connected subnet (the
 * packet is redirected before it would ever leave), else a documentation address.
 */
function probeTarget(family: IpFamily, excluded: string[]): string {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.internal || (family === 'ipv4') !== (a.family === 'IPv4')) continue;
      if (family === 'ipv4' && isIPv4(a.address)) {
        const parts = a.address.split('.').map(Number);
        const last = parts[3]! === 1 ? 2 : 1;
        const candidate = [...parts.slice(0, 3), last].join('.');
        if (a.cidr && Number(a.cidr.split('/')[1]) <= 30 && !excluded.includes(candidate)) return candidate;
      }
      if (family === 'ipv6' && !a.address.startsWith('fe80') && a.cidr && Number(a.cidr.split('/')[1]) <= 126) {
        const candidate = a.address.replace(/:[0-9a-f]*$/i, a.address.endsWith(':1') ? ':2' : ':1');
        if (!excluded.includes(candidate)) return candidate;
      }
    }
  }
  return family === 'ipv4' ? '192.0.2.1' : '2001:db8::1';
}

async function listen(family: IpFamily, port: number): Promise<Server | undefined> {
  const server = createServer((sock) => sock.end(TOKEN));
  return new Promise((resolve) => {
    server.once('error', () => resolve(undefined)); // taken: the proxy (or something) is there
    server.listen(port, LOOPBACK[family], () => resolve(server));
  });
}

async function probeTcp(family: IpFamily, cfg: TransparentProxyConfig, notes: string[]): Promise<string | undefined> {
  const port = [80, 443, 8080, 9, 1].find((p) => !cfg.excludeOutboundPorts.includes(p)) ?? 1;
  const target = probeTarget(family, cfg.excludeOutboundIps);
  const server = await listen(family, cfg.redirectOutboundPort);
  try {
    return await new Promise<string | undefined>((resolve) => {
      let got = '';
      const sock = createConnection({ host: target, port, timeout: TIMEOUT_MS });
      sock.on('data', (d: Buffer) => (got += d.toString()));
      sock.on('connect', () => {
        if (!server) {
          sock.destroy();
          resolve(undefined); // something answered for an address nothing local has: redirected
        }
      });
      sock.on('end', () => resolve(server && got !== TOKEN ? `${family}: a connection to ${target}:${port} was answered, but not by the outbound redirect port ${cfg.redirectOutboundPort}` : undefined));
      sock.on('timeout', () => {
        sock.destroy();
        resolve(`${family}: a connection to ${target}:${port} was not redirected to port ${cfg.redirectOutboundPort} (timed out)`);
      });
      sock.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENETUNREACH' || err.code === 'EHOSTUNREACH') {
          notes.push(`${family}: outbound redirection not verified: no route to a probe address (${err.code})`);
          resolve(undefined);
        } else {
          resolve(`${family}: a connection to ${target}:${port} was not redirected to port ${cfg.redirectOutboundPort}: ${err.code ?? err.message}`);
        }
      });
    });
  } finally {
    server?.close();
  }
}

async function probeDns(family: IpFamily, cfg: TransparentProxyConfig, notes: string[]): Promise<string | undefined> {
  const resolver = cfg.redirectAllDnsTraffic ? probeTarget(family, []) : cfg.dnsResolvers.find((r) => (family === 'ipv4') === isIPv4(r));
  if (!resolver) return undefined;
  const server = createSocket(family === 'ipv4' ? 'udp4' : 'udp6');
  const bound = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.bind(cfg.redirectDnsPort, LOOPBACK[family], () => resolve(true));
  });
  if (!bound) {
    notes.push(`${family}: DNS redirection not verified: port ${cfg.redirectDnsPort} is in use`);
    server.close();
    return undefined;
  }
  const client = createSocket(family === 'ipv4' ? 'udp4' : 'udp6');
  try {
    return await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(`${family}: a DNS query to ${resolver}:53 did not reach the DNS redirect port ${cfg.redirectDnsPort}`), TIMEOUT_MS);
      server.on('message', (m) => {
        if (m.toString() === TOKEN) {
          clearTimeout(timer);
          resolve(undefined);
        }
      });
      client.send(TOKEN, 53, resolver, (err) => {
        if (!err) return;
        clearTimeout(timer);
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENETUNREACH' || code === 'EHOSTUNREACH') {
          notes.push(`${family}: DNS redirection not verified: no route to the resolver ${resolver} (${code})`);
          resolve(undefined);
        } else {
          resolve(`${family}: cannot send a DNS probe to ${resolver}: ${err.message}`);
        }
      });
    });
  } finally {
    client.close();
    server.close();
  }
}

/** Runs the probes for every family of `cfg` in the current network namespace. */
export async function verifyRedirection(cfg: TransparentProxyConfig): Promise<VerifyResult> {
  const problems: string[] = [];
  const notes: string[] = [];
  if (process.getuid?.() === cfg.dpUid) {
    notes.push('redirection not verified: this process runs as the data-plane user, whose traffic is not redirected');
    return { problems, notes };
  }
  const loopbackUp = Object.values(networkInterfaces()).some((as) => (as ?? []).some((a) => a.internal && a.address === '127.0.0.1'));
  if (!loopbackUp) problems.push('the loopback interface has no 127.0.0.1 (is it down?): redirected traffic has nowhere to go');
  for (const f of families(cfg)) {
    const tcp = await probeTcp(f, cfg, notes);
    if (tcp) problems.push(tcp);
    if (cfg.redirectDns) {
      const dns = await probeDns(f, cfg, notes);
      if (dns) problems.push(dns);
    }
  }
  return { problems, notes };
}
