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
  /** Secrets it asks for over ADS (SDS configs with an `ads` source), which the snapshot must hold. */
  readonly secretRefs: readonly string[];
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

/** Names of the SDS secrets a resource asks the control plane for (those whose source is ADS). */
export function secretRefsOf(obj: unknown, out = new Set<string>()): string[] {
  if (Array.isArray(obj)) for (const v of obj) secretRefsOf(v, out);
  else if (obj !== null && typeof obj === 'object') {
    const o = obj as Record<string, unknown>;
    const source = o.sds_config as Record<string, unknown> | undefined;
    if (typeof o.name === 'string' && source && typeof source === 'object' && 'ads' in source) out.add(o.name);
    for (const v of Object.values(o)) if (v !== null && typeof v === 'object') secretRefsOf(v, out);
  }
  return [...out];
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
    const secretRefs = typeUrl === TypeUrl.Cluster || typeUrl === TypeUrl.Listener ? secretRefsOf(obj) : [];
    const res: EncodedResource = { typeUrl, name, version: hash(bytes), bytes, refs: referencesOf(typeUrl, obj), secretRefs };
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

  private readonly ids = new WeakMap<object, number>();
  private nextId = 1;
  private readonly entries = new Map<string, TypeEntry>();
  private readonly byArray = new WeakMap<readonly object[], TypeEntry>();
  private readonly checked = new WeakMap<TypeEntry, WeakMap<TypeEntry, SnapshotProblem[]>>();

  private idOf(o: object): number {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, (id = this.nextId++));
    return id;
  }

  /**
   * The resources of one type, checked, encoded and versioned, shared by every snapshot built from
   * the same objects (translation hands the same objects to proxies with the same config), so a
   * mesh-wide change costs one build per distinct set, not one per proxy.
   */
  typeEntry(typeUrl: TypeUrl, objs: readonly Record<string, unknown>[]): TypeEntry {
    const same = this.byArray.get(objs);
    if (same && same.typeUrl === typeUrl && this.entries.get(same.key) === same) return same;
    const key = `${typeUrl} ${objs.map((o) => this.idOf(o)).join(',')}`;
    const hit = this.entries.get(key);
    if (hit) {
      this.byArray.set(objs, hit);
      return hit;
    }
    const problems: SnapshotProblem[] = [];
    const refused = new Set<string>();
    const map = new Map<string, EncodedResource>();
    const contentKeys: string[] = [];
    for (const obj of objs) {
      const name = nameOf(typeUrl, obj);
      if (name === '') {
        problems.push({ typeUrl, name: '(unnamed)', message: 'has no name' });
        continue;
      }
      if (map.has(name) || refused.has(name)) {
        problems.push({ typeUrl, name, message: 'duplicate name in one snapshot' });
        continue;
      }
      const enc = this.encode(typeUrl, obj);
      if (Array.isArray(enc)) {
        problems.push(...enc);
        refused.add(name);
        continue;
      }
      map.set(name, enc);
      contentKeys.push(this.keyOf(typeUrl, obj));
    }
    const entry: TypeEntry = { key, typeUrl, map, version: setVersion(map.values()), contentKeys, problems, refused, refs: 0 };
    this.entries.set(key, entry);
    this.byArray.set(objs, entry);
    return entry;
  }

  /** Reference problems between a referring set and the referred set, computed once per pair. */
  crossCheck(from: TypeEntry, to: TypeEntry, what: string): SnapshotProblem[] {
    let byTo = this.checked.get(from);
    if (!byTo) this.checked.set(from, (byTo = new WeakMap()));
    const known = byTo.get(to);
    if (known) return known;
    const problems: SnapshotProblem[] = [];
    const referenced = new Set<string>();
    for (const r of from.map.values()) {
      for (const ref of r.refs) {
        referenced.add(ref);
        if (!to.map.has(ref) && !to.refused.has(ref)) problems.push({ typeUrl: from.typeUrl, name: r.name, message: `refers to ${what} "${ref}", which the snapshot lacks` });
      }
    }
    for (const name of to.map.keys()) if (!referenced.has(name)) problems.push({ typeUrl: to.typeUrl, name, message: `is not used by any ${SHORT_NAME[from.typeUrl]} resource` });
    byTo.set(to, problems);
    return problems;
  }

  /**
   * Secrets that resources of `from` ask for over ADS but `secrets` lacks: Envoy would wait for
   * them and keep those listeners and clusters warming forever. (An unused secret is harmless.)
   * Computed once per pair of entries, like crossCheck, so proxies sharing their clusters share it.
   */
  missingSecrets(from: TypeEntry, secrets: TypeEntry): SnapshotProblem[] {
    let bySecrets = this.secretsChecked.get(from);
    if (!bySecrets) this.secretsChecked.set(from, (bySecrets = new WeakMap()));
    const known = bySecrets.get(secrets);
    if (known) return known;
    const problems: SnapshotProblem[] = [];
    for (const r of from.map.values()) {
      for (const ref of r.secretRefs) {
        if (!secrets.map.has(ref) && !secrets.refused.has(ref)) problems.push({ typeUrl: from.typeUrl, name: r.name, message: `refers to Secret "${ref}", which the snapshot lacks` });
      }
    }
    bySecrets.set(secrets, problems);
    return problems;
  }

  private readonly secretsChecked = new WeakMap<TypeEntry, WeakMap<TypeEntry, SnapshotProblem[]>>();

  retain(snapshot: Snapshot): void {
    for (const e of (snapshot as SnapshotInternal).entries) {
      if (e.refs++ === 0) this.adjust(e.contentKeys, 1);
    }
  }

  release(snapshot: Snapshot): void {
    for (const e of (snapshot as SnapshotInternal).entries) {
      if (--e.refs === 0) {
        this.entries.delete(e.key);
        this.adjust(e.contentKeys, -1);
      }
    }
  }

  /** Forgets type sets no snapshot holds (built for a snapshot that was refused). */
  dropEntries(entries: readonly TypeEntry[]): void {
    for (const e of entries) {
      if (e.refs === 0) {
        this.entries.delete(e.key);
        this.dropUnused(e.contentKeys);
      }
    }
  }

  private adjust(keys: readonly string[], delta: number): void {
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

/** One type's resources as a snapshot holds them; shared between snapshots with equal input. */
export interface TypeEntry {
  readonly key: string;
  readonly typeUrl: TypeUrl;
  readonly map: ReadonlyMap<string, EncodedResource>;
  readonly version: string;
  readonly contentKeys: readonly string[];
  readonly problems: readonly SnapshotProblem[];
  readonly refused: ReadonlySet<string>;
  refs: number;
}

interface SnapshotInternal extends Snapshot {
  entries: TypeEntry[];
}

/**
 * Builds a snapshot after the checks a proxy relies on: every resource encodes against Envoy's
 * protos and passes its `(validate.rules)`; no duplicate names; every EDS name is used by a CDS
 * cluster and every cluster's EDS name has its ClusterLoadAssignment; every RDS name is used by a
 * listener and every listener's route config exists (XDS-RULES 7, 10).
 */
export function buildSnapshot(encoder: ResourceEncoder, nodeId: string, set: ResourceSet, changeTime = Date.now()): Snapshot {
  const entries = RESPONSE_ORDER.map((t) => encoder.typeEntry(t, set[t] ?? []));
  const byType = new Map(entries.map((e) => [e.typeUrl, e]));
  const problems = [
    ...entries.flatMap((e) => e.problems),
    ...encoder.crossCheck(byType.get(TypeUrl.Cluster)!, byType.get(TypeUrl.ClusterLoadAssignment)!, 'ClusterLoadAssignment'),
    ...encoder.crossCheck(byType.get(TypeUrl.Listener)!, byType.get(TypeUrl.RouteConfiguration)!, 'RouteConfiguration'),
    ...encoder.missingSecrets(byType.get(TypeUrl.Cluster)!, byType.get(TypeUrl.Secret)!),
    ...encoder.missingSecrets(byType.get(TypeUrl.Listener)!, byType.get(TypeUrl.Secret)!),
  ];
  if (problems.length > 0) {
    encoder.dropEntries(entries);
    throw new InconsistentSnapshotError(nodeId, problems);
  }
  const typeVersions = new Map<TypeUrl, string>(entries.map((e) => [e.typeUrl, e.version]));
  const version = hash(RESPONSE_ORDER.map((t) => typeVersions.get(t)).join('|'));
  const resources = new Map<TypeUrl, ReadonlyMap<string, EncodedResource>>(entries.map((e) => [e.typeUrl, e.map]));
  const snap: SnapshotInternal = { version, typeVersions, resources, changeTime, entries };
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
    if (old && old.version === snapshot.version) {
      this.encoder.dropEntries((snapshot as SnapshotInternal).entries);
      return { snapshot: old, changed: false };
    }
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
