import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeResponse, type DecodeMode } from '../../bench/decode-modes.js';
import { TypeUrl } from '../../src/ads/index.js';
import { grpcCodec, messageType } from '../../src/ads/protos.js';

const encode = (typeUrl: string, obj: object) => {
  const type = messageType(typeUrl);
  return Buffer.from(type.encode(type.fromObject(obj)).finish());
};

const eds = { ads: {}, resource_api_version: 'V3' };
const clusters = [
  { name: 'svc-1', type: 'EDS', eds_cluster_config: { eds_config: eds }, connect_timeout: { seconds: 5 } },
  { name: 'localhost:8080', type: 'STATIC', load_assignment: { cluster_name: 'localhost:8080' } },
  { name: 'outbound:passthrough:ipv4', type: 'ORIGINAL_DST', lb_policy: 'CLUSTER_PROVIDED' },
];
const tcp = (cluster: string) => ({ name: 'envoy.filters.network.tcp_proxy', typed_config: { type_url: 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy', value: encode('type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy', { stat_prefix: cluster, cluster }) } });
const listeners = [
  { name: 'outbound:240.0.0.1:80', address: { socket_address: { address: '240.0.0.1', port_value: 80 } }, filter_chains: [{ name: 'svc-1', filters: [tcp('svc-1')] }] },
  { name: 'outbound:passthrough:ipv4', address: { socket_address: { address: '0.0.0.0', port_value: 15001 } }, filter_chains: [{ name: 'outbound:blackhole', filters: [tcp('outbound:passthrough:ipv4')] }] },
];
const assignment = { cluster_name: 'svc-1', endpoints: [{ lb_endpoints: [1, 2, 3].map((i) => ({ endpoint: { address: { socket_address: { address: `10.0.0.${i}`, port_value: 8080 } } } })) }] };

const sotwType = messageType('envoy.service.discovery.v3.DiscoveryResponse');
const deltaType = messageType('envoy.service.discovery.v3.DeltaDiscoveryResponse');
const sotwCodec = grpcCodec('envoy.service.discovery.v3.DiscoveryResponse');
const deltaCodec = grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryResponse');

function sotw(typeUrl: string, objs: object[]): Buffer {
  return encode('envoy.service.discovery.v3.DiscoveryResponse', { version_info: 'v1', type_url: typeUrl, nonce: 'n1', resources: objs.map((o) => ({ type_url: typeUrl, value: encode(typeUrl, o) })) });
}

/** Delta resources carry their name beside the resource (a ClusterLoadAssignment's is its cluster_name). */
function delta(typeUrl: string, objs: ({ name: string } | { cluster_name: string })[], removed: string[]): Buffer {
  return encode('envoy.service.discovery.v3.DeltaDiscoveryResponse', {
    system_version_info: 's1',
    type_url: typeUrl,
    nonce: 'n2',
    removed_resources: removed,
    resources: objs.map((o) => {
      const name = 'name' in o ? o.name : o.cluster_name;
      return { name, version: `v-${name}`, resource: { type_url: typeUrl, value: encode(typeUrl, o) } };
    }),
  });
}

/** What the bench's worker reads of a response, whatever the mode. */
function seen(mode: DecodeMode, buf: Buffer, isSotw: boolean) {
  const r = decodeResponse(mode, isSotw ? sotwType : deltaType, isSotw ? sotwCodec.deserialize : deltaCodec.deserialize, buf, isSotw);
  const raw = (r.raw.resources as { value?: Uint8Array; resource?: { value: Uint8Array } }[]).map((x) => (x.value ?? x.resource!.value).length);
  return {
    head: [r.typeUrl, r.nonce, r.version, [...r.removed]],
    names: r.resources.map((x) => [x.name, x.version]),
    edsClusters: r.resources.filter((x) => x.body.type === 'EDS').map((x) => x.name),
    endpoints: r.resources.map((x) => ((x.body.endpoints as { lb_endpoints?: unknown[] }[] | undefined) ?? []).reduce((n, l) => n + (l.lb_endpoints?.length ?? 0), 0)),
    watchedChain: (r.resources.find((x) => x.name === 'outbound:passthrough:ipv4')?.body.filter_chains as { name?: string }[] | undefined)?.[0]?.name,
    bytes: raw,
  };
}

describe('bench decode modes (WEFT_BENCH_DECODE): what the worker reads is the same in every mode', () => {
  const cases: [string, Buffer, boolean][] = [
    ['SotW CDS', sotw(TypeUrl.Cluster, clusters), true],
    ['SotW LDS', sotw(TypeUrl.Listener, listeners), true],
    ['SotW EDS', sotw(TypeUrl.ClusterLoadAssignment, [assignment]), true],
    ['delta CDS', delta(TypeUrl.Cluster, clusters, ['gone']), false],
    ['delta LDS', delta(TypeUrl.Listener, listeners, []), false],
    ['delta EDS', delta(TypeUrl.ClusterLoadAssignment, [assignment], []), false],
  ];
  for (const [label, buf, isSotw] of cases) {
    it(`${label}: messages and names agree with objects`, () => {
      const want = seen('objects', buf, isSotw);
      assert.ok(want.names.length > 0);
      assert.deepEqual(seen('messages', buf, isSotw), want);
      assert.deepEqual(seen('names', buf, isSotw), want);
    });
  }

  it('the fields that matter are really read (not empty in every mode alike)', () => {
    const cds = seen('names', sotw(TypeUrl.Cluster, clusters), true);
    assert.deepEqual(cds.edsClusters, ['svc-1']);
    assert.deepEqual(cds.head, [TypeUrl.Cluster, 'n1', 'v1', []]);
    assert.equal(seen('names', sotw(TypeUrl.Listener, listeners), true).watchedChain, 'outbound:blackhole');
    assert.deepEqual(seen('names', sotw(TypeUrl.ClusterLoadAssignment, [assignment]), true).endpoints, [3]);
    assert.deepEqual(seen('messages', delta(TypeUrl.Cluster, clusters, ['gone']), false).head, [TypeUrl.Cluster, 'n2', 's1', ['gone']]);
  });
});
