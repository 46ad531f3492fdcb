import { hash as digest } from 'node:crypto';
import { canonicalJson } from '../core/index.js';
import { checkResource, type ProtoViolation } from './proto-check.js';
import { messageType, RESPONSE_ORDER, SHORT_NAME, TypeUrl } from './protos.js';

import { splitOf, type ResourceSet } from '../xds/index.js';

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
  // One-shot hashing: about a third of the cost of createHash() for the short inputs here.
  return digest('sha256', s, 'base64url').slice(0, 22);
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

/** One distinct content, encoded; counted by the type sets holding it. */
interface ContentEntry {
  /** The map key: type URL and canonical JSON (the very string object the map holds). */
  readonly key: string;
  /** Unique per entry, for keys of sets of contents. */
  readonly serial: number;
  readonly res: EncodedResource;
  refs: number;
  /** False once forgotten; a later equal content gets a new entry. */
  live: boolean;
}

/**
 * Encodes resources once: equal content (by canonical JSON) maps to the same EncodedResource, so
 * 2000 proxies sharing a cluster share its bytes. Entries are reference-counted by the snapshots
 * holding them and dropped when none does. The hot paths (a proxy's snapshot built from objects
 * already seen, retain and release) hold entries directly and never look up content strings:
 * comparing two equal 300 KB keys is what made them slow.
 */
export class ResourceEncoder {
  private readonly byContent = new Map<string, ContentEntry>();
  /**
   * Fast path for the same object handed in again (translation memoizes resources shared by many
   * proxies): skips re-serializing it. Callers must not mutate resources after handing them in.
   */
  private readonly byObject = new WeakMap<object, { typeUrl: TypeUrl; entry: ContentEntry }>();

  /** Checks and encodes, or returns the shared encoding; or the problems found. */
  private entryOf(typeUrl: TypeUrl, obj: Record<string, unknown>): ContentEntry | SnapshotProblem[] {
    const seen = this.byObject.get(obj);
    if (seen && seen.typeUrl === typeUrl && seen.entry.live) return seen.entry;
    const key = `${typeUrl}\u0000${canonicalJson(obj)}`;
    const hit = this.byContent.get(key);
    if (hit) {
      this.byObject.set(obj, { typeUrl, entry: hit });
      return hit;
    }
    const name = nameOf(typeUrl, obj);
    const violations: ProtoViolation[] = checkResource(typeUrl, obj);
    if (violations.length > 0) return violations.map((v) => ({ typeUrl, name, field: v.field, message: v.message }));
    const type = messageType(typeUrl);
    // A copy of its own: protobufjs writes small messages into Node's shared 8 KB buffer slabs, and
    // a long-lived slice would keep its whole slab (mostly garbage) alive.
    const bytes = new Uint8Array(type.encode(type.fromObject(obj)).finish());
    const secretRefs = typeUrl === TypeUrl.Cluster || typeUrl === TypeUrl.Listener ? secretRefsOf(obj) : [];
    const res: EncodedResource = { typeUrl, name, version: hash(bytes), bytes, refs: referencesOf(typeUrl, obj), secretRefs };
    const entry: ContentEntry = { key, serial: this.nextSerial++, res, refs: 0, live: true };
    this.byContent.set(key, entry);
    this.byObject.set(obj, { typeUrl, entry });
    return entry;
  }

  /** Distinct contents held, for tests and metrics. */
  get size(): number {
    return this.byContent.size;
  }

  private nextSerial = 1;
  /** Type sets by the array they were built from (translation shares arrays between proxies). */
  private readonly byArray = new WeakMap<readonly object[], TypeEntryInternal>();
  /** Type sets by content: equal resources, the same set, so a round that changes nothing for a proxy leaves its snapshot alone. */
  private readonly byContentKey = new Map<string, LeafEntry>();
  private readonly splits = new Map<string, SplitEntry>();

