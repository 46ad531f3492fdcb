import { SERVICE_TAG, type DataplaneSpec, type Resource } from '../core/index.js';
import { isProxyless, type MeshContext } from './context.js';
import { ANY, TypeUrl, type ResourceSet } from './type-urls.js';

/** A failure of one generation stage, named so the bug report says where. */
export class GenerationError extends Error {
  constructor(
    readonly stage: string,
    message: string,
  ) {
    super(`${stage} failed: ${message}`);
    this.name = 'GenerationError';
  }
}

const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' };

/** SDS name of the mesh's trust bundle. */
export const MESH_CA_SECRET = 'mesh_ca';
const ROUTER_FILTER = { name: 'envoy.filters.http.router', typed_config: { '@type': ANY.Router } };

interface Endpoint {
  address: string;
  port: number;
}

/** Ready endpoints of a service across the mesh: every inbound tagged with it, unless not ready. */
export function serviceEndpoints(dataplanes: readonly Resource<DataplaneSpec>[]): Map<string, Endpoint[]> {
  const out = new Map<string, Endpoint[]>();
  for (const dp of [...dataplanes].sort((a, b) => a.name.localeCompare(b.name))) {
    const net = dp.spec.networking;
    for (const ib of net.inbound ?? []) {
      const service = ib.tags[SERVICE_TAG];
      if (!service || ib.health?.ready === false || ib.state === 'NotReady' || ib.state === 'Ignored') continue;
      const list = out.get(service) ?? [];
      list.push({ address: ib.address ?? net.advertisedAddress ?? net.address, port: ib.port });
      out.set(service, list);
    }
  }
  return out;
}

/**
 * What a proxy reaches: `'all'` services of the mesh (transparent proxy or proxyless without
 * `reachableServices`), plus or else the listed ones. Used by translation and by the reconciler to
 * know which proxies a change can affect.
 */
export function reachOf(dp: Resource<DataplaneSpec>): { all: boolean; services: readonly string[] } {
  const net = dp.spec.networking;
  const explicit = (net.outbound ?? []).map((o) => o.tags?.[SERVICE_TAG] ?? o.backendRef?.name).filter((s): s is string => !!s);
  if (net.transparentProxying || isProxyless(dp)) {
    const narrowed = net.transparentProxying?.reachableServices;
    if (!narrowed) return { all: true, services: explicit };
    return { all: false, services: [...new Set([...narrowed, ...explicit])] };
  }
  return { all: false, services: [...new Set(explicit)] };
}

/** Services this proxy calls, sorted; proxies with the same answer get the same array. */
function reachableServices(ctx: MeshContext, all: Iterable<string>, once: <T>(key: string, build: () => T) => T): readonly string[] {
  const reach = reachOf(ctx.dataplane);
  if (reach.all && reach.services.length === 0) return once('reach:all', () => [...all].sort());
  const list = [...new Set([...(reach.all ? [...all] : []), ...reach.services])].sort();
  return once(`reach:${list.join(',')}`, () => list);
}

function edsCluster(name: string) {
  return { name, type: 'EDS', eds_cluster_config: { eds_config: ADS_SOURCE }, connect_timeout: { seconds: 5 }, lb_policy: 'ROUND_ROBIN' };
}

function loadAssignment(name: string, endpoints: readonly Endpoint[]) {
  return {
    cluster_name: name,
    endpoints: endpoints.length
      ? [
          {
            locality: { zone: 'default' },
            load_balancing_weight: { value: 1 },
            lb_endpoints: endpoints.map((e) => ({ endpoint: { address: { socket_address: { address: e.address, port_value: e.port } } } })),
          },
        ]
      : [],
  };
}

function routeTo(name: string, cluster: string) {
  return { name, virtual_hosts: [{ name: cluster, domains: ['*'], routes: [{ match: { prefix: '' }, route: { cluster } }] }] };
}

function tcpListener(name: string, address: string, port: number, cluster: string) {
  return {
    name,
    address: { socket_address: { address, port_value: port } },
    filter_chains: [{ filters: [{ name: 'envoy.filters.network.tcp_proxy', typed_config: { '@type': ANY.TcpProxy, stat_prefix: name, cluster } }] }],
  };
}

