import type { ServiceInfo } from './services.js';
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
  /** PEM roots proxies of the mesh trust (two during a CA rotation); empty without mTLS. */
  trustBundle?: readonly string[];
  /** Optional: `meshServices(dataplanes)`, when the caller has already computed it for this round. */
  services?: ReadonlyMap<string, ServiceInfo>;
  /**
   * Optional: shared by all proxies of one mesh in one generation round, so resources that are the
   * same for many proxies (a service's cluster and endpoints) are built once and are the same
   * object. Translation stays deterministic with or without it.
   */
  memo?: Map<string, unknown>;
}

/** Label that marks a Dataplane as a proxyless gRPC app (no Envoy; grpc-js-xds reads the config). */
export const PROXYLESS_LABEL = 'weft.io/proxyless';

export function isProxyless(dp: Resource<DataplaneSpec>): boolean {
  return dp.labels[PROXYLESS_LABEL] === 'true';
}
