import { readFileSync } from 'node:fs';

function findVersion(): string {
  // Compiled files live in dist/src/core; sources in src/core. package.json is above either.
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'weft' && pkg.version) return pkg.version;
    } catch {
      /* try the next */
    }
  }
  return '0.0.0-unknown';
}

/** Weft's version, from package.json. */
export const VERSION = findVersion();
