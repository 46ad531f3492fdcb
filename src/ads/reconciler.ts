import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { compareNames, dataplaneServices, DataplaneTokenRevocationType, enabledMtlsBackend, MESH_TYPE, nodeIdOf, SigningKeyType, splitNodeId, type DataplaneSpec, type Logger, type MeshSpec, type MeshTrafficPermissionBody, type Resource, type TrafficPermissionSpec } from '../core/index.js';
import type { ChangeEvent, Store } from '../store/index.js';
import { directAccessShape, generateProxyConfig, LastingMemo, meshServices, reachOf, servicesShape, TypeUrl, withEndpoints, type MeshContext, type ResourceSet } from '../xds/index.js';

/** Changes no proxy config depends on. */
const IRRELEVANT = new Set([DataplaneTokenRevocationType.name, SigningKeyType.name]);
import { buildSnapshot, InconsistentSnapshotError, ResourceEncoder, type SnapshotCache } from './cache.js';

export interface ReconcilerOptions {
  store: Store;
  cache: SnapshotCache;
  logger: Logger;
  metrics: Registry;
  /** Wait this long after the last change of a burst (Istio: 100 ms)... */
  debounceMs: number;
  /** ...but never longer than this after the first one. */
  debounceMaxMs: number;
  generate?: (ctx: MeshContext) => ResourceSet;
  /** The PEM roots of a mesh's mTLS backends (none without mTLS). */
  trustBundle?: (mesh: string) => Promise<string[]>;
  /**
   * Keep a departed proxy's snapshot current this long after its last stream closed, so that it
   * is answered at once if it comes back to this replica (0, the default: forget it at once).
   */
  lingerMs?: number;
}

/** `before` when `now` holds the same resources at the same versions, in order; else `now`. */
function unchanged<T extends Resource<unknown>>(before: T[] | undefined, now: T[]): T[] {
  if (!before || before.length !== now.length) return now;
  return now.every((r, i) => r.name === before[i]!.name && r.version === before[i]!.version) ? before : now;
}

interface MeshData {
  mesh?: Resource<MeshSpec>;
  dataplanes: Resource<DataplaneSpec>[];
  trafficPermissions: Resource<TrafficPermissionSpec>[];
  meshTrafficPermissions: Resource<MeshTrafficPermissionBody>[];
}

/**
 * Longest stretch a regeneration round keeps the event loop before it lets I/O run. A change's
 * round pauses rarely: each pause lets ACKs and other work in ahead of the proxies still waiting
 * (pausing every 40 ms doubled the CP's CPU for a mesh-wide change and its p99, bench/README.md).
 * Rounds of connecting proxies pause often: their first configs are big (all of the mesh), and
 * written out as they go they are not all held in memory at once (RSS with 2000 proxies
 * connecting: ~420 → ~270 MB in the bench).
 */
const SLICE_MS = 1000;
const NEWCOMERS_SLICE_MS = 40;

/** A proxy's last published config and what it was generated from (for the endpoint-only path). */
interface LastConfig {
  set: ResourceSet;
  shape: string;
  bundle: string;
  /** For a proxy with direct access: `directAccessShape` of the Dataplanes it was generated from. */
  direct?: string;
}

/**
 * What a list of Dataplanes provides: each one's services, the Dataplanes by name, and the mesh's
 * services with their shape. Built once per list (a round that read nothing new reuses it).
 */
interface Provision {
  readonly provides: ReadonlyMap<string, readonly string[]>;
  readonly byName: ReadonlyMap<string, Resource<DataplaneSpec>>;
  readonly services: ReturnType<typeof meshServices>;
  readonly shape: string;
}

/** Per Dataplane resource (never changed in place: a changed Dataplane is a new object). */
const servicesOfDataplane = new WeakMap<Resource<DataplaneSpec>, readonly string[]>();

function servicesOf(d: Resource<DataplaneSpec>): readonly string[] {
  let s = servicesOfDataplane.get(d);
  if (!s) servicesOfDataplane.set(d, (s = dataplaneServices(d.spec)));
  return s;
}

/** The services a sidecar's app may call by their Dataplanes' own addresses (`*`: all). */
function directAccessOf(d: Resource<DataplaneSpec>): readonly string[] {
  return d.spec.networking.transparentProxying?.directAccessServices ?? [];
}

const NO_RESOURCES: readonly Record<string, unknown>[] = Object.freeze([]);

