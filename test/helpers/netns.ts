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
