import { compareNames, enabledMtlsBackend, PROTOCOL_TAG, SERVICE_TAG, type DataplaneSpec, type Inbound, type Protocol, type Resource } from '../core/index.js';
import { isProxyless, type MeshContext } from './context.js';
import {
  BLACKHOLE_CLUSTER,
  DIRECT_ACCESS_CLUSTER,
  directAccessName,
  grpcServerListenerName,
  hostPort,
  INBOUND_PASSTHROUGH,
  INBOUND_PASSTHROUGH_SOURCE,
  INBOUND_PASSTHROUGH_SOURCE_V6,
  INBOUND_PASSTHROUGH_V6,
  inboundName,
  localClusterName,
  MESH_CA_SECRET,
  OUTBOUND_PASSTHROUGH,
  OUTBOUND_PASSTHROUGH_V6,
  outboundName,
  outboundRouteName,
} from './names.js';
import { dependsOnDataplane, hasShadowDeny, inboundRules, rbacRules } from './permissions.js';
import { fnv1a, isHttp, isHttp2, meshServices, serviceVips, type Endpoint, type ServiceInfo } from './services.js';
import { proxylessDownstreamTls, proxylessUpstreamTls, sidecarDownstreamTls, sidecarUpstreamTls } from './tls.js';
import { ANY, joinShared, TypeUrl, type ResourceSet } from './type-urls.js';

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

type Obj = Record<string, unknown>;

const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' };
const ROUTER_FILTER = { name: 'envoy.filters.http.router', typed_config: { '@type': ANY.Router } };
const TLS_INSPECTOR = { name: 'envoy.filters.listener.tls_inspector', typed_config: { '@type': ANY.TlsInspector } };
const CONNECT_TIMEOUT = { seconds: 5 };

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

/** How the mesh secures traffic in this round. */
type MtlsMode = 'off' | 'PERMISSIVE' | 'STRICT';

/** One proxy's generation: the context, the round's memo, and what every stage shares. */
class Generation {
  readonly memo: Map<string, unknown>;
  readonly services: ReadonlyMap<string, ServiceInfo>;
  readonly mtls: MtlsMode;
  readonly meshName: string;
  readonly dp: Resource<DataplaneSpec>;
  readonly flavour: 'sidecar' | 'proxyless';

  constructor(readonly ctx: MeshContext) {
    this.memo = ctx.memo ?? new Map<string, unknown>();
    this.meshName = ctx.mesh.name;
    this.dp = ctx.dataplane;
    this.flavour = isProxyless(ctx.dataplane) ? 'proxyless' : 'sidecar';
    this.services = this.stage('endpoints', () => this.once('services', () => ctx.services ?? meshServices(ctx.dataplanes)));
    const backend = enabledMtlsBackend(ctx.mesh.spec);
    this.mtls = backend ? (backend.mode ?? 'STRICT') : 'off';
    if (this.mtls !== 'off' && !ctx.trustBundle?.length) throw new GenerationError('tls', `mTLS is enabled on mesh "${this.meshName}" but its trust bundle is empty`);
  }

  /** Built once per round and shared by every proxy of the mesh (same object, so encoded once). */
  once<T>(key: string, build: () => T): T {
    if (this.memo.has(key)) return this.memo.get(key) as T;
    const v = build();
    this.memo.set(key, v);
    return v;
  }

  /**
   * Like `once`, but kept across rounds when the caller keeps a `LastingMemo`: `key` must
   * determine the result entirely (every input spelled out, or named by `inputsId`).
   */
  lasting<T>(key: string, build: () => T): T {
    const memo = this.ctx.lasting;
    if (!memo) return this.once(key, build);
    const known = memo.get(key);
    if (known !== undefined) return known as T;
    const v = build();
    memo.set(key, v);
    return v;
  }

  /** Names an object by identity: across rounds with a LastingMemo, else within this round. */
  lastingId(o: object): string {
    return this.ctx.lasting ? this.ctx.lasting.idOf(o) : idOf(this, o);
  }

  /**
   * Names the inputs a proxy's own (inbound) listeners depend on: its Dataplane and the policies
   * by identity, and of the Mesh what they use, its name and mTLS mode. So a Mesh change that
   * leaves mTLS alone (its outbound passthrough, say) does not rebuild every proxy's inbounds.
   */
  inputsId(): string {
    const ctx = this.ctx;
    return `${this.lastingId(ctx.dataplane)}:${this.meshName}/${this.mtls}:${this.lastingId(ctx.meshTrafficPermissions)}:${this.lastingId(ctx.trafficPermissions)}`;
  }

