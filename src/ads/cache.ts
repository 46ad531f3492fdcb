import { createHash } from 'node:crypto';
import { canonicalJson } from '../core/index.js';
import { checkResource, type ProtoViolation } from './proto-check.js';
import { messageType, RESPONSE_ORDER, SHORT_NAME, TypeUrl } from './protos.js';

import type { ResourceSet } from '../xds/index.js';

export type { ResourceSet };

/** One resource, encoded once and shared by every proxy whose snapshot holds the same content. */
export interface EncodedResource {
  readonly typeUrl: TypeUrl;
  readonly name: string;
  /** Content hash: equal content, equal version, on every replica. */
  readonly version: string;
  /** The serialized message (the `value` of the google.protobuf.Any sent). */
  readonly bytes: Uint8Array;
  /** For clusters, the ClusterLoadAssignment names they use; for listeners, the route configs. */
  readonly refs: readonly string[];
}

export interface Snapshot {
  /** Hash of every resource version: changes exactly when some resource changes. */
  readonly version: string;
  /** `setVersion` of all resources of each type (what a wildcard SotW subscriber is sent). */
  readonly typeVersions: ReadonlyMap<TypeUrl, string>;
  readonly resources: ReadonlyMap<TypeUrl, ReadonlyMap<string, EncodedResource>>;
  /** When the change this snapshot answers was committed (for delivery-time metrics). */
  readonly changeTime: number;
}

export interface SnapshotProblem {
  typeUrl: string;
  name: string;
  field?: string;
  message: string;
}

/** A snapshot that would hurt a proxy; it is not published. */
export class InconsistentSnapshotError extends Error {
  constructor(
    readonly nodeId: string,
    readonly problems: readonly SnapshotProblem[],
  ) {
    super(
      `snapshot for ${nodeId} not published: ${problems
        .slice(0, 5)
        .map((p) => `${SHORT_NAME[p.typeUrl as TypeUrl] ?? p.typeUrl} ${p.name}${p.field ? ` ${p.field}` : ''}: ${p.message}`)
        .join('; ')}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`,
    );
    this.name = 'InconsistentSnapshotError';
  }
}

/** Version of a set of resources: a hash of their names and versions, independent of order. */
export function setVersion(resources: Iterable<EncodedResource>): string {
  const parts = [...resources].map((r) => `${r.name}=${r.version}`).sort();
  return hash(parts.join(','));
}

function hash(s: string | Uint8Array): string {
  return createHash('sha256').update(s).digest('base64url').slice(0, 22);
}

function nameOf(typeUrl: TypeUrl, r: Record<string, unknown>): string {
  const n = typeUrl === TypeUrl.ClusterLoadAssignment ? r.cluster_name : r.name;
  return typeof n === 'string' ? n : '';
}

function typedConfigs(listener: Record<string, unknown>): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  const chains = [...((listener.filter_chains as Record<string, unknown>[] | undefined) ?? []), ...(listener.default_filter_chain ? [listener.default_filter_chain as Record<string, unknown>] : [])];
  for (const chain of chains) for (const f of (chain.filters as Record<string, unknown>[] | undefined) ?? []) if (f.typed_config) out.push(f.typed_config as Record<string, unknown>);
  const api = (listener.api_listener as Record<string, unknown> | undefined)?.api_listener;
  if (api) out.push(api as Record<string, unknown>);
  return out;
}

/** Names a resource points at: route configs of a listener's HTTP connection managers, EDS names of a cluster. */
export function referencesOf(typeUrl: TypeUrl, r: Record<string, unknown>): string[] {
  if (typeUrl === TypeUrl.Cluster) {
    if (r.type !== 'EDS') return [];
    const service = (r.eds_cluster_config as Record<string, unknown> | undefined)?.service_name;
    return [typeof service === 'string' && service !== '' ? service : String(r.name)];
  }
  if (typeUrl === TypeUrl.Listener) {
    const names = new Set<string>();
    for (const tc of typedConfigs(r)) {
      const rds = tc.rds as Record<string, unknown> | undefined;
      if (String(tc['@type']).endsWith('.HttpConnectionManager') && typeof rds?.route_config_name === 'string') names.add(rds.route_config_name);
    }
    return [...names];
  }
  return [];
}

