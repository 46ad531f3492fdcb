import { pairwise, setVersion, SplitMap, type EncodedResource, type Snapshot, type SnapshotCache } from './cache.js';
import { isTypeUrl, RESPONSE_ORDER, TypeUrl } from './protos.js';
import { wireBytes, withEncoded } from './wire.js';
import type { SendAccount } from './budget.js';
import { splitNodeId } from '../core/identity.js';

export interface Node {
  id?: string;
  cluster?: string;
  [k: string]: unknown;
}

export interface DiscoveryRequest {
  version_info?: string;
  node?: Node;
  resource_names?: readonly string[];
  type_url?: string;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string } | null;
}

export interface DeltaDiscoveryRequest {
  node?: Node;
  type_url?: string;
  resource_names_subscribe?: readonly string[];
  resource_names_unsubscribe?: readonly string[];
  /** A Map when the server's deserializer read it (wire.ts), a plain object from other callers. */
  initial_resource_versions?: Record<string, string> | Map<string, string>;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string } | null;
}

interface Any {
  type_url: string;
  value: Uint8Array;
}

export interface DiscoveryResponse {
  version_info: string;
  resources: Any[];
  type_url: string;
  nonce: string;
  control_plane: { identifier: string };
}

export interface DeltaDiscoveryResponse {
  system_version_info: string;
  resources: { name: string; version: string; resource: Any }[];
  type_url: string;
  removed_resources: readonly string[];
  nonce: string;
  control_plane: { identifier: string };
}

export type Variant = 'sotw' | 'delta';

/** Who the transport says is on the other end; checked against `node.id` on the first request. */
export type Identity =
  | { kind: 'dataplane'; mesh: string; name: string }
  /** A token bound to tags: any Dataplane of the mesh with those tags (checked against the store at connect). */
  | { kind: 'dataplane-tags'; mesh: string; tags: Record<string, string> }
  | { kind: 'unauthenticated' };

/** Ends the stream with a gRPC status. */
export class StreamError extends Error {
  constructor(
    readonly grpcCode: number,
    message: string,
  ) {
    super(message);
  }
}

export const GRPC_INVALID_ARGUMENT = 3;
export const GRPC_PERMISSION_DENIED = 7;
export const GRPC_RESOURCE_EXHAUSTED = 8;
export const GRPC_UNAVAILABLE = 14;
export const GRPC_UNAUTHENTICATED = 16;

/**
 * What the stream tells the rest of the control plane. The snapshot cache knows nothing of
 * streams and streams nothing of translation; these callbacks sit between them and feed status
 * and metrics. They must not throw.
 */
export interface StreamHooks {
  /** `sends`: the stream's account on the send budget, which tells what it has not yet written. */
  onConnect(nodeId: string, variant: Variant, sends?: Pick<SendAccount, 'unwritten'>): void;
  /** `reason`: why the stream ended, for the proxy's status (see AdsServer). */
  onDisconnect(nodeId: string, variant: Variant, reason?: string): void;
  onResponse(nodeId: string, typeUrl: TypeUrl, version: string, variant: Variant, resources: number): void;
  onAck(nodeId: string, typeUrl: TypeUrl, version: string, changeTime: number): void;
  /** `retryInMs`: when the rejected config is sent again, unless it changes first (rule 5). */
  onNack(nodeId: string, typeUrl: TypeUrl, version: string, message: string, retryInMs: number): void;
  onIgnored(nodeId: string | undefined, reason: 'stale_nonce' | 'unknown_type'): void;
  /** A response of about `bytes` on the wire, over what gRPC clients receive by default (XDS-RULES 24); `first` for this stream and type. */
  onOversized(nodeId: string, typeUrl: TypeUrl, variant: Variant, bytes: number, first: boolean): void;
}

interface TypeState {
  readonly typeUrl: TypeUrl;
  /** Never changed in place: replaced, and shared between streams subscribing the same names (`internNames`). */
  subscribed: ReadonlySet<string>;
  /** SotW: the frozen request list `subscribed` was last set from (see `subscribe`). */
  namesFrom: readonly string[] | undefined;
  wildcard: boolean;
  /** The client named resources explicitly at least once (then an empty list means none). */
  explicit: boolean;
  lastNonce?: string;
  /** Version of the last response and the change time of the snapshot it came from. */
  sentVersion?: string;
  sentChangeTime: number;
  inFlight: boolean;
  ackedVersion?: string;
  /** No response of this type before this time (a NACK's backoff). */
  backoffUntil: number;
  /**
   * The content the last NACK rejected (SotW: the response's version; delta: the type's version
   * in the snapshot it came from), when it was, and how many NACKs in a row rejected that same
   * content before it. Each of those doubles the backoff, up to `nackBackoffMaxMs`; other content
   * goes after the first backoff (see `backOff`).
   */
  nackedContent: string | undefined;
  nackedAt: number;
  nackRepeats: number;
  /** Delta: the type's version in the snapshot the last response came from. */
  sentTypeVersion: string | undefined;
  /** SotW: the resources the last response carried. Delta: unused. */
  sent: ReadonlyMap<string, EncodedResource>;
  /**
   * Delta: the snapshot map the client was last brought up to date with, while nothing else is
   * pending (no subscription change since, nothing forced): nothing can differ until the snapshot's
   * map changes. Every stream asks this of every type at each new snapshot and each ACK, and one
   * field answers it.
   */
  settled: ReadonlyMap<string, EncodedResource> | undefined;
  /** Delta: compare everything at the next diff (first request, wildcard switched). */
  subsDirty: boolean;
  /** Delta: names (un)subscribed since the last diff; only they and what changed are compared. */
  pending: Set<string>;
  /** Delta: what the client holds, name to version. */
  clientHas: ClientView;
  /** Delta: subscribed names that do not exist and the client was told so. */
  toldMissing: Set<string>;
  /** Names to send again even if unchanged (EDS after its Cluster changed, XDS-RULES 9). */
  forced: Set<string>;
  /**
   * SotW: names the client unsubscribed since the last response, which it therefore no longer
   * holds though `sent` has them (see `noteDropped`).
   */
  dropped: Set<string>;
  /**
   * Nonces of responses sent before the last one and not answered yet: earlier responses still in
   * flight (the client answers each in order), and for delta the earlier pieces of the last
   * response (see DELTA_MOST_BYTES). A NACK of any of them counts (rule 5), though SotW ignores
   * such a stale request otherwise (rule 11).
   */
  pieceNonces: readonly string[];
  /** One of those was rejected, so the last response's ACK does not make it acknowledged. */
  pieceNacked: boolean;
  /**
   * Delta: names removed by responses not acknowledged yet (after a NACK the proxy may still hold
   * them). Bounded like `sentSinceAck` (TOO_MANY_REMOVED).
   */
  removedSinceAck: readonly string[];
  /**
   * Delta: resources sent by responses not acknowledged yet. After a NACK the proxy may hold an
   * older version of each, or none, whatever the server noted when it sent them.
   */
  sentSinceAck: readonly EncodedResource[];
  /** A response of this type was over GRPC_DEFAULT_RECEIVE_BYTES (reported once per stream and type). */
  oversized: boolean;
}

export interface StreamOptions {
  variant: Variant;
  cache: SnapshotCache;
  identity: Identity;
  controlPlaneId: string;
  nackBackoffMs: number;
  /** The longest backoff when a proxy rejects the same config again and again (default: nackBackoffMs, no growth). */
  nackBackoffMaxMs?: number;
  hooks: StreamHooks;
  /** The stream failed outside `handle` (see pumpApart): the transport ends it; the stream closes itself after. */
  onFailure?(err: unknown): void;
  /** Hands a response to the transport; `bytes` is the size of the resources it carries. */
  send(response: DiscoveryResponse | DeltaDiscoveryResponse, bytes: number): void;
  /**
   * This stream's account on the send budget all streams share: while that is spent, or while
   * what this stream sent before is not yet written, a stream with something to send waits.
   */
  budget?: SendAccount;
  /** Delta: send responses of more bytes than this in pieces, each with its own nonce (DELTA_MOST_BYTES; default: never). */
  pieceBytes?: number;
  /**
   * Delta: resources sent, and names removed, by responses not yet acknowledged that a type lists
   * at most, each (default 8192; see TOO_MANY_SENT and TOO_MANY_REMOVED).
   */
  sentSinceAckKept?: number;
  now?: () => number;
}

