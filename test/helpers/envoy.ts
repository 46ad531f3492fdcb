import { execFileSync } from 'node:child_process';

/** The Envoy binary tests may run: ENVOY_BINARY, or `envoy` on PATH; undefined when there is none. */
export function envoyBinary(): string | undefined {
  if (process.env.ENVOY_BINARY) return process.env.ENVOY_BINARY;
  try {
    return execFileSync('sh', ['-c', 'command -v envoy'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}