/**
 * Encodes resources once: equal content (by canonical JSON) maps to the same EncodedResource, so
 * 2000 proxies sharing a cluster share its bytes. Entries are reference-counted by the snapshots
 * holding them and dropped when none does.
 */
export class ResourceEncoder {
  private readonly byContent = new Map<string, { res: EncodedResource; refs: number }>();
  /**
   * Fast path for the same object handed in again (translation memoizes resources shared by many
   * proxies): skips re-serializing it. Callers must not mutate resources after handing them in.
   */
  private readonly byObject = new WeakMap<object, { typeUrl: TypeUrl; key: string }>();

  /** Checks and encodes, or returns the shared encoding; or the problems found. */
  encode(typeUrl: TypeUrl, obj: Record<string, unknown>): EncodedResource | SnapshotProblem[] {
    const seen = this.byObject.get(obj);
    if (seen && seen.typeUrl === typeUrl) {
      const e = this.byContent.get(seen.key);
      if (e) return e.res;
    }
    const key = this.keyOf(typeUrl, obj);
    const hit = this.byContent.get(key);
    if (hit) {
      this.byObject.set(obj, { typeUrl, key });
      return hit.res;
    }
    const name = nameOf(typeUrl, obj);
    const violations: ProtoViolation[] = checkResource(typeUrl, obj);
    if (violations.length > 0) return violations.map((v) => ({ typeUrl, name, field: v.field, message: v.message }));
    const type = messageType(typeUrl);
    const bytes = type.encode(type.fromObject(obj)).finish();
    const res: EncodedResource = { typeUrl, name, version: hash(bytes), bytes, refs: referencesOf(typeUrl, obj) };
    this.byContent.set(key, { res, refs: 0 });
    this.byObject.set(obj, { typeUrl, key });
    return res;
  }

  /** Keys held, for tests and metrics. */
  /** Forgets entries no snapshot holds (those encoded for a snapshot that was refused). */
  dropUnused(keys: readonly string[]): void {
    for (const k of keys) if (this.byContent.get(k)?.refs === 0) this.byContent.delete(k);
  }

  get size(): number {
    return this.byContent.size;
  }

  retain(snapshot: Snapshot): void {
    this.adjust(snapshot, 1);
  }

  release(snapshot: Snapshot): void {
    this.adjust(snapshot, -1);
  }

  private adjust(snapshot: Snapshot, delta: number): void {
    const keys = (snapshot as SnapshotInternal).contentKeys;
    for (const k of keys) {
      const e = this.byContent.get(k);
      if (!e) continue;
      e.refs += delta;
      if (e.refs <= 0) this.byContent.delete(k);
    }
  }

  keyOf(typeUrl: TypeUrl, obj: Record<string, unknown>): string {
    const seen = this.byObject.get(obj);
    if (seen && seen.typeUrl === typeUrl) return seen.key;
    return `${typeUrl}\u0000${canonicalJson(obj)}`;
  }
}

interface SnapshotInternal extends Snapshot {
  contentKeys: string[];
}

/**
 * Builds a snapshot after the checks a proxy relies on: every resource encodes against Envoy's
 * protos and passes its `(validate.rules)`; no duplicate names; every EDS name is used by a CDS
 * cluster and every cluster's EDS name has its ClusterLoadAssignment; every RDS name is used by a
 * listener and every listener's route config exists (XDS-RULES 7, 10).
 */