  /**
   * The resources of one type, checked, encoded and versioned, shared by every snapshot holding
   * the same content: a mesh-wide change costs one build per distinct set, not one per proxy.
   * A list from `joinShared` is built from its parts: the big shared part once for every proxy
   * holding it, the proxy's own few resources apart.
   */
  typeEntry(typeUrl: TypeUrl, objs: readonly Record<string, unknown>[]): TypeEntry {
    const same = this.byArray.get(objs);
    if (same && same.typeUrl === typeUrl && !same.dead) return same;
    const split = splitOf(objs);
    const entry = split ? this.splitEntry(typeUrl, split.shared, split.own) : this.leafEntry(typeUrl, objs);
    this.byArray.set(objs, entry);
    return entry;
  }

  private leafEntry(typeUrl: TypeUrl, objs: readonly Record<string, unknown>[]): LeafEntry {
    const same = this.byArray.get(objs);
    if (same && same.typeUrl === typeUrl && !same.dead && same.kind === 'leaf') return same;
    // A new array of objects already seen (a proxy's own listeners, rebuilt each round): when they
    // all are, and a set of exactly those is known, that set is the answer (it was checked for
    // names then). Nothing else is built.
    const seen: ContentEntry[] = [];
    for (const obj of objs) {
      const e = this.byObject.get(obj);
      if (!e || e.typeUrl !== typeUrl || !e.entry.live) break;
      seen.push(e.entry);
    }
    if (seen.length === objs.length) {
      const known = this.byContentKey.get(`${typeUrl} ${seen.map((c) => c.serial).join(',')}`);
      if (known) {
        this.byArray.set(objs, known);
        return known;
      }
    }
    const problems: SnapshotProblem[] = [];
    const refused = new Set<string>();
    const map = new Map<string, EncodedResource>();
    const contents: ContentEntry[] = [];
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
      const enc = this.entryOf(typeUrl, obj);
      if (Array.isArray(enc)) {
        problems.push(...enc);
        refused.add(name);
        continue;
      }
      map.set(name, enc.res);
      contents.push(enc);
    }
    const contentKey = problems.length === 0 ? `${typeUrl} ${contents.map((c) => c.serial).join(',')}` : undefined;
    const known = contentKey === undefined ? undefined : this.byContentKey.get(contentKey);
    if (known) {
      this.byArray.set(objs, known);
      return known;
    }
    const entry: LeafEntry = { kind: 'leaf', serial: this.nextSerial++, contentKey, typeUrl, map, version: setVersion(map.values()), contents, problems, refused, refs: 0, dead: false };
    if (contentKey !== undefined) this.byContentKey.set(contentKey, entry);
    this.byArray.set(objs, entry);
    return entry;
  }

  private splitEntry(typeUrl: TypeUrl, sharedObjs: readonly Record<string, unknown>[], ownObjs: readonly Record<string, unknown>[]): SplitEntry {
    const shared = this.leafEntry(typeUrl, sharedObjs);
    const own = this.leafEntry(typeUrl, ownObjs);
    const key = `${shared.serial},${own.serial}`;
    const known = this.splits.get(key);
    if (known) return known;
    const problems = [...shared.problems, ...own.problems];
    for (const name of [...own.map.keys(), ...own.refused]) {
      if (shared.map.has(name) || shared.refused.has(name)) problems.push({ typeUrl, name, message: 'duplicate name in one snapshot' });
    }
    const entry: SplitEntry = {
      kind: 'split',
      key,
      typeUrl,
      shared,
      own,
      map: new SplitMap(shared.map, own.map),
      version: hash(`${shared.version}+${own.version}`),
      problems,
      refused: { has: (n: string) => shared.refused.has(n) || own.refused.has(n) },
      refs: 0,
      dead: false,
    };
    this.splits.set(key, entry);
    return entry;
  }

  /** Reference problems between a referring set and the referred set, computed once per pair. */
  crossCheck(from: TypeEntry, to: TypeEntry, what: string): SnapshotProblem[] {
    const f = from as TypeEntryInternal;
    if (f.kind === 'leaf') return this.leafCheck(f, to, what).problems;
    let byTo = this.splitChecked.get(f);
    if (!byTo) this.splitChecked.set(f, (byTo = new WeakMap()));
    const known = byTo.get(to);
    if (known) return known;
    const shared = this.leafCheck(f.shared, to, what);
    const own = this.leafCheck(f.own, to, what);
    const problems = [...shared.missing, ...own.missing];
    // Unused by both parts (usually nothing: the shared part refers to every route).
    const ownUnused = new Set(own.unused);
    for (const name of shared.unused) if (ownUnused.has(name)) problems.push({ typeUrl: to.typeUrl, name, message: `is not used by any ${SHORT_NAME[from.typeUrl]} resource` });
    byTo.set(to, problems);
    return problems;
  }

  private leafCheck(from: LeafEntry, to: TypeEntry, what: string): { problems: SnapshotProblem[]; missing: SnapshotProblem[]; unused: string[] } {
    let byTo = this.checked.get(from);
    if (!byTo) this.checked.set(from, (byTo = new WeakMap()));
    const known = byTo.get(to);
    if (known) return known;
    const missing: SnapshotProblem[] = [];
    const referenced = new Set<string>();
    for (const r of from.map.values()) {
      for (const ref of r.refs) {
        referenced.add(ref);
        if (!to.map.has(ref) && !to.refused.has(ref)) missing.push({ typeUrl: from.typeUrl, name: r.name, message: `refers to ${what} "${ref}", which the snapshot lacks` });
      }
    }
    const unused = [...to.map.keys()].filter((name) => !referenced.has(name));
    const result = { missing, unused, problems: [...missing, ...unused.map((name) => ({ typeUrl: to.typeUrl, name, message: `is not used by any ${SHORT_NAME[from.typeUrl]} resource` }))] };
    byTo.set(to, result);
    return result;
  }

  private readonly checked = new WeakMap<LeafEntry, WeakMap<TypeEntry, { problems: SnapshotProblem[]; missing: SnapshotProblem[]; unused: string[] }>>();
  private readonly splitChecked = new WeakMap<SplitEntry, WeakMap<TypeEntry, SnapshotProblem[]>>();

  /**
   * Secrets that resources of `from` ask for over ADS but `secrets` lacks: Envoy would wait for
   * them and keep those listeners and clusters warming forever. (An unused secret is harmless.)
   * Computed once per pair of entries, like crossCheck, so proxies sharing their clusters share it.
   */
  missingSecrets(from: TypeEntry, secrets: TypeEntry): SnapshotProblem[] {
    const f = from as TypeEntryInternal;
    let bySecrets = this.secretsChecked.get(f);
    if (!bySecrets) this.secretsChecked.set(f, (bySecrets = new WeakMap()));
    const known = bySecrets.get(secrets);
    if (known) return known;
    let problems: SnapshotProblem[];
    if (f.kind === 'split') problems = [...this.missingSecrets(f.shared, secrets), ...this.missingSecrets(f.own, secrets)];
    else {
      problems = [];
      for (const r of f.map.values()) {
        for (const ref of r.secretRefs) {
          if (!secrets.map.has(ref) && !secrets.refused.has(ref)) problems.push({ typeUrl: f.typeUrl, name: r.name, message: `refers to Secret "${ref}", which the snapshot lacks` });
        }
      }
    }
    bySecrets.set(secrets, problems);
    return problems;
  }

  private readonly secretsChecked = new WeakMap<TypeEntryInternal, WeakMap<TypeEntry, SnapshotProblem[]>>();

  /**
   * Do two sets of one type hold the same names, and the second no problems? Then every reference
   * check one passed, the other passes too (see `SnapshotCache.setEndpoints`). Once per pair.
   */
  sameNamesClean(before: TypeEntry, after: TypeEntry): boolean {
    return pairwise(this.namesCompared, before, after, () => {
      if (after.problems.length > 0 || before.problems.length > 0 || before.map.size !== after.map.size) return false;
      for (const name of after.map.keys()) if (!before.map.has(name)) return false;
      return true;
    });
  }

  private readonly namesCompared = new WeakMap<object, WeakMap<TypeEntry, boolean>>();

  /** Holds one entry for a snapshot (retain, for one type). */
  retainEntry(e: TypeEntry): void {
    this.hold(e as TypeEntryInternal);
  }

  /** Lets go of one entry of a snapshot (release, for one type). */
  releaseEntry(e: TypeEntry): void {
    this.unhold(e as TypeEntryInternal);
  }

  retain(snapshot: Snapshot): void {
    for (const e of (snapshot as SnapshotInternal).entries) this.hold(e);
  }

  release(snapshot: Snapshot): void {
    for (const e of (snapshot as SnapshotInternal).entries) this.unhold(e);
  }

  private hold(e: TypeEntryInternal): void {
    if (e.refs++ > 0) return;
    if (e.kind === 'leaf') this.adjust(e.contents, 1);
    else {
      this.hold(e.shared);
      this.hold(e.own);
    }
  }

  private unhold(e: TypeEntryInternal): void {
    if (--e.refs > 0) return;
    this.kill(e);
    if (e.kind === 'leaf') this.adjust(e.contents, -1);
    else {
      this.unhold(e.shared);
      this.unhold(e.own);
    }
  }

  private kill(e: TypeEntryInternal): void {
    e.dead = true;
    if (e.kind === 'split') {
      if (this.splits.get(e.key) === e) this.splits.delete(e.key);
    } else if (e.contentKey !== undefined && this.byContentKey.get(e.contentKey) === e) this.byContentKey.delete(e.contentKey);
  }

  /** Forgets type sets no snapshot holds (built for a snapshot that was refused or unchanged). */
  dropEntries(entries: readonly TypeEntry[]): void {
    for (const e of entries as readonly TypeEntryInternal[]) {
      if (e.refs > 0) continue;
      this.kill(e);
      if (e.kind === 'leaf') {
        for (const c of e.contents) if (c.refs === 0) this.forget(c);
      } else this.dropEntries([e.shared, e.own]);
    }
  }

  private adjust(contents: readonly ContentEntry[], delta: number): void {
    for (const c of contents) {
      if (!c.live) continue;
      c.refs += delta;
      if (c.refs <= 0) this.forget(c);
    }
  }

  private forget(c: ContentEntry): void {
    c.live = false;
    if (this.byContent.get(c.key) === c) this.byContent.delete(c.key);
  }
}