  /**
   * Like `lasting`, for what is built from the mesh's services (names, ports, protocols,
   * endpoints) and the other inputs `key` spells out. The reconciler hands every round the same
   * services object until a Dataplane changes, so this is built once, not once per round (proxies
   * that connect one by one each make a round). Only the entry for the current services object is
   * kept: a newer one replaces it, so a mesh whose Dataplanes keep changing piles up no old ones.
   */
  forServices<T>(key: string, build: () => T): T {
    const memo = this.ctx.lasting;
    if (!memo) return this.once(key, build);
    const slot = memo.get(key) as { services: object; value: T } | undefined;
    if (slot?.services === this.services) return slot.value;
    const value = build();
    memo.set(key, { services: this.services, value });
    return value;
  }

  stage<T>(name: string, build: () => T): T {
    try {
      return build();
    } catch (err) {
      if (err instanceof GenerationError) throw err;
      throw new GenerationError(name, (err as Error).message);
    }
  }

  protocolOf(service: string): Protocol {
    return this.services.get(service)?.protocol ?? 'tcp';
  }
}

/**
 * Services this proxy calls, sorted; proxies with the same answer get the same array, in later
 * rounds too (by content), so what is keyed by the array's identity is found again.
 */
function reachableServices(g: Generation): readonly string[] {
  const reach = reachOf(g.dp);
  if (reach.all && reach.services.length === 0) {
    // Every service: kept for the current services object, so the sorted list is not rebuilt per proxy or round.
    const all = g.forServices('reach:all', () => {
      const list = [...g.services.keys()].sort();
      return { key: `reach:${JSON.stringify(list)}`, list };
    });
    return g.lasting(all.key, () => all.list);
  }
  const list = [...new Set([...(reach.all ? [...g.services.keys()] : []), ...reach.services])].sort();
  return g.lasting(`reach:${JSON.stringify(list)}`, () => list);
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

const HTTP2_OPTIONS = {
  'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': { '@type': ANY.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } },
};

/** The cluster of a service: endpoints over EDS; HTTP/2 for gRPC and http2; mTLS to the peer's identity. */
function serviceCluster(g: Generation, service: string): Obj {
  return g.lasting(`cluster:${g.flavour}:${service}:${g.protocolOf(service)}:${g.mtls}:${g.meshName}`, () => {
    const c: Obj = { name: service, type: 'EDS', eds_cluster_config: { eds_config: ADS_SOURCE }, connect_timeout: CONNECT_TIMEOUT, lb_policy: 'ROUND_ROBIN' };
    if (g.flavour === 'sidecar' && isHttp2(g.protocolOf(service))) c.typed_extension_protocol_options = HTTP2_OPTIONS;
    if (g.mtls !== 'off') c.transport_socket = g.flavour === 'sidecar' ? sidecarUpstreamTls(g.meshName, service) : proxylessUpstreamTls(g.meshName, service);
    return c;
  });
}

function routeTo(name: string, cluster: string, protocol: Protocol) {
  // gRPC and HTTP/2 streams may outlive Envoy's 15 s default request timeout.
  const route: Obj = isHttp2(protocol) ? { cluster, timeout: { seconds: 0 } } : { cluster };
  return { name, virtual_hosts: [{ name: cluster, domains: ['*'], routes: [{ match: { prefix: '/' }, route }] }] };
}

function tcpProxy(statPrefix: string, cluster: string): Obj {
  return { name: 'envoy.filters.network.tcp_proxy', typed_config: { '@type': ANY.TcpProxy, stat_prefix: statPrefix, cluster } };
}

function hcm(statPrefix: string, routes: Obj, httpFilters: readonly Obj[] = []): Obj {
  return {
    name: 'envoy.filters.network.http_connection_manager',
    typed_config: { '@type': ANY.HttpConnectionManager, stat_prefix: statPrefix, ...routes, http_filters: [...httpFilters, ROUTER_FILTER] },
  };
}

const rdsOf = (name: string) => ({ rds: { route_config_name: name, config_source: ADS_SOURCE } });

/** The permissions of one inbound as RBAC filters (network for TCP, HTTP for HTTP); none without mTLS. */
function rbacFilters(g: Generation, ib: Inbound, statPrefix: string): { network?: Obj; http?: Obj } {
  if (g.mtls === 'off') return {};
  const ctx = g.ctx;
  const key = `rbac:${dependsOnDataplane(ctx.meshTrafficPermissions) ? `${g.dp.name}:` : ''}${ib.name ?? ''}:${ib.port}:${JSON.stringify(Object.entries(ib.tags).sort())}`;
  const config = g.once(key, () =>
    g.stage('permissions', () => {
      const rules = inboundRules(g.meshName, g.dp, ib, ctx.meshTrafficPermissions, ctx.trafficPermissions);
      return { rules: rbacRules(rules), ...(hasShadowDeny(rules) ? { shadow_rules: rbacRules(rules, true) } : {}) };
    }),
  );
  return {
    network: { name: 'envoy.filters.network.rbac', typed_config: { '@type': ANY.NetworkRbac, stat_prefix: statPrefix, ...config } },
    http: { name: 'envoy.filters.http.rbac', typed_config: { '@type': ANY.HttpRbac, ...config } },
  };
}

