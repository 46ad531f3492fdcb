import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { AdsServer, DataplaneService, dpServiceDefinition, EPHEMERAL_LABEL, Reconciler, SnapshotCache, tokenAuthenticator, warmUp } from '../ads/index.js';
import { checkSecretsKey, DataplaneTokens, MeshCertificates, SecretBox } from '../certs/index.js';
import { createDiagnosticsServer, buildApi } from '../api/index.js';
import { cutSilent, defaultRegistry, initialPolicies, isWeftError, LOW_OPEN_FILE_LIMIT, MESH_TYPE, nodeIdOf, openFileLimit, SHUTDOWN_SWEEP_MS, splitNodeId, trackSockets, VERSION, type DataplaneSpec, type Logger } from '../core/index.js';
import { instrumentStore, openStore, type Store } from '../store/index.js';
import * as grpc from '@grpc/grpc-js';
import { ensureAdminToken, isLoopback } from './admin-token.js';
import { xdsServingMaterial } from './xds-tls.js';
import type { Config } from './config.js';

export interface ControlPlane {
  readonly instanceId: string;
  readonly store: Store;
  /** `http://host:port` of the HTTP API and of the diagnostics server, as actually bound. */
  readonly apiUrl: string;
  readonly diagnosticsUrl: string;
  /** host:port of the ADS server, as bound. */
  readonly xdsAddress: string;
  readonly snapshots: SnapshotCache;
  readonly ads: AdsServer;
  readonly reconciler: Reconciler;
  readonly tokens: DataplaneTokens;
  /** The meshes' CAs: trust bundles and workload certificates. */
  readonly certificates: MeshCertificates;
  /** Stops accepting requests, lets running ones finish, then closes the store. Idempotent. */
  close(): Promise<void>;
}

/**
 * Closes an HTTP server: it stops accepting, and requests in flight may finish. Connections with
 * nothing to finish are closed as they are found: idle keep-alive ones (also those whose request
 * finishes during shutdown) and ones that stayed silent since accept. After `graceMs` whatever is
 * still open is closed (a client that sent half a request and stopped).
 */
async function closeHttp(server: Server, connections: ReadonlyMap<Socket, number>, close: () => Promise<void>, graceMs: number): Promise<void> {
  const sweep = () => {
    server.closeIdleConnections();
    cutSilent(connections);
  };
  const sweeper = setInterval(sweep, SHUTDOWN_SWEEP_MS);
  const deadline = setTimeout(() => server.closeAllConnections(), graceMs);
  try {
    const closed = close();
    sweep();
    await closed;
  } finally {
    clearInterval(sweeper);
    clearTimeout(deadline);
  }
}

function urlOf(server: { address(): AddressInfo | string | null }): string {
  const a = server.address() as AddressInfo;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return `http://${host}:${a.port}`;
}

