import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { AdsServer, buildSnapshot, loopbackOnlyAuthenticator, Reconciler, ResourceEncoder, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { createServingCertificate } from '../../src/certs/index.js';
import { createLogger, decodeResource, defaultRegistry, enabledMtlsBackend, type DataplaneSpec, type MeshSpec, type MeshTrafficPermissionBody, type Resource, type TrafficPermissionSpec } from '../../src/core/index.js';
import { generateProxyConfig, PROXYLESS_LABEL } from '../../src/xds/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { startTestControlPlane } from '../helpers/cp.js';
import { postgresMissing, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { systemRequirement } from '../helpers/require.js';
import { ALL_TYPES, ModelProxy, heldOf, short, type Held } from '../helpers/model-proxy.js';
import { seeded } from '../helpers/seeded.js';
import { relayTo, type Relay } from '../helpers/tcp-relay.js';

/**
 * The whole control plane against a random history, checked against translation from scratch.
 *
 * weft-cp remembers a great deal between rounds to serve thousands of proxies (translation's
 * memo, mesh state kept from change events, endpoint-only rounds, shared type sets and diffs,
 * client views overlaid on shared maps, answers built once per pair of sets). This test runs a
 * real control plane (one of four planes, see PLANES) and proxies on real gRPC streams that
 * subscribe as Envoy (SotW, delta) or grpc-js-xds (SotW) does, through a random mix of store
 * changes in two meshes (Dataplanes, health, reach, protocols, permissions, the Mesh's mTLS, CA
 * and passthrough, a mesh deleted), proxy moves (connects, reconnects announcing what they hold,
 * drops, rejected responses, links that hold back what the server sends for a moment) and control
 * plane restarts, sometimes while a round is in flight.
 * After each burst, every proxy must come to hold exactly what a fresh translation of the store
 * gives it, and at no moment may a listener it holds send to a cluster it lacks (XDS-RULES 8);
 * then nothing may stay charged to the send budget.
 * docs/ads.md ("Random histories") says more.
 *
 * A seed replays a history: WEFT_MODEL_SEED=N runs just that one; WEFT_MODEL_SEEDS=K runs K seeds
 * (default 4), WEFT_MODEL_STEPS the number of changes each (default 60).
 */

/**
 * Two meshes with the same Dataplane and service names: a proxy must see nothing of the other
 * mesh. The second is smaller, changes less often, and is now and then deleted (its resources go
 * with it) and made again.
 */
const MESHES = ['model', 'other'] as const;
type MeshName = (typeof MESHES)[number];
const SERVICES = ['web', 'api', 'db', 'cache', 'pay'];
const NAMES = Array.from({ length: 8 }, (_, i) => `dp-${i}`);
/** gRPC apps on grpc-js-xds (now and then registered as sidecars, as others now and then as proxyless). */
const PROXYLESS = new Set(['dp-6', 'dp-7']);
/**
 * The HTTP/2 stream window of proxies on a link that slows down (see World.connect): small, so
 * that a held link soon leaves the server's writes to it unfinished and its stream behind.
 */
const LINK_WINDOW = 4096;
/** How long a slow link holds back what the server sends, at most: well under the tight plane's 1 s keepalive cut. */
const LINK_HOLD_MS = 250;

/** What the histories run against: a store to change, and an ADS port serving it. */
interface Plane {
  /** The store as each replica sees it (one replica but for PostgreSQL). */
  readonly stores: readonly Store[];
  /** Each replica's ADS port, as it is now (it moves when the replica restarts). */
  readonly addresses: readonly string[];
  /** The PEM CA proxies trust the ADS port with; none in plaintext. */
  readonly tlsCa?: string;
  readonly describe: string;
  /** Resolves when every change seen so far is in the snapshots. */
  settle(): Promise<void>;
  trustBundle(mesh: string): Promise<string[]>;
  /**
   * The NACKs replica `i` (or every replica) recorded (`weft_xds_nacks_total`, which counts those of
   * proxies whose status was since dropped with their Dataplane too).
   */
  nacks(i?: number): Promise<number>;
  /** What each replica's ADS server shows of a proxy, and of its send budget, for a failure's report. */
  diagnose(nodeId: string): string;
  /** Each replica's send budget: bytes handed to gRPC and not yet written, streams waiting for it. */
  budgets(): { bytesInFlight: number; streamsWaiting: number; streamsWriting: number }[];
  /** Stops replica `i` and starts it again on the same store, as after a crash or an upgrade: it remembers nothing of the proxies. */
  restart(i: number): Promise<void>;
  /**
   * Connections cut for silence that carried streams (`weft_xds_connections_cut_total{streams="open"}`).
   * Every proxy here is alive and answers pings, so any is a live proxy cut.
   */
  liveCuts(): Promise<number>;
  /** A dataplane token for Dataplane `name` of `mesh`, where proxies authenticate (weft-cp; not the bare parts). */
  tokenFor?(mesh: string, name: string): Promise<string>;
  stop(): Promise<void>;
}

const LOG_LEVEL = process.env.WEFT_TEST_LOG_LEVEL ?? 'silent';
const QUICK = { debounceMs: 5, debounceMaxMs: 50, nackBackoffMs: 50, nackBackoffMaxMs: 400 };
/** How often a proxy rejects a response (rule 5: the server backs off, then sends that type again whole). */
const NACK_RATE = 0.03;

/** weft-cp as it runs: its config, its CA, TLS as shipped or plaintext. */
async function controlPlane(tls: boolean): Promise<Plane> {
  const r = await replica({ WEFT_XDS_TLS_MODE: tls ? 'auto' : 'off' });
  return {
    get stores() {
      return [r.cp.store];
    },
    get addresses() {
      return [r.cp.xdsAddress];
    },
    tlsCa: tls ? readFileSync(join(r.dataDir, 'xds-tls.crt'), 'utf8') : undefined,
    describe: tls ? 'weft-cp, TLS' : 'weft-cp, plaintext',
    settle: () => r.cp.reconciler.settle(),
    trustBundle: (mesh) => r.cp.certificates.trustBundle(mesh),
    nacks: () => nacksOf(r.cp),
    liveCuts: () => liveCutsOf(r.cp),
    diagnose: (id) => diagnosis(r.cp.ads, id),
    budgets: () => [r.cp.ads.budget],
    restart: () => r.restart(),
    tokenFor: async (mesh, name) => (await r.cp.tokens.issue(mesh, name, 3600_000)).token,
    stop: () => r.stop(),
  };
}

/** One weft-cp that can be restarted on its own data dir. */
async function replica(env: Record<string, string>) {
  const all = {
    WEFT_XDS_ADDRESS: '127.0.0.1',
    WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true',
    WEFT_XDS_DEBOUNCE_MS: String(QUICK.debounceMs),
    WEFT_XDS_DEBOUNCE_MAX_MS: String(QUICK.debounceMaxMs),
    WEFT_XDS_NACK_BACKOFF_MS: String(QUICK.nackBackoffMs),
    WEFT_XDS_NACK_BACKOFF_MAX_MS: String(QUICK.nackBackoffMaxMs),
    ...env,
  };
  const first = await startTestControlPlane(all);
  const dataDir = first.dataDir;
  let cp = first;
  // A restarted one runs on the first one's data dir; the one the helper made for it stays empty.
  const retire = async () => {
    await cp.close();
    if (cp !== first) rmSync(cp.dataDir, { recursive: true, force: true });
  };
  return {
    get cp() {
      return cp;
    },
    dataDir,
    async restart() {
      await retire();
      cp = await startTestControlPlane({ ...all, WEFT_DATA_DIR: dataDir });
    },
    async stop() {
      await retire();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Two weft-cp replicas on one PostgreSQL, as users run several: changes are written through
 * either, each learns the other's by LISTEN/NOTIFY, and proxies connect to either (plaintext:
 * each replica has its own serving certificate). They share the key that seals the mesh CAs.
 */
async function replicas(pg: TestPostgres, seed: number): Promise<Plane> {
  const url = await pg.createDatabase(`weft_model_${process.pid}_${seed}`);
  const keyDir = mkdtempSync(join(tmpdir(), 'weft-model-key-'));
  writeFileSync(join(keyDir, 'secrets.key'), randomBytes(32).toString('base64'), { mode: 0o600 });
  const env = { WEFT_STORE_TYPE: 'postgres', WEFT_STORE_POSTGRES_URL: url, WEFT_XDS_TLS_MODE: 'off', WEFT_SECRETS_KEY_FILE: join(keyDir, 'secrets.key') };
  const a = await replica(env);
  const b = await replica(env);
  const rs = [a, b];
  return {
    get stores() {
      return rs.map((r) => r.cp.store);
    },
    get addresses() {
      return rs.map((r) => r.cp.xdsAddress);
    },
    describe: 'two weft-cp replicas on PostgreSQL, plaintext',
    settle: async () => {
      await Promise.all(rs.map((r) => r.cp.reconciler.settle()));
    },
    trustBundle: (mesh) => a.cp.certificates.trustBundle(mesh),
    nacks: async (i) => (await Promise.all((i === undefined ? rs : [rs[i]!]).map((r) => nacksOf(r.cp)))).reduce((a, b) => a + b, 0),
    liveCuts: async () => (await Promise.all(rs.map((r) => liveCutsOf(r.cp)))).reduce((a, b) => a + b, 0),
    diagnose: (id) => rs.map((r, i) => `replica ${i}: ${diagnosis(r.cp.ads, id)}`).join('\n'),
    budgets: () => rs.map((r) => r.cp.ads.budget),
    restart: (i) => rs[i]!.restart(),
    // Issued by one replica, taken by either (one store, one secrets key).
    tokenFor: async (mesh, name) => (await a.cp.tokens.issue(mesh, name, 3600_000)).token,
    async stop() {
      await Promise.all(rs.map((r) => r.stop()));
      rmSync(keyDir, { recursive: true, force: true });
    },
  };
}

/**
 * The same parts with their limits made tiny, so every response takes the paths that big meshes
 * take: delta responses cut into pieces of 2 KiB, TLS writes of 1 KiB a turn, and a send budget
 * of 8 KiB for all streams, so streams wait their turn.
 */
async function tightParts(): Promise<Plane> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-model-'));
  const store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
  const logger = createLogger('weft-cp', LOG_LEVEL);
  // A fixed bundle stands in for the mesh CA: translation only carries it.
  const ca = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
  const start = async () => {
    const cache = new SnapshotCache();
    const metrics = new Registry();
    const reconciler = new Reconciler({ store, cache, logger, metrics, debounceMs: QUICK.debounceMs, debounceMaxMs: QUICK.debounceMaxMs, trustBundle: async () => [ca.certPem] });
    reconciler.start();
    const server = new AdsServer({
      cache,
      authenticator: loopbackOnlyAuthenticator,
      logger,
      metrics,
      instanceId: 'model',
      nackBackoffMs: QUICK.nackBackoffMs,
      nackBackoffMaxMs: QUICK.nackBackoffMaxMs,
      deltaPieceBytes: 2048,
      turnBytes: 1024,
      sendBudgetBytes: 8192,
      // A proxy that takes nothing for 1 s while others wait for that budget is cut: no live one may ever be.
      sendStallCutMs: 1000,
      // Pings every 200 ms, and a connection silent for 1 s is cut: no live proxy may ever be.
      keepaliveTimeMs: 200,
      keepaliveTimeoutMs: 800,
      onProxy: { connected: (id) => reconciler.track(id), disconnected: (id) => reconciler.untrack(id) },
    });
    const port = await server.listen('127.0.0.1', 0, grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(ca.keyPem), cert_chain: Buffer.from(ca.certPem) }], false));
    return { reconciler, server, metrics, address: `127.0.0.1:${port}` };
  };
  let parts = await start();
  /** Live cuts counted by the servers before the last restart (each starts with its own metrics). */
  let cutsBefore = 0;
  const halt = async () => {
    cutsBefore += liveCutsIn(await parts.metrics.metrics());
    await parts.server.close();
    parts.reconciler.close();
  };
  return {
    stores: [store],
    get addresses() {
      return [parts.address];
    },
    tlsCa: ca.certPem,
    describe: 'the ADS parts with tiny pieces, turns and send budget, TLS',
    settle: () => parts.reconciler.settle(),
    trustBundle: async () => [ca.certPem],
    nacks: async () => nacksIn(await parts.metrics.metrics()),
    liveCuts: async () => cutsBefore + liveCutsIn(await parts.metrics.metrics()),
    diagnose: (id) => diagnosis(parts.server, id),
    budgets: () => [parts.server.budget],
    async restart() {
      await halt();
      parts = await start();
    },
    async stop() {
      await halt();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

class World {
  readonly log: string[] = [];
  /** By node id. */
  readonly proxies = new Map<string, ModelProxy>();
  /** Every proxy the history made, those that left too. */
  readonly everyone: ModelProxy[] = [];
  /** NACKs the control plane recorded before its restarts. */
  nacksRecorded = 0;
  /** The replica each proxy talks to. */
  private readonly replicaOf = new Map<ModelProxy, number>();
  private readonly pick = <T>(xs: readonly T[]): T => xs[Math.floor(this.rng() * xs.length)]!;
  private readonly some = <T>(xs: readonly T[]): T[] => xs.filter(() => this.rng() < 0.4);

  constructor(
    readonly cp: Plane,
    readonly rng: () => number,
  ) {}

  /** Writes a resource given as a user writes it (Kuma's Universal form), validated and defaulted as the API does. */
  private async put(input: Record<string, unknown>): Promise<void> {
    const { resource } = decodeResource(input, defaultRegistry());
    // Through any replica.
    const store = this.pick(this.cp.stores);
    if (resource.mesh !== '' && !(await store.get({ type: 'Mesh', mesh: '', name: resource.mesh }))) return; // its mesh is gone
    this.log.push(`apply ${JSON.stringify(input)}`);
    await store.upsert(resource);
  }

  private async remove(type: string, mesh: MeshName, name: string): Promise<void> {
    const key = { type, mesh: type === 'Mesh' ? '' : mesh, name };
    const store = this.pick(this.cp.stores);
    if (!(await store.get(key))) return;
    this.log.push(`delete ${type} ${type === 'Mesh' ? '' : `${mesh}/`}${name}`);
    await store.delete(key);
  }

  private dataplane(mesh: MeshName, name: string): Record<string, unknown> {
    const proxyless = this.rng() < (PROXYLESS.has(name) ? 0.9 : 0.05);
    const inbound = (service: string, port: number) => ({
      port,
      tags: { 'kuma.io/service': service, 'kuma.io/protocol': this.pick(['tcp', 'http', 'grpc']), ...(this.rng() < 0.3 ? { version: this.pick(['v1', 'v2']) } : {}) },
      ...(this.rng() < 0.2 ? { health: { ready: false } } : {}),
    });
    const inbounds = [inbound(this.pick(SERVICES), this.pick([8080, 9090]))];
    if (this.rng() < 0.15) inbounds.push(inbound(this.pick(SERVICES), 7070));
    const tp: Record<string, unknown> = {};
    if (this.rng() < 0.3) tp.reachableServices = this.some(SERVICES);
    if (this.rng() < 0.1) tp.directAccessServices = this.rng() < 0.5 ? ['*'] : this.some(SERVICES);
    return {
      type: 'Dataplane',
      mesh,
      name,
      labels: proxyless ? { [PROXYLESS_LABEL]: 'true' } : {},
      networking: { address: `10.0.0.${1 + Math.floor(this.rng() * 12)}`, inbound: inbounds, ...(proxyless ? {} : { transparentProxying: tp }) },
    };
  }

  private mesh(name: MeshName): Record<string, unknown> {
    const mtls = this.pick(['off', 'PERMISSIVE', 'STRICT'] as const);
    return {
      type: 'Mesh',
      name,
      networking: { outbound: { passthrough: this.rng() < 0.6 } },
      ...(mtls !== 'off' && { mtls: this.mtls(mtls) }),
    };
  }

  /** A builtin CA, and now and then a rotation: the other one enabled, the old one still listed (both roots trusted). */
  private mtls(mode: 'PERMISSIVE' | 'STRICT'): Record<string, unknown> {
    const enabled = this.pick(['ca-1', 'ca-2']);
    const names = this.rng() < 0.5 ? [enabled] : [enabled, enabled === 'ca-1' ? 'ca-2' : 'ca-1'];
    return { enabledBackend: enabled, backends: names.map((name) => ({ name, type: 'builtin', mode })) };
  }

  private ref(): Record<string, unknown> {
    return this.rng() < 0.3 ? { kind: 'Mesh' } : { kind: 'MeshService', name: this.pick(SERVICES) };
  }

  private allowAll(mesh: MeshName): Record<string, unknown> {
    return { type: 'TrafficPermission', mesh, name: 'allow-all', sources: [{ match: { 'kuma.io/service': '*' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] };
  }

  async setup(): Promise<void> {
    for (const m of MESHES) {
      await this.put(this.mesh(m));
      for (const n of [...NAMES.slice(0, m === 'model' ? 5 : 3), 'dp-6']) await this.put(this.dataplane(m, n));
      await this.put(this.allowAll(m));
    }
    // Tokens for the first mesh's Dataplanes (the second one goes now and then, and its tokens with
    // its signing key): their streams are let in only once the token is checked, which takes a
    // turn of the store, while a returning proxy's requests wait (server.ts, `serve`).
    if (this.cp.tokenFor) for (const n of NAMES) this.tokens.set(`model.${n}`, await this.cp.tokenFor('model', n));
    for (const n of [...NAMES.slice(0, 4), 'dp-6']) await this.connect('model', n);
    for (const n of NAMES.slice(0, 2)) await this.connect('other', n);
  }

  /** Tokens by node id; a proxy that has one sends it two times in three. */
  private readonly tokens = new Map<string, string>();

  /**
   * Proxies on a link that now and then holds back what the server sends (a slow or congested
   * network): the server's writes to them stay unfinished, and the changes meanwhile must reach
   * them as one once the link frees up (docs/ads.md, "A slow proxy holds one response").
   */
  private readonly links = new Map<ModelProxy, Relay>();

  private async connect(mesh: MeshName, name: string): Promise<void> {
    // gRPC apps ask as grpc-js-xds does (SotW): the services they call, the ports they serve.
    const grpc = PROXYLESS.has(name) && this.rng() < 0.8 ? { listeners: [...this.some(SERVICES), ...this.some([8080, 9090, 7070]).map((port) => `grpc/server?xds.resource.listening_address=0.0.0.0:${port}`)] } : undefined;
    const variant = grpc || this.rng() < 0.5 ? 'sotw' : 'delta';
    const id = `${mesh}.${name}`;
    const replica = Math.floor(this.rng() * this.cp.addresses.length);
    const token = this.tokens.has(id) && this.rng() < 2 / 3 ? this.tokens.get(id) : undefined;
    const link = this.rng() < 0.3 ? await relayTo(this.cp.addresses[replica]!) : undefined;
    const p = new ModelProxy(id, variant, link?.address ?? this.cp.addresses[replica]!, { tlsCa: this.cp.tlsCa, rng: this.rng, nackRate: NACK_RATE, grpc, token, flowControlWindow: link ? LINK_WINDOW : undefined });
    if (link) this.links.set(p, link);
    this.proxies.set(id, p);
    this.replicaOf.set(p, replica);
    this.everyone.push(p);
    p.connect();
    this.log.push(`connect ${id} (${variant}${grpc ? `, as grpc-js-xds asking for ${grpc.listeners.join(' ')}` : ''}${this.cp.addresses.length > 1 ? `, to replica ${replica}` : ''}${token ? ', with its token' : ''}${link ? ', over a link that slows down' : ''})`);
  }

  /** One random change to the store or to the proxies. */
  async step(): Promise<void> {
    const r = this.rng();
    const mesh: MeshName = this.rng() < 0.75 ? 'model' : 'other';
    const name = this.pick(NAMES);
    const id = `${mesh}.${name}`;
    if (r < 0.34) await this.put(this.dataplane(mesh, name));
    else if (r < 0.4) await this.remove('Dataplane', mesh, name);
    else if (r < 0.47) {
      const n = `tp-${Math.floor(this.rng() * 2)}`;
      if (this.rng() < 0.3) await this.remove('TrafficPermission', mesh, n);
      else {
        const [from, to] = [this.pick([...SERVICES, '*']), this.pick([...SERVICES, '*'])];
        await this.put({ type: 'TrafficPermission', mesh, name: n, sources: [{ match: { 'kuma.io/service': from } }], destinations: [{ match: { 'kuma.io/service': to } }] });
      }
    } else if (r < 0.54) {
      const n = `mtp-${Math.floor(this.rng() * 2)}`;
      if (this.rng() < 0.3) await this.remove('MeshTrafficPermission', mesh, n);
      else {
        const spec = { targetRef: this.ref(), from: [{ targetRef: this.ref(), default: { action: this.pick(['Allow', 'Deny', 'AllowWithShadowDeny']) } }] };
        await this.put({ type: 'MeshTrafficPermission', mesh, name: n, spec });
      }
    } else if (r < 0.58) await this.put(this.mesh(mesh));
    else if (r < 0.61) {
      // The second mesh goes, with everything in it (its proxies get an empty config), or comes back.
      if (await this.cp.stores[0]!.get({ type: 'Mesh', mesh: '', name: 'other' })) await this.remove('Mesh', 'other', 'other');
      else {
        await this.put(this.mesh('other'));
        await this.put(this.allowAll('other'));
      }
    } else if (r < 0.63) await this.restart();
    else if (r < 0.71) {
      const p = this.proxies.get(id);
      if (p) {
        this.log.push(`reconnect ${id}`);
        p.reconnect();
      } else await this.connect(mesh, name);
    } else if (r < 0.76) {
      const p = this.proxies.get(id);
      if (p) {
        this.log.push(`disconnect ${id}`);
        p.close();
        this.proxies.delete(id);
      }
    } else if (r < 0.84) {
      // A proxy's stream drops and comes back a little later, the changes meanwhile unseen.
      const p = this.proxies.get(id);
      if (p) {
        this.log.push(`drop ${id}`);
        p.disconnect();
        setTimeout(() => p.connect(), Math.floor(this.rng() * 40));
      }
    } else if (r < 0.88) {
      // A proxy rejects every response of a type for a while (and is not checked meanwhile), or takes them again.
      const p = this.proxies.get(id);
      if (p?.stubborn) {
        this.log.push(`${id} takes ${short(p.stubborn)} again`);
        p.stubborn = undefined;
      } else if (p) {
        p.stubborn = this.pick([TypeUrl.Cluster, TypeUrl.Listener, TypeUrl.ClusterLoadAssignment]);
        this.log.push(`${id} rejects every ${short(p.stubborn)}`);
      }
    } else if (r < 0.92) {
      // A proxy's link holds back what the server sends for a moment, while the history goes on.
      const linked = [...this.proxies.values()].filter((p) => this.links.has(p));
      if (linked.length === 0) return;
      const p = this.pick(linked);
      const ms = 20 + Math.floor(this.rng() * (LINK_HOLD_MS - 20));
      this.log.push(`${p.nodeId}'s link holds what the server sends for ${ms} ms`);
      const link = this.links.get(p)!;
      link.holdToClient();
      setTimeout(() => link.releaseToClient(), ms);
    } else {
      const ms = Math.floor(this.rng() * 40);
      this.log.push(`wait ${ms} ms`);
      await new Promise((res) => setTimeout(res, ms));
    }
  }

  /**
   * The control plane stops and starts again on the same store, knowing nothing of the proxies,
   * which keep their config and reconnect to it announcing what they hold.
   */
  private async restart(): Promise<void> {
    const n = this.cp.addresses.length;
    const i = Math.floor(this.rng() * n);
    this.log.push(n > 1 ? `restart replica ${i}` : 'restart the control plane');
    this.nacksRecorded += await this.cp.nacks(i);
    await this.cp.restart(i);
    // Its proxies come back to it, or go to another replica.
    for (const p of this.proxies.values()) {
      if (this.replicaOf.get(p) !== i) continue;
      const to = Math.floor(this.rng() * n);
      this.replicaOf.set(p, to);
      const link = this.links.get(p);
      if (link) link.retarget(this.cp.addresses[to]!);
      else p.moveTo(this.cp.addresses[to]!);
      if (p.connected) p.reconnect();
    }
  }

  /** What a fresh translation of the store gives the proxy `id` (`<mesh>.<name>`), as it would hold it. */
  private async expected(id: string): Promise<Map<string, Map<string, Held>>> {
    const out = new Map<string, Map<string, Held>>(ALL_TYPES.map((t) => [t, new Map()]));
    const s = this.cp.stores[0]!;
    const [meshName, name] = id.split('.') as [string, string];
    const mesh = (await s.get({ type: 'Mesh', mesh: '', name: meshName })) as Resource<MeshSpec> | undefined;
    const dataplanes = (await s.list('Dataplane', { mesh: meshName })).items as Resource<DataplaneSpec>[];
    const dataplane = dataplanes.find((d) => d.name === name);
    if (!mesh || !dataplane) return out; // no such Dataplane: an empty config
    const set = generateProxyConfig({
      mesh,
      dataplane,
      dataplanes,
      trafficPermissions: (await s.list('TrafficPermission', { mesh: meshName })).items as Resource<TrafficPermissionSpec>[],
      meshTrafficPermissions: (await s.list('MeshTrafficPermission', { mesh: meshName })).items as Resource<MeshTrafficPermissionBody>[],
      trustBundle: enabledMtlsBackend(mesh.spec) ? await this.cp.trustBundle(meshName) : [],
    });
    const snapshot = buildSnapshot(new ResourceEncoder(), `${meshName}.${name}`, set);
    for (const [t, byName] of snapshot.resources) for (const [n, r] of byName) out.get(t)!.set(n, heldOf(t, r.bytes, r.version));
    return out;
  }

  /** How the proxy differs from what it should hold (empty when it holds exactly that). */
  private differences(p: ModelProxy, want: Map<string, Map<string, Held>>): string[] {
    const out: string[] = [];
    for (const t of ALL_TYPES) {
      const held = p.held.get(t)!;
      const expected = want.get(t)!;
      const asked = p.asksFor(t);
      // Wildcard types: everything; named ones: what the proxy asks for, which must exist (but
      // the services a gRPC app may call); types it never asks for: nothing.
      const names = asked === 'all' ? new Set(expected.keys()) : (asked ?? new Set<string>());
      const named = asked !== 'all';
      for (const n of names) {
        const e = expected.get(n);
        const h = held.get(n);
        if (!e && p.optional(t)) {
          if (h) out.push(`${short(t)} ${n}: held, translation has none`);
        } else if (!e) out.push(`${short(t)} ${n}: the proxy asks for it, translation has none`);
        else if (!h) out.push(`${short(t)} ${n}: missing`);
        else if (h.canonical !== e.canonical) out.push(`${short(t)} ${n}: differs\n    held ${h.canonical.slice(0, 600)}\n    want ${e.canonical.slice(0, 600)}`);
        else if (p.variant === 'delta' && h.version !== e.version) out.push(`${short(t)} ${n}: version ${h.version}, translation's ${e.version}`);
      }
      for (const n of held.keys()) if (!names.has(n)) out.push(`${short(t)} ${n}: held but ${named ? 'not asked for' : 'not in translation'}`);
    }
    return out;
  }

  /** Waits until every proxy holds what translation gives it; fails with the differences after `ms`. */
  async converge(ms = 8000): Promise<void> {
    await this.cp.settle();
    const want = new Map<string, Map<string, Map<string, Held>>>();
    for (const name of this.proxies.keys()) want.set(name, await this.expected(name));
    const deadline = Date.now() + ms;
    for (;;) {
      const bad: string[] = [];
      let firstBad: ModelProxy | undefined;
      for (const [name, p] of this.proxies) {
        if (!p.connected) continue; // dropped: it comes back (and is checked) later
        if (p.stubborn) continue; // rejecting a type: checked once it takes it again
        const d = this.differences(p, want.get(name)!);
        if (d.length > 0) bad.push(`${p.nodeId} (${p.variant}${p.flavour === 'grpc' ? ', grpc' : ''}):\n  ${d.join('\n  ')}`);
        if (d.length > 0) firstBad ??= p;
      }
      const violations = [...this.proxies.values()].flatMap((p) => p.violations.map((v) => `${p.nodeId} (${p.variant}): ${v}`));
      if (violations.length > 0) {
        const first = [...this.proxies.values()].find((p) => p.violations.length > 0)!;
        assert.fail(`${violations.slice(0, 5).join('\n')}\n${this.history()}\n${first.nodeId}'s streams:\n  ${first.trace.slice(-30).join('\n  ')}`);
      }
      if (bad.length === 0) return this.quiesce();
      if (Date.now() > deadline) {
        assert.fail(`proxies do not hold what translation gives them, ${ms} ms after the changes:\n${bad.join('\n')}\n${this.history()}\n${firstBad!.nodeId}'s streams:\n  ${firstBad!.trace.slice(-40).join('\n  ')}\nas the control plane sees it:\n${this.cp.diagnose(firstBad!.nodeId)}`);
      }
      await new Promise((res) => setTimeout(res, 25));
    }
  }

  /**
   * Once every proxy holds its config, nothing is left on its way out: every byte a stream was
   * charged is given back once written (or when its stream ends), and no stream waits for an open
   * budget. Proxies rejecting a type still get it again now and then, so a moment with nothing in
   * flight must come within 2 s. A leak would hold the budget shut for good: every stream would
   * wait, and a proxy's next change would never reach it.
   *
   * And no live proxy's connection was cut for silence (keepalive): the tight plane pings every
   * 200 ms and cuts after 1 s without a byte read; nor as stalled while others waited for its
   * tiny budget, after 1 s without a write finished (xds.sendStallCutMs).
   */
  private async quiesce(): Promise<void> {
    const cuts = await this.cp.liveCuts();
    if (cuts > 0) assert.fail(`${cuts} connections of live proxies were cut, for silence (keepalive) or as stalled (xds.sendStallCutMs)\n${this.history()}`);
    const deadline = Date.now() + 2000;
    for (;;) {
      const budgets = this.cp.budgets();
      if (budgets.every((b) => b.bytesInFlight === 0 && b.streamsWaiting === 0 && b.streamsWriting === 0)) return;
      if (Date.now() > deadline) assert.fail(`every proxy holds its config, yet send budgets stay charged (bytes in flight, streams waiting, streams writing): ${budgets.map((b) => `${b.bytesInFlight}, ${b.streamsWaiting}, ${b.streamsWriting}`).join('; ')}\n${this.history()}`);
      await new Promise((res) => setTimeout(res, 10));
    }
  }

  /** Proxies rejecting a type take it again. */
  relent(): void {
    for (const p of this.proxies.values()) {
      if (!p.stubborn) continue;
      this.log.push(`${p.nodeId} takes ${short(p.stubborn)} again`);
      p.stubborn = undefined;
    }
  }

  history(): string {
    return `history (${this.log.length} steps):\n  ${this.log.join('\n  ')}`;
  }

  close(): void {
    for (const p of this.proxies.values()) p.close();
    for (const link of this.links.values()) link.close();
  }
}

const nacksIn = (metrics: string) => [...metrics.matchAll(/^weft_xds_nacks_total\{[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
/** An ADS server's streams and send budget, and its status record of one proxy. */
function diagnosis(server: AdsServer, nodeId: string): string {
  const b = server.budget;
  return `${server.streamCount} streams; send budget ${b.bytesInFlight} of ${b.limitBytes} bytes in flight, ${b.streamsWaiting} streams waiting, ${b.streamsWriting} writing; ${nodeId}: ${JSON.stringify(server.status.get(nodeId) ?? null)}`;
}

const nacksOf = async (cp: { diagnosticsUrl: string }) => nacksIn(await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text());
/** Connections of live proxies cut: for silence (keepalive), or for holding up others (xds.sendStallCutMs). */
const liveCutsIn = (metrics: string) =>
  Number(/^weft_xds_connections_cut_total\{streams="open"\} (\d+)$/m.exec(metrics)?.[1] ?? 0) + Number(/^weft_xds_stalled_streams_cut_total (\d+)$/m.exec(metrics)?.[1] ?? 0);
const liveCutsOf = async (cp: { diagnosticsUrl: string }) => liveCutsIn(await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text());

/** Seeds take the planes in turn. */
const PLANES = ['tiny limits', 'TLS', 'plaintext', 'replicas on PostgreSQL'] as const;
const planeOf = (seed: number) => PLANES[seed % PLANES.length]!;

async function runSeed(seed: number, steps: number, pg: () => Promise<TestPostgres>): Promise<{ responses: number; checks: number }> {
  const plane = planeOf(seed);
  const cp = plane === 'tiny limits' ? await tightParts() : plane === 'replicas on PostgreSQL' ? await replicas(await pg(), seed) : await controlPlane(plane === 'TLS');
  const world = new World(cp, seeded(seed));
  let checks = 0;
  try {
    await world.setup();
    await world.converge();
    checks++;
    for (let i = 0; i < steps; ) {
      // A burst of changes, then every proxy must come to the store's config.
      const burst = 1 + Math.floor(world.rng() * 5);
      for (let j = 0; j < burst && i < steps; j++, i++) await world.step();
      // Dropped streams come back first, so every proxy is checked.
      await new Promise((res) => setTimeout(res, 50));
      await world.converge();
      checks++;
    }
    // Every proxy takes its config again: each must come to it, however long its backoff had grown.
    world.relent();
    await world.converge();
    checks++;
    const responses = world.everyone.reduce((n, p) => n + p.responses, 0);
    const nacks = world.everyone.reduce((n, p) => n + p.nacks, 0);
    // Rejections are recorded (a NACK on a stream that closed before it was read is not, nor a
    // second one in a response sent in pieces).
    const recorded = world.nacksRecorded + (await cp.nacks());
    assert.ok(recorded <= nacks && (nacks === 0 || recorded > 0), `NACKs recorded: ${recorded} of ${nacks}`);
    return { responses, checks };
  } catch (err) {
    (err as Error).message = `seed ${seed} (${cp.describe}; replay with WEFT_MODEL_SEED=${seed}): ${(err as Error).message}`;
    throw err;
  } finally {
    world.close();
    await cp.stop();
  }
}

describe('the control plane against random histories, checked against translation from scratch', () => {
  const steps = Number(process.env.WEFT_MODEL_STEPS ?? 60);
  const one = process.env.WEFT_MODEL_SEED;
  const seeds = one ? [Number(one)] : Array.from({ length: Number(process.env.WEFT_MODEL_SEEDS ?? 4) }, (_, i) => i + 1);
  // One PostgreSQL server for the seeds that run replicas on it, started by the first.
  let server: Promise<TestPostgres> | undefined;
  const pg = () => (server ??= startPostgres());
  after(async () => (await server)?.stop());
  const needsPg = seeds.some((s) => planeOf(s) === 'replicas on PostgreSQL') ? systemRequirement('PostgreSQL server', postgresMissing()) : { skip: false as const };
  for (const seed of seeds) {
    const plane = planeOf(seed);
    const opts = plane === 'replicas on PostgreSQL' ? needsPg : {};
    it(`seed ${seed} (${plane}): every proxy, SotW or delta, ends with exactly its config; no listener ever sends to a missing cluster (rules 8, 13, 14, 17, 20)`, opts, async () => {
      const r = await runSeed(seed, steps, pg);
      assert.ok(r.responses > 0 && r.checks > steps / 5, `the proxies got responses (${r.responses}) and were checked (${r.checks} times)`);
    });
  }
});