/** The outbound clusters and endpoints of a proxy; proxies reaching the same services share them. */
function outboundClusters(g: Generation, services: readonly string[]): { clusters: readonly Obj[]; assignments: readonly Obj[] } {
  // Clusters depend on the flavour, mTLS mode, mesh and each service's protocol, endpoints on the services.
  return g.forServices(`outbound:${g.flavour}:${g.lastingId(services)}:${g.mtls}:${g.meshName}`, () => ({
    clusters: services.map((s) => serviceCluster(g, s)),
    assignments: services.map((s) => assignmentOf(g, s)),
  }));
}

/**
 * A service's endpoints: the only part of a proxy's config that other Dataplanes' health and
 * addresses change. Kept across rounds by content, so proxies configured in different rounds share
 * one object (and its encoding) for as long as the service's endpoints stay the same.
 */
function assignmentOf(g: Generation, service: string): Obj {
  return g.once(`cla:${service}`, () => {
    const endpoints = g.services.get(service)?.endpoints ?? [];
    return g.lasting(`cla:${JSON.stringify([service, ...endpoints.map((e) => [e.address, e.port])])}`, () => loadAssignment(service, endpoints));
  });
}

/**
 * The config `previous`, generated for this proxy in an earlier round, with the endpoints of
 * `ctx`. Equals `generateProxyConfig(ctx)` when nothing but endpoints changed since: the proxy's
 * own Dataplane, the mesh, its policies and trust bundle, and the services' names, protocols and
 * ports (`servicesShape`) are all as they were. Callers check that; then an endpoint change costs
 * each proxy a lookup instead of a translation, and every proxy keeps sharing its other resources.
 */
export function withEndpoints(previous: ResourceSet, ctx: MeshContext): ResourceSet {
  const g = new Generation(ctx);
  const old = previous[TypeUrl.ClusterLoadAssignment] ?? [];
  const fresh = g.once(`cla-list:${idOf(g, old)}`, () => old.map((a) => assignmentOf(g, String(a.cluster_name))));
  return { ...previous, [TypeUrl.ClusterLoadAssignment]: fresh };
}

/** The mesh's roots as an SDS Secret, for validation contexts (Kuma's name for it). */
function meshCaSecret(g: Generation): Obj[] {
  if (g.mtls === 'off') return [];
  // Kept across rounds by the bundle's content (looked up once per round: the key is a few KB of PEM).
  return [g.once('secret:mesh_ca', () => g.lasting(`secret:mesh_ca:${JSON.stringify(g.ctx.trustBundle)}`, () => ({ name: MESH_CA_SECRET, validation_context: { trusted_ca: { inline_string: g.ctx.trustBundle!.join('') } } })))];
}

// ---------------------------------------------------------------------------------------------
// Envoy sidecars
// ---------------------------------------------------------------------------------------------

/** An inbound's listener, on its address or (`bindAddress`) another, such as one family's any address. */
function sidecarInbound(g: Generation, ib: Inbound, localCluster: string, bindAddress?: string): Obj {
  const net = g.dp.spec.networking;
  const address = bindAddress ?? ib.address ?? net.address;
  const name = inboundName(address, ib.port);
  const protocol = (ib.tags[PROTOCOL_TAG] ?? 'tcp') as Protocol;
  const service = ib.tags[SERVICE_TAG]!;
  const rbac = rbacFilters(g, ib, name);
  const chain = (secure: boolean): Obj => {
    const filters = isHttp(protocol)
      ? [hcm(name, { route_config: { ...routeTo(`inbound:${service}`, localCluster, protocol) } }, secure && rbac.http ? [rbac.http] : [])]
      : [...(secure && rbac.network ? [rbac.network] : []), tcpProxy(name, localCluster)];
    return secure ? { filter_chain_match: { transport_protocol: 'tls' }, filters, transport_socket: sidecarDownstreamTls(g.meshName) } : { filters };
  };
  const listener: Obj = {
    name,
    address: { socket_address: { address, port_value: ib.port } },
    traffic_direction: 'INBOUND',
    filter_chains:
      g.mtls === 'off' ? [chain(false)] : g.mtls === 'STRICT' ? [chain(true)] : [chain(true), { ...chain(false), filter_chain_match: { transport_protocol: 'raw_buffer' } }],
  };
  if (g.mtls !== 'off') listener.listener_filters = [TLS_INSPECTOR];
  // With transparent proxying traffic arrives through the inbound redirect port, not a bound socket.
  if (net.transparentProxying) listener.bind_to_port = { value: false };
  return listener;
}

