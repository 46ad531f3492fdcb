import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

/** The nameservers of a resolv.conf (zone ids dropped); none when it cannot be read. */
export function resolvConfNameservers(path = '/etc/resolv.conf'): string[] {
  try {
    return readFileSync(path, 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1]?.split('%')[0])
      .filter((s): s is string => s !== undefined && isIP(s) !== 0);
  } catch {
    return [];
  }
}
