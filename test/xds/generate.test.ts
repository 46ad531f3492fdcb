import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildSnapshot, ResourceEncoder } from '../../src/ads/index.js';
import { decodeResource, defaultRegistry, type DataplaneSpec, type MeshSpec, type Resource } from '../../src/core/index.js';
import { generateProxyConfig, splitOf, TypeUrl, type MeshContext } from '../../src/xds/index.js';

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

  it('transparent proxy in both IP families: IPv6 redirect listeners and passthrough clusters, and each inbound on the other family\'s any address', () => {
    type L = { name: string; address: { socket_address: { address: string; port_value: number } }; filter_chains: { filters: { typed_config: { cluster?: string } }[] }[] };
    const tp = (name: string, address: string, transparentProxying: Record<string, unknown>, meshOf = mesh) => {
      const me = dp(name, { networking: { address, inbound: [{ port: 7000, tags: { 'kuma.io/service': 'tp' } }], transparentProxying } });
      const set = generateProxyConfig({ ...ctx(me), mesh: meshOf });
      buildSnapshot(new ResourceEncoder(), `default.${name}`, set); // passes Envoy's rules and reference checks
      const listeners = new Map((set[TypeUrl.Listener] as unknown as L[]).map((l) => [l.name, l]));
      const at = (n: string) => `${listeners.get(n)?.address.socket_address.address} ${listeners.get(n)?.address.socket_address.port_value}`;
      return { set, listeners, at, clusters: names(set[TypeUrl.Cluster]) };
    };
    const v4 = tp('tp-4', '10.0.0.9', {});
    assert.deepEqual([...v4.listeners.keys()].filter((n) => n.includes('ipv6') || n.includes('[::]')), [], 'IPv4 only unless the Dataplane asks');

    const dual = tp('tp-d', '10.0.0.9', { ipFamilyMode: 'dualstack' });
    assert.equal(dual.at('outbound:passthrough:ipv6'), ':: 15001');
    assert.equal(dual.at('inbound:passthrough:ipv6'), ':: 15006');
    assert.equal(dual.at('inbound:[::]:7000'), ':: 7000');
    const strip = (l: L | undefined) => JSON.stringify(l?.filter_chains).replaceAll('inbound:[::]:7000', 'X').replaceAll('inbound:10.0.0.9:7000', 'X');
    assert.equal(strip(dual.listeners.get('inbound:[::]:7000')), strip(dual.listeners.get('inbound:10.0.0.9:7000')), 'the IPv6 twin has the same filter chains');
    assert.ok(dual.clusters.includes('outbound:passthrough:ipv6') && dual.clusters.includes('inbound:passthrough:ipv6'));
    const bind = (dual.set[TypeUrl.Cluster] as { name: string; upstream_bind_config?: { source_address: { address: string } } }[]).find((c) => c.name === 'inbound:passthrough:ipv6')?.upstream_bind_config;
    assert.equal(bind?.source_address.address, '::6', 'the inbound passthrough connects from ::6, which the rules do not redirect');

    // Older Kuma named an IPv6 inbound redirect port.
    assert.equal(tp('tp-k', '10.0.0.9', { redirectPortInboundV6: 15010 }).at('inbound:passthrough:ipv6'), ':: 15010');

    // An IPv6 Dataplane gets its inbound on 0.0.0.0 too, for IPv4 connections through the IPv4 redirect.
    const six = tp('tp-6', 'fd00::9', {});
    assert.equal(six.at('inbound:[fd00::9]:7000'), 'fd00::9 7000');
    assert.equal(six.at('inbound:0.0.0.0:7000'), '0.0.0.0 7000');

    // No passthrough in the mesh: both families fall back to the one blackhole cluster.
    const closed = tp('tp-c', '10.0.0.9', { ipFamilyMode: 'DualStack' }, res<MeshSpec>({ type: 'Mesh', name: 'default', networking: { outbound: { passthrough: false } } }));
    assert.deepEqual(closed.clusters.filter((c) => c.startsWith('outbound:')), ['outbound:blackhole']);
    for (const n of ['outbound:passthrough:ipv4', 'outbound:passthrough:ipv6']) assert.equal(closed.listeners.get(n)?.filter_chains[0]!.filters[0]!.typed_config.cluster, 'outbound:blackhole');
  });

  it('direct access: a listener per address and port of the listed services (* for all) into direct_access, none for itself', () => {
    const gen = (name: string, directAccessServices?: string[]) => {
      const me = dp(name, { networking: { address: '10.0.0.4', inbound: [{ port: 7000, tags: { 'kuma.io/service': 'me' } }], transparentProxying: directAccessServices ? { directAccessServices } : {} } });
      const set = generateProxyConfig(ctx(me));
      buildSnapshot(new ResourceEncoder(), `default.${name}`, set);
      return set;
    };
    const none = gen('da-0');
    assert.deepEqual(names(none[TypeUrl.Listener]).filter((n) => n.startsWith('direct_access')), []);
    assert.ok(!names(none[TypeUrl.Cluster]).includes('direct_access'), 'no cluster without direct access');
    const star = gen('da-1', ['*']);
    // Every other Dataplane's inbound, by its own address (not advertisedAddress), ready or not;
    // redis-1 shares this proxy's address but is another Dataplane.
    assert.deepEqual(names(star[TypeUrl.Listener]).filter((n) => n.startsWith('direct_access')), ['direct_access_10.0.0.1:8080', 'direct_access_10.0.0.2:8080', 'direct_access_10.0.0.3:8080', 'direct_access_10.0.0.4:6379']);
    const cluster = (star[TypeUrl.Cluster] as Record<string, unknown>[]).find((c) => c.name === 'direct_access');
    assert.deepEqual([cluster?.type, cluster?.transport_socket], ['ORIGINAL_DST', undefined], 'plaintext without mTLS in the mesh');
    assert.deepEqual(names(gen('da-2', ['redis'])[TypeUrl.Listener]).filter((n) => n.startsWith('direct_access')), ['direct_access_10.0.0.4:6379']);
  });

  it('direct access: two Dataplanes on one address and port give one listener, and an explicit outbound there keeps it', () => {
    // A replica moving from one Dataplane to another (both in the store for a moment), and an
    // app that names one endpoint as its explicit outbound.
    const twins = [
      dp('cache-a', { networking: { address: '10.0.0.7', inbound: [{ port: 11211, tags: { 'kuma.io/service': 'cache' } }] } }),
      dp('cache-b', { networking: { address: '10.0.0.7', inbound: [{ port: 11211, tags: { 'kuma.io/service': 'cache' } }] } }),
    ];
    const me = dp('da-9', {
      networking: { address: '10.0.0.9', inbound: [{ port: 7000, tags: { 'kuma.io/service': 'me' } }], outbound: [{ address: '10.0.0.1', port: 8080, tags: { 'kuma.io/service': 'web' } }], transparentProxying: { directAccessServices: ['*'] } },
    });
    const set = generateProxyConfig({ ...ctx(me), dataplanes: [...backends, ...twins, me] });
    buildSnapshot(new ResourceEncoder(), 'default.da-9', set); // no two listeners on one address
    assert.deepEqual(names(set[TypeUrl.Listener]).filter((n) => n.startsWith('direct_access')), ['direct_access_10.0.0.2:8080', 'direct_access_10.0.0.3:8080', 'direct_access_10.0.0.4:6379', 'direct_access_10.0.0.7:11211']);
    assert.ok(names(set[TypeUrl.Listener]).includes('outbound:10.0.0.1:8080'), 'the explicit outbound keeps 10.0.0.1:8080');
  });

  it('direct access: each proxy gets every other address and port of the services it lists, most of them in a list shared with other proxies', () => {
    // 120 Dataplanes with direct access, to all services or (every fourth) to three; every tenth
    // shares its address and port with the one before (a replica moving), some have two inbounds,
    // and some name another one's address and port as an explicit outbound, which keeps it.
    const all: Resource<DataplaneSpec>[] = [];
    const listed = ['admin', 'svc-1', 'svc-2'];
    for (let i = 0; i < 120; i++) {
      const address = `10.1.0.${i % 10 === 9 ? i - 1 : i}`;
      const inbound = [{ port: 8080, tags: { 'kuma.io/service': `svc-${i % 30}` } }, ...(i % 10 === 5 ? [{ port: 9090, tags: { 'kuma.io/service': 'admin' } }] : [])];
      const directAccessServices = i % 4 === 3 ? [...listed].reverse() : ['*'];
      const outbound = i % 12 === 7 ? [{ address: `10.1.0.${(i + 3) % 120}`, port: 8080, tags: { 'kuma.io/service': 'svc-1' } }] : undefined;
      all.push(dp(`dp-${String(i).padStart(3, '0')}`, { networking: { address, inbound, ...(outbound && { outbound }), transparentProxying: { directAccessServices } } }));
    }
    const memo = new Map<string, unknown>(); // one round for all of them
    const sharedLists = new Set<readonly unknown[]>();
    let own = 0;
    let total = 0;
    for (const [i, me] of all.entries()) {
      const set = generateProxyConfig({ mesh, dataplane: me, dataplanes: all, trafficPermissions: [], meshTrafficPermissions: [], memo });
      const wants = (service: string) => (me.spec.networking.transparentProxying?.directAccessServices ?? []).some((s) => s === '*' || s === service);
      const others = all
        .filter((d) => d !== me)
        .flatMap((d) => (d.spec.networking.inbound ?? []).filter((ib) => wants(ib.tags['kuma.io/service']!)).map((ib) => `${d.spec.networking.address}:${ib.port}`))
        .filter((key) => !(me.spec.networking.outbound ?? []).some((o) => `${o.address}:${o.port}` === key))
        .map((key) => `direct_access_${key}`);
      const direct = names(set[TypeUrl.Listener]).filter((n) => n.startsWith('direct_access'));
      assert.deepEqual(direct, [...new Set(others)].sort(), `${me.name}: one listener per other address and port, the twin of its own included, none where it has an explicit outbound`);
      const split = splitOf(set[TypeUrl.Listener]!);
      assert.ok(split, `${me.name}: its listeners come in a shared part and its own`);
      sharedLists.add(split.shared);
      own += names(split.own).filter((n) => n.startsWith('direct_access')).length;
      total += direct.length;
      if (i % 10 === 9) buildSnapshot(new ResourceEncoder(), `default.${me.name}`, set); // no name twice, Envoy's rules
    }
    assert.ok(own * 8 < total, `proxies built ${own} of ${total} direct access listeners themselves`);
    // One shared list per services wanted and groups left out: held by 1.5 proxies or more on
    // average here (120 Dataplanes in 32 groups), by dozens in a mesh of thousands.
    assert.ok(sharedLists.size * 3 < all.length * 2, `${sharedLists.size} shared lists for ${all.length} proxies`);
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