function outboundFilter(g: Generation, statPrefix: string, service: string): Obj {
  return isHttp(g.protocolOf(service)) ? hcm(statPrefix, rdsOf(outboundRouteName(service))) : tcpProxy(statPrefix, service);
}

function sidecarOutbound(g: Generation, name: string, address: string, port: number, service: string): Obj {
  return {
    name,
    address: { socket_address: { address, port_value: port } },
    traffic_direction: 'OUTBOUND',
    filter_chains: [{ filters: [outboundFilter(g, name, service)] }],
  };
}

/**
 * The transparent proxy's outbound side (Kuma's layout): one listener per reachable service VIP
 * and port (`<service>.mesh` resolves to the VIP; each of the service's ports, plus 80), not bound
 * to a socket, and the listener on the redirect port, which hands each connection to the listener
 * of its original destination (`use_original_dst`) and sends anything else to the passthrough or
 * blackhole cluster. Small listeners rather than one with a filter chain per VIP: a new service
 * then adds one small listener to each proxy's config instead of changing a big one.
 */
function transparentOutboundListeners(g: Generation, services: readonly string[], port: number, passthrough: boolean, families: readonly Family[]): Obj[] {
  const vips = g.forServices('vips', () => serviceVips(g.services.keys()));
  const out: Obj[] = [];
  for (const s of services) {
    const vip = vips.get(s);
    const info = g.services.get(s);
    if (!vip || !info) continue;
    for (const p of new Set([...info.ports, 80])) {
      out.push(g.lasting(`vip-listener:${s}:${p}:${vip}:${g.protocolOf(s)}`, () => ({ ...sidecarOutbound(g, outboundName(vip, p), vip, p, s), bind_to_port: { value: false } })));
    }
  }
  for (const f of families) {
    const fallback = passthrough ? f.outbound : BLACKHOLE_CLUSTER;
    out.push(
      g.lasting(`outbound-passthrough:${f.any}:${port}:${fallback}`, () => ({
        name: f.outbound,
        address: { socket_address: { address: f.any, port_value: port } },
        traffic_direction: 'OUTBOUND',
        use_original_dst: { value: true },
        filter_chains: [{ name: fallback, filters: [tcpProxy(fallback, fallback)] }],
      })),
    );
  }
  return out;
}

/** The inbound redirect port of one family: hands each connection to the inbound listener of its original destination. */
function inboundPassthroughListener(g: Generation, port: number, f: Family): Obj {
  return g.lasting(`inbound-passthrough:${f.any}:${port}`, () => ({
    name: f.inbound,
    address: { socket_address: { address: f.any, port_value: port } },
    traffic_direction: 'INBOUND',
    use_original_dst: { value: true },
    filter_chains: [{ filters: [tcpProxy(f.inbound, f.inbound)] }],
  }));
}

/**
 * What the transparent proxy needs per IP family (Kuma's names): the redirect ports' listeners on
 * the family's any address, and the passthrough clusters, whose inbound one connects from an
 * address the iptables rules do not redirect again. An `::` listener is IPv6 only (Envoy binds it
 * with IPV6_V6ONLY unless `ipv4_compat` is set), so both families can hold the same port.
 */
interface Family {
  readonly any: string;
  readonly outbound: string;
  readonly inbound: string;
  readonly source: string;
}
const IPV4: Family = { any: '0.0.0.0', outbound: OUTBOUND_PASSTHROUGH, inbound: INBOUND_PASSTHROUGH, source: INBOUND_PASSTHROUGH_SOURCE };
const IPV6: Family = { any: '::', outbound: OUTBOUND_PASSTHROUGH_V6, inbound: INBOUND_PASSTHROUGH_V6, source: INBOUND_PASSTHROUGH_SOURCE_V6 };

/**
 * The families a transparent proxy takes traffic in: IPv4 always, IPv6 too when the Dataplane says
 * so (`ipFamilyMode` dual stack or IPv6, or an IPv6 inbound redirect port as older Kuma wrote).
 */
function familiesOf(tp: NonNullable<DataplaneSpec['networking']['transparentProxying']>): readonly Family[] {
  const mode = tp.ipFamilyMode?.toLowerCase();
  return mode === 'dualstack' || mode === 'ipv6' || tp.redirectPortInboundV6 !== undefined ? [IPV4, IPV6] : [IPV4];
}

