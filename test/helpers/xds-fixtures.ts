import { after, before } from 'node:test';
import type * as grpc from '@grpc/grpc-js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { Registry } from 'prom-client';
import { createLogger, type Logger } from '../../src/core/index.js';
import { AdsServer, connectionOptions, loopbackOnlyAuthenticator, SnapshotCache, TypeUrl, type Authenticator, type ResourceSet } from '../../src/ads/index.js';

const ADS = { ads: {}, resource_api_version: 'V3' };
const HCM = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
const ROUTER = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router';

export const cluster = (name: string, extra: Record<string, unknown> = {}) => ({ name, type: 'EDS', eds_cluster_config: { eds_config: ADS }, connect_timeout: { seconds: 5 }, ...extra });

export const cla = (name: string, endpoints: [string, number][]) => ({
  cluster_name: name,
  endpoints: [{ lb_endpoints: endpoints.map(([address, port_value]) => ({ endpoint: { address: { socket_address: { address, port_value } } } })) }],
});

export const listener = (name: string, port: number, routeName: string) => ({
  name,
  address: { socket_address: { address: '0.0.0.0', port_value: port } },
  filter_chains: [
    {
      filters: [
        {
          name: 'envoy.filters.network.http_connection_manager',
          typed_config: { '@type': HCM, stat_prefix: name, rds: { route_config_name: routeName, config_source: ADS }, http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': ROUTER } }] },
        },
      ],
    },
  ],
});

export const route = (name: string, clusterName: string) => ({
  name,
  virtual_hosts: [{ name: 'all', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { cluster: clusterName } }] }],
});

/** A consistent set: one listener routing to `clusters[0]`, each cluster with its endpoints. */
export function meshSet(clusters: Record<string, [string, number][]>, routeTo = Object.keys(clusters)[0]!): ResourceSet {
  return {
    [TypeUrl.Cluster]: Object.keys(clusters).map((c) => cluster(c)),
    [TypeUrl.ClusterLoadAssignment]: Object.entries(clusters).map(([c, eps]) => cla(c, eps)),
    [TypeUrl.Listener]: [listener('http', 8080, 'http-routes')],
    [TypeUrl.RouteConfiguration]: [route('http-routes', routeTo)],
  };
}

export interface TestAds {
  server: AdsServer;
  cache: SnapshotCache;
  address: string;
  metrics: Registry;
  stop(): Promise<void>;
}

export async function startTestAds(
  opts: { authenticator?: Authenticator; nackBackoffMs?: number; nackBackoffMaxMs?: number; deltaPieceBytes?: number; credentials?: grpc.ServerCredentials; logger?: Logger; connections?: Parameters<typeof connectionOptions>[0]; shutdownGraceMs?: number; sendBudgetBytes?: number; sendStallCutMs?: number } = {},
): Promise<TestAds> {
  const cache = new SnapshotCache();
  const metrics = new Registry();
  const server = new AdsServer({
    cache,
    authenticator: opts.authenticator ?? loopbackOnlyAuthenticator,
    logger: opts.logger ?? createLogger('weft-cp', process.env.WEFT_TEST_LOG_LEVEL ?? 'silent'),
    metrics,
    instanceId: 'test-cp',
    nackBackoffMs: opts.nackBackoffMs ?? 5000,
    nackBackoffMaxMs: opts.nackBackoffMaxMs,
    deltaPieceBytes: opts.deltaPieceBytes,
    shutdownGraceMs: opts.shutdownGraceMs,
    sendBudgetBytes: opts.sendBudgetBytes,
    sendStallCutMs: opts.sendStallCutMs,
    ...opts.connections,
  });
  const port = await server.listen('127.0.0.1', 0, opts.credentials);
  return { server, cache, metrics, address: `127.0.0.1:${port}`, stop: () => server.close() };
}

/**
 * Registers before/after hooks in the current suite: one ADS server, and clients that are closed
 * when the suite ends. `ads()` is valid inside tests.
 */
export function adsSuite(variant: 'sotw' | 'delta', opts: { nackBackoffMs?: number; nackBackoffMaxMs?: number; deltaPieceBytes?: number } = {}): { ads: () => TestAds; connect: (id: string) => XdsTestClient } {
  let ads: TestAds | undefined;
  const clients: XdsTestClient[] = [];
  before(async () => {
    ads = await startTestAds(opts);
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await ads?.stop();
  });
  return {
    ads: () => ads!,
    connect(id) {
      const c = new XdsTestClient(ads!.address, variant, { id });
      clients.push(c);
      return c;
    },
  };
}