/** `{ ...set, [type]: list }`, built with every type in one order: one object shape, a quick copy. */
function withList(set: ResourceSet, type: TypeUrl, list: readonly Record<string, unknown>[]): ResourceSet {
  const out: ResourceSet = {
    [TypeUrl.Cluster]: set[TypeUrl.Cluster],
    [TypeUrl.ClusterLoadAssignment]: set[TypeUrl.ClusterLoadAssignment],
    [TypeUrl.Listener]: set[TypeUrl.Listener],
    [TypeUrl.RouteConfiguration]: set[TypeUrl.RouteConfiguration],
    [TypeUrl.Secret]: set[TypeUrl.Secret],
  };
  out[type] = list;
  return out;
}

/** The mesh and Dataplane name of a tracked proxy's node.id (checked by its stream before it is tracked). */
function meshOf(nodeId: string): [string, string] {
  const who = splitNodeId(nodeId)!;
  return [who.mesh, who.name];
}

/**
 * Keeps the snapshot of every connected proxy up to date: watches the store, debounces bursts of
 * changes (XDS-RULES 23), rebuilds the mesh context of each mesh a change touched, and regenerates
 * only the connected proxies of those meshes. A snapshot that fails its checks is logged as a bug
 * report and not published; the proxy keeps its last good config.
 */
export class Reconciler {
  private readonly tracked = new Map<string, number>();
  /** Per mesh: the Dataplanes changed since the last round, or 'all' (mesh, policies, resync). */
  private readonly dirty = new Map<string, Set<string> | 'all'>();
  /** Per mesh: what its Dataplanes provided at the last round (to know who used them). */
  private readonly provided = new Map<string, Provision>();
  /**
   * Per mesh: its resources as of the last round, kept current from change events so a round
   * after a few Dataplane changes reads those Dataplanes, not the whole mesh.
   */
  private readonly meshData = new Map<string, MeshData>();
  private readonly last = new Map<string, LastConfig>();
  /**
   * Per mesh: translation's memo across rounds, so a proxy whose own inputs did not change gets
   * the very objects of last round (found by identity in the encoder: no re-checking, re-encoding).
   */
  private readonly lasting = new Map<string, { memo: LastingMemo; sweptSize: number }>();
  private readonly regenerations: Counter<'kind'>;
  private firstChange = 0;
  private windowStart = 0;
  private timer?: NodeJS.Timeout;
  private running: Promise<void> = Promise.resolve();
  private unwatch?: () => void;
  private closed = false;
  private readonly generation: Histogram;
  private readonly failures: Counter;
  private readonly returned: Counter;
  private readonly generate: (ctx: MeshContext) => ResourceSet;

  constructor(private readonly opts: ReconcilerOptions) {
    this.generate = opts.generate ?? generateProxyConfig;
    this.generation = new Histogram({
      name: 'weft_xds_generation_seconds',
      help: 'Time to rebuild the snapshots of one mesh after a change.',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [opts.metrics],
    });
    this.regenerations = new Counter({
      name: 'weft_xds_proxy_regenerations_total',
      help: 'Proxy configs rebuilt: "full" translations, or "endpoints" when only endpoints changed and the rest was reused.',
      labelNames: ['kind'],
      registers: [opts.metrics],
    });
    this.returned = new Counter({
      name: 'weft_xds_proxies_returned_total',
      help: 'Proxies that reconnected within xds.lingerMs of leaving and were answered from the snapshot kept for them.',
      registers: [opts.metrics],
    });
    const lingering = this.lingering;
    new Gauge({
      name: 'weft_xds_lingering_proxies',
      help: 'Departed proxies whose snapshot is kept current for xds.lingerMs in case they come back.',
      registers: [opts.metrics],
      collect() {
        this.set(lingering.size);
      },
    });
    this.failures = new Counter({ name: 'weft_xds_generation_failures_total', help: 'Snapshots not published because they failed their checks.', registers: [opts.metrics] });
  }

  start(): void {
    this.unwatch = this.opts.store.watch((e) => this.onChange(e));
  }

