import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { WeftError } from '../core/index.js';
import { buildRules, families, ownedState, restoreInput, type IpFamily, type TransparentProxyConfig } from './rules.js';

/** Which iptables the host uses: the nf_tables one or the legacy x_tables one. */
export type Backend = 'nft' | 'legacy';

export interface IptablesOptions {
  /** Run inside this network namespace (a path such as /var/run/netns/x or /proc/<pid>/ns/net). */
  netns?: string;
  /** Force a backend instead of detecting it. */
  backend?: Backend;
  /** Called with each command and its input, for `--verbose`. */
  trace?: (line: string) => void;
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

function run(opts: IptablesOptions, cmd: string, args: string[], input?: string): Promise<Result> {
  const [file, argv] = opts.netns ? ['nsenter', [`--net=${opts.netns}`, '--', cmd, ...args]] : [cmd, args];
  opts.trace?.(`$ ${[file, ...argv].join(' ')}${input ? `\n${input.trimEnd()}` : ''}`);
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => reject(new WeftError('internal', `cannot run ${file}: ${err.message}`)));
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    if (input !== undefined) {
      child.stdin!.on('error', () => undefined); // a command that exits early: its exit code says why
      child.stdin!.end(input);
    }
  });
}

/** The save/restore commands of a backend and family, falling back to the plain names. */
function commands(backend: Backend, family: IpFamily): { save: string; restore: string } {
  const base = family === 'ipv4' ? 'iptables' : 'ip6tables';
  const save = `${base}-${backend}-save`;
  const restore = `${base}-${backend}-restore`;
  return onPath(save) && onPath(restore) ? { save, restore } : { save: `${base}-save`, restore: `${base}-restore` };
}

const countRules = (saved: string) => saved.split('\n').filter((l) => l.startsWith('-A ')).length;

/**
 * The backend the host (or namespace) already uses: the one with more rules, as Kubernetes'
 * iptables wrapper decides; with none anywhere, nft (Debian's default since bookworm).
 */
export async function detectBackend(opts: IptablesOptions = {}): Promise<Backend> {
  if (opts.backend) return opts.backend;
  const count = async (b: Backend) => {
    const { save } = commands(b, 'ipv4');
    if (!onPath(save) && !opts.netns) return -1;
    const r = await run({ ...opts, trace: undefined }, save, []).catch(() => ({ code: 1, stdout: '', stderr: '' }));
    return r.code === 0 ? countRules(r.stdout) : -1;
  };
  const [nft, legacy] = [await count('nft'), await count('legacy')];
  return legacy > nft ? 'legacy' : 'nft';
}

export class Iptables {
  private constructor(
    private readonly opts: IptablesOptions,
    readonly backend: Backend,
  ) {}

  static async open(opts: IptablesOptions = {}): Promise<Iptables> {
    return new Iptables(opts, await detectBackend(opts));
  }

  async save(family: IpFamily, table?: string): Promise<string> {
    const r = await run(this.opts, commands(this.backend, family).save, table ? ['-t', table] : []);
    if (r.code !== 0) throw new WeftError('internal', `${commands(this.backend, family).save} failed: ${r.stderr.trim()}`);
    return r.stdout;
  }

  private async restore(family: IpFamily, input: string, noflush: boolean): Promise<void> {
    const cmd = commands(this.backend, family).restore;
    const r = await run(this.opts, cmd, noflush ? ['--noflush'] : [], input);
    if (r.code !== 0) throw new WeftError('internal', `${cmd} refused the rules: ${r.stderr.trim() || `exit code ${r.code}`}`);
  }

  /**
   * Replaces our rules of one family with `cfg`'s (or removes them: `cfg` undefined), all or
   * nothing: if applying fails part way, the tables are put back as they were.
   */
  async apply(family: IpFamily, cfg: TransparentProxyConfig | undefined): Promise<void> {
    const before = await this.save(family);
    const input = restoreInput(ownedState(before), cfg ? buildRules(cfg, family).tables : []);
    if (input === '') return;
    try {
      await this.restore(family, input, true);
    } catch (err) {
      await this.rollback(family, before);
      throw err;
    }
  }

  /** Puts back the tables we touch exactly as `saved` had them. */
  async rollback(family: IpFamily, saved: string): Promise<void> {
    const blocks = saved.split(/^(?=\*)/m).filter((b) => /^\*(nat|raw)\b/.test(b));
    const present = blocks.map((b) => b.slice(1, b.indexOf('\n')).trim());
    // A table iptables-save did not print was empty: an empty block puts it back that way.
    const input = [...blocks.map((b) => b.slice(0, b.lastIndexOf('COMMIT') + 'COMMIT'.length)), ...['nat', 'raw'].filter((t) => !present.includes(t)).map((t) => `*${t}\nCOMMIT`)].join('\n');
    // Without --noflush: each table given is replaced by its saved content, exactly.
    if (input) await this.restore(family, `${input}\n`, false).catch(() => undefined);
  }

  async install(cfg: TransparentProxyConfig): Promise<void> {
    const done: IpFamily[] = [];
    const saved = new Map<IpFamily, string>();
    for (const f of families(cfg)) {
      try {
        saved.set(f, await this.save(f));
        await this.apply(f, cfg);
        done.push(f);
      } catch (err) {
        for (const d of done) await this.rollback(d, saved.get(d)!);
        throw err;
      }
    }
  }

  /** Removes our rules and chains, and nothing else, from both families. */
  async uninstall(): Promise<void> {
    await this.apply('ipv4', undefined);
    if (onPath('ip6tables-save') || this.opts.netns) await this.apply('ipv6', undefined).catch(() => undefined);
  }

  /**
   * Are `cfg`'s rules in place? Compares, per table, our chains and how many rules each holds
   * (iptables-save rewrites rule text, so counts and chain names are what can be compared).
   * Lists what differs; empty means in place.
   */
  async check(cfg: TransparentProxyConfig): Promise<string[]> {
    const problems: string[] = [];
    for (const f of families(cfg)) {
      const saved = await this.save(f);
      for (const want of buildRules(cfg, f).tables) {
        const expected = chainCounts(want.rules);
        const actual = chainCounts(tableBlock(saved, want.table).filter((l) => l.startsWith('-A ') && (l.split(' ')[1]!.startsWith('WEFT_') || l.includes('weft/transparent-proxy'))));
        for (const [chain, n] of expected) {
          const got = actual.get(chain) ?? 0;
          if (got !== n) problems.push(`${f} ${want.table} ${chain}: ${got} of our rules, expected ${n}`);
        }
      }
    }
    return problems;
  }
}

function tableBlock(saved: string, table: string): string[] {
  const lines = saved.split('\n');
  const at = lines.indexOf(`*${table}`);
  if (at < 0) return [];
  const end = lines.indexOf('COMMIT', at);
  return lines.slice(at, end < 0 ? undefined : end);
}

function chainCounts(rules: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of rules) {
    const chain = r.split(' ')[1]!;
    m.set(chain, (m.get(chain) ?? 0) + 1);
  }
  return m;
}
