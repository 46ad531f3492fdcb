import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { WeftError } from '../core/index.js';
import { Iptables, type Backend } from './iptables.js';
import type { TransparentProxyConfig } from './rules.js';
import { verifyRedirection, type VerifyResult } from './verify.js';

export interface InstallOptions {
  /** Network namespace to act in (path); the current one when absent. */
  netns?: string;
  backend?: Backend;
  /** Prove that redirection works after installing (default). */
  verify?: boolean;
  trace?: (line: string) => void;
}

/** The probes, run in `netns` through nsenter (Node cannot switch namespaces itself). */
async function verifyIn(netns: string, cfg: TransparentProxyConfig): Promise<VerifyResult> {
  const script = fileURLToPath(new URL('./verify-main.js', import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=${netns}`, '--', process.execPath, script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => {
      try {
        resolve(JSON.parse(out) as VerifyResult);
      } catch {
        reject(new WeftError('internal', `the redirection probe in ${netns} printed no result`));
      }
    });
    child.stdin.end(JSON.stringify(cfg));
  });
}

/**
 * Installs the rules (replacing our earlier ones, all or nothing), then verifies that traffic is
 * really redirected. A failed verification removes the rules again and throws: a mesh that
 * silently does not capture traffic is worse than an install that fails.
 */
export async function installTransparentProxy(cfg: TransparentProxyConfig, opts: InstallOptions = {}): Promise<{ backend: Backend; notes: string[] }> {
  const ipt = await Iptables.open({ netns: opts.netns, backend: opts.backend, trace: opts.trace });
  await ipt.install(cfg);
  const notes: string[] = [];
  if (opts.verify !== false) {
    const result = opts.netns ? await verifyIn(opts.netns, cfg) : await verifyRedirection(cfg);
    notes.push(...result.notes);
    if (result.problems.length > 0) {
      await ipt.uninstall();
      throw new WeftError('internal', `the rules were installed but traffic is not redirected, so they were removed again: ${result.problems.join('; ')}`);
    }
  }
  return { backend: ipt.backend, notes };
}

export async function uninstallTransparentProxy(opts: Omit<InstallOptions, 'verify'> = {}): Promise<{ backend: Backend }> {
  const ipt = await Iptables.open(opts);
  await ipt.uninstall();
  return { backend: ipt.backend };
}

/** Lists what differs from `cfg`'s rules in place; empty when all are there. */
export async function checkTransparentProxy(cfg: TransparentProxyConfig, opts: Omit<InstallOptions, 'verify'> = {}): Promise<string[]> {
  return (await Iptables.open(opts)).check(cfg);
}
