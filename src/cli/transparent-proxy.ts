import { Command, Option } from 'commander';
import { describeRules, installTransparentProxy, resolveConfig, uninstallTransparentProxy, type Backend, type TransparentProxySettings } from '../cni/index.js';

const list = (v: string, prev: string[] = []) => [...prev, ...v.split(',').map((s) => s.trim()).filter(Boolean)];
const repeat = (v: string, prev: string[] = []) => [...prev, v];

interface Flags {
  redirectInboundPort: string;
  redirectOutboundPort: string;
  redirectInbound: boolean;
  dpUser?: string;
  kumaDpUser?: string;
  kumaDpUid?: string;
  redirectDns?: boolean;
  redirectAllDnsTraffic?: boolean;
  redirectDnsPort: string;
  excludeInboundPorts?: string[];
  excludeOutboundPorts?: string[];
  excludeOutboundPortsForUids?: string[];
  excludeInboundIps?: string[];
  excludeOutboundIps?: string[];
  ipFamily?: string;
  ipFamilyMode?: string;
  iptablesMode?: Backend;
  dryRun?: boolean;
  verbose?: boolean;
  verify: boolean;
}

/** Flags as Kuma's `kumactl install transparent-proxy` spells them (and Weft's own names). */
function settings(f: Flags): TransparentProxySettings {
  return {
    redirectInboundPort: f.redirectInboundPort as unknown as number,
    redirectOutboundPort: f.redirectOutboundPort as unknown as number,
    redirectInbound: f.redirectInbound,
    dpUser: f.dpUser ?? f.kumaDpUser ?? f.kumaDpUid,
    redirectDns: f.redirectDns === true || f.redirectAllDnsTraffic === true,
    redirectAllDnsTraffic: f.redirectAllDnsTraffic === true,
    redirectDnsPort: f.redirectDnsPort as unknown as number,
    excludeInboundPorts: (f.excludeInboundPorts ?? []) as unknown as number[],
    excludeOutboundPorts: (f.excludeOutboundPorts ?? []) as unknown as number[],
    excludeOutboundPortsForUids: f.excludeOutboundPortsForUids ?? [],
    excludeInboundIps: f.excludeInboundIps ?? [],
    excludeOutboundIps: f.excludeOutboundIps ?? [],
    ipFamily: (f.ipFamily ?? f.ipFamilyMode ?? 'ipv4') as TransparentProxySettings['ipFamily'],
  };
}

export function addTransparentProxyCommands(program: Command, out: (s: string) => void, err: (s: string) => void): void {
  const install = program.commands.find((c) => c.name() === 'install') ?? program.command('install').description('install parts of the mesh on this host');
  install
    .command('transparent-proxy')
    .description("redirect this host's (or network namespace's) traffic through the proxy with iptables")
    .option('--redirect-inbound-port <port>', 'where inbound TCP is redirected', '15006')
    .option('--redirect-outbound-port <port>', 'where outbound TCP is redirected', '15001')
    .option('--no-redirect-inbound', 'leave inbound traffic alone')
    .option('--dp-user <user>', 'the user weft-dp and Envoy run as (name or UID): its traffic is not redirected (default kuma-dp, else UID 5678)')
    .addOption(new Option('--kuma-dp-user <user>', "Kuma's name for --dp-user").hideHelp())
    .addOption(new Option('--kuma-dp-uid <uid>', "Kuma's --kuma-dp-uid").hideHelp())
    .option('--redirect-dns', 'redirect DNS (UDP and TCP 53) to the resolvers of /etc/resolv.conf to the DNS port')
    .option('--redirect-all-dns-traffic', 'redirect DNS to any address to the DNS port')
    .option('--redirect-dns-port <port>', 'where DNS is redirected', '15053')
    .option('--exclude-inbound-ports <ports>', 'inbound ports not redirected (comma-separated, repeatable)', list)
    .option('--exclude-outbound-ports <ports>', 'outbound ports not redirected (comma-separated, repeatable)', list)
    .option('--exclude-outbound-ports-for-uids <[proto:]ports:uids>', 'outbound ports not redirected for some users, e.g. tcp:22:1000-1010 (repeatable)', repeat)
    .option('--exclude-inbound-ips <ips>', 'source addresses or CIDRs whose inbound traffic is not redirected', list)
    .option('--exclude-outbound-ips <ips>', 'destination addresses or CIDRs not redirected', list)
    .addOption(new Option('--ip-family <family>', 'which IP families to redirect').choices(['ipv4', 'ipv6', 'dual']))
    .addOption(new Option('--ip-family-mode <mode>', "Kuma's name for --ip-family").choices(['ipv4', 'ipv6', 'dualstack']).hideHelp())
    .addOption(new Option('--iptables-mode <backend>', 'iptables backend (detected from the rules the host already has)').choices(['nft', 'legacy']))
    .option('--no-verify', 'do not probe that redirection works after installing')
    .option('--dry-run', 'print the rules instead of applying them')
    .option('--verbose', 'print each command and the rules as they are applied')
    .action(async (f: Flags) => {
      const { config, notes } = resolveConfig(settings(f));
      for (const n of notes) err(`note: ${n}\n`);
      if (f.dryRun) return out(describeRules(config));
      const trace = f.verbose ? (l: string) => err(`${l}\n`) : undefined;
      err('installing transparent proxy rules...\n');
      const r = await installTransparentProxy(config, { backend: f.iptablesMode, verify: f.verify, trace });
      for (const n of r.notes) err(`note: ${n}\n`);
      const fams = config.ipFamily === 'dual' ? 'ipv4 and ipv6' : config.ipFamily;
      out(
        `transparent proxy installed (iptables ${r.backend}, ${fams}): inbound TCP -> ${config.redirectInboundPort}, outbound TCP -> ${config.redirectOutboundPort}` +
          `${config.redirectDns ? `, DNS -> ${config.redirectDnsPort}` : ''}; traffic of UID ${config.dpUid} is not redirected${!f.verify ? '' : r.notes.length === 0 ? '; redirection verified' : '; redirection only partly verified (see the notes)'}\n`,
      );
    });

  const uninstall = program.commands.find((c) => c.name() === 'uninstall') ?? program.command('uninstall').description('remove parts of the mesh from this host');
  uninstall
    .command('transparent-proxy')
    .description('remove the rules install transparent-proxy added, and nothing else')
    .addOption(new Option('--iptables-mode <backend>', 'iptables backend (detected when absent)').choices(['nft', 'legacy']))
    .option('--verbose', 'print each command')
    .action(async (f: { iptablesMode?: Backend; verbose?: boolean }) => {
      const r = await uninstallTransparentProxy({ backend: f.iptablesMode, trace: f.verbose ? (l) => err(`${l}\n`) : undefined });
      out(`transparent proxy rules removed (iptables ${r.backend})\n`);
    });
}