const familyOfAddress = (address: string): Family => (address.includes(':') ? IPV6 : IPV4);

/** One address and port a proxy with direct access may be sent to: an inbound of another Dataplane. */
interface DirectTarget {
  /** The Dataplane whose inbound it is (a proxy gets no listener for its own). */
  readonly owner: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  /** `hostPort(address, port)`. */
  readonly key: string;
  /** Its group (`DIRECT_GROUPS`), by `key`: targets on one address and port are in one group. */
  readonly group: number;
}

/**
 * Direct access targets fall in this many groups by address and port. A proxy with direct access
 * gets the listeners of the groups that hold none of its own inbounds (nor its explicit
 * outbounds' addresses) as one list shared with every proxy wanting the same services (one list
 * per set of groups left out), and builds only the listeners of its own groups: with `*`, about
 * a thirty-second of them, not one per Dataplane of the mesh.
 */
const DIRECT_GROUPS = 32;

const groupOf = (key: string): number => fnv1a(key) % DIRECT_GROUPS;

/** The targets of a list of Dataplanes, by Dataplane name, and whether two share an address and port. */
interface DirectTargets {
  readonly list: readonly DirectTarget[];
  /** The same targets by group, each in the order of `list`. */
  readonly byGroup: readonly (readonly DirectTarget[])[];
  /** The groups of each Dataplane's own targets, ascending. */
  readonly groupsOf: ReadonlyMap<string, readonly number[]>;
  readonly repeats: boolean;
  /** Everything the direct access listeners of any proxy take from other Dataplanes, as one string. */
  readonly shape: string;
}

/** Per list of Dataplanes (a round's list is shared by every proxy of the mesh and never changed in place). */
const directTargetsOf = new WeakMap<readonly Resource<DataplaneSpec>[], DirectTargets>();

function directTargets(dataplanes: readonly Resource<DataplaneSpec>[]): DirectTargets {
  let t = directTargetsOf.get(dataplanes);
  if (t) return t;
  const list: DirectTarget[] = [];
  const keys = new Set<string>();
  for (const dp of [...dataplanes].sort(compareNames)) {
    for (const ib of dp.spec.networking.inbound ?? []) {
      const service = ib.tags[SERVICE_TAG];
      if (!service) continue;
      const address = ib.address ?? dp.spec.networking.address;
      const key = hostPort(address, ib.port);
      keys.add(key);
      list.push({ owner: dp.name, service, address, port: ib.port, key, group: groupOf(key) });
    }
  }
  const byGroup: DirectTarget[][] = Array.from({ length: DIRECT_GROUPS }, () => []);
  const groupsOf = new Map<string, number[]>();
  for (const t of list) {
    byGroup[t.group]!.push(t);
    const own = groupsOf.get(t.owner) ?? [];
    if (!own.includes(t.group)) groupsOf.set(t.owner, [...own, t.group].sort((a, b) => a - b));
  }
  let shape = list.map((e) => `${e.owner} ${e.service} ${e.key}`).join('\n');
  // The same string as last time when equal, so proxies compare it by reference, not by content.
  if (shape === lastShape) shape = lastShape;
  else lastShape = shape;
  directTargetsOf.set(dataplanes, (t = { list, byGroup, groupsOf, repeats: keys.size < list.length, shape }));
  return t;
}

let lastShape = '';

/**
 * What direct access listeners take from the mesh's Dataplanes (their names, services, addresses
 * and ports; not their health). While it is the same, a proxy's direct access listeners are too,
 * its own Dataplane and the mesh unchanged, so an endpoint change may skip them (the reconciler's
 * endpoint-only path).
 */
export function directAccessShape(dataplanes: readonly Resource<DataplaneSpec>[]): string {
  return directTargets(dataplanes).shape;
}

/**
 * Kuma's direct access (`directAccessServices`, `*` for all): the app may call the Dataplanes of
 * those services by their own addresses instead of a service VIP. Each such address and port gets
 * a listener, not bound, that sends the connection on to its original destination through
 * `direct_access`, a cluster that originates mTLS when the mesh has it (any identity of the mesh:
 * the destination is known only by its address). Without them such connections would leave
 * through the passthrough in plaintext, which a destination in STRICT mode refuses. One listener
 * per endpoint: Kuma too advises listing few services. The targets are listed, and their
 * listeners looked up, once per round for every proxy of the mesh; each proxy only picks its own.
 * Most of them come as a list shared with other proxies wanting the same services
 * (`DIRECT_GROUPS`), in `shared`; the rest are the proxy's own.
 */
