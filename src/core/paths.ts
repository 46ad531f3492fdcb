import type { Violation } from './errors.js';

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/**
 * Formats a field path the way users write it: `networking.inbound[0].tags["kuma.io/service"]`.
 * Keys that are not plain identifiers (tag names) are quoted so the path stays unambiguous.
 */
export function formatPath(path: readonly PropertyKey[], prefix = ''): string {
  let out = prefix;
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else {
      const s = String(key);
      if (IDENTIFIER.test(s)) out += out === '' ? s : `.${s}`;
      else out += `[${JSON.stringify(s)}]`;
    }
  }
  return out;
}

export function joinPath(prefix: string, field: string): string {
  if (prefix === '') return field;
  if (field === '') return prefix;
  return field.startsWith('[') ? `${prefix}${field}` : `${prefix}.${field}`;
}

export function prefixViolations(prefix: string, violations: readonly Violation[]): Violation[] {
  return violations.map((v) => ({ field: joinPath(prefix, v.field), message: v.message }));
}