/**
 * The first translation slice: clusters and endpoints for every service the proxy reaches, then
 * per flavour either API listeners for proxyless gRPC clients (listener name = service, so
 * `xds:///<service>` resolves) or TCP listeners for an Envoy sidecar's inbounds and explicit
 * outbounds. HTTP routing, transparent proxying, mTLS and permissions come with their issue.
 */
export function generateProxyConfig(ctx: MeshContext): ResourceSet {
  const memo = ctx.memo ?? new Map<string, unknown>();
  const once = <T>(key: string, build: () => T): T => {
    if (memo.has(key)) return memo.get(key) as T;
    const v = build();
    memo.set(key, v);
    return v;
  };
  let endpoints: Map<string, Endpoint[]>;
  try {
    endpoints = once('endpoints', () => serviceEndpoints(ctx.dataplanes));
  } catch (err) {
    throw new GenerationError('endpoints', (err as Error).message);
  }
  const services = reachableServices(ctx, endpoints.keys(), once);
  // Proxies reaching the same services share these arrays (and so their encoding and versions).
  // A short key per distinct reach list (the lists are shared arrays, see reachableServices).
  const reachIds = once('reach-ids', () => new WeakMap<readonly string[], string>());
  let reachKey = reachIds.get(services);
  if (reachKey === undefined) reachIds.set(services, (reachKey = `r${memo.size}`));
  const outbound = once(`outbound:${reachKey}`, () => ({
    clusters: services.map((s) => once(`cluster:${s}`, () => edsCluster(s))),
    assignments: services.map((s) => once(`cla:${s}`, () => loadAssignment(s, endpoints.get(s) ?? []))),
  }));
  let clusters: readonly Record<string, unknown>[] = outbound.clusters;
  const assignments = outbound.assignments;
  const listeners: Record<string, unknown>[] = [];
  const routes: Record<string, unknown>[] = [];
  const net = ctx.dataplane.spec.networking;
  if (isProxyless(ctx.dataplane)) {
    for (const s of services) {
      listeners.push(
        once(`api-listener:${s}`, () => ({
          name: s,
          api_listener: {
            api_listener: { '@type': ANY.HttpConnectionManager, stat_prefix: s, rds: { route_config_name: s, config_source: ADS_SOURCE }, http_filters: [ROUTER_FILTER] },
          },
        })),
      );
      routes.push(once(`route:${s}`, () => routeTo(s, s)));
    }
  } else {
    const locals = new Map<string, Record<string, unknown>>();
    for (const ib of net.inbound ?? []) {
      const address = ib.address ?? net.address;
      const local = `localhost:${ib.servicePort ?? ib.port}`;
      const target = { address: ib.serviceAddress ?? '127.0.0.1', port: ib.servicePort ?? ib.port };
      if (!locals.has(local) && !services.includes(local)) {
        locals.set(
          local,
          once(`local:${local}:${target.address}`, () => ({ name: local, type: 'STATIC', connect_timeout: { seconds: 5 }, load_assignment: loadAssignment(local, [target]) })),
        );
      }
      listeners.push(tcpListener(`inbound:${address}:${ib.port}`, address, ib.port, local));
    }
    if (locals.size > 0) {
      const localKey = [...locals.values()].map((c) => `${String(c.name)}@${JSON.stringify((c.load_assignment as Record<string, unknown>).endpoints)}`).join(',');
      clusters = once(`cds:${reachKey}|${localKey}`, () => [...outbound.clusters, ...locals.values()]);
    }
    for (const ob of net.outbound ?? []) {
      const service = ob.tags?.[SERVICE_TAG] ?? ob.backendRef?.name;
      if (!service) continue;
      const address = ob.address ?? '127.0.0.1';
      listeners.push(tcpListener(`outbound:${address}:${ob.port}`, address, ob.port, service));
    }
  }
  // The mesh's roots as an SDS Secret, for Envoy's validation contexts (Kuma's name for it).
  const secrets = ctx.trustBundle?.length ? [once('secret:mesh_ca', () => ({ name: MESH_CA_SECRET, validation_context: { trusted_ca: { inline_string: ctx.trustBundle!.join('') } } }))] : [];
  return {
    [TypeUrl.Cluster]: clusters,
    [TypeUrl.ClusterLoadAssignment]: assignments,
    [TypeUrl.Listener]: listeners,
    [TypeUrl.RouteConfiguration]: routes,
    [TypeUrl.Secret]: secrets,
  };
}