export function buildSnapshot(encoder: ResourceEncoder, nodeId: string, set: ResourceSet, changeTime = Date.now()): Snapshot {
  const problems: SnapshotProblem[] = [];
  const resources = new Map<TypeUrl, Map<string, EncodedResource>>();
  const contentKeys: string[] = [];
  // Names of resources refused above: not reported again as missing references.
  const refused = new Set<string>();
  for (const typeUrl of RESPONSE_ORDER) {
    const byName = new Map<string, EncodedResource>();
    for (const obj of set[typeUrl] ?? []) {
      const name = nameOf(typeUrl, obj);
      if (name === '') {
        problems.push({ typeUrl, name: '(unnamed)', message: 'has no name' });
        continue;
      }
      if (byName.has(name)) {
        problems.push({ typeUrl, name, message: 'duplicate name in one snapshot' });
        continue;
      }
      const enc = encoder.encode(typeUrl, obj);
      if (Array.isArray(enc)) {
        problems.push(...enc);
        refused.add(`${typeUrl} ${name}`);
        continue;
      }
      byName.set(name, enc);
      contentKeys.push(encoder.keyOf(typeUrl, obj));
    }
    resources.set(typeUrl, byName);
  }
  const refd = (from: TypeUrl) => new Set([...resources.get(from)!.values()].flatMap((r) => r.refs));
  const check = (from: TypeUrl, to: TypeUrl, what: string) => {
    const referenced = refd(from);
    const present = resources.get(to)!;
    for (const r of resources.get(from)!.values()) {
      for (const ref of r.refs) if (!present.has(ref) && !refused.has(`${to} ${ref}`)) problems.push({ typeUrl: from, name: r.name, message: `refers to ${what} "${ref}", which the snapshot lacks` });
    }
    for (const name of present.keys()) if (!referenced.has(name)) problems.push({ typeUrl: to, name, message: `is not used by any ${SHORT_NAME[from]} resource` });
  };
  check(TypeUrl.Cluster, TypeUrl.ClusterLoadAssignment, 'ClusterLoadAssignment');
  check(TypeUrl.Listener, TypeUrl.RouteConfiguration, 'RouteConfiguration');
  if (problems.length > 0) {
    encoder.dropUnused(contentKeys);
    throw new InconsistentSnapshotError(nodeId, problems);
  }
  const typeVersions = new Map<TypeUrl, string>(RESPONSE_ORDER.map((t) => [t, setVersion(resources.get(t)!.values())]));
  const version = hash(RESPONSE_ORDER.map((t) => typeVersions.get(t)).join('|'));
  const snap: SnapshotInternal = { version, typeVersions, resources, changeTime, contentKeys };
  return snap;
}

export type SnapshotListener = (snapshot: Snapshot) => void;

/**
 * Per-proxy snapshots, keyed by node id. Knows nothing of gRPC: streams watch it. Setting a
 * snapshot whose version equals the current one changes nothing and wakes nobody (XDS-RULES 6).
 */
export class SnapshotCache {
  private readonly snapshots = new Map<string, Snapshot>();
  private readonly watchers = new Map<string, Set<SnapshotListener>>();

  constructor(readonly encoder: ResourceEncoder = new ResourceEncoder()) {}

  /** Checks, encodes and publishes. Throws InconsistentSnapshotError and publishes nothing. */
  set(nodeId: string, set: ResourceSet, changeTime?: number): { snapshot: Snapshot; changed: boolean } {
    const snapshot = buildSnapshot(this.encoder, nodeId, set, changeTime);
    const old = this.snapshots.get(nodeId);
    if (old && old.version === snapshot.version) return { snapshot: old, changed: false };
    this.encoder.retain(snapshot);
    this.snapshots.set(nodeId, snapshot);
    if (old) this.encoder.release(old);
    for (const w of this.watchers.get(nodeId) ?? []) w(snapshot);
    return { snapshot, changed: true };
  }

  get(nodeId: string): Snapshot | undefined {
    return this.snapshots.get(nodeId);
  }

  delete(nodeId: string): void {
    const old = this.snapshots.get(nodeId);
    if (old) this.encoder.release(old);
    this.snapshots.delete(nodeId);
  }

  nodeIds(): string[] {
    return [...this.snapshots.keys()];
  }

  /** Calls `listener` with each new snapshot of `nodeId`; returns the unsubscribe function. */
  watch(nodeId: string, listener: SnapshotListener): () => void {
    let set = this.watchers.get(nodeId);
    if (!set) this.watchers.set(nodeId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.watchers.delete(nodeId);
    };
  }
}
