import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildSnapshot, checkResource, fromProto3Json, InconsistentSnapshotError, messageType, ResourceEncoder, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { cla, cluster, listener, meshSet, route } from '../helpers/xds-fixtures.js';

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InconsistentSnapshotError, String(err));
    return err.problems.map((p) => `${p.name}${p.field ? ` ${p.field}` : ''}: ${p.message}`);
  }
  assert.fail('expected the snapshot to be refused');
}

describe('snapshot checks before publishing', () => {
  it('rule 7: refuses duplicate resource names within a type', () => {
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[TypeUrl.Cluster] = [cluster('web'), cluster('web')];
    assert.deepEqual(problems(() => buildSnapshot(new ResourceEncoder(), 'm.dp', set)), ['web: duplicate name in one snapshot']);
  });

  it('rule 7: objects seen before, in a new list, are still checked for duplicates', () => {
    const encoder = new ResourceEncoder();
    const web = cluster('web');
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[TypeUrl.Cluster] = [web];
    buildSnapshot(encoder, 'm.dp', set);
    // The same objects in a new array: the set known for them is reused...
    set[TypeUrl.Cluster] = [web];
    assert.equal(buildSnapshot(encoder, 'm.dp', set).resources.get(TypeUrl.Cluster)!.size, 1);
    // ...but one object twice is a set never accepted, and is refused.
    set[TypeUrl.Cluster] = [web, web];
    assert.deepEqual(problems(() => buildSnapshot(encoder, 'm.dp', set)), ['web: duplicate name in one snapshot']);
  });

  it('rule 10: every EDS name is used by a cluster and every cluster has its endpoints', () => {
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[TypeUrl.Cluster] = [cluster('web'), cluster('api')];
    set[TypeUrl.ClusterLoadAssignment] = [cla('web', []), cla('orphan', [])];
    assert.deepEqual(problems(() => buildSnapshot(new ResourceEncoder(), 'm.dp', set)).sort(), [
      'api: refers to ClusterLoadAssignment "api", which the snapshot lacks',
      'orphan: is not used by any CDS resource',
    ]);
  });

  it('rule 10: every RDS name is used by a listener and every listener route config exists', () => {
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[TypeUrl.Listener] = [listener('a', 1, 'missing-routes')];
    set[TypeUrl.RouteConfiguration] = [route('unused', 'web')];
    assert.deepEqual(problems(() => buildSnapshot(new ResourceEncoder(), 'm.dp', set)).sort(), [
      'a: refers to RouteConfiguration "missing-routes", which the snapshot lacks',
      'unused: is not used by any LDS resource',
    ]);
  });

  it('rule 10: every secret asked for over ADS is in the snapshot (a local SDS source is not ours to check)', () => {
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    const tls = (secret: string, source: Record<string, unknown>) => ({
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
        common_tls_context: { tls_certificate_sds_secret_configs: [{ name: 'identity', sds_config: source }], validation_context_sds_secret_config: { name: secret, sds_config: { ads: {}, resource_api_version: 'V3' } } },
      },
    });
    const local = { api_config_source: { api_type: 'GRPC', transport_api_version: 'V3', grpc_services: [{ envoy_grpc: { cluster_name: 'local-sds' } }] }, resource_api_version: 'V3' };
    set[TypeUrl.Cluster] = [cluster('web', { transport_socket: tls('mesh_ca', local) })];
    assert.deepEqual(problems(() => buildSnapshot(new ResourceEncoder(), 'm.dp', set)), ['web: refers to Secret "mesh_ca", which the snapshot lacks']);
    set[TypeUrl.Secret] = [{ name: 'mesh_ca', validation_context: { trusted_ca: { inline_string: 'pem' } } }];
    buildSnapshot(new ResourceEncoder(), 'm.dp', set);
  });

  it("rule 10: every resource passes Envoy's (validate.rules), and unknown fields are caught", () => {
    const set = meshSet({ web: [['10.0.0.1', 70000]] });
    set[TypeUrl.Cluster] = [cluster('web', { lb_polcy: 'ROUND_ROBIN' })];
    const bad = route('http-routes', 'web');
    bad.virtual_hosts[0]!.domains = [];
    set[TypeUrl.RouteConfiguration] = [bad];
    assert.deepEqual(problems(() => buildSnapshot(new ResourceEncoder(), 'm.dp', set)).sort(), [
      'http-routes virtual_hosts[0].domains: must have at least 1 item(s)',
      'web endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: must be at most 65535',
      'web lb_polcy: unknown field of Cluster',
    ]);
  });

  it('checks validate.rules in nested typed_config and required oneofs', () => {
    const l = listener('x', 1, 'r') as { filter_chains: { filters: { typed_config: Record<string, unknown> }[] }[] };
    const tc = l.filter_chains[0]!.filters[0]!.typed_config;
    tc.stat_prefix = '';
    delete tc.rds;
    assert.deepEqual(checkResource(TypeUrl.Listener, l).map((v) => `${v.field}: ${v.message}`).sort(), [
      'filter_chains[0].filters[0].typed_config.route_specifier: one of rds, route_config, scoped_routes is required',
      'filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty',
    ]);
    assert.deepEqual(checkResource(TypeUrl.Cluster, { name: '' }).map((v) => v.field), ['name']);
    assert.deepEqual(checkResource(TypeUrl.Cluster, { name: 'x', type: 'NOPE' }).map((v) => v.field), ['type']);
  });

  it('checks Structs in the form protobufjs encodes, which silently drops any other', () => {
    const withMetadata = (md: unknown) => ({ name: 'x', metadata: { filter_metadata: { 'envoy.lb': md } } });
    const fields = (c: unknown) => checkResource(TypeUrl.Cluster, c).map((v) => `${v.field}: ${v.message}`);
    const good = { fields: { zone: { stringValue: 'a' }, weight: { numberValue: 2 }, none: { nullValue: 'NULL_VALUE' }, tags: { listValue: { values: [{ boolValue: true }, { structValue: { fields: {} } }] } } } };
    assert.deepEqual(fields(withMetadata(good)), []);
    assert.ok(messageType(TypeUrl.Cluster).encode(messageType(TypeUrl.Cluster).fromObject(withMetadata(good))).finish().length > 40, 'protobufjs encodes that form');
    assert.deepEqual(fields(withMetadata({ zone: 'a' })), ['metadata.filter_metadata["envoy.lb"].zone: unknown field of Struct']);
    assert.deepEqual(fields(withMetadata({ fields: { zone: { string_value: 'a' } } })), ['metadata.filter_metadata["envoy.lb"].fields["zone"].string_value: unknown field of Value']);
    assert.deepEqual(fields(withMetadata({ fields: { zone: { stringValue: 'a', boolValue: true } } })), ['metadata.filter_metadata["envoy.lb"].fields["zone"].kind: only one of stringValue, boolValue may be set']);
  });

  it('reads proto3 JSON (as Envoy reads a bootstrap) into that form: Structs, wrappers, durations', () => {
    const json = { name: 'x', connect_timeout: '-1.25s', per_connection_buffer_limit_bytes: 1024, metadata: { filter_metadata: { 'envoy.lb': { zone: 'a', n: [1, null, { deep: true }] } } } };
    const obj = fromProto3Json(TypeUrl.Cluster, json);
    assert.deepEqual(obj, {
      name: 'x',
      connect_timeout: { seconds: -1, nanos: -250_000_000 },
      per_connection_buffer_limit_bytes: { value: 1024 },
      metadata: { filter_metadata: { 'envoy.lb': { fields: { zone: { stringValue: 'a' }, n: { listValue: { values: [{ numberValue: 1 }, { nullValue: 'NULL_VALUE' }, { structValue: { fields: { deep: { boolValue: true } } } }] } } } } } },
    });
    // The checker then applies Envoy's rules to it: connect_timeout must be longer than zero, a rule
    // written `duration = {gt {}}`, which protobufjs's flattened options drop.
    assert.deepEqual(checkResource(TypeUrl.Cluster, obj).map((v) => v.field), ['connect_timeout']);
    assert.deepEqual(checkResource(TypeUrl.Cluster, { name: 'x', connect_timeout: {} }).map((v) => `${v.field}: ${v.message}`), ['connect_timeout: must be longer than 0ns']);
    assert.deepEqual(checkResource(TypeUrl.Cluster, fromProto3Json(TypeUrl.Cluster, { ...json, connect_timeout: '0.5s' })), []);
    // A wrapper given as an object is not proto3 JSON either.
    assert.deepEqual(checkResource(TypeUrl.Cluster, fromProto3Json(TypeUrl.Cluster, { name: 'x', per_connection_buffer_limit_bytes: { value: 1 } })).map((v) => v.field), ['per_connection_buffer_limit_bytes.value']);
    // What is not proto3 JSON is left for the checker to name.
    assert.deepEqual(checkResource(TypeUrl.Cluster, fromProto3Json(TypeUrl.Cluster, { name: 'x', connect_timeout: '5 s' })).map((v) => `${v.field}: ${v.message}`), ['connect_timeout: must be a duration such as "1.5s"']);
  });

  it('rule 22: equal resources are encoded once and their bytes shared between proxies', () => {
    const cache = new SnapshotCache();
    const a = cache.set('m.a', meshSet({ web: [['10.0.0.1', 80]] })).snapshot;
    const b = cache.set('m.b', meshSet({ web: [['10.0.0.1', 80]] })).snapshot;
    const ca = a.resources.get(TypeUrl.Cluster)!.get('web')!;
    const cb = b.resources.get(TypeUrl.Cluster)!.get('web')!;
    assert.equal(ca, cb);
    assert.equal(ca.bytes, cb.bytes);
    const sizeBefore = cache.encoder.size;
    cache.delete('m.a');
    assert.equal(cache.encoder.size, sizeBefore, 'still held by m.b');
    cache.delete('m.b');
    assert.equal(cache.encoder.size, 0, 'dropped once no snapshot holds it');
  });

  it('rule 6: an identical snapshot is no change and wakes no watcher', () => {
    const cache = new SnapshotCache();
    let calls = 0;
    cache.watch('m.a', () => calls++);
    assert.equal(cache.set('m.a', meshSet({ web: [['10.0.0.1', 80]] })).changed, true);
    assert.equal(cache.set('m.a', meshSet({ web: [['10.0.0.1', 80]] })).changed, false);
    assert.equal(calls, 1);
  });

  it('rule 16: versions are content hashes, equal across proxies and changed by content only', () => {
    const enc = new ResourceEncoder();
    const a = buildSnapshot(enc, 'm.a', meshSet({ web: [['10.0.0.1', 80]] }));
    const b = buildSnapshot(enc, 'm.b', meshSet({ web: [['10.0.0.1', 80]] }));
    const c = buildSnapshot(enc, 'm.c', meshSet({ web: [['10.0.0.2', 80]] }));
    const v = (s: typeof a) => s.resources.get(TypeUrl.ClusterLoadAssignment)!.get('web')!.version;
    assert.equal(v(a), v(b));
    assert.notEqual(v(a), v(c));
    assert.equal(a.version, b.version);
  });

  describe('setEndpoints: a snapshot with only its ClusterLoadAssignments swapped', () => {
    const E = TypeUrl.ClusterLoadAssignment;

    it('equals the snapshot built in full, shares the other types, and drops what no snapshot holds any more', () => {
      const cache = new SnapshotCache();
      const first = meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 90]] });
      const before = cache.set('m.a', first).snapshot;
      const held = cache.encoder.size;
      const next = { ...first, [E]: [cla('web', [['10.0.0.9', 80]]), first[E]![1]!] };
      const { snapshot, changed } = cache.setEndpoints('m.a', next);
      assert.equal(changed, true);
      assert.equal(snapshot.version, buildSnapshot(new ResourceEncoder(), 'm.a', next).version);
      for (const t of [TypeUrl.Cluster, TypeUrl.Listener, TypeUrl.RouteConfiguration]) assert.equal(snapshot.resources.get(t), before.resources.get(t), `${t} is the same map`);
      assert.equal(cache.get('m.a'), snapshot);
      assert.equal(cache.encoder.size, held, 'the old web endpoints went as the new ones came');
      cache.delete('m.a');
      assert.equal(cache.encoder.size, 0);
    });

    it('rule 6: the same endpoints again are no change', () => {
      const cache = new SnapshotCache();
      const set = meshSet({ web: [['10.0.0.1', 80]] });
      const first = cache.set('m.a', set).snapshot;
      let calls = 0;
      cache.watch('m.a', () => calls++);
      const again = cache.setEndpoints('m.a', { ...set, [E]: [cla('web', [['10.0.0.1', 80]])] });
      assert.equal(again.changed, false);
      assert.equal(again.snapshot, first);
      assert.equal(calls, 0);
    });

    it('rule 10: endpoints that a new name or a failed check would break are refused as in a full build, and the last snapshot stays', () => {
      const cache = new SnapshotCache();
      const set = meshSet({ web: [['10.0.0.1', 80]] });
      const first = cache.set('m.a', set).snapshot;
      assert.deepEqual(problems(() => cache.setEndpoints('m.a', { ...set, [E]: [cla('web', []), cla('orphan', [])] })), ['orphan: is not used by any CDS resource']);
      assert.deepEqual(problems(() => cache.setEndpoints('m.a', { ...set, [E]: [cla('web', [['10.0.0.1', 70000]])] })), [
        'web endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: must be at most 65535',
      ]);
      assert.equal(cache.get('m.a'), first);
    });

    it('builds in full when more than the endpoints changed, or when the current snapshot came from another set', () => {
      const cache = new SnapshotCache();
      const set = meshSet({ web: [['10.0.0.1', 80]] });
      cache.set('m.a', set);
      // A new listener too, with the same endpoint names: the swap would keep the old listener.
      const moved = { ...set, [TypeUrl.Listener]: [listener('http', 9090, 'http-routes')], [E]: [cla('web', [['10.0.0.9', 80]])] };
      assert.equal(cache.setEndpoints('m.a', moved).snapshot.version, buildSnapshot(new ResourceEncoder(), 'm.a', moved).version);
      // New clusters and endpoint names.
      const more = meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 90]] });
      assert.equal(cache.setEndpoints('m.a', more).snapshot.version, buildSnapshot(new ResourceEncoder(), 'm.a', more).version);
      // No snapshot yet: built in full.
      assert.equal(cache.setEndpoints('m.b', set).snapshot.version, buildSnapshot(new ResourceEncoder(), 'm.b', set).version);
    });
  });
});