/**
 * An answer about a pair of shared objects (snapshot maps, type entries, interned sets), worked
 * out once for every stream or proxy holding the pair. Keys are never changed in place.
 */
export function pairwise<K extends object, V>(cache: WeakMap<object, WeakMap<K, V>>, a: object, b: K, compute: () => V): V {
  let byB = cache.get(a);
  if (!byB) cache.set(a, (byB = new WeakMap()));
  let v = byB.get(b);
  if (v === undefined) byB.set(b, (v = compute()));
  return v;
}

/** One type's resources as a snapshot holds them; shared between snapshots with equal content. */
export interface TypeEntry {
  readonly typeUrl: TypeUrl;
  readonly map: ReadonlyMap<string, EncodedResource>;
  readonly version: string;
  readonly problems: readonly SnapshotProblem[];
  /** Names whose resources failed their checks. */
  readonly refused: { has(name: string): boolean };
  refs: number;
}

interface LeafEntry extends TypeEntry {
  readonly kind: 'leaf';
  readonly serial: number;
  /** Undefined for a set with problems (never shared). */
  readonly contentKey?: string;
  readonly contents: readonly ContentEntry[];
  readonly refused: ReadonlySet<string>;
  dead: boolean;
}

/** A list from `joinShared`: the shared part (one entry for every proxy holding it) and this proxy's own. */
interface SplitEntry extends TypeEntry {
  readonly kind: 'split';
  readonly key: string;
  readonly shared: LeafEntry;
  readonly own: LeafEntry;
  dead: boolean;
}

