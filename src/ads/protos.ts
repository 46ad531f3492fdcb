import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import protobuf from 'protobufjs';

import { TypeUrl } from '../xds/index.js';

export { TypeUrl };

const TYPE_PREFIX = 'type.googleapis.com/';

/** Make-before-break order on ADS: CDS, EDS, LDS, RDS, then SDS (XDS-RULES 8). */
export const RESPONSE_ORDER: readonly TypeUrl[] = [TypeUrl.Cluster, TypeUrl.ClusterLoadAssignment, TypeUrl.Listener, TypeUrl.RouteConfiguration, TypeUrl.Secret];

export const SHORT_NAME: Record<TypeUrl, string> = {
  [TypeUrl.Cluster]: 'CDS',
  [TypeUrl.ClusterLoadAssignment]: 'EDS',
  [TypeUrl.Listener]: 'LDS',
  [TypeUrl.RouteConfiguration]: 'RDS',
  [TypeUrl.Secret]: 'SDS',
};

export function isTypeUrl(s: string): s is TypeUrl {
  return (RESPONSE_ORDER as readonly string[]).includes(s);
}

/**
 * Envoy's own API protos, as shipped inside @grpc/grpc-js-xds (envoy-api, xds/udpa, googleapis and
 * protoc-gen-validate, which carries Envoy's `(validate.rules)`). Every type that can appear in a
 * resource we send, including the typed_config extensions we use, is loaded here.
 */
const PROTO_FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/network/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto',
  'envoy/extensions/filters/listener/original_dst/v3/original_dst.proto',
  'envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto',
  'envoy/config/bootstrap/v3/bootstrap.proto',
  'envoy/service/secret/v3/sds.proto',
];

function includeDirs(): string[] {
  const require = createRequire(import.meta.url);
  const deps = join(dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
  return [
    ...['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(deps, d)),
    // google/protobuf/descriptor.proto and friends.
    dirname(require.resolve('protobufjs/package.json')),
  ];
}

let root: protobuf.Root | undefined;

/** The loaded protos (about 0.3 s the first time). Field names keep proto case (snake_case). */
export function envoyProtos(): protobuf.Root {
  if (root) return root;
  const dirs = includeDirs();
  const r = new protobuf.Root();
  r.resolvePath = (origin, target) => {
    for (const d of dirs) {
      const p = join(d, target);
      if (existsSync(p)) return p;
    }
    return protobuf.util.path.resolve(origin, target);
  };
  r.loadSync(PROTO_FILES, { keepCase: true });
  r.resolveAll();
  root = r;
  return r;
}

const types = new Map<string, protobuf.Type>();

/** A message type by type URL or full name (looked up once: protobufjs's lookup walks namespaces). */
export function messageType(typeUrlOrName: string): protobuf.Type {
  let type = types.get(typeUrlOrName);
  if (!type) {
    const name = typeUrlOrName.startsWith(TYPE_PREFIX) ? typeUrlOrName.slice(TYPE_PREFIX.length) : typeUrlOrName;
    type = envoyProtos().lookupType(name);
    types.set(typeUrlOrName, type);
  }
  return type;
}

export const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, bytes: Buffer, defaults: false, oneofs: false };

/** A gRPC (de)serializer pair for an Envoy message type, on these protos. */
export function grpcCodec(name: string): { serialize(obj: object): Buffer; deserialize(buf: Buffer): Record<string, unknown> } {
  const type = messageType(name);
  return {
    serialize: (obj) => Buffer.from(type.encode(type.fromObject(obj)).finish()),
    deserialize: (buf) => type.toObject(type.decode(buf), TO_OBJECT),
  };
}

/** A bidirectional-streaming gRPC method on Envoy's protos (ADS, SDS): request and response types by name. */
export function streamingMethod(path: string, request: string, response: string) {
  const req = grpcCodec(request);
  const res = grpcCodec(response);
  return {
    path,
    requestStream: true,
    responseStream: true,
    requestSerialize: req.serialize,
    requestDeserialize: req.deserialize,
    responseSerialize: res.serialize,
    responseDeserialize: res.deserialize,
  };
}
