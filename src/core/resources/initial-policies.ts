import type { ResourceInput } from '../resource.js';
import { SERVICE_TAG } from './common.js';
import type { MeshSpec } from './mesh.js';
import type { TrafficPermissionSpec } from './traffic-permission.js';

/**
 * The policies Kuma creates with a new mesh, so that turning on mTLS does not cut traffic:
 * `allow-all-<mesh>`, a TrafficPermission from every service to every service. Deleting it closes
 * the mesh (with mTLS on, only what other permissions allow still flows).
 * `skipCreatingInitialPolicies: ['*']` or `['TrafficPermission']` creates none.
 */
export function initialPolicies(mesh: string, spec: MeshSpec): ResourceInput[] {
  const skip = new Set(spec.skipCreatingInitialPolicies ?? []);
  if (skip.has('*') || skip.has('TrafficPermission')) return [];
  const allowAll: TrafficPermissionSpec = {
    sources: [{ match: { [SERVICE_TAG]: '*' } }],
    destinations: [{ match: { [SERVICE_TAG]: '*' } }],
  };
  return [{ type: 'TrafficPermission', mesh, name: `allow-all-${mesh}`, labels: {}, spec: allowAll }];
}
