import { z } from 'zod';
import type { Violation } from './errors.js';
import { formatPath, joinPath } from './paths.js';

const ARTICLE: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'an integer',
  boolean: 'a boolean',
  object: 'an object',
  array: 'a list',
  record: 'a map',
};

/**
 * Turns zod's issues into messages a mesh operator can act on ("required", "must be one of: A, B")
 * instead of zod's internal wording. Messages given explicitly in a schema win.
 */
export const errorMap: z.core.$ZodErrorMap = (iss) => {
  switch (iss.code) {
    case 'invalid_type':
      if (iss.input === undefined) return 'required';
      return `must be ${ARTICLE[iss.expected] ?? iss.expected}`;
    case 'invalid_value':
      return `must be one of: ${iss.values.map(String).join(', ')}`;
    case 'too_small':
      if (iss.origin === 'string') return Number(iss.minimum) === 1 ? 'must not be empty' : `must be at least ${iss.minimum} characters`;
      if (iss.origin === 'array') return `must have at least ${iss.minimum} item${Number(iss.minimum) === 1 ? '' : 's'}`;
      if (iss.origin === 'record' || iss.origin === 'set') return `must have at least ${iss.minimum} entries`;
      return `must be at least ${iss.minimum}`;
    case 'too_big':
      if (iss.origin === 'string') return `must be at most ${iss.maximum} characters`;
      if (iss.origin === 'array') return `must have at most ${iss.maximum} items`;
      return `must be at most ${iss.maximum}`;
    case 'invalid_union':
      return 'does not match any allowed form';
    default:
      return undefined;
  }
};

/** Converts zod issues to violations, one per offending field, every one of them. */
export function issuesToViolations(issues: readonly z.core.$ZodIssue[], prefix = ''): Violation[] {
  const out: Violation[] = [];
  for (const issue of issues) {
    const base = formatPath(issue.path as PropertyKey[]);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ field: joinPath(prefix, formatPath([...(issue.path as PropertyKey[]), key])), message: 'unknown field' });
      continue;
    }
    out.push({ field: joinPath(prefix, base), message: issue.message });
  }
  return out;
}

export type ValidationResult<T> = { ok: true; value: T } | { ok: false; violations: Violation[] };

/** Parses with a schema and returns either the value (defaults applied) or every violation. */
export function validate<T>(schema: z.ZodType<T>, input: unknown, prefix = ''): ValidationResult<T> {
  const res = schema.safeParse(input, { error: errorMap });
  if (res.success) return { ok: true, value: res.data };
  return { ok: false, violations: issuesToViolations(res.error.issues, prefix) };
}

// ---- shared field schemas ------------------------------------------------------------------

export const portSchema = z
  .number({ error: (iss) => (iss.input === undefined ? 'required' : 'must be 1-65535') })
  .int('must be 1-65535')
  .min(1, 'must be 1-65535')
  .max(65535, 'must be 1-65535');

const TAG_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

export const tagsSchema = z.record(
  z.string().regex(TAG_KEY, 'tag name must be letters, digits, ".", "_", "/" or "-"'),
  z.string().min(1, 'tag value must not be empty'),
);

/** Go-style durations as Kuma accepts them, with its `d` and `y` units: `24h`, `1d`, `10y`, `1h30m`. */
export const DURATION = /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h|d|y))+$/;
export const durationSchema = z.string().regex(DURATION, 'must be a duration such as 30s, 24h, 1d or 10y');

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, y: 365 * 86400e3 };

export function durationToMs(d: string): number {
  if (!DURATION.test(d)) throw new Error(`not a duration: ${d}`);
  let total = 0;
  for (const m of d.matchAll(/([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d|y)/g)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return total;
}

const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export function isIP(s: string): boolean {
  return z.ipv4().safeParse(s).success || z.ipv6().safeParse(s).success;
}

/** An IP address or a DNS name. */
export const addressSchema = z
  .string()
  .min(1, 'must not be empty')
  .refine((s) => isIP(s) || HOSTNAME.test(s), 'must be an IP address or a hostname');

export const ipSchema = z.string().refine(isIP, 'must be an IP address');

/** Resource names: what Kuma accepts on Universal, minus characters that break URLs. */
export const NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
export const nameSchema = z
  .string({ error: (iss) => (iss.input === undefined ? 'required' : 'must be a string') })
  .regex(NAME, 'must be 1-253 letters, digits, ".", "_" or "-", starting and ending with a letter or digit');

export const labelsSchema = z.record(z.string().regex(TAG_KEY, 'label name must be letters, digits, ".", "_", "/" or "-"'), z.string());