  /**
   * A proxy connected: generate its snapshot at once, then keep it current. Proxies connecting
   * together (a control plane restart) are generated in one round per mesh: one store read, and
   * their shared resources built and encoded once.
   */
  track(nodeId: string): void {
    const lingering = this.lingering.get(nodeId);
    if (lingering) {
      // Back within its linger: its snapshot was kept current, so the stream is answered from it.
      clearTimeout(lingering);
      this.lingering.delete(nodeId);
      this.tracked.set(nodeId, 1);
      this.returned.inc();
      return;
    }
    this.tracked.set(nodeId, (this.tracked.get(nodeId) ?? 0) + 1);
    if (this.tracked.get(nodeId) !== 1) return;
    const mesh = meshOf(nodeId)[0];
    this.trackedInMesh.set(mesh, (this.trackedInMesh.get(mesh) ?? 0) + 1);
    this.newcomers.add(nodeId);
    if (this.newcomers.size === 1) setImmediate(() => this.flushNewcomers());
  }

  private flushNewcomers(): void {
    if (this.newcomers.size === 0) return;
    const changeTime = Date.now();
    const byMesh = new Map<string, string[]>();
    for (const id of this.newcomers) byMesh.set(meshOf(id)[0], [...(byMesh.get(meshOf(id)[0]) ?? []), id]);
    this.newcomers.clear();
    for (const [mesh, ids] of byMesh) this.enqueue(() => this.regenerate(mesh, changeTime, ids));
  }

  private readonly newcomers = new Set<string>();

  /**
   * A proxy's stream closed. After its last one, its snapshot is kept current for `lingerMs`
   * (it is regenerated with the others), then dropped; it is rebuilt if the proxy comes back later.
   */
  untrack(nodeId: string): void {
    const count = this.tracked.get(nodeId);
    if (count === undefined || this.lingering.has(nodeId)) return;
    const n = count - 1;
    if (n > 0) return void this.tracked.set(nodeId, n);
    const lingerMs = this.opts.lingerMs ?? 0;
    if (lingerMs > 0 && !this.closed) {
      this.tracked.set(nodeId, 0);
      const timer = setTimeout(() => {
        this.lingering.delete(nodeId);
        this.forget(nodeId);
      }, lingerMs);
      timer.unref();
      this.lingering.set(nodeId, timer);
      return;
    }
    this.forget(nodeId);
  }

  /** Departed proxies whose snapshot is kept a while, each with the timer that drops it. */
  private readonly lingering = new Map<string, NodeJS.Timeout>();

  private forget(nodeId: string): void {
    this.tracked.delete(nodeId);
    this.newcomers.delete(nodeId);
    this.last.delete(nodeId);
    this.opts.cache.delete(nodeId);
    const mesh = meshOf(nodeId)[0];
    const left = (this.trackedInMesh.get(mesh) ?? 1) - 1;
    if (left > 0) this.trackedInMesh.set(mesh, left);
    else {
      this.trackedInMesh.delete(mesh);
      this.lasting.delete(mesh);
    }
  }

  /** Distinct tracked proxies per mesh. */
  private readonly trackedInMesh = new Map<string, number>();

  private markDirty(mesh: string, dataplane?: string): void {
    const cur = this.dirty.get(mesh);
    if (dataplane === undefined) this.dirty.set(mesh, 'all');
    else if (cur !== 'all') this.dirty.set(mesh, (cur ?? new Set()).add(dataplane));
  }

  private onChange(e: ChangeEvent): void {
    if (e.kind === 'resync') {
      this.meshData.clear();
      for (const id of this.tracked.keys()) this.markDirty(meshOf(id)[0]);
    } else if (e.key.type === 'Dataplane') this.markDirty(e.key.mesh, e.key.name);
    else if (IRRELEVANT.has(e.key.type)) return;
    else this.markDirty(e.key.type === MESH_TYPE ? e.key.name : e.key.mesh);
    const now = Date.now();
    if (!this.timer) {
      this.windowStart = now;
      this.firstChange = now;
    }
    clearTimeout(this.timer);
    const at = Math.min(now + this.opts.debounceMs, this.windowStart + this.opts.debounceMaxMs);
    this.timer = setTimeout(() => this.fire(), Math.max(0, at - now));
  }

  /** Regenerates a whole mesh, as after a change of it (e.g. its trust bundle changed). */
  refreshMesh(mesh: string): void {
    this.onChange({ kind: 'update', key: { type: MESH_TYPE, mesh: '', name: mesh }, revision: '' });
  }

  private fire(): void {
    this.timer = undefined;
    const meshes = [...this.dirty];
    this.dirty.clear();
    const changeTime = this.firstChange;
    for (const [mesh, changed] of meshes) this.enqueue(() => this.regenerate(mesh, changeTime, undefined, changed));
  }

