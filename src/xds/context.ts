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
  /**
   * Optional: kept by the caller across rounds (see `LastingMemo`), so resources whose inputs did
   * not change are the same objects as last round and are not checked and encoded again.
   */
  lasting?: LastingMemo;
}

/**
 * A memo that outlives a generation round. Translation puts in it only what its key determines
 * entirely: either the key spells out every input, or it names immutable inputs by identity
 * (`idOf`: the Dataplane, Mesh and policy objects of a round are never changed in place; a changed
 * resource is a new object). Entries not used for a while are dropped by `sweep`.
 */
export class LastingMemo {
  private readonly entries = new Map<string, { value: unknown; round: number }>();
  private readonly ids = new WeakMap<object, string>();
  private nextId = 0;
  private round = 0;

  /** Marks the start of a round: what it uses is kept by the next `sweep`. */
  startRound(): void {
    this.round++;
  }

  get(key: string): unknown {
    const e = this.entries.get(key);
    if (!e) return undefined;
    e.round = this.round;
    return e.value;
  }

  set(key: string, value: unknown): void {
    this.entries.set(key, { value, round: this.round });
  }

  /** A short name for an object, the same as long as the object lives. */
  idOf(o: object): string {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, (id = `#${(this.nextId++).toString(36)}`));
    return id;
  }

  /** Drops the entries the current round did not use. */
  sweep(): void {
    for (const [k, e] of this.entries) if (e.round !== this.round) this.entries.delete(k);
  }

  get size(): number {
    return this.entries.size;
  }
}

/** Label that marks a Dataplane as a proxyless gRPC app (no Envoy; grpc-js-xds reads the config). */
export const PROXYLESS_LABEL = 'weft.io/proxyless';

export function isProxyless(dp: Resource<DataplaneSpec>): boolean {
  return dp.labels[PROXYLESS_LABEL] === 'true';
}
