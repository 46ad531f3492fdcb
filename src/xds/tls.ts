import { meshSpiffePrefix, spiffeId } from '../core/index.js';
import { CERT_PROVIDER_INSTANCE, IDENTITY_SECRET, LOCAL_SDS_CLUSTER, MESH_CA_SECRET } from './names.js';
import { ANY } from './type-urls.js';

/**
 * TLS contexts of the mesh. Envoy sidecars get their identity from weft-dp's local SDS server (the
 * private key never leaves the node) and the trust bundle from the control plane over ADS;
 * proxyless gRPC apps read both from files through a certificate provider instance (gRFC A29).
 */

const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' };
const LOCAL_SDS_SOURCE = {
  api_config_source: { api_type: 'GRPC', transport_api_version: 'V3', grpc_services: [{ envoy_grpc: { cluster_name: LOCAL_SDS_CLUSTER } }] },
  resource_api_version: 'V3',
};

const identitySds = { name: IDENTITY_SECRET, sds_config: LOCAL_SDS_SOURCE };
const meshCaSds = { name: MESH_CA_SECRET, sds_config: ADS_SOURCE };

const uriSan = (m: Record<string, string>) => ({ san_type: 'URI', matcher: m });

/**
 * A sidecar calling `service`: present our identity, verify the peer is that service of the mesh.
 * Without a service (a destination known only by its address), any identity of the mesh will do.
 */
export function sidecarUpstreamTls(mesh: string, service?: string) {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': ANY.UpstreamTlsContext,
      common_tls_context: {
        tls_certificate_sds_secret_configs: [identitySds],
        combined_validation_context: {
          default_validation_context: { match_typed_subject_alt_names: [uriSan(service === undefined ? { prefix: meshSpiffePrefix(mesh) } : { exact: spiffeId(mesh, service) })] },
          validation_context_sds_secret_config: meshCaSds,
        },
      },
    },
  };
}

/** A sidecar inbound: present our identity, require a client certificate of the mesh. */
export function sidecarDownstreamTls(mesh: string) {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': ANY.DownstreamTlsContext,
      require_client_certificate: { value: true },
      common_tls_context: {
        tls_certificate_sds_secret_configs: [identitySds],
        combined_validation_context: {
          default_validation_context: { match_typed_subject_alt_names: [uriSan({ prefix: meshSpiffePrefix(mesh) })] },
          validation_context_sds_secret_config: meshCaSds,
        },
      },
    },
  };
}

const provider = (certificate_name: string) => ({ instance_name: CERT_PROVIDER_INSTANCE, certificate_name });

/** A proxyless client calling `service` (grpc-js-xds reads `match_subject_alt_names`). */
export function proxylessUpstreamTls(mesh: string, service: string) {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': ANY.UpstreamTlsContext,
      common_tls_context: {
        tls_certificate_provider_instance: provider('identity'),
        validation_context: { ca_certificate_provider_instance: provider('ca'), match_subject_alt_names: [{ exact: spiffeId(mesh, service) }] },
      },
    },
  };
}

/** A proxyless server: present our identity, require a client certificate signed by the mesh's CA. */
export function proxylessDownstreamTls() {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': ANY.DownstreamTlsContext,
      require_client_certificate: { value: true },
      common_tls_context: {
        tls_certificate_provider_instance: provider('identity'),
        validation_context: { ca_certificate_provider_instance: provider('ca') },
      },
    },
  };
}