type TypeEntryInternal = LeafEntry | SplitEntry;

/**
 * A snapshot's resources of one type when they come in a shared part and a proxy's own part
 * (names never in both). Streams diff the shared parts once for every proxy holding them.
 */
export class SplitMap implements ReadonlyMap<string, EncodedResource> {
  constructor(
    readonly shared: ReadonlyMap<string, EncodedResource>,
    readonly own: ReadonlyMap<string, EncodedResource>,
  ) {}

  get size(): number {
    return this.shared.size + this.own.size;
  }

  get(name: string): EncodedResource | undefined {
    return this.own.get(name) ?? this.shared.get(name);
  }

  has(name: string): boolean {
    return this.own.has(name) || this.shared.has(name);
  }

  *entries(): MapIterator<[string, EncodedResource]> {
    yield* this.shared.entries();
    yield* this.own.entries();
  }

  *keys(): MapIterator<string> {
    yield* this.shared.keys();
    yield* this.own.keys();
  }

  *values(): MapIterator<EncodedResource> {
    yield* this.shared.values();
    yield* this.own.values();
  }

  [Symbol.iterator](): MapIterator<[string, EncodedResource]> {
    return this.entries();
  }

  forEach(fn: (value: EncodedResource, key: string, map: ReadonlyMap<string, EncodedResource>) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
}

interface SnapshotInternal extends Snapshot {
  entries: TypeEntryInternal[];
  /** The set it was built from, or one of equal content (see `SnapshotCache.setEndpoints`). */
  source: ResourceSet;
}

/** Where each type is in RESPONSE_ORDER (so in a snapshot's entries). */
const AT = {
  cds: RESPONSE_ORDER.indexOf(TypeUrl.Cluster),
  eds: RESPONSE_ORDER.indexOf(TypeUrl.ClusterLoadAssignment),
  lds: RESPONSE_ORDER.indexOf(TypeUrl.Listener),
  rds: RESPONSE_ORDER.indexOf(TypeUrl.RouteConfiguration),
  sds: RESPONSE_ORDER.indexOf(TypeUrl.Secret),
};

/**
 * Builds a snapshot after the checks a proxy relies on: every resource encodes against Envoy's
 * protos and passes its `(validate.rules)`; no duplicate names; every EDS name is used by a CDS
 * cluster and every cluster's EDS name has its ClusterLoadAssignment; every RDS name is used by a
 * listener and every listener's route config exists (XDS-RULES 7, 10).
 */
export function buildSnapshot(encoder: ResourceEncoder, nodeId: string, set: ResourceSet, changeTime = Date.now()): Snapshot {
  // Built per proxy in every round, so without intermediate arrays and maps.
  const entries: TypeEntryInternal[] = [];
  for (const t of RESPONSE_ORDER) entries.push(encoder.typeEntry(t, set[t] ?? []) as TypeEntryInternal);
  const [cds, eds, lds, rds, sds] = [entries[AT.cds]!, entries[AT.eds]!, entries[AT.lds]!, entries[AT.rds]!, entries[AT.sds]!];
  // Each check is remembered per pair of entries; the ones that pass add nothing here.
  let problems: SnapshotProblem[] | undefined;
  const add = (found: readonly SnapshotProblem[]) => {
    if (found.length > 0) (problems ??= []).push(...found);
  };
  for (const e of entries) add(e.problems);
  add(encoder.crossCheck(cds, eds, 'ClusterLoadAssignment'));
  add(encoder.crossCheck(lds, rds, 'RouteConfiguration'));
  add(encoder.missingSecrets(cds, sds));
  add(encoder.missingSecrets(lds, sds));
  if (problems) {
    encoder.dropEntries(entries);
    throw new InconsistentSnapshotError(nodeId, problems);
  }
  return snapshotOf(entries, set, changeTime);
}

function snapshotOf(entries: TypeEntryInternal[], source: ResourceSet, changeTime: number): SnapshotInternal {
  const typeVersions = new Map<TypeUrl, string>();
  const resources = new Map<TypeUrl, ReadonlyMap<string, EncodedResource>>();
  // The type versions are content hashes already (each a hash of its whole set, never a
  // composition of parts, or a prefix could miss a change): their first 48 bits each, joined, tell
  // this node's snapshots apart without hashing again for every proxy in every round.
  let version = '';
  for (const e of entries) {
    typeVersions.set(e.typeUrl, e.version);
    resources.set(e.typeUrl, e.map);
    version += version === '' ? e.version.slice(0, 8) : `.${e.version.slice(0, 8)}`;
  }
  return { version, typeVersions, resources, changeTime, entries, source };
}

/**
 * Equal versions, type by type: the same entry (shared by content) or the same type version. Not
 * the snapshot versions, which are built by concatenation and would be flattened to compare.
 */
function sameContent(a: SnapshotInternal, b: SnapshotInternal): boolean {
  for (let i = 0; i < a.entries.length; i++) {
    const x = a.entries[i]!;
    const y = b.entries[i]!;
    if (x !== y && x.version !== y.version) return false;
  }
  return a.entries.length === b.entries.length;
}

/** The same lists, by identity, for every type but ClusterLoadAssignment. */
function sameExceptEndpoints(a: ResourceSet, b: ResourceSet): boolean {
  for (const t of RESPONSE_ORDER) if (t !== TypeUrl.ClusterLoadAssignment && a[t] !== b[t]) return false;
  return true;
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
    const old = this.snapshots.get(nodeId) as SnapshotInternal | undefined;
    if (old && sameContent(old, snapshot as SnapshotInternal)) {
      this.encoder.dropEntries((snapshot as SnapshotInternal).entries);
      old.source = set; // equal content, and the set the caller holds now
      return { snapshot: old, changed: false };
    }
    this.encoder.retain(snapshot);
    this.publish(nodeId, snapshot);
    if (old) this.encoder.release(old);
    return { snapshot, changed: true };
  }