function directAccessListeners(g: Generation, wanted: readonly string[]): { shared: readonly Obj[]; own: Obj[] } {
  if (wanted.length === 0) return { shared: [], own: [] };
  const all = wanted.includes('*');
  const want = new Set(wanted);
  const targets = directTargets(g.ctx.dataplanes);
  const round = g.lastingId(g.ctx.dataplanes);
  const listenerOf = g.once(`direct-access:listeners:${round}`, () => new Map<DirectTarget, Obj>());
  const listener = (t: DirectTarget): Obj => {
    let l = listenerOf.get(t);
    if (!l) {
      const name = directAccessName(t.address, t.port);
      l = g.lasting(`direct-access:${t.key}`, () => ({
        name,
        address: { socket_address: { address: t.address, port_value: t.port } },
        traffic_direction: 'OUTBOUND',
        bind_to_port: { value: false },
        filter_chains: [{ filters: [tcpProxy(name, DIRECT_ACCESS_CLUSTER)] }],
      }));
      listenerOf.set(t, l);
    }
    return l;
  };
  const net = g.dp.spec.networking;
  // An explicit outbound on the same address and port keeps it; so does the first target of two
  // on one (other than the proxy's own, which it skips).
  const pick = (list: readonly DirectTarget[], taken: Set<string>, out: Obj[]): Obj[] => {
    for (const t of list) {
      if (t.owner === g.dp.name || !(all || want.has(t.service))) continue;
      if (taken.size > 0 && taken.has(t.key)) continue;
      if (targets.repeats) taken.add(t.key);
      out.push(listener(t));
    }
    return out;
  };
  const explicit = (net.outbound ?? []).map((o) => hostPort(o.address ?? '127.0.0.1', o.port));
  // Targets on one address and port share a group, so which of them gets a listener depends only
  // on whether the proxy's own target or an explicit outbound is there: in the groups holding
  // neither, it is the same for every proxy wanting the same services.
  const ownGroups = targets.groupsOf.get(g.dp.name) ?? [];
  const mine = explicit.length === 0 ? ownGroups : [...new Set([...ownGroups, ...explicit.map(groupOf)])].sort((a, b) => a - b);
  const services = all ? '*' : JSON.stringify([...want].sort());
  const shared = g.once(`direct-access:shared:${round}:${services}:${mine.join(',')}`, () => {
    const out: Obj[] = [];
    for (const [k, list] of targets.byGroup.entries()) if (!mine.includes(k)) pick(list, new Set(), out);
    return out;
  });
  const own: Obj[] = [];
  for (const k of mine) pick(targets.byGroup[k]!, new Set(explicit), own);
  return { shared, own };
}

