/**
 * The least an ADS server can do for bench/ads-floor.ts: one cluster, its endpoints and no
 * listeners, as delta xDS, and on command the same new endpoints to every stream. No store,
 * translation, snapshots or status: what is left is the transport's cost per message.
 *
 * WEFT_FLOOR_TRANSPORT=grpc-js: @grpc/grpc-js's server, as weft-cp uses it (channelz off).
 * WEFT_FLOOR_TRANSPORT=http2: node:http2 directly, gRPC's framing by hand.
 * Both decode every request with protobufjs and build responses with weft's serializer.
 * WEFT_BENCH_TLS=1: both serve TLS with a certificate made as weft-cp's `xds.tls.mode: auto` makes
 * its own (self-signed ECDSA), sent to the parent to trust.
 */
import * as grpc from '@grpc/grpc-js';
import http2 from 'node:http2';
import { TypeUrl } from '../src/ads/index.js';
import { createServingCertificate } from '../src/certs/index.js';
import type { EncodedResource } from '../src/ads/cache.js';
import { grpcCodec, messageType } from '../src/ads/protos.js';
import { responseSerializer, withEncoded } from '../src/ads/wire.js';
import { deframer, frame } from './grpc-framing.js';

const TRANSPORT = process.env.WEFT_FLOOR_TRANSPORT ?? 'grpc-js';
const tls = process.env.WEFT_BENCH_TLS === '1' ? await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 86400_000 }) : undefined;
const PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources';
const request = grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryRequest');
const serialize = responseSerializer('envoy.service.discovery.v3.DeltaDiscoveryResponse');

function encoded(typeUrl: TypeUrl, obj: Record<string, unknown>, name: string, version: string): EncodedResource {
  const type = messageType(typeUrl);
  return { typeUrl, name, version, bytes: new Uint8Array(type.encode(type.fromObject(obj)).finish()), refs: [], secretRefs: [] };
}

const cluster = encoded(TypeUrl.Cluster, { name: 'svc-7', type: 'EDS', eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' } }, connect_timeout: { seconds: 5 } }, 'svc-7', 'c1');
const endpoints = (count: number) =>
  encoded(
    TypeUrl.ClusterLoadAssignment,
    {
      cluster_name: 'svc-7',
      endpoints: [{ locality: { zone: 'default' }, load_balancing_weight: { value: 1 }, lb_endpoints: Array.from({ length: count }, (_, i) => ({ endpoint: { address: { socket_address: { address: `10.0.0.${i + 1}`, port_value: 8080 } } } })) }],
    },
    'svc-7',
    `e${count}`,
  );
let current = endpoints(4);

interface Stream {
  send(buf: Buffer): void;
  nonce: number;
}
const streams = new Set<Stream>();

function response(s: Stream, typeUrl: TypeUrl, resources: EncodedResource[]): Buffer {
  const head = { type_url: typeUrl, nonce: String(++s.nonce), system_version_info: '', control_plane: { identifier: 'floor' } };
  return serialize(withEncoded(head, resources, () => ({})));
}

/** Delta, as the bench's proxies use it: CDS and LDS first, then EDS for the cluster; ACKs only decoded. */
function onRequest(s: Stream, req: Record<string, unknown>): void {
  if (req.response_nonce) return;
  const type = req.type_url as TypeUrl;
  if (type === TypeUrl.Cluster) s.send(response(s, type, [cluster]));
  else if (type === TypeUrl.Listener) s.send(response(s, type, []));
  else if (type === TypeUrl.ClusterLoadAssignment) s.send(response(s, type, [current]));
}

async function listen(): Promise<number> {
  if (TRANSPORT === 'grpc-js') {
    const server = new grpc.Server({ 'grpc.enable_channelz': 0 });
    const method = { path: PATH, requestStream: true, responseStream: true, requestSerialize: request.serialize, requestDeserialize: request.deserialize, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b };
    server.addService(
      { DeltaAggregatedResources: method },
      {
        DeltaAggregatedResources: (call: grpc.ServerDuplexStream<Record<string, unknown>, Buffer>) => {
          const s: Stream = { send: (b) => call.write(b), nonce: 0 };
          streams.add(s);
          call.on('data', (req: Record<string, unknown>) => onRequest(s, req));
          call.on('error', () => streams.delete(s));
          call.on('end', () => streams.delete(s));
        },
      },
    );
    return new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', tls ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.keyPem), cert_chain: Buffer.from(tls.certPem) }], false) : grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
  }
  const server = tls ? http2.createSecureServer({ key: tls.keyPem, cert: tls.certPem }) : http2.createServer();
  server.on('stream', (stream, headers) => {
    if (headers[':path'] !== PATH) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    const s: Stream = { send: (b) => stream.write(frame(b)), nonce: 0 };
    streams.add(s);
    stream.on('data', deframer((msg) => onRequest(s, request.deserialize(msg))));
    stream.on('close', () => streams.delete(s));
    stream.on('error', () => streams.delete(s));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

process.on('message', (m: { cmd: string; count?: number }) => {
  if (m.cmd === 'change') {
    current = endpoints(m.count!);
    for (const s of streams) s.send(response(s, TypeUrl.ClusterLoadAssignment, [current]));
  }
});
process.send!({ type: 'listening', port: await listen(), tlsCa: tls?.certPem });
