import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const ADMIN_TOKEN_FILE = 'admin-token';

/**
 * Returns the admin token kept in the data dir, creating it (mode 0600, never overwritten) on
 * first start. The token itself is never logged.
 */
export function ensureAdminToken(dataDir: string): { token: string; path: string; created: boolean } {
  const path = join(dataDir, ADMIN_TOKEN_FILE);
  let created = false;
  try {
    writeFileSync(path, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
  const token = readFileSync(path, 'utf8').trim();
  if (token === '') throw new Error(`${path} is empty: delete it to have a new token generated`);
  return { token, path, created };
}

/** True when an address accepts connections only from this host. */
export function isLoopback(address: string): boolean {
  return address === 'localhost' || address === '::1' || /^127\.\d+\.\d+\.\d+$/.test(address);
}