function sidecar(g: Generation): ResourceSet {
  const net = g.dp.spec.networking;
  const services = reachableServices(g);
  const outbound = outboundClusters(g, services);
  const listeners: Obj[] = [];
  const extraClusters: Obj[] = [];
  const explicitHttp = new Set<string>();
  // Listeners every proxy with the same reach has (the transparent proxy's), apart from its own.
  let shared: readonly Obj[] = [];

  const tp = net.transparentProxying;
  const families = tp ? familiesOf(tp) : [];
  const locals = new Map<string, Obj>();
  for (const [i, ib] of (net.inbound ?? []).entries()) {
    const target = { address: ib.serviceAddress ?? '127.0.0.1', port: ib.servicePort ?? ib.port };
    const local = localClusterName(target.port);
    const protocol = (ib.tags[PROTOCOL_TAG] ?? 'tcp') as Protocol;
    if (!locals.has(local) && !setOf(services).has(local)) {
      locals.set(
        local,
        g.lasting(`local:${local}:${target.address}:${isHttp2(protocol)}`, () => ({
          name: local,
          type: 'STATIC',
          connect_timeout: CONNECT_TIMEOUT,
          load_assignment: loadAssignment(local, [target]),
          ...(isHttp2(protocol) ? { typed_extension_protocol_options: HTTP2_OPTIONS } : {}),
        })),
      );
    }
    // The same inputs (this Dataplane and the policies by identity, the mesh and its mTLS mode), the same listener object as last round.
    listeners.push(g.stage('inbound listeners', () => g.lasting(`inbound:${g.inputsId()}:${i}`, () => sidecarInbound(g, ib, local))));
    // Connections of the other family to this port come through that family's inbound redirect:
    // they get the same listener (mTLS, permissions) on its any address, or they would reach the
    // app through the inbound passthrough.
    const own = familyOfAddress(ib.address ?? net.address);
    for (const f of families) {
      if (f !== own) listeners.push(g.stage('inbound listeners', () => g.lasting(`inbound:${f.any}:${g.inputsId()}:${i}`, () => sidecarInbound(g, ib, local, f.any))));
    }
  }
  extraClusters.push(...locals.values());

  for (const ob of net.outbound ?? []) {
    const service = ob.tags?.[SERVICE_TAG] ?? ob.backendRef?.name;
    if (!service) continue;
    const address = ob.address ?? '127.0.0.1';
    listeners.push(sidecarOutbound(g, outboundName(address, ob.port), address, ob.port, service));
    if (isHttp(g.protocolOf(service))) explicitHttp.add(service);
  }

  if (tp) {
    const passthrough = g.ctx.mesh.spec.networking?.outbound?.passthrough ?? true;
    // Stored resources normally carry the defaults; older or hand-written ones may not.
    const outPort = tp.redirectPortOutbound ?? 15001;
    const inPort = tp.redirectPortInbound ?? 15006;
    // weft's rules redirect both families to the same ports; older Kuma named an IPv6 one.
    const inPortOf = (f: Family) => (f === IPV6 ? (tp.redirectPortInboundV6 ?? inPort) : inPort);
    const key = `tp:listeners:${g.lastingId(services)}:${outPort}:${passthrough}:${families.map((f) => `${f.any}=${inPortOf(f)}`).join(',')}`;
    shared = g.forServices(key, () => [...transparentOutboundListeners(g, services, outPort, passthrough, families), ...families.map((f) => inboundPassthroughListener(g, inPortOf(f), f))]);
    if (!passthrough) {
      extraClusters.push(g.lasting(`cluster:${BLACKHOLE_CLUSTER}`, () => ({ name: BLACKHOLE_CLUSTER, type: 'STATIC', connect_timeout: CONNECT_TIMEOUT, load_assignment: { cluster_name: BLACKHOLE_CLUSTER, endpoints: [] } })));
    }
    const direct = directAccessListeners(g, tp.directAccessServices ?? []);
    if (direct.shared.length > 0) {
      const base = shared;
      shared = g.once(`direct-access:joined:${g.lastingId(base)}:${g.lastingId(direct.shared)}`, () => [...base, ...direct.shared]);
    }
    listeners.push(...direct.own);
    if (direct.shared.length > 0 || direct.own.length > 0) {
      extraClusters.push(
        g.lasting(`cluster:${DIRECT_ACCESS_CLUSTER}:${g.mtls}:${g.meshName}`, () => ({
          name: DIRECT_ACCESS_CLUSTER,
          type: 'ORIGINAL_DST',
          lb_policy: 'CLUSTER_PROVIDED',
          connect_timeout: CONNECT_TIMEOUT,
          ...(g.mtls !== 'off' ? { transport_socket: sidecarUpstreamTls(g.meshName) } : {}),
        })),
      );
    }
    for (const f of families) {
      if (passthrough) extraClusters.push(g.lasting(`cluster:${f.outbound}`, () => ({ name: f.outbound, type: 'ORIGINAL_DST', lb_policy: 'CLUSTER_PROVIDED', connect_timeout: CONNECT_TIMEOUT })));
      extraClusters.push(
        g.lasting(`cluster:${f.inbound}`, () => ({
          name: f.inbound,
          type: 'ORIGINAL_DST',
          lb_policy: 'CLUSTER_PROVIDED',
          connect_timeout: CONNECT_TIMEOUT,
          // The apps's own traffic from this address is not redirected again (see the iptables rules).
          upstream_bind_config: { source_address: { address: f.source, port_value: 0 } },
        })),
      );
    }
  }

  // Route configurations of the HTTP services this proxy calls; one shared list per distinct set.
  const explicit = [...explicitHttp].sort();
  const routes = g.forServices(`routes:${tp ? g.lastingId(services) : '-'}:${JSON.stringify(explicit)}`, () =>
    [...new Set([...(tp ? services : []), ...explicit])]
      .filter((s) => isHttp(g.protocolOf(s)))
      .sort()
      .map((s) => g.lasting(`route:sidecar:${s}:${g.protocolOf(s)}`, () => routeTo(outboundRouteName(s), s, g.protocolOf(s)))),
  );
  let clusters = outbound.clusters;
  if (extraClusters.length > 0) {
    // Proxies with equal extra clusters (same local ports) share one list, so it is encoded once.
    // Built from the outbound clusters (what `outboundClusters` is keyed by) and the extra ones.
    const extras = extraClusters.map((o) => g.lastingId(o)).join(',');
    clusters = g.forServices(`cds:${g.flavour}:${g.lastingId(services)}:${g.mtls}:${g.meshName}:${extras}`, () => [...outbound.clusters, ...extraClusters]);
  }
  return {
    [TypeUrl.Cluster]: clusters,
    [TypeUrl.ClusterLoadAssignment]: outbound.assignments,
    [TypeUrl.Listener]: joinShared(shared, listeners),
    [TypeUrl.RouteConfiguration]: routes,
    [TypeUrl.Secret]: meshCaSecret(g),
  };
}

