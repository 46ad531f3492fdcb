import { isIP } from 'node:net';

/**
 * The transparent-proxy redirection rules, as iptables-restore input. Pure: the same settings
 * give the same text (golden-tested in test/cni/golden/), whoever applies it.
 *
 * nat table: inbound TCP → the inbound redirect port (15006), outbound TCP → the outbound redirect
 * port (15001), except the data-plane user's own traffic (it is the proxy), loopback traffic,
 * and what the user excludes. DNS to the resolvers (or to anyone) → the DNS port (15053), with
 * conntrack zones in the raw table so replies are not mangled.
 *
 * Ownership: every rule carries the comment OWNER and every chain starts with WEFT_, so install
 * can replace its own earlier rules and uninstall removes exactly its own.
 */

export const OWNER = 'weft/transparent-proxy';
export const CHAIN_PREFIX = 'WEFT_';

export type IpFamily = 'ipv4' | 'ipv6';

export interface UidPortExclusion {
  protocol: 'tcp' | 'udp' | '*';
  /** A port, a range `a-b`, or `*`. */
  ports: string;
  /** A UID or a range `a-b`. */
  uids: string;
}

export interface TransparentProxyConfig {
  redirectInboundPort: number;
  redirectOutboundPort: number;
  /** Redirect inbound traffic at all (Kuma's `--redirect-inbound`). */
  redirectInbound: boolean;
  /** The data-plane user: its traffic is the proxy's own and is not redirected. */
  dpUid: number;
  redirectDns: boolean;
  /** DNS to any address, not only to the resolvers of /etc/resolv.conf. */
  redirectAllDnsTraffic: boolean;
  redirectDnsPort: number;
  /** Nameservers of /etc/resolv.conf (both families; each rule set takes its own). */
  dnsResolvers: string[];
  excludeInboundPorts: number[];
  excludeOutboundPorts: number[];
  excludeOutboundPortsForUids: UidPortExclusion[];
  /** Addresses or CIDRs, either family. */
  excludeInboundIps: string[];
  excludeOutboundIps: string[];
  ipFamily: 'ipv4' | 'ipv6' | 'dual';
}

export const DEFAULTS: Omit<TransparentProxyConfig, 'dpUid'> = {
  redirectInboundPort: 15006,
  redirectOutboundPort: 15001,
  redirectInbound: true,
  redirectDns: false,
  redirectAllDnsTraffic: false,
  redirectDnsPort: 15053,
  dnsResolvers: [],
  excludeInboundPorts: [],
  excludeOutboundPorts: [],
  excludeOutboundPortsForUids: [],
  excludeInboundIps: [],
  excludeOutboundIps: [],
  ipFamily: 'ipv4',
};

export interface TableRules {
  table: 'nat' | 'raw';
  /** Our chains, declared (and so flushed) before the rules. */
  chains: string[];
  /** `-A CHAIN ...` lines, each with the ownership comment. */
  rules: string[];
}

export interface RuleSet {
  family: IpFamily;
  tables: TableRules[];
}

const CHAIN = {
  inbound: 'WEFT_INBOUND',
  inboundRedirect: 'WEFT_INBOUND_REDIRECT',
  outbound: 'WEFT_OUTBOUND',
  outboundRedirect: 'WEFT_OUTBOUND_REDIRECT',
  dns: 'WEFT_DNS',
  ctOutput: 'WEFT_DNS_CT_OUTPUT',
  ctPrerouting: 'WEFT_DNS_CT_PREROUTING',
} as const;

const FAMILY = {
  ipv4: { loopback: '127.0.0.1/32', passthroughSource: '127.0.0.6/32', version: 4 },
  ipv6: { loopback: '::1/128', passthroughSource: '::6/128', version: 6 },
} as const;

function familyOf(addressOrCidr: string): IpFamily | undefined {
  const v = isIP(addressOrCidr.split('/')[0]!);
  return v === 4 ? 'ipv4' : v === 6 ? 'ipv6' : undefined;
}

/** `iptables` port syntax: `a-b` becomes `a:b`. */
const portArg = (p: string | number) => String(p).replace('-', ':');

export function families(cfg: Pick<TransparentProxyConfig, 'ipFamily'>): IpFamily[] {
  return cfg.ipFamily === 'dual' ? ['ipv4', 'ipv6'] : [cfg.ipFamily];
}

