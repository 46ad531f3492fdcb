import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DataplaneSpec, MeshSpec, Resource } from '../../src/core/index.js';
import { generateProxyConfig, LastingMemo, meshServices, TypeUrl, type MeshContext } from '../../src/xds/index.js';

describe('translation with a LastingMemo', () => {
  const meshOf = (spec: Record<string, unknown>): Resource<MeshSpec> => ({ type: 'Mesh', mesh: '', name: 'm', labels: {}, spec, version: '1', creationTime: '', modificationTime: '' }) as unknown as Resource<MeshSpec>;
  const dataplane = (address: string): Resource<DataplaneSpec> =>
    ({
      type: 'Dataplane',
      mesh: 'm',
      name: 'web-1',
      labels: {},
      spec: { networking: { address, inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web', 'kuma.io/protocol': 'http' } }], transparentProxying: { redirectPortInbound: 15006, redirectPortOutbound: 15001 } } },
      version: '1',
      creationTime: '',
      modificationTime: '',
    }) as unknown as Resource<DataplaneSpec>;
  const inbound = (ctx: MeshContext) => (generateProxyConfig(ctx)[TypeUrl.Listener] ?? []).find((l) => String(l.name).startsWith('inbound:10.'));

  it('hands out the same objects while the inputs are the same objects, and new ones when they are not', () => {
    const lasting = new LastingMemo();
    const mesh = meshOf({});
    const dp = dataplane('10.3.0.1');
    const base = { mesh, dataplane: dp, dataplanes: [dp], trafficPermissions: [], meshTrafficPermissions: [], lasting };
    lasting.startRound();
    const first = inbound({ ...base, memo: new Map() });
    lasting.startRound();
    assert.equal(inbound({ ...base, memo: new Map() }), first, 'a later round, same inputs: the same object');
    const moved = dataplane('10.3.0.2');
    const other = inbound({ ...base, dataplane: moved, dataplanes: [moved], memo: new Map() });
    assert.notEqual(other, first);
    assert.equal((other?.address as { socket_address: { address: string } }).socket_address.address, '10.3.0.2');
    const strict = inbound({ ...base, mesh: meshOf({ mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } }), trustBundle: ['x'], memo: new Map() });
    assert.notEqual(strict, first, 'another Mesh object');
    assert.ok((strict?.filter_chains as unknown[]).length === 1 && 'transport_socket' in (strict!.filter_chains as Record<string, unknown>[])[0]!, 'with mTLS');
    lasting.sweep();
    assert.ok(lasting.size > 0, 'what this round used stays');
    lasting.startRound();
    lasting.sweep();
    assert.equal(lasting.size, 0, 'a round that used nothing leaves nothing');
  });
  it('shares a service\'s endpoints across rounds while they are the same, in new Dataplane lists too', () => {
    const lasting = new LastingMemo();
    const mesh = meshOf({});
    const caller = dataplane('10.3.0.1');
    const backend = (name: string, address: string, ready = true): Resource<DataplaneSpec> =>
      ({ ...dataplane(address), name, spec: { networking: { address, inbound: [{ port: 9000, tags: { 'kuma.io/service': 'db' }, ...(ready ? {} : { health: { ready: false } }) }] } } }) as unknown as Resource<DataplaneSpec>;
    const dbOf = (dataplanes: Resource<DataplaneSpec>[]) => {
      lasting.startRound();
      const set = generateProxyConfig({ mesh, dataplane: caller, dataplanes, trafficPermissions: [], meshTrafficPermissions: [], lasting, memo: new Map() });
      return (set[TypeUrl.ClusterLoadAssignment] ?? []).find((a) => a.cluster_name === 'db');
    };
    const first = dbOf([caller, backend('db-1', '10.4.0.1'), backend('db-2', '10.4.0.2')]);
    assert.ok(first, 'the caller gets the endpoints of db');
    // Every round reads a new list of new Dataplane objects with the same endpoints.
    assert.equal(dbOf([caller, backend('db-1', '10.4.0.1'), backend('db-2', '10.4.0.2')]), first, 'same endpoints: the same object');
    const down = dbOf([caller, backend('db-1', '10.4.0.1'), backend('db-2', '10.4.0.2', false)]);
    assert.notEqual(down, first);
    assert.deepEqual(
      (down!.endpoints as { lb_endpoints: { endpoint: { address: { socket_address: { address: string } } } }[] }[])[0]!.lb_endpoints.map((e) => e.endpoint.address.socket_address.address),
      ['10.4.0.1'],
      'a replica not ready: new endpoints',
    );
    lasting.sweep();
    assert.notEqual(dbOf([caller, backend('db-1', '10.4.0.1'), backend('db-2', '10.4.0.2')]), first, 'swept when a round did not use it');
  });
  it('builds what depends on the services once across rounds, and still follows the Mesh and the reach', () => {
    const lasting = new LastingMemo();
    const backend = (name: string, service: string, address: string): Resource<DataplaneSpec> =>
      ({ ...dataplane(address), name, spec: { networking: { address, inbound: [{ port: 9000, tags: { 'kuma.io/service': service } }] } } }) as unknown as Resource<DataplaneSpec>;
    const dataplanes = [dataplane('10.3.0.1'), backend('db-1', 'db', '10.4.0.1'), backend('cache-1', 'cache', '10.4.0.2')];
    // The reconciler hands every round the same services object until a Dataplane changes.
    const services = meshServices(dataplanes);
    const round = (mesh: Resource<MeshSpec>, caller = dataplane('10.3.0.1'), trustBundle?: string[]) => {
      lasting.startRound();
      return generateProxyConfig({ mesh, dataplane: caller, dataplanes, services, trafficPermissions: [], meshTrafficPermissions: [], lasting, memo: new Map(), trustBundle });
    };
    const plain = meshOf({});
    const first = round(plain);
    const again = round(plain);
    assert.equal(again[TypeUrl.Cluster], first[TypeUrl.Cluster], 'the same cluster list, not rebuilt');
    assert.equal(again[TypeUrl.ClusterLoadAssignment], first[TypeUrl.ClusterLoadAssignment]);
    assert.deepEqual(again[TypeUrl.Listener], first[TypeUrl.Listener]);

    const db = (set: ReturnType<typeof round>) => set[TypeUrl.Cluster]!.find((c) => c.name === 'db');
    const secured = round(meshOf({ mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } }), undefined, ['root']);
    assert.ok(db(secured)?.transport_socket, 'mTLS on, same services: clusters originate TLS');
    assert.equal(db(round(plain))?.transport_socket, undefined, 'and off again');

    const closed = round(meshOf({ networking: { outbound: { passthrough: false } } }));
    assert.ok(closed[TypeUrl.Cluster]!.some((c) => c.name === 'outbound:blackhole'), 'no passthrough: the blackhole cluster');
    const redirect = closed[TypeUrl.Listener]!.find((l) => l.name === 'outbound:passthrough:ipv4');
    assert.equal((redirect?.filter_chains as { name: string }[])[0]!.name, 'outbound:blackhole', 'and the redirect listener sends unknown traffic there');

    const reaching = (names: string[]) => {
      const caller = dataplane('10.3.0.1');
      (caller.spec.networking.transparentProxying as { reachableServices?: string[] }).reachableServices = names;
      return round(plain, caller)[TypeUrl.ClusterLoadAssignment]!.map((a) => a.cluster_name);
    };
    assert.deepEqual(reaching(['cache']), ['cache'], 'another reach, same services: its own list');
    assert.deepEqual(reaching(['db']), ['db']);
  });
  it('keeps what depends on the services for the current services object only: new ones replace it', () => {
    const lasting = new LastingMemo();
    const mesh = meshOf({});
    const backend = { ...dataplane('10.4.0.1'), name: 'db-1', spec: { networking: { address: '10.4.0.1', inbound: [{ port: 9000, tags: { 'kuma.io/service': 'db' } }] } } } as unknown as Resource<DataplaneSpec>;
    const caller = dataplane('10.3.0.1');
    const dataplanes = [caller, backend];
    const none = { trafficPermissions: [], meshTrafficPermissions: [] };
    const sizes: number[] = [];
    for (let round = 0; round < 20; round++) {
      lasting.startRound();
      // A Dataplane changed somewhere: the reconciler derives a new services object each time.
      generateProxyConfig({ mesh, dataplane: caller, dataplanes, services: meshServices(dataplanes), ...none, lasting, memo: new Map() });
      sizes.push(lasting.size);
    }
    assert.equal(sizes.at(-1), sizes[1], `no entries pile up without a sweep (sizes ${sizes.join(',')})`);
  });
});