let streamCounter = 0;

/**
 * The largest message a gRPC client receives unless told otherwise (grpc-js, gRPC C++ and Go:
 * 4 MiB), proxyless gRPC apps among them; Envoy's own gRPC client has no limit by default. A
 * bigger response ends such a client's stream with RESOURCE_EXHAUSTED (XDS-RULES 24), so one is
 * logged and counted. The server receives requests up to this size too.
 */
export const GRPC_DEFAULT_RECEIVE_BYTES = 4 * 1024 * 1024;

/**
 * A delta response of more bytes on the wire than this, well under GRPC_DEFAULT_RECEIVE_BYTES,
 * goes out as several, each with its own nonce, so however big a mesh grows only a single
 * resource bigger than that limit can exceed it. Delta lets a type's resources come in any number
 * of responses; SotW cannot do this, since its LDS and CDS carry the whole set. The ACK of an
 * earlier piece is not the response's (the last piece's is), a NACK of any piece is recorded at
 * once, and removals go with the last piece.
 */
export const DELTA_MOST_BYTES = 1024 * 1024;

const NO_NONCES: readonly string[] = Object.freeze([]);
/** The default of `sentSinceAckKept`. */
const SINCE_ACK_KEPT = 8192;
const NO_RESOURCES: readonly EncodedResource[] = Object.freeze([]);
/**
 * `sentSinceAck` once a client has left more resources unanswered than a stream lists
 * (`sentSinceAckKept`): a client that never answers would make the list grow without end. After
 * its NACK, every name it may hold is then taken to be held in any version.
 */
const TOO_MANY_SENT: readonly EncodedResource[] = Object.freeze([]);
/**
 * `removedSinceAck` past the same bound. A removed name is no longer among those the client may
 * hold, so nothing else remembers it: after a NACK the stream cannot tell which removals to make
 * again, and ends with UNAVAILABLE. The client comes back naming what it holds (rule 20).
 */
const TOO_MANY_REMOVED: readonly string[] = Object.freeze([]);
const NO_VERSIONS: ReadonlyMap<string, string> = new Map();

/** `send` cut into runs of at most `most` bytes on the wire each (at least one resource per run; one empty run for none). */
function pieces(send: readonly EncodedResource[], most: number): (readonly EncodedResource[])[] {
  // Most responses are small: no need to weigh each resource's wrapper.
  if (send.length * 200 + bytesOf(send) <= most) return [send];
  const out: EncodedResource[][] = [];
  let cur: EncodedResource[] = [];
  let bytes = 0;
  for (const r of send) {
    const n = wireBytes(r, true);
    if (cur.length > 0 && bytes + n > most) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(r);
    bytes += n;
  }
  out.push(cur);
  return out;
}

/**
 * Subscriptions by the (frozen) list of names they came from: the request deserializer hands out
 * one array per distinct list (wire.ts), so 2000 SotW proxies ACKing a new list of 500 EDS names
 * build and intern its set once, not once each (that was 4% of the CP's CPU in a mesh-wide change).
 */
const subscriptionsOfLists = new WeakMap<readonly string[], ReadonlySet<string>>();

/** The interned set of `names` without `*`. */
function subscriptionOf(names: readonly string[]): ReadonlySet<string> {
  const frozen = Object.isFrozen(names);
  let set = frozen ? subscriptionsOfLists.get(names) : undefined;
  if (!set) {
    set = internNames(new Set(names.includes('*') ? names.filter((n) => n !== '*') : names));
    if (frozen) subscriptionsOfLists.set(names, set);
  }
  return set;
}

/**
 * Subscriptions by content: thousands of proxies subscribe the same hundreds of EDS names, and a
 * set of them each costs ~10 KB. Sets handed in must not be changed afterwards. An entry goes
 * when no stream holds its set any more.
 */
const internedNames = new Map<string, WeakRef<ReadonlySet<string>>>();
const internedGone = new FinalizationRegistry<string>((key) => {
  if (internedNames.get(key)?.deref() === undefined) internedNames.delete(key);
});

export function internNames(names: ReadonlySet<string>): ReadonlySet<string> {
  if (names.size < 32) return names;
  // JSON, not a plain join: clients choose names, and "a\nb" must not stand for "a" and "b".
  const key = JSON.stringify([...names].sort());
  const known = internedNames.get(key)?.deref();
  if (known) return known;
  internedNames.set(key, new WeakRef(names));
  internedGone.register(names, key);
  return names;
}

/** The empty set: the subscription every type starts from (shared, so first subscriptions are shared too), and the names an exact diff compares. */
const NO_NAMES: ReadonlySet<string> = new Set();

/** Per subscription set: the sets that delta changes to it led to, by change. */
const transitions = new WeakMap<ReadonlySet<string>, Map<string, WeakRef<ReadonlySet<string>>>>();

/**
 * `from` with `sub` added and then `unsub` removed (`*` aside), interned. Thousands of proxies
 * make the same change to the same set (a new cluster: one more EDS name for each); the first
 * builds the new set, the others find it without copying and sorting hundreds of names.
 */
export function changedNames(from: ReadonlySet<string>, sub: readonly string[], unsub: readonly string[]): ReadonlySet<string> {
  const key = JSON.stringify([sub, unsub]);
  let byChange = transitions.get(from);
  const known = byChange?.get(key)?.deref();
  if (known) return known;
  const next = new Set(from);
  for (const n of sub) if (n !== '*') next.add(n);
  for (const n of unsub) next.delete(n);
  const result = internNames(next);
  if (!byChange) transitions.set(from, (byChange = new Map()));
  // Bounded: a client choosing endless distinct changes from a shared set must not grow this.
  if (byChange.size < 64) byChange.set(key, new WeakRef(result));
  return result;
}

// Answers about pairs of a shared snapshot map and a shared set (subscriptions are interned, sent
// sets are snapshot maps or answers from here) come from `pairwise`, computed once for every
// stream holding the pair. Worked out per stream they were a fifth of the CP's CPU in a SotW
// mesh-wide change with 2000 proxies naming 500 clusters' endpoints each.
/** What a wildcard subscriber gets of a map when it keeps what it was sent (rule 8), by the map sent. */
const keptOld = new WeakMap<object, WeakMap<ReadonlyMap<string, EncodedResource>, { desired: ReadonlyMap<string, EncodedResource>; version: string }>>();
/** What a subscription gets of a map, and its version. */
const subsets = new WeakMap<object, WeakMap<ReadonlySet<string>, { desired: ReadonlyMap<string, EncodedResource>; version: string }>>();
const lacking = new WeakMap<object, WeakMap<object, boolean>>();

/** What a named delta subscription gets of a map, by map and interned subscription. */
const subscribedParts = new WeakMap<object, WeakMap<ReadonlySet<string>, ReadonlyMap<string, EncodedResource>>>();

/**
 * The part of a type's current map a delta client wants: the map itself for a wildcard
 * subscription or one naming all of it (every proxy's EDS when it reaches every service), else
 * one map per distinct subscription, shared by the streams holding it. It is what a client is
 * brought up to date with, so diffs between two of them concern only what it subscribed.
 */
function wantedPart(all: ReadonlyMap<string, EncodedResource>, wildcard: boolean, subscribed: ReadonlySet<string>): ReadonlyMap<string, EncodedResource> {
  if (wildcard) return all;
  return pairwise(subscribedParts, all, subscribed, () => {
    if (!lacksSome(subscribed, all)) return all;
    const part = new Map<string, EncodedResource>();
    for (const [name, r] of all) if (subscribed.has(name)) part.set(name, r);
    return part;
  });
}

