import { CERT_PROVIDER_INSTANCE } from '../xds/index.js';

/** Files a proxyless app's file_watcher certificate provider reads (gRFC A29). */
export interface IdentityFiles {
  certificate_file: string;
  private_key_file: string;
  ca_certificate_file: string;
}

/**
 * The gRPC xDS bootstrap for a proxyless app (GRPC_XDS_BOOTSTRAP): xDS through the local relay,
 * the Dataplane's node id, the `weft` certificate provider over the identity files, and the
 * server listener template of gRFC A36.
 */
export function grpcXdsBootstrap(opts: { relayPort: number; nodeId: string; cluster: string; files?: IdentityFiles; refreshInterval?: string }): Record<string, unknown> {
  return {
    xds_servers: [{ server_uri: `127.0.0.1:${opts.relayPort}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: opts.nodeId, cluster: opts.cluster, locality: {} },
    ...(opts.files ? { certificate_providers: { [CERT_PROVIDER_INSTANCE]: { plugin_name: 'file_watcher', config: { ...opts.files, refresh_interval: opts.refreshInterval ?? '2s' } } } } : {}),
    server_listener_resource_name_template: 'grpc/server?xds.resource.listening_address=%s',
  };
}