/** The rules for one IP family. */
export function buildRules(cfg: TransparentProxyConfig, family: IpFamily): RuleSet {
  const f = FAMILY[family];
  const mine = (ips: string[]) => ips.filter((ip) => familyOf(ip) === family);
  const dp = String(cfg.dpUid);
  const nat: string[] = [];
  const add = (chain: string, spec: string) => nat.push(`-A ${chain} ${spec}`);

  add(CHAIN.inboundRedirect, `-p tcp -j REDIRECT --to-ports ${cfg.redirectInboundPort}`);
  add(CHAIN.outboundRedirect, `-p tcp -j REDIRECT --to-ports ${cfg.redirectOutboundPort}`);

  if (cfg.redirectInbound) {
    for (const p of cfg.excludeInboundPorts) add(CHAIN.inbound, `-p tcp --dport ${p} -j RETURN`);
    for (const ip of mine(cfg.excludeInboundIps)) add(CHAIN.inbound, `-s ${ip} -j RETURN`);
    add(CHAIN.inbound, `-p tcp -j ${CHAIN.inboundRedirect}`);
  }

  // Outbound, in order: the inbound passthrough's own connections; the proxy calling its own
  // address over loopback goes to the inbound side (as Kuma and Istio do); other loopback traffic
  // and the proxy's own traffic are left alone; then DNS over TCP, exclusions, and the redirect.
  add(CHAIN.outbound, `-s ${f.passthroughSource} -o lo -j RETURN`);
  if (cfg.redirectInbound) add(CHAIN.outbound, `! -d ${f.loopback} -o lo -m owner --uid-owner ${dp} -j ${CHAIN.inboundRedirect}`);
  add(CHAIN.outbound, `-o lo -m owner ! --uid-owner ${dp} -j RETURN`);
  add(CHAIN.outbound, `-m owner --uid-owner ${dp} -j RETURN`);
  const resolvers = cfg.redirectAllDnsTraffic ? [undefined] : mine(cfg.dnsResolvers);
  if (cfg.redirectDns) for (const r of resolvers) add(CHAIN.outbound, `-p tcp --dport 53${r ? ` -d ${r}` : ''} -j REDIRECT --to-ports ${cfg.redirectDnsPort}`);
  add(CHAIN.outbound, `-d ${f.loopback} -j RETURN`);
  for (const x of cfg.excludeOutboundPortsForUids) {
    if (x.protocol === 'udp') continue; // only TCP is redirected here (DNS below)
    add(CHAIN.outbound, `-p tcp${x.ports === '*' ? '' : ` --dport ${portArg(x.ports)}`} -m owner --uid-owner ${x.uids} -j RETURN`);
  }
  for (const p of cfg.excludeOutboundPorts) add(CHAIN.outbound, `-p tcp --dport ${p} -j RETURN`);
  for (const ip of mine(cfg.excludeOutboundIps)) add(CHAIN.outbound, `-d ${ip} -j RETURN`);
  add(CHAIN.outbound, `-j ${CHAIN.outboundRedirect}`);

  if (cfg.redirectDns) {
    add(CHAIN.dns, `-m owner --uid-owner ${dp} -j RETURN`);
    for (const x of cfg.excludeOutboundPortsForUids) {
      if (x.protocol !== 'tcp' && (x.ports === '*' || portMatches(x.ports, 53))) add(CHAIN.dns, `-m owner --uid-owner ${x.uids} -j RETURN`);
    }
    for (const r of resolvers) add(CHAIN.dns, `-p udp${r ? ` -d ${r}` : ''} -j REDIRECT --to-ports ${cfg.redirectDnsPort}`);
  }

  // Jumps from the built-in chains, last, so our chains exist when they are added.
  if (cfg.redirectInbound) add('PREROUTING', `-p tcp -j ${CHAIN.inbound}`);
  add('OUTPUT', `-p tcp -j ${CHAIN.outbound}`);
  if (cfg.redirectDns) add('OUTPUT', `-p udp --dport 53 -j ${CHAIN.dns}`);

  const natChains = [CHAIN.inbound, CHAIN.inboundRedirect, CHAIN.outbound, CHAIN.outboundRedirect, ...(cfg.redirectDns ? [CHAIN.dns] : [])];
  const tables: TableRules[] = [{ table: 'nat', chains: natChains, rules: nat.map(owned) }];

  if (cfg.redirectDns) {
    // Conntrack zones: the app's query to the resolver and the proxy's query upstream would
    // otherwise share a conntrack entry, and replies would be rewritten to the wrong socket.
    const raw: string[] = [];
    for (const r of resolvers) {
      const to = r ? ` -d ${r}` : '';
      const from = r ? ` -s ${r}` : '';
      raw.push(`-A ${CHAIN.ctOutput} -p udp --dport 53${to} -m owner --uid-owner ${dp} -j CT --zone 1`);
      raw.push(`-A ${CHAIN.ctOutput} -p udp --sport ${cfg.redirectDnsPort} -m owner --uid-owner ${dp} -j CT --zone 2`);
      raw.push(`-A ${CHAIN.ctOutput} -p udp --dport 53${to} -m owner ! --uid-owner ${dp} -j CT --zone 2`);
      raw.push(`-A ${CHAIN.ctPrerouting} -p udp --sport 53${from} -j CT --zone 1`);
    }
    raw.push(`-A OUTPUT -p udp -j ${CHAIN.ctOutput}`, `-A PREROUTING -p udp -j ${CHAIN.ctPrerouting}`);
    tables.push({ table: 'raw', chains: [CHAIN.ctOutput, CHAIN.ctPrerouting], rules: [...new Set(raw)].map(owned) });
  }
  return { family, tables };
}