/** Does `from` have a name `within` lacks? Remembered per pair. */
function lacksSome(within: { has(name: string): boolean }, from: { keys(): Iterable<string> } & object): boolean {
  return pairwise(lacking, within, from, () => {
    for (const n of from.keys()) if (!within.has(n)) return true;
    return false;
  });
}

/**
 * What a delta client holds, name to version. After a full sync it is just a reference to the
 * shared snapshot map it was brought up to date with (`base`), plus the few names that differ
 * since (`extra`; null: not held). 2000 proxies holding the same 500 clusters then share one
 * map instead of keeping 2000 copies.
 */
export class ClientView {
  base?: ReadonlyMap<string, EncodedResource>;
  extra = new Map<string, string | null>();

  get(name: string): string | undefined {
    if (this.extra.has(name)) return this.extra.get(name) ?? undefined;
    return this.base?.get(name)?.version;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  set(name: string, version: string): void {
    if (this.base?.get(name)?.version === version) this.extra.delete(name);
    else this.extra.set(name, version);
  }

  delete(name: string): void {
    if (this.base?.has(name)) this.extra.set(name, null);
    else this.extra.delete(name);
  }

  *keys(): Generator<string> {
    if (this.base) for (const n of this.base.keys()) if (!this.extra.has(n) || this.extra.get(n) !== null) yield n;
    for (const [n, v] of this.extra) if (v !== null && !this.base?.has(n)) yield n;
  }

  /** Takes `versions` as what the client holds, if it holds nothing yet; the map is this view's from then on. */
  adopt(versions: Map<string, string>): boolean {
    if (this.base || this.extra.size > 0) return false;
    this.extra = versions;
    return true;
  }

  resetTo(map: ReadonlyMap<string, EncodedResource>): void {
    this.base = map;
    if (this.extra.size > 0) this.extra.clear();
  }
}

/**
 * How long a delta client back from a reconnect has to name the listeners and routes it holds
 * (its LDS and RDS requests, which Envoy sends with its others at once) before the removal of
 * clusters they may use goes ahead anyway (rule 8).
 */
const RESUME_WAIT_MS = 1000;
/** A timer this much late found the event loop stalled: the wait for routes gives the loop as long again (see afterReads). */
const STALL_GRACE_MS = 50;

/** How many unanswered responses of a type a stream keeps the nonces of (a client that never answers holds no more). */
const UNANSWERED_KEPT = 32;

/** Delta: a name the client may hold at an unknown version (after a NACK), so it is removed or sent again. */
const MAY_HOLD = '';

/** The types whose responses decide what a proxy routes to (rule 8). */
const ROUTING_TYPES = [TypeUrl.Listener, TypeUrl.RouteConfiguration] as const;

/**
 * What a delta response of one type must carry. Every answer has the same fields of the same
 * types, so the code reading them stays optimized whichever path produced them (a string standing
 * for "all" in a field otherwise holding a Set made V8 deoptimize sendDelta and synced in the first
 * endpoint change after start).
 */
interface DeltaChanges {
  some: boolean;
  send: readonly EncodedResource[];
  removed: readonly string[];
  /** What the client wants of the current map (see wantedPart): what it is brought up to date with. */
  target: ReadonlyMap<string, EncodedResource>;
  /** After this response the client holds exactly `target` (then `compared` is empty). */
  exact: boolean;
  /** Otherwise: every name that can differ, which were compared. */
  compared: ReadonlySet<string>;
  /** Removals held back until the proxy has routes that no longer need them (rule 8). */
  deferred: boolean;
}

/** deltaChanges' answer when nothing can differ (the common case: asked up to 7 times per proxy per round). */
const UNCHANGED: DeltaChanges = Object.freeze({ some: false, send: Object.freeze([]), removed: Object.freeze([]), target: new Map<string, EncodedResource>(), exact: false, compared: NO_NAMES, deferred: false });

interface Diff {
  send: EncodedResource[];
  removed: string[];
}

function bytesOf(resources: readonly EncodedResource[]): number {
  let n = 0;
  for (const r of resources) n += r.bytes.length;
  return n;
}

/** A shared map's resources as a list, built once for every stream sending it whole. */
const valueLists = new WeakMap<ReadonlyMap<string, EncodedResource>, readonly EncodedResource[]>();

function valuesOf(map: ReadonlyMap<string, EncodedResource>): readonly EncodedResource[] {
  // A proxy's own split map is sent by that proxy alone: join the parts' lists, keep nothing.
  // (Walking its generator per proxy was 6% of the CP's CPU in a SotW mesh-wide change.)
  if (map instanceof SplitMap) return valuesOf(map.shared).concat(valuesOf(map.own));
  let list = valueLists.get(map);
  if (!list) valueLists.set(map, (list = [...map.values()]));
  return list;
}

/** Differences between two shared snapshot maps, computed once for every client holding `from`. */
const diffs = new WeakMap<ReadonlyMap<string, EncodedResource>, WeakMap<ReadonlyMap<string, EncodedResource>, Diff>>();

function sharedDiff(from: ReadonlyMap<string, EncodedResource>, to: ReadonlyMap<string, EncodedResource>): Diff {
  if (from instanceof SplitMap && to instanceof SplitMap) return splitDiff(from, to);
  let byTo = diffs.get(from);
  if (!byTo) diffs.set(from, (byTo = new WeakMap()));
  let d = byTo.get(to);
  if (!d) {
    d = { send: [], removed: [] };
    for (const [name, r] of to) if (from.get(name)?.version !== r.version) d.send.push(r);
    for (const name of from.keys()) if (!to.has(name)) d.removed.push(name);
    byTo.set(to, d);
  }
  return d;
}

/**
 * The diff of two split maps from the shared diff of their shared parts (computed once for every
 * proxy) and the proxy's own few resources. A name that moved between the parts may be sent again
 * unchanged, which a client takes as a no-op.
 */
function splitDiff(from: SplitMap, to: SplitMap): Diff {
  const d = sharedDiff(from.shared, to.shared);
  if (from.own === to.own) return d;
  const send = [...d.send];
  for (const r of to.own.values()) if (from.get(r.name)?.version !== r.version) send.push(r);
  const removed = d.removed.filter((n) => !to.own.has(n));
  for (const n of from.own.keys()) if (!to.has(n)) removed.push(n);
  return { send, removed };
}

/**
 * One ADS stream, state of the world or incremental. Feed it requests with `handle`; it answers
 * through `send` whenever the proxy's snapshot or subscriptions call for it, following
 * ../shared/XDS-RULES.md (rule numbers in the comments).
 */
export class AdsStream {
  readonly id = `${process.pid.toString(36)}-${(++streamCounter).toString(36)}`;
  nodeId?: string;
  private node?: Node;
  private snapshot?: Snapshot;
  private readonly types = new Map<TypeUrl, TypeState>();
  private nonceCounter = 0;
  private unwatch?: () => void;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readonly now: () => number;
  /** When the first request came: what is sent on this stream is delivered no earlier than that. */
  private startedAt = 0;

