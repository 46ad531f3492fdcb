import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WeftError } from '../core/index.js';

/**
 * Puts weft-cni into the node's CNI configuration: chained after the primary network's plugins in
 * the first config file (in the order the runtime reads them), converting a single-plugin `.conf`
 * into a `.conflist`; or, with no network configured yet, a conflist of its own. Installs a shim
 * in the CNI bin dir that runs this weft-cni. Writes are atomic (temp file + rename).
 */

export const PLUGIN_TYPE = 'weft-cni';
const OWN_FILE = '10-weft.conflist';

export interface InstallerOptions {
  confDir: string;
  binDir: string;
  /** The weft-cni entry point the shim runs, and the node binary to run it with. */
  entry: string;
  node?: string;
  /** Extra fields of the plugin entry (e.g. `weft` settings, `kubernetes`). */
  pluginConfig?: Record<string, unknown>;
}

function writeAtomic(path: string, text: string, mode = 0o644): void {
  const tmp = `${path}.weft-tmp`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

/** The config file the runtime uses: the first by name among .conflist, .conf and .json. */
export function primaryConfig(confDir: string): string | undefined {
  if (!existsSync(confDir)) return undefined;
  return readdirSync(confDir)
    .filter((f) => /\.(conflist|conf|json)$/.test(f))
    .sort()[0];
}

type ConfList = { cniVersion?: string; name?: string; plugins: Record<string, unknown>[] } & Record<string, unknown>;

/** Adds (or refreshes) our plugin entry. Returns the file it wrote, or undefined if nothing changed. */
export function ensureChained(opts: InstallerOptions): string | undefined {
  mkdirSync(opts.confDir, { recursive: true });
  const entry = { type: PLUGIN_TYPE, ...(opts.pluginConfig ?? {}) };
  const file = primaryConfig(opts.confDir);
  if (!file) {
    const own: ConfList = { cniVersion: '1.0.0', name: 'weft', plugins: [entry] };
    writeAtomic(join(opts.confDir, OWN_FILE), `${JSON.stringify(own, null, 2)}\n`);
    return join(opts.confDir, OWN_FILE);
  }
  const path = join(opts.confDir, file);
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new WeftError('invalid_resource', `${path} is not valid JSON: ${(err as Error).message}`);
  }
  let list: ConfList;
  let target = path;
  if (Array.isArray(doc.plugins)) {
    list = doc as ConfList;
  } else {
    // A single-plugin .conf: the same network as a list, with us chained after it.
    const { cniVersion, name, ...plugin } = doc;
    list = { cniVersion: cniVersion as string, name: name as string, plugins: [plugin] };
    target = path.replace(/\.(conf|json)$/, '.conflist');
  }
  const at = list.plugins.findIndex((p) => p.type === PLUGIN_TYPE);
  const before = JSON.stringify(list);
  if (at >= 0) list.plugins[at] = entry;
  else list.plugins.push(entry);
  if (target === path && JSON.stringify(list) === before) return undefined;
  writeAtomic(target, `${JSON.stringify(list, null, 2)}\n`);
  if (target !== path) unlinkSync(path);
  return target;
}

/** Removes our plugin entry (and our own conflist), leaving the rest as it was. */
export function removeChained(confDir: string): string[] {
  const changed: string[] = [];
  if (!existsSync(confDir)) return changed;
  for (const f of readdirSync(confDir).filter((x) => /\.(conflist|conf|json)$/.test(x))) {
    const path = join(confDir, f);
    if (f === OWN_FILE) {
      unlinkSync(path);
      changed.push(path);
      continue;
    }
    try {
      const doc = JSON.parse(readFileSync(path, 'utf8')) as ConfList;
      if (!Array.isArray(doc.plugins) || !doc.plugins.some((p) => p.type === PLUGIN_TYPE)) continue;
      doc.plugins = doc.plugins.filter((p) => p.type !== PLUGIN_TYPE);
      writeAtomic(path, `${JSON.stringify(doc, null, 2)}\n`);
      changed.push(path);
    } catch {
      // not ours to fix
    }
  }
  return changed;
}

/** The shim the runtime executes as `<binDir>/weft-cni`. */
export function installShim(opts: InstallerOptions): string {
  mkdirSync(opts.binDir, { recursive: true });
  const path = join(opts.binDir, PLUGIN_TYPE);
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  writeAtomic(path, `#!/bin/sh\nexec ${quote(opts.node ?? process.execPath)} ${quote(opts.entry)} "$@"\n`, 0o755);
  return path;
}

/**
 * Keeps the plugin chained: re-adds it whenever the directory changes (a network plugin that
 * rewrites its config would otherwise drop us). Returns a function that stops watching.
 */
export function keepChained(opts: InstallerOptions, onChange: (file: string) => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  const w = watch(opts.confDir, () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      try {
        const f = ensureChained(opts);
        if (f) onChange(f);
      } catch {
        // a half-written file of another plugin: the next event retries
      }
    }, 100);
  });
  return () => {
    clearTimeout(timer);
    w.close();
  };
}
