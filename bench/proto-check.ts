/**
 * The proto checks every resource passes before it is sent (src/ads/proto-check.ts): one mTLS
 * sidecar's resources (listeners and clusters), checked over and over. JSON on stdout.
 *
 *   npm run bench:proto-check
 */
import { checkResource, TypeUrl } from '../src/ads/index.js';
import type { DataplaneSpec, MeshSpec, Resource } from '../src/core/index.js';
import { generateProxyConfig } from '../src/xds/index.js';

const ROUNDS = Number(process.env.WEFT_BENCH_ROUNDS ?? 1000);
const meta = { labels: {}, version: '1', creationTime: '', modificationTime: '' };
const dataplane = (i: number, service: string) =>
  ({
    ...meta,
    type: 'Dataplane',
    mesh: 'default',
    name: `${service}-${i}`,
    spec: { networking: { address: `10.0.0.${i}`, inbound: [{ port: 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': 'http' } }], transparentProxying: { redirectPortInbound: 15006, redirectPortOutbound: 15001 } } },
  }) as unknown as Resource<DataplaneSpec>;
const mesh = { ...meta, type: 'Mesh', mesh: '', name: 'default', spec: { mtls: { enabledBackend: 'ca', backends: [{ name: 'ca', type: 'builtin' }] } } } as unknown as Resource<MeshSpec>;
const dataplanes = [dataplane(1, 'web'), dataplane(2, 'api')];
const set = generateProxyConfig({ mesh, dataplane: dataplanes[0]!, dataplanes, trafficPermissions: [], meshTrafficPermissions: [], trustBundle: ['root'] });
const resources = [...(set[TypeUrl.Listener] ?? []).map((r) => [TypeUrl.Listener, r] as const), ...(set[TypeUrl.Cluster] ?? []).map((r) => [TypeUrl.Cluster, r] as const)];
const violations = resources.reduce((n, [t, r]) => n + checkResource(t, r).length, 0);
if (violations > 0) throw new Error(`the sidecar's resources have ${violations} violations`);
const runs: number[] = [];
for (let run = 0; run < 3; run++) {
  const t0 = performance.now();
  for (let i = 0; i < ROUNDS; i++) for (const [t, r] of resources) checkResource(t, r);
  runs.push((performance.now() - t0) / (ROUNDS * resources.length));
}
process.stdout.write(`${JSON.stringify({ resources: resources.length, rounds: ROUNDS, msPerResource: runs.map((x) => Number(x.toFixed(4))) }, null, 2)}\n`);