  private enqueue(job: () => Promise<void>): void {
    this.running = this.running.then(job).catch((err: unknown) => this.opts.logger.error({ err }, 'snapshot generation failed'));
  }

  /** Resolves when every change seen so far is reflected in the cache (for tests and shutdown). */
  async settle(): Promise<void> {
    this.flushNewcomers();
    if (this.timer) {
      clearTimeout(this.timer);
      this.fire();
    }
    await this.running;
  }

  /**
   * The whole mesh, read from the store. What is at the same version as in `cached` (the Mesh, each
   * Dataplane, the list of Dataplanes, each list of policies) is the cached object itself:
   * translation remembers what it built from these by their identity, so a Mesh or policy change
   * does not make every proxy's Dataplane, nor what is built from the services, look new.
   */
  private async load(mesh: string, cached?: MeshData): Promise<MeshData> {
    const s = this.opts.store;
    const [m, dps, tps, mtps] = await Promise.all([
      s.get({ type: MESH_TYPE, mesh: '', name: mesh }),
      s.list('Dataplane', { mesh }),
      s.list('TrafficPermission', { mesh }),
      s.list('MeshTrafficPermission', { mesh }),
    ]);
    let dataplanes = dps.items as Resource<DataplaneSpec>[];
    if (cached) {
      const prev = cached.dataplanes;
      const before = this.provisionOf(prev).byName;
      const reused = dataplanes.map((d) => {
        const old = before.get(d.name);
        return old?.version === d.version ? old : d;
      });
      // None changed: the same array, so what is built from the mesh's services is found again too.
      dataplanes = reused.length === prev.length && reused.every((d, i) => d === prev[i]) ? prev : reused;
    }
    return {
      mesh: m && cached?.mesh?.version === m.version ? cached.mesh : (m as Resource<MeshSpec> | undefined),
      dataplanes,
      trafficPermissions: unchanged(cached?.trafficPermissions, tps.items as Resource<TrafficPermissionSpec>[]),
      meshTrafficPermissions: unchanged(cached?.meshTrafficPermissions, mtps.items as Resource<MeshTrafficPermissionBody>[]),
    };
  }

  /**
   * The mesh as of now: read whole for a full round (or the first), else the cached mesh with the
   * changed Dataplanes read again. Only Dataplane changes leave the mesh, its policies and the
   * other Dataplanes as they were.
   */
  private async loadFor(mesh: string, changed: Set<string> | 'all'): Promise<MeshData> {
    const cached = this.meshData.get(mesh);
    this.meshData.delete(mesh); // until this round has read what it needs
    let data: MeshData;
    if (changed === 'all' || !cached) data = await this.load(mesh, cached);
    else {
      const names = [...changed];
      const fresh = await Promise.all(names.map((name) => this.opts.store.get({ type: 'Dataplane', mesh, name })));
      const byName = new Map(cached.dataplanes.map((d) => [d.name, d]));
      let added = false;
      names.forEach((name, i) => {
        const d = fresh[i] as Resource<DataplaneSpec> | undefined;
        if (!d) byName.delete(name);
        else {
          added ||= !byName.has(name);
          byName.set(name, d);
        }
      });
      const dataplanes = [...byName.values()];
      if (added) dataplanes.sort(compareNames);
      data = { ...cached, dataplanes };
    }
    this.meshData.set(mesh, data);
    return data;
  }

  /**
   * The mesh as of now for proxies that just connected: the cached mesh with the Dataplanes changed
   * since the last round read again (they stay marked for their own round), or the whole mesh when
   * there is no cached copy or more than Dataplanes changed. Connecting proxies then do not each
   * cost a read of every Dataplane.
   */
  private async loadForNewcomers(mesh: string): Promise<MeshData> {
    const dirty = this.dirty.get(mesh);
    const cached = this.meshData.get(mesh);
    if (dirty === 'all' || !cached) {
      const data = await this.load(mesh, cached);
      this.meshData.set(mesh, data);
      return data;
    }
    return dirty && dirty.size > 0 ? this.loadFor(mesh, new Set(dirty)) : cached;
  }

  private readonly provisions = new WeakMap<readonly Resource<DataplaneSpec>[], Provision>();

