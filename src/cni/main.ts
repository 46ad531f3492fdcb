import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { VERSION } from '../core/index.js';
import { ensureChained, installShim, keepChained, removeChained } from './installer.js';
import { cniEnv, errorJson, runCni } from './plugin.js';

function readStdin(): Promise<string> {
  return new Promise((resolve) => {
    let data = '';
    if (process.stdin.isTTY) return resolve('');
    process.stdin.on('data', (d: Buffer) => (data += d.toString()));
    process.stdin.on('end', () => resolve(data));
  });
}

/** Structured log lines on stderr (stdout belongs to the CNI result). */
function log(msg: string, fields: Record<string, unknown> = {}): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), component: 'weft-cni', msg, ...fields })}\n`);
}

/** As a CNI plugin (CNI_COMMAND set): one command, result or error JSON on stdout. */
async function plugin(): Promise<number> {
  const env = cniEnv(process.env);
  const stdin = env.command === 'VERSION' ? '' : await readStdin();
  let version = '1.0.0';
  try {
    version = (JSON.parse(stdin) as { cniVersion?: string }).cniVersion ?? version;
  } catch {
    // reported by runCni
  }
  try {
    const out = await runCni(env, stdin, log);
    if (out !== undefined) process.stdout.write(`${out}\n`);
    return 0;
  } catch (err) {
    process.stdout.write(`${errorJson(err, version)}\n`);
    log('failed', { command: env.command, error: (err as Error).message });
    return 1;
  }
}

/** As a command (`weft-cni install|uninstall`): puts the plugin into a node's CNI configuration. */
async function installer(argv: string[]): Promise<number> {
  const entry = fileURLToPath(new URL('../cmd/weft-cni.js', import.meta.url));
  const program = new Command('weft-cni').description('CNI plugin of the Weft mesh, and its installer').version(VERSION);
  program
    .command('install')
    .description('chain weft-cni after the primary network in the CNI configuration, and install its shim')
    .option('--cni-conf-dir <dir>', 'CNI configuration directory', '/etc/cni/net.d')
    .option('--cni-bin-dir <dir>', 'CNI plugin directory', '/opt/cni/bin')
    .option('--plugin-config <json>', 'fields of the weft-cni entry, e.g. {"weft":{"dpUser":"5678"}}', '{}')
    .option('--watch', 'keep running and re-add the plugin whenever the configuration changes')
    .action(async (o: { cniConfDir: string; cniBinDir: string; pluginConfig: string; watch?: boolean }) => {
      let pluginConfig: Record<string, unknown>;
      try {
        pluginConfig = JSON.parse(o.pluginConfig) as Record<string, unknown>;
      } catch (err) {
        throw new Error(`--plugin-config is not JSON: ${(err as Error).message}`);
      }
      const opts = { confDir: o.cniConfDir, binDir: o.cniBinDir, entry, pluginConfig };
      log('shim installed', { path: installShim(opts) });
      const file = ensureChained(opts);
      log(file ? 'plugin chained' : 'plugin already chained', { file });
      if (o.watch) {
        const stop = keepChained(opts, (f) => log('plugin chained again', { file: f }));
        await new Promise<void>((resolve) => {
          for (const s of ['SIGTERM', 'SIGINT'] as const) process.once(s, () => resolve());
        });
        stop();
      }
    });
  program
    .command('uninstall')
    .description('remove weft-cni from the CNI configuration')
    .option('--cni-conf-dir <dir>', 'CNI configuration directory', '/etc/cni/net.d')
    .action((o: { cniConfDir: string }) => {
      for (const f of removeChained(o.cniConfDir)) log('plugin removed', { file: f });
    });
  program.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    const c = err as { code?: string; exitCode?: number };
    if (typeof c.code === 'string' && c.code.startsWith('commander.')) return c.exitCode ?? 1;
    process.stderr.write(`Error: ${(err as Error).message}\n`);
    return 1;
  }
}

export async function main(argv: string[]): Promise<number> {
  return process.env.CNI_COMMAND ? plugin() : installer(argv);
}
