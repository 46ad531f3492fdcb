import { checkResource, fromProto3Json } from '../ads/index.js';
import { VERSION } from '../core/index.js';
import { LOCAL_SDS_CLUSTER } from '../xds/index.js';

/** The bootstrap cluster that reaches the control plane's ADS. */
export const XDS_CLUSTER = 'weft:xds';

const http2 = (options: Record<string, unknown>) => ({
  'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
    '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
    explicit_http_config: { http2_protocol_options: options },
  },
});

/**
 * The xDS connection is watched from both ends. Envoy pings the control plane over HTTP/2 as the
 * control plane pings Envoy (15 s, answer within 15 s): a replica that died, or hangs, is left for
 * another. TCP keepalive as Kuma sets it (probes after 10 s idle, every 10 s, 3 of them) catches a
 * peer gone from the network even between pings.
 */
const XDS_KEEPALIVE = {
  http2: http2({ connection_keepalive: { interval: '15s', timeout: '15s' } }),
  tcp: { tcp_keepalive: { keepalive_time: 10, keepalive_interval: 10, keepalive_probes: 3 } },
};

export interface EnvoyBootstrapOptions {
  nodeId: string;
  /** The proxy's first service (Envoy's `node.cluster`, for stats). */
  cluster: string;
  cp: { host: string; port: number; tls: boolean; caCertPem?: string };
  token?: string;
  adminPort: number;
  /** weft-dp's local SDS server (a Unix socket). */
  sdsSocket: string;
  /** Incremental xDS (default) or state of the world. */
  variant: 'delta' | 'sotw';
}

/**
 * Envoy's bootstrap: node id `<mesh>.<name>`, ADS to the control plane (delta by default) over
 * TLS with the dataplane token as gRPC metadata, the local SDS cluster that serves the identity,
 * and the admin interface on loopback only. Proto3 JSON with proto field names, as Envoy reads
 * it from `--config-path`; `checkBootstrap` turns it into protobufjs form to check it.
 */
export function envoyBootstrap(o: EnvoyBootstrapOptions): Record<string, unknown> {
  const xdsCluster: Record<string, unknown> = {
    name: XDS_CLUSTER,
    type: /^[\d.]+$|:/.test(o.cp.host) ? 'STATIC' : 'STRICT_DNS',
    load_assignment: { cluster_name: XDS_CLUSTER, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: o.cp.host, port_value: o.cp.port } } } }] }] },
    typed_extension_protocol_options: XDS_KEEPALIVE.http2,
    upstream_connection_options: XDS_KEEPALIVE.tcp,
  };
  if (o.cp.tls) {
    xdsCluster.transport_socket = {
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
        sni: o.cp.host,
        common_tls_context: {
          alpn_protocols: ['h2'],
          validation_context: {
            ...(o.cp.caCertPem ? { trusted_ca: { inline_string: o.cp.caCertPem } } : { trusted_ca: { filename: '/etc/ssl/certs/ca-certificates.crt' } }),
            match_typed_subject_alt_names: [{ san_type: /^[\d.]+$|:/.test(o.cp.host) ? 'IP_ADDRESS' : 'DNS', matcher: { exact: o.cp.host } }],
          },
        },
      },
    };
  }
  return {
    node: { id: o.nodeId, cluster: o.cluster, metadata: { 'weft.io/dataplane-version': VERSION } },
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: o.adminPort } } },
    dynamic_resources: {
      ads_config: {
        api_type: o.variant === 'delta' ? 'DELTA_GRPC' : 'GRPC',
        transport_api_version: 'V3',
        set_node_on_first_message_only: true,
        grpc_services: [{ envoy_grpc: { cluster_name: XDS_CLUSTER }, ...(o.token ? { initial_metadata: [{ key: 'authorization', value: `Bearer ${o.token}` }] } : {}) }],
      },
      cds_config: { ads: {}, resource_api_version: 'V3' },
      lds_config: { ads: {}, resource_api_version: 'V3' },
    },
    static_resources: {
      clusters: [
        xdsCluster,
        {
          name: LOCAL_SDS_CLUSTER,
          type: 'STATIC',
          load_assignment: { cluster_name: LOCAL_SDS_CLUSTER, endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: o.sdsSocket } } } }] }] },
          typed_extension_protocol_options: http2({}),
        },
      ],
    },
  };
}

const BOOTSTRAP = 'envoy.config.bootstrap.v3.Bootstrap';

/** Envoy's own rules on the bootstrap, before Envoy sees it: the problems, or none. */
export function checkBootstrap(bootstrap: Record<string, unknown>): string[] {
  // Envoy reads the bootstrap as proto3 JSON (durations as "15s", wrappers as bare numbers,
  // node.metadata as a plain object): checked in the form protobufjs takes.
  return checkResource(BOOTSTRAP, fromProto3Json(BOOTSTRAP, bootstrap)).map((v) => `${v.field}: ${v.message}`);
}
