import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildSnapshot, ResourceEncoder } from '../../src/ads/index.js';
import { decodeResource, defaultRegistry, type DataplaneSpec, type MeshSpec, type Resource } from '../../src/core/index.js';
import { generateProxyConfig, TypeUrl, type MeshContext } from '../../src/xds/index.js';

const registry = defaultRegistry();
function res<S>(doc: Record<string, unknown>): Resource<S> {
  const { resource } = decodeResource(doc, registry);
  return { ...resource, version: '1', creationTime: '', modificationTime: '' } as Resource<S>;
}
const mesh = res<MeshSpec>({ type: 'Mesh', name: 'default' });
const dp = (name: string, extra: Record<string, unknown>) => res<DataplaneSpec>({ type: 'Dataplane', mesh: 'default', name, ...extra });
const backends = [
  dp('web-1', { networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } }),
  dp('web-2', { networking: { address: '10.0.0.2', advertisedAddress: '192.0.2.2', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } }),
  dp('web-3', { networking: { address: '10.0.0.3', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' }, health: { ready: false } }] } }),
  dp('redis-1', { networking: { address: '10.0.0.4', inbound: [{ port: 6379, tags: { 'kuma.io/service': 'redis' } }] } }),
];
function ctx(me: Resource<DataplaneSpec>): MeshContext {
  return { mesh, dataplane: me, dataplanes: [...backends, me], trafficPermissions: [], meshTrafficPermissions: [] };
}
const names = (l: readonly Record<string, unknown>[] | undefined) => (l ?? []).map((r) => String(r.name ?? r.cluster_name)).sort();

describe('translation', () => {
  it('sidecar: inbound and explicit outbound TCP listeners; endpoints skip proxies that are not ready', () => {
    const me = dp('app-1', {
      networking: { address: '10.0.0.9', inbound: [{ port: 15000, servicePort: 5000, tags: { 'kuma.io/service': 'app' } }], outbound: [{ port: 16379, tags: { 'kuma.io/service': 'redis' } }, { port: 18080, tags: { 'kuma.io/service': 'web' } }] },
    });
    const set = generateProxyConfig(ctx(me));
    assert.deepEqual(names(set[TypeUrl.Listener]), ['inbound:10.0.0.9:15000', 'outbound:127.0.0.1:16379', 'outbound:127.0.0.1:18080']);
    assert.deepEqual(names(set[TypeUrl.Cluster]), ['localhost:5000', 'redis', 'web']);
    const web = set[TypeUrl.ClusterLoadAssignment]!.find((c) => c.cluster_name === 'web') as { endpoints: { lb_endpoints: { endpoint: { address: { socket_address: { address: string } } } }[] }[] };
    assert.deepEqual(web.endpoints[0]!.lb_endpoints.map((e) => e.endpoint.address.socket_address.address), ['10.0.0.1', '192.0.2.2'], 'advertisedAddress wins; web-3 is not ready');
    buildSnapshot(new ResourceEncoder(), 'default.app-1', set); // passes Envoy's rules and reference checks
  });

  it('transparent proxy reaches every service, or only reachableServices', () => {
    const all = dp('tp-1', { networking: { address: '10.0.0.9', inbound: [{ port: 1, tags: { 'kuma.io/service': 'tp' } }], transparentProxying: {} } });
    assert.deepEqual(names(generateProxyConfig(ctx(all))[TypeUrl.ClusterLoadAssignment]), ['redis', 'tp', 'web']);
    const narrow = dp('tp-2', { networking: { address: '10.0.0.9', inbound: [{ port: 1, tags: { 'kuma.io/service': 'tp' } }], transparentProxying: { reachableServices: ['redis'] } } });
    assert.deepEqual(names(generateProxyConfig(ctx(narrow))[TypeUrl.ClusterLoadAssignment]), ['redis']);
  });

  it('proxyless: one API listener and route per service, named so xds:///<service> resolves', () => {
    const me = dp('grpc-app', { labels: { 'weft.io/proxyless': 'true' }, networking: { address: '10.0.0.9', inbound: [{ port: 1, tags: { 'kuma.io/service': 'grpc-app' } }] } });
    const set = generateProxyConfig(ctx(me));
    const listeners = names(set[TypeUrl.Listener]);
    assert.deepEqual(listeners.filter((n) => !n.startsWith('grpc/server')), ['grpc-app', 'redis', 'web']);
    assert.deepEqual(
      listeners.filter((n) => n.startsWith('grpc/server')),
      ['0.0.0.0:1', '10.0.0.9:1', '[::]:1'].map((a) => `grpc/server?xds.resource.listening_address=${a}`),
      'server listeners (gRFC A36) for the addresses the app may bind',
    );
    assert.deepEqual(names(set[TypeUrl.RouteConfiguration]), ['grpc-app', 'redis', 'web']);
    const l = set[TypeUrl.Listener]!.find((x) => x.name === 'web') as { api_listener: { api_listener: { rds: { route_config_name: string } } } };
    assert.equal(l.api_listener.api_listener.rds.route_config_name, 'web');
    buildSnapshot(new ResourceEncoder(), 'default.grpc-app', set);
  });

  it('is deterministic: equal contexts give equal output', () => {
    const me = dp('tp-1', { networking: { address: '10.0.0.9', inbound: [{ port: 1, tags: { 'kuma.io/service': 'tp' } }], transparentProxying: {} } });
    const a = generateProxyConfig(ctx(me));
    const b = generateProxyConfig({ ...ctx(me), dataplanes: [...ctx(me).dataplanes].reverse() });
    assert.deepEqual(a, b);
  });
});
