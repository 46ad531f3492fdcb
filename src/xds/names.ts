/**
 * Names that connect translation to the data plane: the bootstrap weft-dp writes and the gRPC xDS
 * bootstrap of proxyless apps must use the same ones. Resource names follow Kuma's so that
 * `config_dump` reads the same (`inbound:10.0.0.1:8080`, `outbound:10.0.0.2:6379`, cluster =
 * service name).
 */

/** SDS name of the mesh's trust bundle, served by the control plane over ADS. */
export const MESH_CA_SECRET = 'mesh_ca';
/** SDS name of the proxy's identity certificate and key, served by weft-dp's local SDS server. */
export const IDENTITY_SECRET = 'identity_cert';
/** Bootstrap cluster (weft-dp's local SDS server on a Unix socket) that serves IDENTITY_SECRET. */
export const LOCAL_SDS_CLUSTER = 'weft:sds';
/**
 * Certificate provider instance of a proxyless app's gRPC bootstrap (a `file_watcher` over the
 * identity certificate, key and trust bundle that weft-dp keeps fresh).
 */
export const CERT_PROVIDER_INSTANCE = 'weft';

/** Where gRPC's xDS server looks for its listener (gRFC A36's default template). */
export function grpcServerListenerName(address: string, port: number): string {
  return `grpc/server?xds.resource.listening_address=${hostPort(address, port)}`;
}

export const OUTBOUND_PASSTHROUGH = 'outbound:passthrough:ipv4';
export const INBOUND_PASSTHROUGH = 'inbound:passthrough:ipv4';
export const OUTBOUND_PASSTHROUGH_V6 = 'outbound:passthrough:ipv6';
export const INBOUND_PASSTHROUGH_V6 = 'inbound:passthrough:ipv6';
/** Kuma's direct access: connections to a listed service's Dataplane by its own address (see `directAccessListeners`). */
export const DIRECT_ACCESS_CLUSTER = 'direct_access';
/** A cluster with no endpoints: where unknown destinations go when the mesh disables passthrough. */
export const BLACKHOLE_CLUSTER = 'outbound:blackhole';
/** Source address of inbound passthrough connections, excluded from redirection so nothing loops. */
export const INBOUND_PASSTHROUGH_SOURCE = '127.0.0.6';
export const INBOUND_PASSTHROUGH_SOURCE_V6 = '::6';

/** `address:port`, with IPv6 addresses in brackets. */
export const hostPort = (address: string, port: number): string => `${address.includes(':') ? `[${address}]` : address}:${port}`;
export const inboundName = (address: string, port: number): string => `inbound:${hostPort(address, port)}`;
export const outboundName = (address: string, port: number): string => `outbound:${hostPort(address, port)}`;
export const directAccessName = (address: string, port: number): string => `direct_access_${hostPort(address, port)}`;
/** Route configuration of a service, shared by every proxy that calls it over HTTP. */
export const outboundRouteName = (service: string): string => `outbound:${service}`;
/** Cluster of the application behind an inbound. */
export const localClusterName = (port: number): string => `localhost:${port}`;