/** A list's members as a set, made once per list (lists are shared by many proxies and rounds). */
const sets = new WeakMap<readonly string[], ReadonlySet<string>>();
function setOf(list: readonly string[]): ReadonlySet<string> {
  let set = sets.get(list);
  if (!set) sets.set(list, (set = new Set(list)));
  return set;
}

/** A short id per memoized object of this round (they are shared, so equal ids mean the same object). */
function idOf(g: Generation, o: object): string {
  const ids = g.once('object-ids', () => ({ next: 0, map: new WeakMap<object, string>() }));
  let id = ids.map.get(o);
  if (id === undefined) ids.map.set(o, (id = `o${ids.next++}`));
  return id;
}

// ---------------------------------------------------------------------------------------------
// Proxyless gRPC
// ---------------------------------------------------------------------------------------------

/**
 * A proxyless gRPC server's listener (gRFC A36): found by the address the app binds, every RPC
 * handled locally (`non_forwarding_action`), mTLS through certificate providers (A29) and the
 * inbound's permissions as the RBAC HTTP filter (A41).
 */
function proxylessServerListener(g: Generation, ib: Inbound, address: string): Obj {
  const service = ib.tags[SERVICE_TAG]!;
  const name = grpcServerListenerName(address, ib.port);
  const rbac = rbacFilters(g, ib, name);
  const routeConfig = {
    name: `inbound:${service}`,
    virtual_hosts: [{ name: service, domains: ['*'], routes: [{ match: { prefix: '' }, non_forwarding_action: {} }] }],
  };
  return {
    name,
    address: { socket_address: { address, port_value: ib.port } },
    traffic_direction: 'INBOUND',
    filter_chains: [
      {
        name: inboundName(address, ib.port),
        filters: [hcm(name, { route_config: routeConfig }, rbac.http ? [rbac.http] : [])],
        ...(g.mtls !== 'off' ? { transport_socket: proxylessDownstreamTls() } : {}),
      },
    ],
  };
}

function proxyless(g: Generation): ResourceSet {
  const net = g.dp.spec.networking;
  const services = reachableServices(g);
  const outbound = outboundClusters(g, services);
  // Client listeners and routes of the services it calls: one shared list per distinct reach.
  const client = g.lasting(`proxyless:client:${g.lastingId(services)}`, () => ({
    listeners: services.map((s) =>
      g.lasting(`api-listener:${s}`, () => ({
        name: s,
        api_listener: { api_listener: { '@type': ANY.HttpConnectionManager, stat_prefix: s, ...rdsOf(s), http_filters: [ROUTER_FILTER] } },
      })),
    ),
    routes: services.map((s) => g.lasting(`route:proxyless:${s}`, () => ({ name: s, virtual_hosts: [{ name: s, domains: ['*'], routes: [{ match: { prefix: '' }, route: { cluster: s } }] }] }))),
  }));
  const listeners: Obj[] = [];
  for (const [i, ib] of (net.inbound ?? []).entries()) {
    // The app may bind its Dataplane address or every address; each has its own listener name.
    for (const address of new Set([ib.address ?? net.address, '0.0.0.0', '::'])) {
      listeners.push(g.stage('server listeners', () => g.lasting(`grpc-server:${g.inputsId()}:${i}:${address}`, () => proxylessServerListener(g, ib, address))));
    }
  }
  return {
    [TypeUrl.Cluster]: outbound.clusters,
    [TypeUrl.ClusterLoadAssignment]: outbound.assignments,
    [TypeUrl.Listener]: joinShared(client.listeners, listeners),
    [TypeUrl.RouteConfiguration]: client.routes,
    [TypeUrl.Secret]: [],
  };
}

/**
 * The config of one proxy: clusters and endpoints of every service it reaches, then per flavour
 * either an Envoy sidecar's listeners (inbounds with mTLS and permissions, explicit outbounds,
 * transparent proxying) or a proxyless gRPC app's client and server listeners. Pure: equal
 * contexts give equal output.
 */
export function generateProxyConfig(ctx: MeshContext): ResourceSet {
  const g = new Generation(ctx);
  return g.flavour === 'proxyless' ? proxyless(g) : sidecar(g);
}