function portMatches(range: string, port: number): boolean {
  const [a, b] = range.split('-').map(Number);
  return b === undefined ? a === port : a! <= port && port <= b;
}

/** Adds the ownership comment before the target (`-j`), where iptables-save also prints it. */
const owned = (rule: string) => {
  const at = rule.lastIndexOf(' -j ');
  return `${rule.slice(0, at)} -m comment --comment "${OWNER}"${rule.slice(at)}`;
};

/** What is ours in `iptables-save` output of one table: jump rules in built-in chains, and our chains. */
export interface OwnedState {
  builtinRules: string[];
  chains: string[];
}

/** Reads `iptables-save` output: per table, the rules and chains that are ours. */
export function ownedState(saved: string): Map<string, OwnedState> {
  const out = new Map<string, OwnedState>();
  let table = '';
  for (const line of saved.split('\n')) {
    if (line.startsWith('*')) {
      table = line.slice(1).trim();
      out.set(table, { builtinRules: [], chains: [] });
    } else if (line.startsWith(':') && line.slice(1).startsWith(CHAIN_PREFIX)) {
      out.get(table)?.chains.push(line.slice(1).split(' ')[0]!);
    } else if (line.startsWith('-A ')) {
      const chain = line.split(' ')[1]!;
      if (!chain.startsWith(CHAIN_PREFIX) && line.includes(OWNER)) out.get(table)?.builtinRules.push(line);
    }
  }
  return out;
}

/**
 * iptables-restore input (for `--noflush`) that replaces what is ours in `current` with `next`
 * (`next` empty: uninstall). Other rules and chains are untouched. One COMMIT per table.
 */
export function restoreInput(current: Map<string, OwnedState>, next: TableRules[]): string {
  const tables = new Set([...[...current.entries()].filter(([, s]) => s.builtinRules.length > 0 || s.chains.length > 0).map(([t]) => t), ...next.map((t) => t.table)]);
  const lines: string[] = [];
  for (const table of ['raw', 'nat', 'mangle', 'filter'].filter((t) => tables.has(t))) {
    const old = current.get(table) ?? { builtinRules: [], chains: [] };
    const rules = next.find((t) => t.table === table);
    lines.push(`*${table}`);
    // Declaring a chain with --noflush creates it, or empties it if it exists.
    const chains = [...new Set([...old.chains, ...(rules?.chains ?? [])])];
    for (const c of chains) lines.push(`:${c} - [0:0]`);
    for (const r of old.builtinRules) lines.push(r.replace(/^-A /, '-D '));
    for (const c of old.chains) if (!rules?.chains.includes(c)) lines.push(`-X ${c}`);
    if (rules) lines.push(...rules.rules);
    lines.push('COMMIT');
  }
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}

/** The rules of a fresh install, as `--dry-run` prints them: one block per family. */
export function describeRules(cfg: TransparentProxyConfig): string {
  return families(cfg)
    .map((family) => `# ${family === 'ipv4' ? 'iptables' : 'ip6tables'}\n${restoreInput(new Map(), buildRules(cfg, family).tables)}`)
    .join('\n');
}