function listen(server: Server, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * The composition root of weft-cp: opens the store, makes sure the default mesh exists, and
 * starts the HTTP API and the diagnostics server.
 */
export async function startControlPlane(config: Readonly<Config>, logger: Logger): Promise<ControlPlane> {
  const instanceId = `${VERSION}-${randomUUID().slice(0, 8)}`;
  const registry = defaultRegistry();
  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });

  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const raw = await openStore(config.store.type === 'embedded' ? { type: 'embedded', dataDir: config.dataDir } : { type: 'postgres', url: config.store.postgres.url!, poolSize: config.store.postgres.poolSize }, {
    registry,
    onListenerError: (err) => logger.error({ err }, 'store watcher failed'),
    onFeedState: (state, err) => (state === 'lost' ? logger.warn({ err }, 'store change feed lost; reconnecting') : logger.info('store change feed reconnected')),
  });
  const store = instrumentStore(raw, metrics);
  logger.info({ engine: store.engine, dataDir: config.dataDir }, 'store open');

  if (!config.defaults.skipMeshCreation) {
    try {
      // With Kuma's initial policies (allow-all-default), in one transaction.
      await store.write([{ op: 'create', resource: { type: MESH_TYPE, mesh: '', name: 'default', labels: {}, spec: {} } }, ...initialPolicies('default', {}).map((resource) => ({ op: 'create' as const, resource }))]);
      logger.info('created mesh "default"');
    } catch (err) {
      if (!isWeftError(err, 'already_exists')) throw err;
    }
  }

  const admin = ensureAdminToken(config.dataDir);
  if (admin.created) logger.info({ path: admin.path }, 'admin token written');
  const needsToken = config.api.auth === 'always' || !isLoopback(config.api.address);

  const box = SecretBox.fromFile(config.secrets.keyFile ?? join(config.dataDir, 'secret.key'), config.secrets.keyFile === undefined);
  const wrongKey = await checkSecretsKey(store, box);
  if (wrongKey) {
    // Not fatal: proxies with tokens and certificates from the other replicas are still served.
    // Sealing nothing, this one cannot make keys they could not open.
    box.refuseSealing(wrongKey);
    logger.error({ keyFile: box.path }, `${wrongKey.message} Until then this control plane issues no dataplane tokens or certificates.`);
  }
  new Gauge({ name: 'weft_secrets_key_mismatch', help: '1 when secrets.keyFile is not the key the store was sealed with: no tokens or certificates are issued here.', registers: [metrics] }).set(wrongKey ? 1 : 0);
  const tokens = new DataplaneTokens(store, box, logger.child({ component: 'tokens' }));
  const certificates = new MeshCertificates(store, box, tokens, logger.child({ component: 'ca' }));
  const snapshots = new SnapshotCache();
  const reconciler = new Reconciler({
    store,
    cache: snapshots,
    logger: logger.child({ component: 'reconciler' }),
    metrics,
    debounceMs: config.xds.debounceMs,
    debounceMaxMs: config.xds.debounceMaxMs,
    trustBundle: (mesh) => certificates.trustBundle(mesh),
    lingerMs: config.xds.lingerMs,
  });
  reconciler.start();
  certificates.onTrustBundleChange = (mesh) => reconciler.refreshMesh(mesh);
  // Dataplanes weft-dp registered leave with their proxy: deleted some seconds after its last
  // xDS stream closed, unless it reconnects first (to this replica: see docs/dataplane.md).
  const cleanups = new Map<string, NodeJS.Timeout>();
  const scheduleCleanup = (nodeId: string) => {
    const key = { type: 'Dataplane', ...splitNodeId(nodeId)! };
    const timer = setTimeout(() => {
      cleanups.delete(nodeId);
      if (ads.status.get(nodeId)?.connected) return;
      void store
        .get(key)
        .then(async (dp) => {
          if (!dp) return void ads.status.forget(nodeId); // no Dataplane (any more): no status to show
          if (dp.labels[EPHEMERAL_LABEL] !== 'true') return;
          await store.delete(key, dp.version);
          logger.info({ nodeId }, 'dataplane registered by weft-dp removed: its proxy left');
        })
        .catch((err: unknown) => logger.warn({ err, nodeId }, 'could not remove a departed dataplane'));
    }, config.xds.ephemeralCleanupMs);
    timer.unref();
    cleanups.set(nodeId, timer);
  };
  const ads = new AdsServer({
    onProxy: {
      connected: (id) => {
        clearTimeout(cleanups.get(id));
        cleanups.delete(id);
        reconciler.track(id);
      },
      disconnected: (id) => {
        reconciler.untrack(id);
        scheduleCleanup(id);
      },
    },
    cache: snapshots,
    dataplaneOf: async (mesh, name) => (await store.get({ type: 'Dataplane', mesh, name }))?.spec as DataplaneSpec | undefined,
    authenticator: tokenAuthenticator(tokens, { allowUnauthenticatedLoopback: config.xds.allowUnauthenticatedLoopback }),
    logger: logger.child({ server: 'ads' }),
    metrics,
    instanceId,
    nackBackoffMs: config.xds.nackBackoffMs,
    nackBackoffMaxMs: config.xds.nackBackoffMaxMs,
    sendBudgetBytes: config.xds.sendBudgetBytes,
    sendStallCutMs: config.xds.sendStallCutMs,
    keepaliveTimeMs: config.xds.keepaliveTimeMs,
    keepaliveTimeoutMs: config.xds.keepaliveTimeoutMs,
    maxConnectionAgeMs: config.xds.maxConnectionAgeMs,
    maxConnectionAgeGraceMs: config.xds.maxConnectionAgeGraceMs,
    maxStreamsPerConnection: config.xds.maxStreamsPerConnection,
    shutdownGraceMs: config.shutdownGraceMs,
  });
  // A departed proxy's status is shown while its Dataplane exists (Kuma's Offline), and dropped
  // with it, so that names which come and go do not pile up in memory. A deleted mesh takes what
  // the CA kept of it (issuance records, its CAs' keys opened in memory).
  // After a resync, whose missed events may have been deletes, both are checked against the store:
  // one list per mesh, not a read per proxy.
  const forgetGone = async () => {
    const offline = new Map<string, string[]>();
    for (const nodeId of ads.status.offline()) {
      const { mesh, name } = splitNodeId(nodeId)!;
      let names = offline.get(mesh);
      if (!names) offline.set(mesh, (names = []));
      names.push(name);
    }
    for (const [mesh, names] of offline) {
      const present = new Set((await store.list('Dataplane', { mesh })).items.map((d) => d.name));
      for (const name of names) if (!present.has(name)) ads.status.forget(nodeIdOf(mesh, name));
    }
    const meshes = new Set((await store.list('Mesh')).items.map((m) => m.name));
    for (const mesh of certificates.meshesKept()) if (!meshes.has(mesh)) certificates.forgetMesh(mesh);
  };
  const unwatchStatus = store.watch((e) => {
    if (e.kind === 'resync') void forgetGone().catch((err: unknown) => logger.warn({ err }, 'could not drop what was kept of departed proxies and deleted meshes'));
    else if (e.kind === 'delete' && e.key.type === 'Dataplane') ads.status.forget(nodeIdOf(e.key.mesh, e.key.name));
    else if (e.kind === 'delete' && e.key.type === 'Mesh') certificates.forgetMesh(e.key.name);
  });
  const dpService = new DataplaneService({ store, registry, tokens, certificates, logger: logger.child({ component: 'dp-server' }), allowUnauthenticatedLoopback: config.xds.allowUnauthenticatedLoopback });
  ads.addService(dpServiceDefinition(), dpService.handlers());
  if (config.xds.allowUnauthenticatedLoopback) logger.warn('xDS accepts unauthenticated proxies from loopback (xds.allowUnauthenticatedLoopback)');

  const api = buildApi({
    store,
    registry,
    logger: logger.child({ server: 'api' }),
    bodyLimitBytes: config.api.bodyLimitBytes,
    adminToken: needsToken ? admin.token : undefined,
    info: { version: VERSION, instanceId },
    xdsStatus: (nodeId) => ads.status.get(nodeId),
    proxyConfig: (mesh, name) => reconciler.configFor(mesh, name),
    tokens,
    certificates,
  });
  const apiConnections = trackSockets(api.server);
  let serving = false;
  const diagnostics = createDiagnosticsServer({
    metrics,
    readiness: async () => {
      if (!serving) return 'starting';
      await store.ping();
      return undefined;
    },
  });

  const diagnosticsConnections = trackSockets(diagnostics);

  let xdsPort: number;
  try {
    const tls = await xdsServingMaterial(config);
    // Before the port opens: no proxy waits on it, and the first changes run compiled code.
    await warmUp({ dir: join(config.dataDir, 'warm-up'), maxMs: config.xds.warmUpMs, secure: tls !== undefined, logger: logger.child({ component: 'warm-up' }) });
    xdsPort = await ads.listen(
      config.xds.address,
      config.xds.port,
      tls ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.keyPem), cert_chain: Buffer.from(tls.certPem) }], false) : grpc.ServerCredentials.createInsecure(),
    );
    if (tls) logger.info({ certificate: tls.certPath }, 'ADS serves TLS');
    else logger.warn('ADS serves plaintext (xds.tls.mode off): tokens cross the network in the clear');
    await api.listen({ port: config.api.port, host: config.api.address });
    await listen(diagnostics, config.diagnostics.port, config.diagnostics.address);
  } catch (err) {
    reconciler.close();
    unwatchStatus();
    ads.destroy();
    await api.close();
    diagnostics.close();
    await store.close();
    throw err;
  }
  const xdsAddress = `${config.xds.address.includes(':') ? `[${config.xds.address}]` : config.xds.address}:${xdsPort}`;
  const apiUrl = urlOf(api.server);
  const diagnosticsUrl = urlOf(diagnostics);
  serving = true;
  logger.info({ url: apiUrl, adminTokenRequired: needsToken }, 'HTTP API listening');
  logger.info({ url: diagnosticsUrl }, 'diagnostics listening');
  const fileLimit = openFileLimit();
  logger.info({ address: xdsAddress, openFileLimit: fileLimit }, 'ADS listening');
  if (fileLimit !== undefined && fileLimit < LOW_OPEN_FILE_LIMIT) {
    // Past the limit new connections wait unaccepted in the kernel's queue: no error, no log line
    // (seen with a soft limit of 40 and 200 connections), and their proxies time out.
    logger.warn({ openFileLimit: fileLimit }, `the open file limit is ${fileLimit}: each xDS connection holds one file, so weft-cp can serve fewer than ${fileLimit} proxies; raise its hard limit (LimitNOFILE= in a systemd unit, ulimits in a container, ulimit -Hn in a shell) to ${LOW_OPEN_FILE_LIMIT} or more`);
  }

  let closing: Promise<void> | undefined;
  return {
    instanceId,
    store,
    apiUrl,
    diagnosticsUrl,
    xdsAddress,
    snapshots,
    ads,
    reconciler,
    tokens,
    certificates,
    close() {
      closing ??= (async () => {
        serving = false;
        await ads.close();
        for (const t of cleanups.values()) clearTimeout(t);
        reconciler.close();
        unwatchStatus();
        const grace = config.shutdownGraceMs;
        await Promise.all([closeHttp(api.server, apiConnections, () => api.close(), grace), closeHttp(diagnostics, diagnosticsConnections, () => new Promise<void>((resolve) => diagnostics.close(() => resolve())), grace)]);
        await store.close();
        logger.info('control plane stopped');
      })();
      return closing;
    },
  };
}
