import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { validate } from '../core/index.js';

const fileSchema = z.strictObject({
  cpAddress: z.url().optional(),
  authToken: z.string().min(1).optional(),
  authTokenFile: z.string().min(1).optional(),
});

export const DEFAULT_CP_ADDRESS = 'http://127.0.0.1:5681';

export interface CliConnection {
  cpAddress: string;
  authToken?: string;
}

/**
 * Where weftctl finds the control plane, first match wins: flags, then WEFTCTL_CP_ADDRESS /
 * WEFTCTL_AUTH_TOKEN, then the config file (WEFTCTL_CONFIG or ~/.config/weft/weftctl.yaml),
 * then http://127.0.0.1:5681 without a token.
 */
export function resolveConnection(flags: { cpAddress?: string; authTokenFile?: string }, env: NodeJS.ProcessEnv = process.env): CliConnection {
  const path = env.WEFTCTL_CONFIG ?? join(homedir(), '.config', 'weft', 'weftctl.yaml');
  let file: z.infer<typeof fileSchema> = {};
  if (existsSync(path)) {
    const res = validate(fileSchema, parse(readFileSync(path, 'utf8')) ?? {});
    if (!res.ok) throw new Error(`${path}: ${res.violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`);
    file = res.value;
  }
  const tokenFile = flags.authTokenFile ?? file.authTokenFile;
  const authToken = tokenFile ? readFileSync(tokenFile, 'utf8').trim() : (env.WEFTCTL_AUTH_TOKEN || file.authToken);
  return { cpAddress: flags.cpAddress || env.WEFTCTL_CP_ADDRESS || file.cpAddress || DEFAULT_CP_ADDRESS, authToken };
}