  private provisionOf(dataplanes: readonly Resource<DataplaneSpec>[]): Provision {
    let p = this.provisions.get(dataplanes);
    if (!p) {
      const provides = new Map<string, readonly string[]>();
      const byName = new Map<string, Resource<DataplaneSpec>>();
      for (const d of dataplanes) {
        provides.set(d.name, servicesOf(d));
        byName.set(d.name, d);
      }
      const services = meshServices(dataplanes);
      this.provisions.set(dataplanes, (p = { provides, byName, services, shape: servicesShape(services) }));
    }
    return p;
  }

  /**
   * The connected proxies of a mesh a change to some Dataplanes can affect: those Dataplanes
   * themselves, and proxies reaching a service they provided before or provide now (so every
   * proxy that reaches all services, when they provide any).
   */
  private affected(mesh: string, data: MeshData, changed: Set<string>, candidates: string[]): string[] {
    const before = this.provided.get(mesh);
    const now = this.provisionOf(data.dataplanes);
    const services = new Set<string>();
    for (const name of changed) for (const s of [...(before?.provides.get(name) ?? []), ...(now.provides.get(name) ?? [])]) services.add(s);
    // No need to compare the mesh's whole service set: a service can appear or go only with a
    // changed Dataplane that provides it now or did before, so it is in `services`.
    const byName = now.byName;
    return candidates.filter((id) => {
      const name = meshOf(id)[1];
      if (changed.has(name)) return true;
      const dp = byName.get(name);
      if (!dp) return false;
      const reach = reachOf(dp);
      if (reach.all ? services.size > 0 : reach.services.some((s) => services.has(s))) return true;
      // Direct access listeners name other Dataplanes' addresses.
      return directAccessOf(dp).some((s) => (s === '*' ? services.size > 0 : services.has(s)));
    });
  }

