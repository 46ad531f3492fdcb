import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const agent = fileURLToPath(new URL('./netns-agent.js', import.meta.url));

/** Why network-namespace tests cannot run here, or undefined when they can. */
export function netnsMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'tests with network namespaces and iptables need root';
  for (const [cmd, args] of [
    ['ip', ['netns', 'list']],
    ['iptables-save', ['--version']],
    ['nsenter', ['--version']],
    ['setpriv', ['--version']],
  ] as const) {
    try {
      execFileSync(cmd, [...args], { stdio: 'ignore' });
    } catch (err) {
      return `${cmd} does not run: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  return undefined;
}

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

export const inNs = (ns: string, cmd: string, args: string[], input?: string): string => sh('ip', ['netns', 'exec', ns, cmd, ...args], input);

/**
 * Two test hosts joined by a veth pair, no route out: `app` (…2) and `peer` (…1), IPv4 and, where
 * the kernel allows, IPv6. The app's /etc/resolv.conf (as `ip netns exec` shows it) names the peer.
 */
export class TwoHosts {
  readonly app: string;
  readonly peer: string;
  readonly v4: { app: string; peer: string };
  readonly v6: { app: string; peer: string };
  ipv6 = true;
  private readonly children: ChildProcess[] = [];

  constructor(tag: string, subnet: number) {
    const id = `${tag}${process.pid % 10000}`;
    this.app = `wapp-${id}`;
    this.peer = `wpeer-${id}`;
    this.v4 = { app: `10.77.${subnet}.2`, peer: `10.77.${subnet}.1` };
    this.v6 = { app: `fd77:${subnet}::2`, peer: `fd77:${subnet}::1` };
  }

  create(): void {
    this.destroy();
    const va = `va${process.pid % 100000}${this.app.length}`;
    const vp = `vp${process.pid % 100000}${this.app.length}`;
    sh('ip', ['netns', 'add', this.app]);
    sh('ip', ['netns', 'add', this.peer]);
    sh('ip', ['link', 'add', va, 'type', 'veth', 'peer', 'name', vp]);
    sh('ip', ['link', 'set', va, 'netns', this.app]);
    sh('ip', ['link', 'set', vp, 'netns', this.peer]);
    for (const [ns, dev, addr] of [
      [this.app, va, this.v4.app],
      [this.peer, vp, this.v4.peer],
    ] as const) {
      inNs(ns, 'ip', ['link', 'set', 'lo', 'up']);
      inNs(ns, 'ip', ['addr', 'add', `${addr}/24`, 'dev', dev]);
      inNs(ns, 'ip', ['link', 'set', dev, 'up']);
    }
    try {
      inNs(this.app, 'ip', ['-6', 'addr', 'add', `${this.v6.app}/64`, 'dev', va, 'nodad']);
      inNs(this.peer, 'ip', ['-6', 'addr', 'add', `${this.v6.peer}/64`, 'dev', vp, 'nodad']);
    } catch {
      this.ipv6 = false;
    }
    mkdirSync(`/etc/netns/${this.app}`, { recursive: true });
    writeFileSync(`/etc/netns/${this.app}/resolv.conf`, `nameserver ${this.v4.peer}\n${this.ipv6 ? `nameserver ${this.v6.peer}\n` : ''}`);
  }

  /** Starts an agent serving [host, port, label, proto] in `ns`; resolves when bound. */
  async serve(ns: string, spec: [string, number, string, 'tcp' | 'udp'][]): Promise<void> {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, agent, 'serve', JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.children.push(child);
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', () => resolve());
      child.once('exit', (code) => reject(new Error(`agent in ${ns} exited with ${code}`)));
    });
  }

  /** One TCP connection or UDP query from `ns` as `uid`; the label that answered or `error …`. */
  call(ns: string, uid: number, proto: 'tcp' | 'udp', host: string, port: number): Promise<string> {
    return new Promise((resolve) => {
      const child = spawn('ip', ['netns', 'exec', ns, 'setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, agent, proto, JSON.stringify([host, port])], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('close', () => resolve(out.trim() || `error (no output) ${err.trim()}`));
    });
  }

  destroy(): void {
    for (const c of this.children.splice(0)) c.kill('SIGKILL');
    for (const ns of [this.app, this.peer]) {
      try {
        sh('ip', ['netns', 'del', ns]);
      } catch {
        // not there
      }
    }
    rmSync(`/etc/netns/${this.app}`, { recursive: true, force: true });
  }
}

/**
 * Hosts on one Ethernet segment: a bridge in its own namespace, each host a namespace with a veth
 * to it at 10.79.<subnet>.<n> (n from 2) and a default route via the root namespace, which is on
 * the segment too at 10.79.<subnet>.1 (so a control plane started by the test is reachable). Each
 * host's /etc/hosts (as `ip netns exec` shows it) names the root side `cp.weft.test`, and its
 * resolv.conf points there.
 */
export class Lan {
  readonly hosts = new Map<string, { ns: string; address: string }>();
  readonly rootAddress: string;
  private readonly bridgeNs: string;
  private readonly id: string;
  private readonly children: ChildProcess[] = [];

  constructor(
    tag: string,
    private readonly subnet: number,
  ) {
    this.id = `${tag}${process.pid % 10000}`;
    this.bridgeNs = `wbr-${this.id}`;
    this.rootAddress = `10.79.${subnet}.1`;
  }

  create(names: string[]): void {
    this.destroy();
    // A run killed before its cleanup leaves its root-side link on this subnet, which would take
    // the replies: remove any such link first.
    for (const line of sh('ip', ['-o', 'addr', 'show', 'to', `10.79.${this.subnet}.0/24`]).split('\n')) {
      const dev = line.split(/\s+/)[1]?.split('@')[0];
      if (dev) sh('ip', ['link', 'del', dev]);
    }
    sh('ip', ['netns', 'add', this.bridgeNs]);
    inNs(this.bridgeNs, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    inNs(this.bridgeNs, 'ip', ['link', 'set', 'br0', 'up']);
    const plug = (outer: string, inner: string, into: string | undefined, address: string) => {
      sh('ip', ['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
      sh('ip', ['link', 'set', inner, 'netns', this.bridgeNs]);
      inNs(this.bridgeNs, 'ip', ['link', 'set', inner, 'master', 'br0']);
      inNs(this.bridgeNs, 'ip', ['link', 'set', inner, 'up']);
      if (into) sh('ip', ['link', 'set', outer, 'netns', into]);
      const run = (args: string[]) => (into ? inNs(into, 'ip', args) : sh('ip', args));
      run(['addr', 'add', `${address}/24`, 'dev', outer]);
      run(['link', 'set', outer, 'up']);
    };
    plug(`wr${this.id}`, `wb${this.id}`, undefined, this.rootAddress);
    names.forEach((name, i) => {
      const ns = `wh-${this.id}-${i}`;
      const address = `10.79.${this.subnet}.${i + 2}`;
      sh('ip', ['netns', 'add', ns]);
      inNs(ns, 'ip', ['link', 'set', 'lo', 'up']);
      plug(`eth${i}x${this.id}`.slice(0, 15), `wb${i}x${this.id}`.slice(0, 15), ns, address);
      // Virtual IPs (240.0.0.0/5) need a route before iptables can redirect connections to them.
      inNs(ns, 'ip', ['route', 'add', 'default', 'via', this.rootAddress]);
      mkdirSync(`/etc/netns/${ns}`, { recursive: true });
      writeFileSync(`/etc/netns/${ns}/hosts`, `127.0.0.1 localhost\n${this.rootAddress} cp.weft.test\n`);
      writeFileSync(`/etc/netns/${ns}/resolv.conf`, `nameserver ${this.rootAddress}\n`);
      this.hosts.set(name, { ns, address });
    });
  }

  host(name: string): { ns: string; address: string } {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  /** Starts `argv` in a host's namespace (as `uid` if given); resolves once it prints a line. */
  async start(name: string, argv: string[], uid?: number, env: Record<string, string> = {}): Promise<ChildProcess> {
    const as = uid === undefined ? [] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups'];
    const child = spawn('ip', ['netns', 'exec', this.host(name).ns, ...as, ...argv], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
    this.children.push(child);
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      lines.once('line', () => resolve());
      // WEFT_TEST_LAN_OUTPUT=1 shows what the processes print (their logs), prefixed by host.
      if (process.env.WEFT_TEST_LAN_OUTPUT === '1') lines.on('line', (l) => process.stderr.write(`[${name}] ${l}\n`));
      child.once('exit', (code) => reject(new Error(`${argv.join(' ')} in ${name} exited with ${code}`)));
    });
    return child;
  }

  destroy(): void {
    for (const c of this.children.splice(0)) c.kill('SIGKILL');
    for (const { ns } of this.hosts.values()) {
      try {
        sh('ip', ['netns', 'del', ns]);
      } catch {
        // not there
      }
      rmSync(`/etc/netns/${ns}`, { recursive: true, force: true });
    }
    try {
      sh('ip', ['netns', 'del', this.bridgeNs]);
    } catch {
      // not there
    }
    try {
      sh('ip', ['link', 'del', `wr${this.id}`]);
    } catch {
      // went with the bridge namespace
    }
  }
}
