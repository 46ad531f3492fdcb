import type { DataplaneSpec, MeshSpec, MeshTrafficPermissionBody, Resource, TrafficPermissionSpec } from '../core/index.js';

/**
 * Everything the config of one proxy depends on. Built by the control plane from the store;
 * translation reads nothing else (no store, clock or I/O), so equal contexts give equal output.
 */
export interface MeshContext {
  mesh: Resource<MeshSpec>;
  /** The proxy being configured. */
  dataplane: Resource<DataplaneSpec>;
  /** Every Dataplane of the mesh (the proxy included): the source of endpoints. */
  dataplanes: readonly Resource<DataplaneSpec>[];
  trafficPermissions: readonly Resource<TrafficPermissionSpec>[];
  meshTrafficPermissions: readonly Resource<MeshTrafficPermissionBody>[];
}

/** Label that marks a Dataplane as a proxyless gRPC app (no Envoy; grpc-js-xds reads the config). */
export const PROXYLESS_LABEL = 'weft.io/proxyless';

export function isProxyless(dp: Resource<DataplaneSpec>): boolean {
  return dp.labels[PROXYLESS_LABEL] === 'true';
}
