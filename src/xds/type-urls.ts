const TYPE_PREFIX = 'type.googleapis.com/';

/** The type URLs of the resources translation produces and ADS serves. */
export const TypeUrl = {
  Cluster: `${TYPE_PREFIX}envoy.config.cluster.v3.Cluster`,
  ClusterLoadAssignment: `${TYPE_PREFIX}envoy.config.endpoint.v3.ClusterLoadAssignment`,
  Listener: `${TYPE_PREFIX}envoy.config.listener.v3.Listener`,
  RouteConfiguration: `${TYPE_PREFIX}envoy.config.route.v3.RouteConfiguration`,
  Secret: `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.Secret`,
} as const;
export type TypeUrl = (typeof TypeUrl)[keyof typeof TypeUrl];

/** Resources as translation produces them: protobufjs objects (proto field names, `@type` on Any). */
export type ResourceSet = Partial<Record<TypeUrl, readonly Record<string, unknown>[]>>;

type Obj = Record<string, unknown>;
const splits = new WeakMap<readonly Obj[], { shared: readonly Obj[]; own: readonly Obj[] }>();

/**
 * `[...shared, ...own]`, remembering the split: `shared` is one array handed to every proxy with
 * the same config (a thousand transparent-proxy listeners), `own` is this proxy's few. The control
 * plane checks, encodes and diffs the shared part once for all of them (see `splitOf`).
 */
export function joinShared(shared: readonly Obj[], own: readonly Obj[]): readonly Obj[] {
  if (shared.length === 0) return own;
  // The joined array is built only if someone reads the list (tests, the config API): the control
  // plane uses the parts, and 2000 proxies' copies of a thousand-listener array cost ~25 MB to keep
  // and as much garbage each round. Read-only, like every list translation hands out.
  let joined: Obj[] | undefined;
  const list = (): Obj[] => (joined ??= [...shared, ...own]);
  const readOnly = () => {
    throw new TypeError('a list from translation is read-only');
  };
  const lazy = new Proxy<Obj[]>([], {
    get: (_t, key) => Reflect.get(list(), key),
    has: (_t, key) => Reflect.has(list(), key),
    ownKeys: () => Reflect.ownKeys(list()),
    getOwnPropertyDescriptor: (_t, key) => Reflect.getOwnPropertyDescriptor(list(), key),
    set: readOnly,
    defineProperty: readOnly,
    deleteProperty: readOnly,
  });
  splits.set(lazy, { shared, own });
  return lazy;
}

/** The parts a list from `joinShared` was made of (undefined for any other list). */
export function splitOf(list: readonly Obj[]): { shared: readonly Obj[]; own: readonly Obj[] } | undefined {
  return splits.get(list);
}

export const ANY = {
  HttpConnectionManager: `${TYPE_PREFIX}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`,
  TcpProxy: `${TYPE_PREFIX}envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`,
  Router: `${TYPE_PREFIX}envoy.extensions.filters.http.router.v3.Router`,
  HttpRbac: `${TYPE_PREFIX}envoy.extensions.filters.http.rbac.v3.RBAC`,
  NetworkRbac: `${TYPE_PREFIX}envoy.extensions.filters.network.rbac.v3.RBAC`,
  TlsInspector: `${TYPE_PREFIX}envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector`,
  UpstreamTlsContext: `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`,
  DownstreamTlsContext: `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`,
  HttpProtocolOptions: `${TYPE_PREFIX}envoy.extensions.upstreams.http.v3.HttpProtocolOptions`,
} as const;
