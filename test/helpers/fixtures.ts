import type { ResourceInput } from '../../src/core/index.js';

/** Fluent-enough builders for resources as the store takes them (validated shapes). */
export function meshInput(name: string, spec: Record<string, unknown> = {}): ResourceInput {
  return { type: 'Mesh', mesh: '', name, labels: {}, spec };
}

export function dataplaneInput(mesh: string, name: string, opts: { address?: string; port?: number; service?: string; tags?: Record<string, string> } = {}): ResourceInput {
  return {
    type: 'Dataplane',
    mesh,
    name,
    labels: {},
    spec: {
      networking: {
        address: opts.address ?? '10.0.0.1',
        inbound: [{ port: opts.port ?? 8080, tags: { 'kuma.io/service': opts.service ?? 'web', ...opts.tags } }],
      },
    },
  };
}