  constructor(private readonly opts: StreamOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** Processes one request. Throws StreamError when the stream must end. */
  handle(req: DiscoveryRequest | DeltaDiscoveryRequest): void {
    if (this.closed) return;
    // Rule 2: node is guaranteed only on the first request; remember it.
    if (!this.node) this.start(req.node);
    const typeUrl = req.type_url ?? '';
    if (!isTypeUrl(typeUrl)) {
      this.opts.hooks.onIgnored(this.nodeId, 'unknown_type');
      return;
    }
    let state = this.types.get(typeUrl);
    const first = !state;
    if (!state) {
      // Every field from the start, undefined ones too, so states share one hidden class whatever
      // happened to them. Fields added later gave each order of events its own class, and V8 threw
      // away its optimized record, pump, handleDelta and ackOrNack in the first endpoint change
      // after start (--trace-deopt over bench/prof-regen.ts; they are kept now).
      state = { typeUrl, subscribed: NO_NAMES, namesFrom: undefined, wildcard: false, explicit: false, lastNonce: undefined, sentVersion: undefined, sentChangeTime: 0, inFlight: false, ackedVersion: undefined, backoffUntil: 0, nackedContent: undefined, nackedAt: 0, nackRepeats: 0, sentTypeVersion: undefined, sent: new Map(), settled: undefined, subsDirty: true, pending: new Set(), clientHas: new ClientView(), toldMissing: new Set(), forced: new Set(), dropped: new Set(), pieceNonces: NO_NONCES, pieceNacked: false, removedSinceAck: NO_NONCES, sentSinceAck: NO_RESOURCES, oversized: false };
      this.types.set(typeUrl, state);
    }
    if (this.opts.variant === 'sotw') this.handleSotw(state, req as DiscoveryRequest, first);
    else this.handleDelta(state, req as DeltaDiscoveryRequest, first);
    this.pump();
  }

  private start(node: Node | undefined): void {
    const id = node?.id;
    if (!id) throw new StreamError(GRPC_INVALID_ARGUMENT, 'the first request must carry node.id ("<mesh>.<name>")');
    const who = splitNodeId(id);
    if (!who) throw new StreamError(GRPC_INVALID_ARGUMENT, `node.id "${id}" is not "<mesh>.<dataplane name>"`);
    const ident = this.opts.identity;
    if (ident.kind === 'dataplane') {
      if (who.mesh !== ident.mesh || who.name !== ident.name) {
        throw new StreamError(GRPC_PERMISSION_DENIED, `node.id "${id}" does not match the token, which is for dataplane "${ident.name}" in mesh "${ident.mesh}"`);
      }
    }
    this.node = node;
    this.nodeId = id;
    this.startedAt = this.now();
    this.opts.hooks.onConnect(id, this.opts.variant, this.opts.budget);
    this.snapshot = this.opts.cache.get(id);
    this.unwatch = this.opts.cache.watch(id, (s) => {
      this.snapshot = s;
      this.pumpApart();
    });
  }

  // ---- state of the world ----------------------------------------------------------------

  private handleSotw(state: TypeState, req: DiscoveryRequest, first: boolean): void {
    const nonce = req.response_nonce ?? '';
    if (nonce !== '') {
      // Rule 1 and 11: a nonce we did not send last on this stream for this type is stale, and so
      // are the names it asks for. Rule 5: yet its NACK says the proxy may lack what that earlier
      // response carried (EDS, RDS and SDS responses carry only what changed).
      if (nonce !== state.lastNonce) {
        if (state.pieceNonces.includes(nonce)) this.pieceAnswered(state, req.error_detail);
        else this.opts.hooks.onIgnored(this.nodeId, 'stale_nonce');
        // Its ACK is stale, but what it asks for is not: the client sends its requests in order,
        // and forgets a name the moment it drops it. Ignored, a drop and a later ask for the same
        // name (this one, then the ACK of the response in flight) looked like no change, and the
        // name was never sent again. Delta honours such changes too (rule 18); the discussion of
        // this point of the protocol (envoyproxy/envoy#10363) comes to the same for servers that
        // keep several responses in flight, as this one does.
        this.subscribe(state, req.resource_names ?? []);
        return;
      }
      this.ackOrNack(state, req.error_detail, req.version_info ?? '');
    }
    this.subscribe(state, req.resource_names ?? []);
    // Rule 3: after a reconnect the client says which version it holds; do not resend it. Only for
    // a wildcard subscription, where that version is the whole set the client holds. Named
    // resources are sent again (rule 12: on a new stream every name is one the subscription
    // gained): the client may have dropped some names since it accepted that version, and asks
    // for them again now (grpc-js-xds keeps a type's version across streams and unsubscribes).
    if (first && nonce === '' && req.version_info && state.wildcard) {
      const { desired, version } = this.desiredWithVersion(state);
      if (version === req.version_info) {
        state.sent = desired;
        state.sentVersion = req.version_info;
        state.ackedVersion = req.version_info;
      }
    }
  }

  /** Rule 13: `*` or a legacy empty first list means all; after explicit names, empty means none. */
  private subscribe(state: TypeState, names: readonly string[]): void {
    // The very (frozen) list the subscription was set from: the deserializer hands out one array
    // per distinct list of names (wire.ts), so an ACK repeating them costs no comparison.
    if (names === state.namesFrom) return;
    state.namesFrom = Object.isFrozen(names) ? names : undefined;
    const { wildcard, subscribed } = state;
    if (names.includes('*')) {
      state.wildcard = true;
      state.subscribed = subscriptionOf(names);
    } else if (names.length === 0) {
      state.wildcard = !state.explicit;
      state.subscribed = new Set();
    } else {
      state.wildcard = false;
      state.explicit = true;
      // ACKs repeat the names: keep the same set then (cached checks stay valid).
      if (names.length !== state.subscribed.size || names.some((n) => !state.subscribed.has(n))) state.subscribed = subscriptionOf(names);
    }
    if (state.subscribed !== subscribed || state.wildcard !== wildcard) this.noteDropped(state, wildcard, subscribed);
  }

  /**
   * Rule 12: a client forgets a resource the moment it unsubscribes it (Envoy and grpc-js-xds
   * both do). Until the next response (after which `sent` is what the client wants), names dropped
   * from the subscription are noted, and one asked for again meanwhile is sent again, even at the
   * version `sent` has. Without this, a drop and a re-ask while the type waited (a NACK's backoff,
   * rule 8's hold behind clusters, the send budget) left the subscription as `sent` had it: the
   * server sent nothing, and the client lacked the resource for good.
   */
  private noteDropped(state: TypeState, wasWildcard: boolean, wasSubscribed: ReadonlySet<string>): void {
    if (state.sent.size > 0 && !state.wildcard) {
      for (const n of wasWildcard ? state.sent.keys() : wasSubscribed) if (!state.subscribed.has(n) && state.sent.has(n)) state.dropped.add(n);
    }
    for (const n of state.dropped) {
      if (!this.wants(state, n)) continue;
      state.forced.add(n);
      state.dropped.delete(n);
    }
  }

  /**
   * An answer to an earlier piece of the last response: its ACK says nothing yet (the last piece's
   * does), its NACK is recorded at once and keeps the last piece's ACK from counting.
   */
  private pieceAnswered(state: TypeState, error: DiscoveryRequest['error_detail']): void {
    if (!error || !(error.message || error.code) || state.pieceNacked) return;
    state.pieceNacked = true;
    this.backOff(state);
    this.opts.hooks.onNack(this.nodeId!, state.typeUrl, state.sentVersion ?? '', error.message ?? `code ${error.code}`, state.backoffUntil - state.nackedAt);
    this.resync(state);
  }

  /**
   * Rule 5: a NACK starts a backoff before this type is sent again. When the proxy rejects the
   * same content it rejected last time (the config was sent again unchanged), the backoff doubles,
   * up to `nackBackoffMaxMs`: retrying a config every 5 s that 2000 proxies reject would cost the
   * control plane a large part of a cold start each time, and tell nobody anything new. A change of
   * that type's config is not held back so long: it goes once the first backoff has passed
   * (`backoffEnd`), and an ACK ends the run. `again`: a further NACK in the same rejection (the
   * last piece of a response after an earlier piece, or the last response after an earlier one
   * still in flight), which starts the same backoff over.
   */
  private backOff(state: TypeState, again = false): void {
    if (!again) {
      const content = this.sentContent(state);
      state.nackRepeats = content !== undefined && content === state.nackedContent ? state.nackRepeats + 1 : 0;
      state.nackedContent = content;
    }
    state.nackedAt = this.now();
    const most = Math.max(this.opts.nackBackoffMs, this.opts.nackBackoffMaxMs ?? 0);
    state.backoffUntil = state.nackedAt + Math.min(most, this.opts.nackBackoffMs * 2 ** Math.min(state.nackRepeats, 30));
  }

  /** What the last response of this type carried, as one string (see `nackedContent`). */
  private sentContent(state: TypeState): string | undefined {
    const own = this.opts.variant === 'sotw' ? state.sentVersion : state.sentTypeVersion;
    return own === undefined ? undefined : own + this.heldBack(state);
  }

  /**
   * Clusters: listeners and routes wait with them while they back off (rule 8), so a change of
   * those counts as a change of theirs, and does not wait for a grown backoff either.
   */
  private heldBack(state: TypeState): string {
    if (state.typeUrl !== TypeUrl.Cluster) return '';
    const v = this.snapshot?.typeVersions;
    return `|${v?.get(TypeUrl.Listener) ?? ''}|${v?.get(TypeUrl.RouteConfiguration) ?? ''}`;
  }

  /** When this type may be sent again: the backoff's end, or the first backoff's if its config changed since the NACK. */
  private backoffEnd(state: TypeState): number {
    if (state.nackRepeats === 0) return state.backoffUntil;
    // Delta: names (un)subscribed since count as a change too.
    const own = this.opts.variant === 'sotw' ? this.desiredWithVersion(state).version : state.pending.size === 0 ? this.snapshot?.typeVersions.get(state.typeUrl) : undefined;
    const same = own !== undefined && own + this.heldBack(state) === state.nackedContent;
    return same ? state.backoffUntil : Math.min(state.backoffUntil, state.nackedAt + this.opts.nackBackoffMs);
  }

  /**
   * Rule 5: after a NACK the proxy holds an unknown part of what it was sent (Envoy applies the
   * resources it accepts and rejects the rest), so when the backoff ends this type is sent again
   * whole, the rejected config included, and again after each further NACK, as Kuma retries: a
   * rejection that was transient heals, and the proxy and this stream agree again on what it
   * holds. Until its answer, the routes it holds are not known (rule 8 keeps their clusters).
   */
  private resync(state: TypeState): void {
    if (state.removedSinceAck === TOO_MANY_REMOVED) {
      throw new StreamError(GRPC_UNAVAILABLE, `${state.typeUrl} rejected after more than ${this.opts.sentSinceAckKept ?? SINCE_ACK_KEPT} removals were left unanswered: reconnect naming the resources held (initial_resource_versions)`);
    }
    const wanted = wantedPart(this.current(state.typeUrl), state.wildcard, state.subscribed);
    if (this.opts.variant === 'sotw') state.sentVersion = undefined;
    else {
      for (const n of wanted.keys()) state.forced.add(n);
      // What the unanswered responses carried or removed is held as before them (an older version,
      // or none; a removed one still), not as noted when they were sent. Forcing the names wanted
      // now is not enough: one that leaves the config before the next response would not be
      // removed, and one that comes back at the version the rejected response carried would pass
      // for held. A removal of a name the proxy does not hold is harmless (rule 21).
      if (state.sentSinceAck === TOO_MANY_SENT) for (const n of [...state.clientHas.keys()]) state.clientHas.set(n, MAY_HOLD);
      else for (const r of state.sentSinceAck) state.clientHas.set(r.name, MAY_HOLD);
      for (const n of state.removedSinceAck) state.clientHas.set(n, MAY_HOLD);
      state.settled = undefined;
    }
    // Rule 9: clusters sent again bring their endpoints again.
    const eds = state.typeUrl === TypeUrl.Cluster ? this.types.get(TypeUrl.ClusterLoadAssignment) : undefined;
    if (eds) {
      for (const c of wanted.values()) for (const ref of c.refs) eds.forced.add(ref);
      eds.settled = undefined;
    }
  }

  private ackOrNack(state: TypeState, error: DiscoveryRequest['error_detail'], version: string): void {
    state.inFlight = false;
    const nodeId = this.nodeId!;
    if (state.pieceNacked) {
      // A piece of this response was rejected (recorded then): the proxy does not hold all of it.
      if (error && (error.message || error.code)) {
        this.backOff(state, true);
        this.resync(state);
      }
      return;
    }
    // Rule 4 and 5: a NACK is known by error_detail, never by comparing versions.
    if (error && (error.message || error.code)) {
      this.backOff(state);
      this.opts.hooks.onNack(nodeId, state.typeUrl, state.sentVersion ?? version, error.message ?? `code ${error.code}`, state.backoffUntil - state.nackedAt);
      this.resync(state);
    } else {
      if (state.nackedContent !== undefined) {
        // Accepted (what went early, see backoffEnd): the run of rejections and its backoff end.
        state.nackedContent = undefined;
        state.nackRepeats = 0;
        state.backoffUntil = 0;
      }
      if (state.removedSinceAck !== NO_NONCES) state.removedSinceAck = NO_NONCES;
      if (state.sentSinceAck !== NO_RESOURCES) state.sentSinceAck = NO_RESOURCES;
      state.ackedVersion = this.opts.variant === 'sotw' ? version : state.sentVersion;
      this.opts.hooks.onAck(nodeId, state.typeUrl, state.ackedVersion ?? '', state.sentChangeTime);
    }
  }

  private current(typeUrl: TypeUrl): ReadonlyMap<string, EncodedResource> {
    return this.snapshot?.resources.get(typeUrl) ?? new Map();
  }

  /** True while the proxy has not taken the listeners and routes of the current snapshot. */
  private routingPending(): boolean {
    // The timer ends the wait (afterReads); by its latest end, any pump does (a clock a test moves).
    if (this.resumeWaiting && this.now() >= this.resumeLatest) this.resumeWaiting = false;
    for (const t of ROUTING_TYPES) {
      const s = this.types.get(t);
      if (!s) {
        // A delta client back from a reconnect holds listeners and routes it has not told us of
        // yet (they come with its own request of that type, which Envoy sends at once): until then
        // they may use any cluster it holds (rule 8). Routes count when its listeners use some.
        // A proxy that never asks (static listeners) gets its removals after RESUME_WAIT_MS.
        if (this.resumeWaiting && (t === TypeUrl.Listener || this.listenersUseRoutes())) return true;
        continue;
      }
      if (s.inFlight) return true;
      if (this.opts.variant === 'sotw' ? this.desiredWithVersion(s).version !== s.sentVersion : this.routingChanges(s).some) return true;
    }
    return false;
  }

  /**
   * Delta: the changes of a routing type, as `routingPending` finds them at the start of a pump,
   * kept for `sendDelta` later in the same pump. Nothing changes a listener's or route's state
   * in between (sending clusters and endpoints touches only theirs, and the snapshot cannot
   * change within a pump), and comparing a resumed proxy's 1000 listeners twice per pump was a
   * quarter of a failover's comparing.
   */
  private readonly pumpChanges = new Map<TypeState, DeltaChanges>();

  private routingChanges(state: TypeState): DeltaChanges {
    const changes = this.pumpChanges.get(state) ?? this.deltaChanges(state);
    this.pumpChanges.set(state, changes);
    return changes;
  }

  /** The set a SotW response of this type should carry now, and its version. */
  private desiredWithVersion(state: TypeState): { desired: ReadonlyMap<string, EncodedResource>; version: string } {
    const keepOld = (state.typeUrl === TypeUrl.Cluster || state.typeUrl === TypeUrl.ClusterLoadAssignment) && this.routingPendingCached;
    const known = this.snapshot?.typeVersions.get(state.typeUrl);
    const all = this.current(state.typeUrl);
    // Rule 8 keeps sent resources the current set lacks; when there are none, the shared answers below hold.
    const holdsOld = keepOld && lacksSome(all, state.sent);
    // Everything current is wanted (wildcard, or every name subscribed, as Envoy's EDS does): the
    // shared map and its version, without building a copy per proxy.
    if (known !== undefined && !holdsOld && (state.wildcard || !lacksSome(state.subscribed, all))) {
      return { desired: all, version: known };
    }
    // Some names subscribed: the same for every stream with the same (interned) subscription.
    if (!holdsOld && !state.wildcard) return pairwise(subsets, all, state.subscribed, () => this.desiredSotw(state));
    // Wildcard, keeping what was sent and is gone (rule 8): the same for every stream that was sent
    // the same set (a Mesh change that drops a cluster costs one copy of the set, not one per proxy).
    if (holdsOld && state.wildcard) return pairwise(keptOld, all, state.sent, () => this.desiredSotw(state));
    return this.desiredSotw(state);
  }

  private desiredSotw(state: TypeState): { desired: Map<string, EncodedResource>; version: string } {
    const all = this.current(state.typeUrl);
    const out = new Map<string, EncodedResource>();
    for (const [name, r] of all) if (state.wildcard || state.subscribed.has(name)) out.set(name, r);
    // Rule 8: keep clusters and endpoints the proxy's routes may still use until it has the new routes.
    if ((state.typeUrl === TypeUrl.Cluster || state.typeUrl === TypeUrl.ClusterLoadAssignment) && this.routingPendingCached) {
      for (const [name, r] of state.sent) if (!out.has(name) && (state.wildcard || state.subscribed.has(name))) out.set(name, r);
    }
    return { desired: out, version: setVersion(out.values()) };
  }

  private routingPendingCached = false;

  /**
   * A delta client came back holding resources (`initial_resource_versions`, rule 20): until
   * when the listeners and routes it has not named yet count as pending (rule 8).
   */
  private resumedUntil = 0;
  /**
   * Still waiting for that: only the stream's timer ends the wait (see afterReads), not a pump a
   * request started after a stall, before the requests behind it were read.
   */
  private resumeWaiting = false;
  /** Stalls extend that wait (by STALL_GRACE_MS at a time) until this at most. */
  private resumeLatest = 0;

  private listenersUseRoutes(): boolean {
    for (const l of this.current(TypeUrl.Listener).values()) if (l.refs.length > 0) return true;
    return false;
  }

  // ---- incremental ------------------------------------------------------------------------

  private handleDelta(state: TypeState, req: DeltaDiscoveryRequest, first: boolean): void {
    const nonce = req.response_nonce ?? '';
    if (nonce !== '') {
      // Rule 18: ACK/NACK only for our latest nonce, but subscription changes count regardless.
      if (nonce === state.lastNonce) this.ackOrNack(state, req.error_detail, '');
      else if (state.pieceNonces.includes(nonce)) this.pieceAnswered(state, req.error_detail);
      else this.opts.hooks.onIgnored(this.nodeId, 'stale_nonce');
    }
    const sub = req.resource_names_subscribe ?? [];
    const unsub = req.resource_names_unsubscribe ?? [];
    if (first || sub.length > 0 || unsub.length > 0) state.settled = undefined;
    if (first || sub.includes('*') || unsub.includes('*')) state.subsDirty = true;
    for (const name of [...sub, ...unsub]) state.pending.add(name);
    const given = first ? req.initial_resource_versions : undefined;
    const initial: ReadonlyMap<string, string> = given instanceof Map ? given : given ? new Map(Object.entries(given)) : NO_VERSIONS;
    if (first && this.resumedUntil === 0 && initial.size > 0) {
      this.resumedUntil = this.now() + RESUME_WAIT_MS;
      this.resumeLatest = this.resumedUntil + RESUME_WAIT_MS;
      this.resumeWaiting = true;
    }
    if (first && sub.length === 0) state.wildcard = true; // rule 13, legacy wildcard
    if (sub.length + unsub.length > 0) state.subscribed = changedNames(state.subscribed, sub, unsub);
    for (const name of sub) {
      if (name === '*') {
        state.wildcard = true;
        continue;
      }
      state.explicit = true;
      // Rule 19: a (re)subscribed name is sent even if we think the client has it...
      if (!initial.has(name)) state.clientHas.delete(name);
      state.toldMissing.delete(name);
    }
    for (const name of unsub) {
      // Rule 21: unsubscribing a name the client never had is harmless.
      if (name === '*') state.wildcard = false;
      state.clientHas.delete(name);
      state.toldMissing.delete(name);
    }
    // Rule 20: ...unless it came with the version the client already holds after a reconnect. A
    // first request on a fresh view (every one, in practice) hands over its map as it is.
    if (initial.size === 0) return;
    if (initial !== given || !state.clientHas.adopt(given)) for (const [name, version] of initial) state.clientHas.set(name, version);
  }

  private wants(state: TypeState, name: string): boolean {
    return state.wildcard || state.subscribed.has(name);
  }

  /**
   * What a delta response of this type must carry now. Only names that can differ are compared:
   * those that changed between the map the client was last brought up to date with and the current
   * one (a diff computed once for every client holding the same maps), the few the client holds
   * apart from that map, names (un)subscribed since, and forced ones. So a mesh-wide change costs
   * each proxy the size of the change, not of its config.
   */
  private deltaChanges(state: TypeState): DeltaChanges {
    const all = this.current(state.typeUrl);
    const keepOld = (state.typeUrl === TypeUrl.Cluster || state.typeUrl === TypeUrl.ClusterLoadAssignment) && this.routingPendingCached;
    // Nothing changed since the client was brought up to date with this very set.
    if (state.settled === all) return UNCHANGED;
    const target = wantedPart(all, state.wildcard, state.subscribed);
    const view = state.clientHas;
    if (!view.base && view.extra.size === 0 && state.forced.size === 0) {
      // The client holds nothing of this type yet (a new stream): everything it wants, as is.
      const send = [...target.values()];
      const removed = [...state.subscribed].filter((n) => !all.has(n) && !state.toldMissing.has(n));
      return { some: send.length > 0 || removed.length > 0, send, removed, target, exact: true, compared: NO_NAMES, deferred: false };
    }
    if (view.base && view.extra.size === 0 && !state.subsDirty && state.pending.size === 0 && state.forced.size === 0) {
      // The client holds exactly a shared map and asked for nothing since (every proxy in an
      // endpoint change): the shared diff to what it wants is the answer. Its removals are names
      // the client holds; a subscribed name missing from both maps was reported when subscribed.
      const d = sharedDiff(view.base, target);
      if (!keepOld || d.removed.length === 0) {
        return { some: d.send.length > 0 || d.removed.length > 0, send: d.send, removed: d.removed, target, exact: true, compared: NO_NAMES, deferred: false };
      }
    }
    if (!view.base && state.forced.size === 0) {
      const resumed = this.resumedChanges(state, all, target);
      if (resumed) return resumed;
    }
    let compared: Set<string>;
    if (view.base && !state.subsDirty) {
      const d = sharedDiff(view.base, target);
      compared = new Set(state.pending);
      for (const r of d.send) compared.add(r.name);
      for (const n of d.removed) compared.add(n);
      for (const n of view.extra.keys()) compared.add(n);
      for (const n of state.forced) compared.add(n);
    } else {
      compared = new Set([...all.keys(), ...view.keys(), ...state.subscribed, ...state.forced]);
    }
    const send: EncodedResource[] = [];
    const removed: string[] = [];
    let deferred = false;
    for (const name of compared) {
      const r = all.get(name);
      const has = view.get(name);
      if (r) {
        if (this.wants(state, name) && (has !== r.version || state.forced.has(name))) send.push(r);
      } else if (has !== undefined) {
        // Rule 17: deletions go in removed_resources...
        if (keepOld) deferred = true;
        else removed.push(name);
      } else if (state.subscribed.has(name) && !state.toldMissing.has(name)) {
        // ...and so do subscribed names that do not exist.
        removed.push(name);
      }
    }
    return { some: send.length > 0 || removed.length > 0, send, removed, target, exact: false, compared, deferred };
  }

  /**
   * A client that named what it holds (a reconnect, rule 20) and has not been brought up to date
   * with a shared map since: one pass over what it wants and one over what it named, instead of a
   * set of every name of both (2000 proxies coming back at once, each naming 2000 resources, spent
   * most of weft-cp's CPU there). Only when the client ends up holding exactly what it wants, so
   * its view can become that shared map; otherwise (it holds resources it does not want, or
   * removals wait for its routes, rule 8) undefined, and the general comparison answers.
   */
  private resumedChanges(state: TypeState, all: ReadonlyMap<string, EncodedResource>, target: ReadonlyMap<string, EncodedResource>): DeltaChanges | undefined {
    const held = state.clientHas.extra;
    const keepOld = (state.typeUrl === TypeUrl.Cluster || state.typeUrl === TypeUrl.ClusterLoadAssignment) && this.routingPendingCached;
    const send: EncodedResource[] = [];
    for (const [name, r] of target) if (held.get(name) !== r.version) send.push(r);
    const removed: string[] = [];
    for (const [name, version] of held) {
      if (version === null || target.has(name)) continue;
      // Held and not wanted (kept, as the general comparison keeps it), or gone while its removal waits.
      if (all.has(name) || keepOld) return undefined;
      removed.push(name);
    }
    // Subscribed names that do not exist, not yet reported.
    for (const name of state.subscribed) if (!all.has(name) && !held.has(name) && !state.toldMissing.has(name)) removed.push(name);
    return { some: send.length > 0 || removed.length > 0, send, removed, target, exact: true, compared: NO_NAMES, deferred: false };
  }

  // ---- sending ----------------------------------------------------------------------------

  /** Sends, in CDS, EDS, LDS, RDS, SDS order (rule 8), whatever changed (rule 6). */
  private pump(): void {
    // Nothing goes out before the proxy's first snapshot, which pumps again when it comes; comparing
    // a resumed proxy's named resources against nothing meanwhile was pure waste.
    if (this.closed || !this.nodeId || !this.snapshot) return;
    if (this.pumpChanges.size > 0) this.pumpChanges.clear(); // left by a pump that threw
    // A turn the budget cut short goes on when it opens, whatever it sent before the cut.
    this.pumpBehind = !this.turnCut && (this.opts.budget?.behind ?? false);
    this.turnCut = false;
    const now = this.now();
    let wakeAt = Infinity;
    this.routingPendingCached = this.routingPending();
    // Removals held back for a resumed client's unnamed routing state go out when the wait ends.
    // A pump past its end, before the timer ended it, runs after a stall: the grace, as afterReads.
    if (this.resumeWaiting && this.routingPendingCached) {
      // (Past resumeLatest, routingPending ended the wait: resumedUntil is ahead of now here.)
      if (now >= this.resumedUntil) this.resumedUntil = now + STALL_GRACE_MS;
      wakeAt = this.resumedUntil;
    }
    let clustersWait = false;
    for (const typeUrl of RESPONSE_ORDER) {
      const state = this.types.get(typeUrl);
      if (!state) continue;
      if (now < state.backoffUntil) {
        const end = this.backoffEnd(state);
        if (now < end) {
          wakeAt = Math.min(wakeAt, end);
          clustersWait ||= typeUrl === TypeUrl.Cluster;
          continue;
        }
      }
      // Rule 8: while clusters wait out a NACK's backoff, listeners and routes (which may use new
      // ones) wait with them; they follow the clusters when those go again.
      if (clustersWait && (typeUrl === TypeUrl.Listener || typeUrl === TypeUrl.RouteConfiguration)) continue;
      const sent = this.opts.variant === 'sotw' ? this.sendSotw(state) : this.sendDelta(state);
      if (this.closed) return; // the transport ended the stream under a write
      if (sent === 'blocked') {
        // The rest waits too, so the order above holds; pump runs again when what this stream sent
        // before this turn is written, or, for a turn the spent budget cut, when the budget opens.
        this.turnCut = !this.pumpBehind;
        this.opts.budget!.wait(this.resume, this.pumpBehind);
        break;
      }
    }
    if (this.pumpChanges.size > 0) this.pumpChanges.clear();
    clearTimeout(this.timer);
    if (wakeAt !== Infinity) {
      this.timerDue = wakeAt;
      this.timer = setTimeout(this.afterReads, wakeAt - now);
      this.timer.unref();
    }
  }

  private readonly resume = () => this.pumpApart();

  /** When the pending timer was due. */
  private timerDue = 0;

  /**
   * A timer's pump (a backoff's end, the wait for a returning proxy's routes). The wait for routes
   * ends here only: one that fires late, after the event loop stalled (a long round, a busy
   * machine), first gives the loop STALL_GRACE_MS to read what arrived meanwhile, since Node runs
   * due timers before it reads sockets and gRPC hands over a burst of requests over several turns.
   * Else a proxy's routes, sent right after its clusters, would lie unread when the wait for them
   * ends, and its clusters would be removed from under them (rule 8).
   */
  private readonly afterReads = () => {
    if (this.closed) return;
    const now = this.now();
    // Only the wait for a returning proxy's routes needs the grace, and for at most as long again.
    if (this.resumeWaiting && now - this.timerDue > STALL_GRACE_MS && now < this.resumeLatest) {
      // The wait now ends when the grace does; pumps meanwhile (requests read) re-arm for then.
      this.resumedUntil = now + STALL_GRACE_MS;
      this.timerDue = this.resumedUntil;
      this.timer = setTimeout(this.afterReads, STALL_GRACE_MS);
      this.timer.unref();
      return;
    }
    if (now >= this.resumedUntil) this.resumeWaiting = false;
    this.resume();
  };

  /**
   * A pump that no request started: a new snapshot (inside the reconciler's round), a timer (a
   * backoff's end), the send budget opening (inside another stream's write callback). An error
   * there, a bug, must not reach those callers: it would cut the round short for the proxies
   * after this one, or crash weft-cp from a timer. This stream ends instead (`onFailure`), as a
   * request's error ends it.
   */
  private pumpApart(): void {
    try {
      this.pump();
    } catch (err) {
      // The transport ends the call, and this stream with the reason it gives (the status).
      try {
        this.opts.onFailure?.(err);
      } finally {
        this.close();
      }
    }
  }

  /**
   * True when the caller must not send now: the shared send budget is spent, or this stream had
   * bytes of an earlier turn still unwritten when the pump began (a slow reader: what changes
   * meanwhile goes out together once they are written, see SendAccount).
   */
  private blocked(): boolean {
    return this.opts.budget !== undefined && (this.pumpBehind || !this.opts.budget.open);
  }

  /** The stream had bytes unwritten from an earlier turn when this pump began. */
  private pumpBehind = false;
  /** The last pump stopped for the spent budget, not for this stream's own unwritten bytes. */
  private turnCut = false;

  private nextNonce(): string {
    return `${this.id}-${(++this.nonceCounter).toString(36)}`;
  }

  private sendSotw(state: TypeState): 'blocked' | void {
    const { desired, version } = this.desiredWithVersion(state);
    // (No array when nothing is forced, the usual case: this runs for every stream in every round.)
    const forced = state.forced.size > 0 && [...state.forced].some((n) => desired.has(n));
    if (version === state.sentVersion && !forced) return;
    if (!this.snapshot) return;
    if (this.blocked()) return 'blocked';
    this.markClusterChanges(state, desired.values(), (n) => state.sent.get(n)?.version);
    const nonce = this.nextNonce();
    const earlier = state.inFlight && state.lastNonce !== undefined ? [...state.pieceNonces, state.lastNonce].slice(-UNANSWERED_KEPT) : NO_NONCES;
    // Rule 14: LDS and CDS carry the full set; RDS, EDS and SDS only what the client lacks (new,
    // changed or forced), so one service's endpoints changing costs each proxy one resource.
    const fullState = state.typeUrl === TypeUrl.Listener || state.typeUrl === TypeUrl.Cluster || state.sentVersion === undefined;
    // What differs from the last response is found once for every stream holding the same two maps.
    const resources = fullState ? valuesOf(desired) : state.forced.size === 0 ? sharedDiff(state.sent, desired).send : [...desired.values()].filter((r) => state.sent.get(r.name)?.version !== r.version || state.forced.has(r.name));
    const res = withEncoded<DiscoveryResponse>(
      { version_info: version, type_url: state.typeUrl, nonce, control_plane: { identifier: this.opts.controlPlaneId } },
      resources,
      (r) => ({ type_url: state.typeUrl, value: r.bytes }),
    );
    this.record(state, nonce, version);
    state.pieceNonces = earlier;
    state.pieceNacked = false;
    state.sent = desired;
    if (state.forced.size > 0) state.forced.clear(); // clear() allocates even when empty
    if (state.dropped.size > 0) state.dropped.clear(); // `sent` has only what the client wants now
    const bytes = bytesOf(resources);
    this.checkSize(state, resources, bytes);
    this.opts.send(res, bytes);
    this.opts.hooks.onResponse(this.nodeId!, state.typeUrl, version, 'sotw', resources.length);
  }

  private sendDelta(state: TypeState): 'blocked' | void {
    if (!this.snapshot) return;
    const all = this.current(state.typeUrl);
    const changes = this.deltaChanges(state);
    const { some, send, removed } = changes;
    if (some && this.blocked()) return 'blocked';
    if (!some) {
      this.synced(state, all, changes);
      return;
    }
    this.markClusterChanges(state, send, (n) => state.clientHas.get(n));
    const runs = pieces(send, this.opts.pieceBytes ?? Infinity);
    const responses = runs.map((run, i) =>
      withEncoded<DeltaDiscoveryResponse>(
        // Removals go with the last piece, after everything that replaces them (rule 8).
        { system_version_info: this.snapshot!.version, type_url: state.typeUrl, removed_resources: i === runs.length - 1 ? removed : [], nonce: this.nextNonce(), control_plane: { identifier: this.opts.controlPlaneId } },
        run,
        // Rule 16: each resource carries its own version, a content hash.
        (r) => ({ name: r.name, version: r.version, resource: { type_url: state.typeUrl, value: r.bytes } }),
      ),
    );
    const nonce = responses[responses.length - 1]!.nonce;
    // A client left holding exactly the current map is reset to it below; no need to note each name.
    if (!changes.exact) for (const r of send) state.clientHas.set(r.name, r.version);
    for (const n of removed) {
      state.clientHas.delete(n);
      if (state.subscribed.has(n)) state.toldMissing.add(n);
    }
    if (state.forced.size > 0) state.forced.clear();
    this.synced(state, all, changes);
    // Responses still unanswered stay answerable: the client answers each, in order.
    const earlier = state.inFlight && state.lastNonce !== undefined ? [...state.pieceNonces, state.lastNonce].slice(-UNANSWERED_KEPT) : NO_NONCES;
    const kept = this.opts.sentSinceAckKept ?? SINCE_ACK_KEPT;
    if (!state.inFlight) state.removedSinceAck = removed.length > 0 ? removed : NO_NONCES;
    else if (removed.length > 0 && state.removedSinceAck !== TOO_MANY_REMOVED) {
      state.removedSinceAck = state.removedSinceAck.length + removed.length > kept ? TOO_MANY_REMOVED : state.removedSinceAck.concat(removed);
    }
    if (!state.inFlight || state.sentSinceAck === NO_RESOURCES) state.sentSinceAck = send;
    else if (send.length > 0 && state.sentSinceAck !== TOO_MANY_SENT) {
      state.sentSinceAck = state.sentSinceAck.length + send.length > kept ? TOO_MANY_SENT : state.sentSinceAck.concat(send);
    }
    this.record(state, nonce, this.snapshot.version);
    state.sentTypeVersion = this.snapshot.typeVersions.get(state.typeUrl);
    state.pieceNonces = responses.length === 1 ? earlier : earlier.concat(responses.slice(0, -1).map((r) => r.nonce));
    state.pieceNacked = false;
    for (const [i, res] of responses.entries()) {
      const bytes = bytesOf(runs[i]!);
      this.checkSize(state, runs[i]!, bytes, res.removed_resources);
      this.opts.send(res, bytes);
    }
    this.opts.hooks.onResponse(this.nodeId!, state.typeUrl, this.snapshot.version, 'delta', send.length);
  }

  /** Reports a response bigger than a gRPC client receives by default (XDS-RULES 24). */
  private checkSize(state: TypeState, resources: readonly EncodedResource[], resourceBytes: number, removed: readonly string[] = []): void {
    // The fields of the response itself (version, type URL, nonce, control plane) and removals.
    let bytes = 512;
    for (const n of removed) bytes += n.length + 3;
    // Most responses are far smaller: no need to weigh each resource's wrapper.
    if (bytes + resourceBytes + resources.length * 200 <= GRPC_DEFAULT_RECEIVE_BYTES) return;
    const delta = this.opts.variant === 'delta';
    for (const r of resources) bytes += wireBytes(r, delta);
    if (bytes <= GRPC_DEFAULT_RECEIVE_BYTES) return;
    this.opts.hooks.onOversized(this.nodeId!, state.typeUrl, this.opts.variant, bytes, !state.oversized);
    state.oversized = true;
  }

  /**
   * After a diff: unless removals were held back, the client is up to date with `all`. When it
   * holds exactly what it wants of it (every compared name agrees; the rest agreed already), keep
   * only a reference to that shared map instead of a copy per client.
   */
  private synced(state: TypeState, all: ReadonlyMap<string, EncodedResource>, changes: DeltaChanges): void {
    // Settled with this very map already, and nothing asked since: all below was done then.
    if (changes === UNCHANGED) return;
    const { target, exact, compared, deferred } = changes;
    if (deferred) {
      // Not up to date with any map now (it may hold some of `all` already): should the snapshot
      // go back to the map it was settled with, that must not pass for "nothing changed".
      state.settled = undefined;
      return;
    }
    state.subsDirty = false;
    if (state.pending.size > 0) state.pending.clear();
    // Names forced but not sent (not subscribed, or gone) are compared again next time.
    state.settled = state.forced.size === 0 ? all : undefined;
    const view = state.clientHas;
    if (view.base === target && view.extra.size === 0) return;
    if (exact) return view.resetTo(target);
    // Compared covers every name that can differ (see deltaChanges), so agreeing on those is enough.
    for (const name of compared) if (view.get(name) !== target.get(name)?.version) return;
    view.resetTo(target);
  }

  /** Rule 9: a changed Cluster needs its ClusterLoadAssignment again, even if unchanged. */
  private markClusterChanges(state: TypeState, sending: Iterable<EncodedResource>, had: (name: string) => string | undefined): void {
    if (state.typeUrl !== TypeUrl.Cluster) return;
    const eds = this.types.get(TypeUrl.ClusterLoadAssignment);
    if (!eds) return;
    for (const c of sending) {
      if (had(c.name) === c.version) continue;
      for (const ref of c.refs) eds.forced.add(ref);
      if (c.refs.length > 0) eds.settled = undefined;
    }
  }

  private record(state: TypeState, nonce: string, version: string): void {
    state.lastNonce = nonce;
    state.sentVersion = version;
    state.inFlight = true;
    // Delivery is timed from the change, or from this stream's start if the change is older (a
    // snapshot kept for a proxy that came back, or already served on its other stream): the time a
    // proxy spent away, or connected elsewhere, is not this change's delivery.
    state.sentChangeTime = Math.max(this.snapshot?.changeTime ?? 0, this.startedAt);
  }

  /** Response bytes handed to the transport and not yet written to the connection. */
  get unwrittenBytes(): number {
    return this.opts.budget?.unwritten?.bytes ?? 0;
  }

  /** What this stream has sent and had acknowledged, per type (for status pages and tests). */
  typeStatus(): { typeUrl: TypeUrl; sentVersion?: string; ackedVersion?: string; wildcard: boolean; subscribed: string[] }[] {
    return [...this.types.values()].map((s) => ({ typeUrl: s.typeUrl, sentVersion: s.sentVersion, ackedVersion: s.ackedVersion, wildcard: s.wildcard, subscribed: [...s.subscribed] }));
  }

  /** Ends the stream's work; `reason` says why, for the proxy's status. Idempotent: the first reason stands. */
  close(reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.opts.budget?.cancel(this.resume);
    this.unwatch?.();
    if (this.nodeId) this.opts.hooks.onDisconnect(this.nodeId, this.opts.variant, reason);
  }
}
