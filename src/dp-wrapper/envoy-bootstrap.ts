import { checkResource } from '../ads/index.js';
import { VERSION } from '../core/index.js';
import { LOCAL_SDS_CLUSTER } from '../xds/index.js';

/** The bootstrap cluster that reaches the control plane's ADS. */
export const XDS_CLUSTER = 'weft:xds';

const HTTP2 = {
  'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
    '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
    explicit_http_config: { http2_protocol_options: {} },
  },
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
 * and the admin interface on loopback only. Written in proto field names with no Duration or
 * wrapper fields, so the same object is valid protobufjs input (checked below) and valid proto3
 * JSON for Envoy's `--config-path`, except `node.metadata`, a Struct, which is proto3 JSON only.
 */
export function envoyBootstrap(o: EnvoyBootstrapOptions): Record<string, unknown> {
  const xdsCluster: Record<string, unknown> = {
    name: XDS_CLUSTER,
    type: /^[\d.]+$|:/.test(o.cp.host) ? 'STATIC' : 'STRICT_DNS',
    load_assignment: { cluster_name: XDS_CLUSTER, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: o.cp.host, port_value: o.cp.port } } } }] }] },
    typed_extension_protocol_options: HTTP2,
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
          typed_extension_protocol_options: HTTP2,
        },
      ],
    },
  };
}

/** Envoy's own rules on the bootstrap, before Envoy sees it: the problems, or none. */
export function checkBootstrap(bootstrap: Record<string, unknown>): string[] {
  // Envoy reads the bootstrap as proto3 JSON: node.metadata is a plain JSON object there.
  return checkResource('envoy.config.bootstrap.v3.Bootstrap', bootstrap, { structs: 'json' }).map((v) => `${v.field}: ${v.message}`);
}
