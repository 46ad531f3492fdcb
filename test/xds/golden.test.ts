import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { parseAllDocuments, stringify } from 'yaml';
import { buildSnapshot, ResourceEncoder } from '../../src/ads/index.js';
import { decodeResource, defaultRegistry, type DataplaneSpec, type MeshSpec, type MeshTrafficPermissionBody, type Resource, type TrafficPermissionSpec } from '../../src/core/index.js';
import { generateProxyConfig, TypeUrl, type MeshContext } from '../../src/xds/index.js';

/**
 * Golden files: `test/xds/golden/<case>.yaml` holds the input (a `golden:` document naming the
 * proxy, then Mesh, Dataplanes and permissions in Kuma Universal YAML); `<case>.out.yaml` the
 * config generated for that proxy, which must also pass Envoy's rules. `UPDATE_GOLDEN=1 npm test
 * -- golden` rewrites the outputs; review the diff like code.
 */
const dir = new URL('../../../test/xds/golden/', import.meta.url);
const registry = defaultRegistry();
const trustBundle = [readFileSync(new URL('mesh-ca.pem', dir), 'utf8')];
const SECTIONS: [string, TypeUrl][] = [
  ['clusters', TypeUrl.Cluster],
  ['endpoints', TypeUrl.ClusterLoadAssignment],
  ['listeners', TypeUrl.Listener],
  ['routes', TypeUrl.RouteConfiguration],
  ['secrets', TypeUrl.Secret],
];

export function loadCase(text: string): MeshContext {
  const docs = parseAllDocuments(text).map((d) => d.toJS() as Record<string, unknown>);
  const head = docs.shift() as { golden?: { proxy?: string } };
  assert.ok(head.golden?.proxy, 'the first document must be `golden: { proxy: <dataplane name> }`');
  const resources = docs.map((d) => ({ ...decodeResource(d, registry).resource, version: '1', creationTime: '', modificationTime: '' }) as Resource);
  const of = <S>(type: string) => resources.filter((r) => r.type === type) as Resource<S>[];
  const mesh = of<MeshSpec>('Mesh')[0];
  assert.ok(mesh, 'a golden case needs a Mesh');
  const dataplanes = of<DataplaneSpec>('Dataplane');
  const dataplane = dataplanes.find((d) => d.name === head.golden!.proxy);
  assert.ok(dataplane, `no Dataplane named ${head.golden.proxy}`);
  return {
    mesh,
    dataplane,
    dataplanes,
    trafficPermissions: of<TrafficPermissionSpec>('TrafficPermission'),
    meshTrafficPermissions: of<MeshTrafficPermissionBody>('MeshTrafficPermission'),
    trustBundle: mesh.spec.mtls?.enabledBackend ? trustBundle : [],
  };
}

/** The generated config as readable YAML, resources sorted by name within each type. */
export function renderConfig(set: ReturnType<typeof generateProxyConfig>): string {
  const out: Record<string, unknown> = {};
  for (const [section, url] of SECTIONS) {
    const list = [...(set[url] ?? [])].sort((a, b) => String(a.name ?? a.cluster_name).localeCompare(String(b.name ?? b.cluster_name)));
    if (list.length > 0) out[section] = list;
  }
  return stringify(out, { lineWidth: 0, aliasDuplicateObjects: false });
}

describe('translation golden files (UPDATE_GOLDEN=1 rewrites them)', () => {
  const cases = readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') && !f.endsWith('.out.yaml'))
    .sort();
  it('has the cases the translation issue asks for', () => {
    for (const c of ['tcp', 'http', 'grpc', 'transparent-proxy', 'transparent-proxy-reachable', 'mtls-permissive', 'mtls-strict', 'permissions-allow', 'permissions-deny', 'permissions-precedence', 'proxyless', 'proxyless-mtls']) {
      assert.ok(cases.includes(`${c}.yaml`), `missing golden case ${c}`);
    }
  });
  for (const file of cases) {
    it(file.replace(/\.yaml$/, ''), () => {
      const ctx = loadCase(readFileSync(new URL(file, dir), 'utf8'));
      const set = generateProxyConfig(ctx);
      buildSnapshot(new ResourceEncoder(), `${ctx.mesh.name}.${ctx.dataplane.name}`, set); // Envoy's rules and references
      const rendered = renderConfig(set);
      const outUrl = new URL(file.replace(/\.yaml$/, '.out.yaml'), dir);
      if (process.env.UPDATE_GOLDEN === '1') writeFileSync(outUrl, rendered);
      let expected: string;
      try {
        expected = readFileSync(outUrl, 'utf8');
      } catch {
        assert.fail(`no ${outUrl.pathname}: run UPDATE_GOLDEN=1 npm test -- golden and review it`);
      }
      assert.equal(rendered, expected, 'generated config differs from the golden file (UPDATE_GOLDEN=1 to accept, after review)');
    });
  }
});