  private async regenerate(mesh: string, changeTime: number, only?: string[], changed: Set<string> | 'all' = 'all'): Promise<void> {
    if (this.closed) return;
    let nodes = (only ?? [...this.tracked.keys()]).filter((id) => meshOf(id)[0] === mesh && this.tracked.has(id));
    if (nodes.length === 0) {
      this.meshData.delete(mesh); // its changes were not applied to the cached copy
      return;
    }
    const end = this.generation.startTimer();
    const started = performance.now();
    let full = 0;
    let endpointsOnlyCount = 0;
    const data = only ? await this.loadForNewcomers(mesh) : await this.loadFor(mesh, changed);
    if (changed !== 'all' && !only) nodes = this.affected(mesh, data, changed, nodes);
    // A newcomers' round may see changes whose own round has not run yet; that round must still
    // compare them with what was provided before them.
    if (!only || !this.provided.has(mesh)) this.provided.set(mesh, this.provisionOf(data.dataplanes));
    const memo = new Map<string, unknown>();
    let lasting = this.lasting.get(mesh);
    if (!lasting) this.lasting.set(mesh, (lasting = { memo: new LastingMemo(), sweptSize: 0 }));
    lasting.memo.startRound();
    let trustBundle: string[] = [];
    if (data.mesh && enabledMtlsBackend(data.mesh.spec) && this.opts.trustBundle) {
      try {
        trustBundle = await this.opts.trustBundle(mesh);
      } catch (err) {
        this.opts.logger.error({ err, mesh }, 'the trust bundle of the mesh cannot be built; proxies keep their last config');
        end();
        return;
      }
    }
    const { services, shape, byName } = this.provisionOf(data.dataplanes);
    const bundle = trustBundle.join('');
    // The endpoint-only path needs the translation it stands for (not a test's stand-in).
    const reuse = changed !== 'all' && !only && this.generate === generateProxyConfig ? changed : undefined;
    /** Endpoint-only: each previous endpoint list and the new one (proxies reaching the same services share both). */
    const freshEndpoints = new Map<readonly Record<string, unknown>[], readonly Record<string, unknown>[]>();
    let sliceStart = performance.now();
    const slice = only ? NEWCOMERS_SLICE_MS : SLICE_MS;
    for (const nodeId of nodes) {
      // A big round lets the event loop run now and then (writes, ACKs, the API, health checks)
      // rather than holding it for seconds.
      if (performance.now() - sliceStart > slice) {
        await new Promise((r) => setImmediate(r));
        if (this.closed) return;
        sliceStart = performance.now();
      }
      if (!this.tracked.has(nodeId)) continue; // disconnected while the mesh was loading or in a pause
      const name = meshOf(nodeId)[1];
      const dataplane = byName.get(name);
      try {
        if (!data.mesh || !dataplane) {
          // No such dataplane (yet, or any more): the proxy gets an empty config.
          this.last.delete(nodeId);
          this.opts.cache.set(nodeId, {}, changeTime);
          continue;
        }
        const ctx = (): MeshContext => ({ mesh: data.mesh!, dataplane, dataplanes: data.dataplanes, trafficPermissions: data.trafficPermissions, meshTrafficPermissions: data.meshTrafficPermissions, trustBundle, memo, services, lasting: lasting.memo });
        const prev = this.last.get(nodeId);
        // Direct access listeners follow other Dataplanes' names and addresses, which the shortcut
        // does not redo: it may be taken only while they are as they were.
        const direct = directAccessOf(dataplane).length > 0 ? directAccessShape(data.dataplanes) : undefined;
        const endpointsOnly = reuse && !reuse.has(name) && prev && prev.shape === shape && prev.bundle === bundle && prev.direct === direct;
        let set: ResourceSet;
        if (endpointsOnly) {
          // The last config with new ClusterLoadAssignments: translated once per distinct endpoint
          // list (withEndpoints keys its own memo by that list too), and the snapshot swaps just them.
          const old = prev.set[TypeUrl.ClusterLoadAssignment] ?? NO_RESOURCES;
          let fresh = freshEndpoints.get(old);
          if (!fresh) freshEndpoints.set(old, (fresh = withEndpoints(prev.set, ctx())[TypeUrl.ClusterLoadAssignment] ?? NO_RESOURCES));
          set = withList(prev.set, TypeUrl.ClusterLoadAssignment, fresh);
          this.opts.cache.setEndpoints(nodeId, set, changeTime);
          endpointsOnlyCount++;
        } else {
          set = this.generate(ctx());
          this.opts.cache.set(nodeId, set, changeTime);
          full++;
        }
        this.last.set(nodeId, { set, shape, bundle, direct });
      } catch (err) {
        this.failures.inc();
        this.last.delete(nodeId);
        if (err instanceof InconsistentSnapshotError) {
          this.opts.logger.error({ nodeId, problems: err.problems }, 'BUG: generated config failed its checks and was not sent; please report this with the resources of the mesh');
        } else {
          this.opts.logger.error({ err, nodeId }, 'BUG: config generation failed; the proxy keeps its last config');
        }
      }
    }
    end();
    // After a round over every proxy of the mesh, what it did not use is stale; partial rounds
    // sweep only when the memo has grown well past its last swept size.
    const everyone = nodes.length >= (this.trackedInMesh.get(mesh) ?? 0);
    if (everyone || lasting.memo.size > 2 * lasting.sweptSize + 10_000) {
      lasting.memo.sweep();
      lasting.sweptSize = lasting.memo.size;
    }
    if (full) this.regenerations.inc({ kind: 'full' }, full);
    if (endpointsOnlyCount) this.regenerations.inc({ kind: 'endpoints' }, endpointsOnlyCount);
    this.opts.logger.debug({ mesh, full, endpointsOnly: endpointsOnlyCount, ms: Math.round(performance.now() - started) }, 'proxy configs regenerated and handed to their streams');
  }

  /**
   * The config Dataplane `name` of `mesh` gets now, generated and checked as for a connected proxy
   * but not cached (`weftctl inspect dataplane --config`). Undefined when there is no such Dataplane.
   */
  async configFor(mesh: string, name: string): Promise<ResourceSet | undefined> {
    const data = await this.load(mesh);
    const dataplane = data.dataplanes.find((d) => d.name === name);
    if (!data.mesh || !dataplane) return undefined;
    const trustBundle = enabledMtlsBackend(data.mesh.spec) && this.opts.trustBundle ? await this.opts.trustBundle(mesh) : [];
    const set = this.generate({ mesh: data.mesh, dataplane, dataplanes: data.dataplanes, trafficPermissions: data.trafficPermissions, meshTrafficPermissions: data.meshTrafficPermissions, trustBundle });
    buildSnapshot(new ResourceEncoder(), nodeIdOf(mesh, name), set); // the same checks as before sending
    return set;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    for (const timer of this.lingering.values()) clearTimeout(timer);
    this.lingering.clear();
    this.unwatch?.();
  }
}
