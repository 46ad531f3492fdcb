import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { z } from 'zod';
import { resolvConfNameservers as resolvers, validate, WeftError } from '../core/index.js';
import { DEFAULTS, type TransparentProxyConfig, type UidPortExclusion } from './rules.js';

/** Kuma's default data-plane user, and the UID used when no such user exists (Kuma's too). */
export const DEFAULT_DP_USER = 'kuma-dp';
export const DEFAULT_DP_UID = 5678;

const port = z.coerce.number().int().min(1).max(65535);
const cidr = z.string().refine((s) => {
  const [ip, bits, ...rest] = s.split('/');
  const v = isIP(ip ?? '');
  return v !== 0 && rest.length === 0 && (bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= (v === 4 ? 32 : 128)));
}, 'must be an IP address or CIDR');
const range = /^(\*|\d+(-\d+)?)$/;

/** `[protocol:]ports:uids`, Kuma's syntax: `tcp:22:1000`, `53:0-100`, `*:*:1337`. */
export function parseUidExclusion(s: string): UidPortExclusion {
  const parts = s.split(':');
  const [protocol, ports, uids] = parts.length === 3 ? parts : ['*', ...parts];
  if (parts.length < 2 || parts.length > 3 || !['tcp', 'udp', '*'].includes(protocol!) || !range.test(ports ?? '') || !/^\d+(-\d+)?$/.test(uids ?? '')) {
    throw new WeftError('invalid_resource', `--exclude-outbound-ports-for-uids "${s}" must be [tcp|udp|*:]PORTS:UIDS (PORTS a port, a range a-b or *; UIDS a uid or a range)`, [
      { field: 'excludeOutboundPortsForUids', message: `"${s}" is not [protocol:]ports:uids` },
    ]);
  }
  return { protocol: protocol as UidPortExclusion['protocol'], ports: ports!, uids: uids! };
}

/** Settings as users write them (CLI flags after splitting, or a CNI config's `weft` object). */
export const transparentProxySettings = z.strictObject({
  redirectInboundPort: port.default(DEFAULTS.redirectInboundPort),
  redirectOutboundPort: port.default(DEFAULTS.redirectOutboundPort),
  redirectInbound: z.boolean().default(true),
  /** A user name or a UID. */
  dpUser: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
  redirectDns: z.boolean().default(false),
  redirectAllDnsTraffic: z.boolean().default(false),
  redirectDnsPort: port.default(DEFAULTS.redirectDnsPort),
  excludeInboundPorts: z.array(port).default([]),
  excludeOutboundPorts: z.array(port).default([]),
  excludeOutboundPortsForUids: z.array(z.string()).default([]),
  excludeInboundIps: z.array(cidr).default([]),
  excludeOutboundIps: z.array(cidr).default([]),
  ipFamily: z.enum(['ipv4', 'ipv6', 'dual', 'dualstack']).default('ipv4'),
});

export type TransparentProxySettings = z.input<typeof transparentProxySettings>;

/** The UID of a user name, from /etc/passwd; a number is taken as a UID. */
export function resolveUid(user: string | number, passwd = '/etc/passwd'): number | undefined {
  if (typeof user === 'number') return user;
  if (/^\d+$/.test(user)) return Number(user);
  let text = '';
  try {
    text = readFileSync(passwd, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const [name, , uid] = line.split(':');
    if (name === user && uid !== undefined) return Number(uid);
  }
  return undefined;
}

/**
 * Validates settings and resolves what they refer to (the data-plane user, the resolvers) into
 * the config the rule builder takes. Every problem is reported with its field.
 */
export function resolveConfig(input: unknown, env: { passwd?: string; resolvConf?: string } = {}): { config: TransparentProxyConfig; notes: string[] } {
  const r = validate(transparentProxySettings, input);
  if (!r.ok) throw new WeftError('invalid_resource', 'invalid transparent-proxy settings', r.violations);
  const s = r.value;
  const notes: string[] = [];
  let dpUid: number | undefined;
  if (s.dpUser === undefined) {
    dpUid = resolveUid(DEFAULT_DP_USER, env.passwd);
    if (dpUid === undefined) {
      dpUid = DEFAULT_DP_UID;
      notes.push(`no user "${DEFAULT_DP_USER}": the data-plane UID is ${DEFAULT_DP_UID} (Kuma's default); run weft-dp as that UID`);
    }
  } else {
    dpUid = resolveUid(s.dpUser, env.passwd);
    if (dpUid === undefined) throw new WeftError('invalid_resource', `no user "${s.dpUser}" in ${env.passwd ?? '/etc/passwd'}`, [{ field: 'dpUser', message: `no such user "${s.dpUser}"` }]);
  }
  if (dpUid === 0) {
    throw new WeftError('invalid_resource', 'the data-plane user must not be root: its traffic is not redirected, so every root process would bypass the mesh', [{ field: 'dpUser', message: 'must not be root (UID 0)' }]);
  }
  const ports = [s.redirectInboundPort, s.redirectOutboundPort, ...(s.redirectDns ? [s.redirectDnsPort] : [])];
  if (new Set(ports).size !== ports.length) throw new WeftError('invalid_resource', 'the redirect ports must differ', [{ field: 'redirectOutboundPort', message: 'must differ from the other redirect ports' }]);
  const ipFamily = s.ipFamily === 'dualstack' ? 'dual' : s.ipFamily;
  // The rules and the Dataplane are set apart (as in Kuma): without the Dataplane's word, Envoy has
  // IPv4 listeners only, and IPv6 connections redirected to it are refused.
  if (ipFamily !== 'ipv4') notes.push(`IPv6 is redirected too: the Dataplanes here must say so, with networking.transparentProxying.ipFamilyMode: ${ipFamily === 'dual' ? 'DualStack' : 'IPv6'}, or Envoy has no IPv6 listeners and IPv6 connections are refused`);
  const dnsResolvers = s.redirectDns ? resolvers(env.resolvConf) : [];
  if (s.redirectDns && !s.redirectAllDnsTraffic && dnsResolvers.length === 0) {
    throw new WeftError('invalid_resource', `--redirect-dns: no nameserver in ${env.resolvConf ?? '/etc/resolv.conf'} (use --redirect-all-dns-traffic to redirect DNS to any address)`, [
      { field: 'redirectDns', message: 'no resolvers to redirect' },
    ]);
  }
  return {
    config: {
      ...s,
      dpUid,
      dnsResolvers,
      excludeOutboundPortsForUids: s.excludeOutboundPortsForUids.map(parseUidExclusion),
      ipFamily,
    },
    notes,
  };
}