  /**
   * `set` when it differs from the set the current snapshot came from (the very object the caller
   * last handed in) only in its ClusterLoadAssignments: the reconciler's endpoint-only rounds. When
   * the new assignments have the same names and pass their own checks, every other check of the
   * current snapshot still holds (clusters and their EDS names are the same objects), so only the
   * assignments are checked, held and released: one shared entry for every proxy holding it,
   * instead of five of each proxy's. Anything else is `set`.
   */
  setEndpoints(nodeId: string, set: ResourceSet, changeTime?: number): { snapshot: Snapshot; changed: boolean } {
    const old = this.snapshots.get(nodeId) as SnapshotInternal | undefined;
    const src = old?.source;
    if (!old || !src || !sameExceptEndpoints(src, set)) return this.set(nodeId, set, changeTime);
    const entry = this.encoder.typeEntry(TypeUrl.ClusterLoadAssignment, set[TypeUrl.ClusterLoadAssignment] ?? []) as TypeEntryInternal;
    const before = old.entries[AT.eds]!;
    if (entry === before || entry.version === before.version) {
      if (entry !== before) this.encoder.dropEntries([entry]);
      old.source = set;
      return { snapshot: old, changed: false };
    }
    if (!this.encoder.sameNamesClean(before, entry)) return this.set(nodeId, set, changeTime);
    const entries = old.entries.slice();
    entries[AT.eds] = entry;
    const snapshot = snapshotOf(entries, set, changeTime ?? Date.now());
    this.encoder.retainEntry(entry);
    this.publish(nodeId, snapshot);
    this.encoder.releaseEntry(before);
    return { snapshot, changed: true };
  }

  private publish(nodeId: string, snapshot: Snapshot): void {
    this.snapshots.set(nodeId, snapshot);
    for (const w of this.watchers.get(nodeId) ?? []) w(snapshot);
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
