import * as grpc from '@grpc/grpc-js';
import { messageType, TypeUrl } from '../../src/ads/index.js';
import { TO_OBJECT } from '../../src/ads/protos.js';
import type { DeltaDiscoveryRequest } from '../../src/ads/stream.js';
import { XdsTestClient, type Received } from '../../src/ads/test-client.js';

/** Types a proxy subscribes to by name, as it finds them referenced (Envoy: EDS, RDS, SDS). */
const NAMED = [TypeUrl.ClusterLoadAssignment, TypeUrl.RouteConfiguration, TypeUrl.Secret] as const;
const WILDCARD = [TypeUrl.Cluster, TypeUrl.Listener] as const;
export const ALL_TYPES = [...WILDCARD, ...NAMED];

/** A type URL's last part (Cluster, Listener, ...), for messages. */
export const short = (t: string) => t.split('.').pop()!;

/** What a proxy holds of one resource: its content in a canonical form, and its delta version. */
export interface Held {
  canonical: string;
  version?: string;
  /** The decoded resource, nested Anys decoded too (to find what it refers to). */
  body: Record<string, unknown>;
}

/** protobufjs gives bytes fields as Buffers only when it decodes a Buffer. */
const asBuffer = (b: Uint8Array) => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

function decodeNested(v: unknown): unknown {
  if (v instanceof Uint8Array || v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(decodeNested);
  const o = v as Record<string, unknown>;
  if (typeof o.type_url === 'string' && o.value instanceof Uint8Array) {
    let type;
    try {
      type = messageType(o.type_url);
    } catch {
      return o;
    }
    return { '@type': o.type_url, ...(decodeNested(type.toObject(type.decode(asBuffer(o.value)), TO_OBJECT)) as object) };
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(o)) out[k] = decodeNested(x);
  return out;
}

/** JSON with sorted keys and bytes in base64, so equal content gives equal text whatever the key order. */
function canonical(v: unknown): string {
  if (v instanceof Uint8Array) return JSON.stringify(asBuffer(v).toString('base64'));
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
    .join(',')}}`;
}

/** A resource as a proxy holds it, from the bytes of its Any's value. */
export function heldOf(typeUrl: string, bytes: Uint8Array, version?: string): Held {
  const type = messageType(typeUrl);
  const body = decodeNested(type.toObject(type.decode(asBuffer(bytes)), TO_OBJECT)) as Record<string, unknown>;
  return { canonical: canonical(body), version, body };
}

/** Every object in a decoded resource, depth first. */
function* objects(v: unknown): Generator<Record<string, unknown>> {
  if (v === null || typeof v !== 'object' || v instanceof Uint8Array) return;
  if (Array.isArray(v)) {
    for (const x of v) yield* objects(x);
    return;
  }
  yield v as Record<string, unknown>;
  for (const x of Object.values(v)) yield* objects(x);
}

/** The ClusterLoadAssignments a cluster asks for over EDS. */
export function edsNamesOf(cluster: Record<string, unknown>): string[] {
  if (cluster.type !== 'EDS') return [];
  const cfg = cluster.eds_cluster_config as { service_name?: string } | undefined;
  return [cfg?.service_name || String(cluster.name)];
}

/** Route configurations a listener asks for over RDS. */
export function rdsNamesOf(listener: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const o of objects(listener)) {
    const rds = o.rds as { route_config_name?: string; config_source?: { ads?: unknown } } | undefined;
    if (rds?.route_config_name && rds.config_source?.ads !== undefined) out.push(rds.route_config_name);
  }
  return out;
}

/** Secrets a resource asks for over ADS (an SDS config whose source is ADS). */
export function adsSecretsOf(resource: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const o of objects(resource)) {
    const src = o.sds_config as { ads?: unknown } | undefined;
    if (typeof o.name === 'string' && src?.ads !== undefined) out.push(o.name);
  }
  return out;
}

/** Clusters a listener or route configuration sends traffic to (TCP proxy and route actions, weighted or not). */
export function clustersUsedBy(resource: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const o of objects(resource)) {
    if (typeof o.cluster === 'string') out.push(o.cluster);
    const weighted = o.weighted_clusters as { clusters?: { name?: string }[] } | undefined;
    for (const c of weighted?.clusters ?? []) if (c.name) out.push(c.name);
  }
  return out;
}

/**
 * A proxy on a real gRPC stream that subscribes as Envoy or as grpc-js-xds does:
 * - `envoy` (SotW or delta): CDS and LDS by wildcard; EDS, RDS and SDS by the names its clusters
 *   and listeners refer to;
 * - `grpc` (SotW only, as grpc-js-xds): every type by name: LDS for the services it calls and
 *   the server listeners it binds, RDS for what those listeners use, CDS for the clusters its
 *   routes send to, EDS for those clusters.
 * Names are subscribed and unsubscribed as what refers to them changes; every response is applied
 * and ACKed (or now and then rejected); after a reconnect it announces what it holds (SotW: the
 * versions it ACKed; delta: `initial_resource_versions`). It keeps the config it holds (`held`)
 * and records any moment when a listener or route it holds sends traffic to a cluster it lacks
 * (XDS-RULES 8: Envoy answers "cluster not found"; for grpc, a cluster taken away while its routes
 * still use it, since grpc-js asks for clusters only after the routes that use them).
 */
export class ModelProxy {
  readonly held = new Map<string, Map<string, Held>>(ALL_TYPES.map((t) => [t, new Map()]));
  /** Types asked for by name, and the names last asked for. */
  readonly subscribed: Map<string, Set<string>>;
  readonly violations: string[] = [];
  /** What happened on the proxy's streams, most recent last (for failure reports). */
  readonly trace: string[] = [];
  /**
   * SotW after a reconnect: the server knows only the version strings the proxy announces, not
   * what they stand for, so it cannot keep the clusters the proxy's old listeners use while their
   * replacements come. Rule 8 is checked again from the first moment, after the new stream's first
   * LDS response the proxy takes, that it holds a consistent config. (While it rejects them, it
   * keeps listeners the server cannot know of. Delta clients name what they hold.)
   */
  private resyncing: 'no' | 'before LDS' | 'after LDS' = 'no';
  /** Clusters it was sent and rejected: a listener using one is its own doing, not the server's. */
  private readonly declined = new Set<string>();
  private acked = new Map<string, string>();
  private nonces = new Map<string, string>();
  private client?: XdsTestClient;
  private readonly wildcard: readonly string[];
  responses = 0;
  nacks = 0;
  /**
   * While set, every response of this type is rejected whole, as by an Envoy that cannot take the
   * config (the server's backoff grows while the content stays the same; rule 5).
   */
  stubborn?: string;

  constructor(
    readonly nodeId: string,
    readonly variant: 'sotw' | 'delta',
    private address: string,
    private readonly opts: {
      tlsCa?: string;
      rng: () => number;
      /**
       * How often a response is rejected (0-1). A rejected response is NACKed; half the time none
       * of it is taken, half the time some of its resources are (Envoy takes what it can), never
       * its removals.
       */
      nackRate?: number;
      /** Subscribe as grpc-js-xds does (SotW only), asking for these listeners. */
      grpc?: { listeners: string[] };
      /** A dataplane token, sent as weft-dp and Envoy do (`authorization: Bearer`) on every stream. */
      token?: string;
      /** Its HTTP/2 stream window (gRPC's default: 64 KiB): how much the server may send ahead of its reading. */
      flowControlWindow?: number;
    },
  ) {
    if (opts.grpc && variant !== 'sotw') throw new Error('grpc-js-xds speaks SotW only');
    this.wildcard = opts.grpc ? [] : WILDCARD;
    const named = opts.grpc ? [TypeUrl.Listener, TypeUrl.RouteConfiguration, TypeUrl.Cluster, TypeUrl.ClusterLoadAssignment] : NAMED;
    this.subscribed = new Map(named.map((t) => [t, new Set<string>()]));
    if (opts.grpc) this.subscribed.set(TypeUrl.Listener, new Set(opts.grpc.listeners));
  }

  get flavour(): 'envoy' | 'grpc' {
    return this.opts.grpc ? 'grpc' : 'envoy';
  }

  /** What it asks for of a type: all of it (wildcard), these names, or none of it (grpc: SDS). */
  asksFor(t: string): 'all' | ReadonlySet<string> | undefined {
    return this.wildcard.includes(t) ? 'all' : this.subscribed.get(t);
  }

  /** Names of this type it asks for that need not exist (grpc: services it may call that are not there). */
  optional(t: string): boolean {
    return this.opts.grpc !== undefined && t === TypeUrl.Listener;
  }

  connect(): void {
    if (this.closed) return; // left for good (a reconnect timer may still fire)
    this.nonces = new Map();
    const holds = ALL_TYPES.some((t) => this.held.get(t)!.size > 0);
    this.resyncing = this.variant === 'sotw' && holds ? 'before LDS' : 'no';
    this.trace.push(`connect, holding ${ALL_TYPES.map((t) => `${short(t)} [${[...this.held.get(t)!.keys()].join(' ')}]`).join(', ')}`);
    const client = (this.client = new XdsTestClient(this.address, this.variant, { id: this.nodeId }, { tlsCa: this.opts.tlsCa, metadata: this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : undefined, flowControlWindow: this.opts.flowControlWindow, onResponse: (r) => this.onResponse(client, r) }));
    void client.closed.then((s) => this.ended(client, s));
    for (const t of this.wildcard) {
      if (this.variant === 'sotw') client.request(t, [], this.acked.has(t) ? { version_info: this.acked.get(t) } : {});
      // Delta wildcard: the legacy empty list or "*", as Envoy versions differ.
      else client.delta({ type_url: t, ...(this.opts.rng() < 0.5 ? { resource_names_subscribe: ['*'] } : {}), initial_resource_versions: this.versions(t) });
    }
    for (const [t, subscribed] of this.subscribed) {
      const names = [...subscribed];
      if (names.length === 0) continue;
      if (this.variant === 'sotw') client.request(t, names, this.acked.has(t) ? { version_info: this.acked.get(t) } : {});
      else client.delta({ type_url: t, resource_names_subscribe: names, initial_resource_versions: this.versions(t) });
    }
  }

  /**
   * The server ended the stream (this proxy did not close it): Envoy reconnects, holding what it
   * holds. UNAVAILABLE is how a control plane that stops sends its proxies away; any other status
   * means weft-cp ended a stream a healthy history never ends (an error in it), and is a violation.
   * Without this, such a proxy sat on a dead stream, its config never changing again.
   */
  private ended(client: XdsTestClient, status: { code: number; details: string }): void {
    if (client !== this.client) return; // closed by this proxy, or replaced already
    this.trace.push(`stream ended by the server: ${grpc.status[status.code] ?? status.code} ${status.details}`);
    if (status.code !== grpc.status.UNAVAILABLE) this.violations.push(`the server ended its stream: ${grpc.status[status.code] ?? status.code} ${status.details}`);
    this.client = undefined;
    setTimeout(() => this.client ?? this.connect(), 10);
  }

  /** Closes the stream; the proxy keeps what it holds, as Envoy does while it reconnects. */
  disconnect(): void {
    if (this.client) this.trace.push('disconnect');
    this.client?.close();
    this.client = undefined;
  }

  reconnect(): void {
    this.disconnect();
    this.connect();
  }

  /** The control plane moved (a restart): later connections go there. */
  moveTo(address: string): void {
    this.address = address;
  }

  get connected(): boolean {
    return this.client !== undefined;
  }

  private versions(t: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [n, h] of this.held.get(t)!) if (h.version) out[n] = h.version;
    return out;
  }

  private onResponse(client: XdsTestClient, r: Received): void {
    if (client !== this.client) return; // a stream already closed
    this.responses++;
    const t = r.typeUrl;
    const held = this.held.get(t);
    if (!held) return void this.violations.push(`a response of unknown type ${t}`);
    const raw = (r.raw.resources as Record<string, unknown>[] | undefined) ?? [];
    const named = this.subscribed.get(t);
    const incoming = raw.map((x, i) => {
      const any = (this.variant === 'sotw' ? x : x.resource) as { type_url: string; value: Uint8Array };
      return [r.resources[i]!.name, heldOf(any.type_url, any.value, r.resources[i]!.version)] as const;
    });
    const reject = t === this.stubborn ? 'whole' : this.opts.rng() < (this.opts.nackRate ?? 0) ? (this.opts.rng() < 0.5 ? 'whole' : 'partly') : undefined;
    const before = new Set(held.keys());
    if (reject === undefined) {
      // SotW LDS and CDS carry the full set (XDS-RULES 14): what they leave out is gone.
      if (this.variant === 'sotw' && (t === TypeUrl.Listener || t === TypeUrl.Cluster)) held.clear();
      for (const n of r.removed) held.delete(n);
    }
    for (const [name, h] of incoming) {
      // A named type: a resource no longer asked for (the unsubscription crossed it) is dropped, as Envoy does.
      if (named && !named.has(name)) continue;
      if (reject === 'whole' || (reject === 'partly' && this.opts.rng() < 0.5)) {
        if (t === TypeUrl.Cluster && !held.has(name)) this.declined.add(name);
        continue;
      }
      held.set(name, h);
      if (t === TypeUrl.Cluster) this.declined.delete(name);
    }
    this.trace.push(`got ${short(t)} ${r.nonce}: [${incoming.map(([n]) => n).join(' ')}]${r.removed.length ? ` removed [${r.removed.join(' ')}]` : ''}${reject ? `, rejected (${reject})` : ''}`);
    this.nonces.set(t, r.nonce);
    if (t === TypeUrl.Listener && this.resyncing === 'before LDS' && !reject) this.resyncing = 'after LDS';
    this.checkClusters(t, t === TypeUrl.Cluster ? before : undefined);
    const ack = () => {
      if (reject) {
        this.nacks++;
        const error_detail = { code: 3, message: `${this.nodeId} rejects ${r.nonce}` };
        if (this.variant === 'sotw') client.request(t, named ? [...named] : [], { version_info: this.acked.get(t) ?? '', response_nonce: r.nonce, error_detail });
        else client.delta({ type_url: t, response_nonce: r.nonce, error_detail });
      } else if (this.variant === 'sotw') {
        this.acked.set(t, r.version);
        client.request(t, named ? [...named] : [], { version_info: r.version, response_nonce: r.nonce });
      } else client.delta({ type_url: t, response_nonce: r.nonce });
    };
    // Envoy asks for what new clusters and listeners refer to around its ACK: either order must work.
    const ackFirst = this.opts.rng() < 0.5;
    if (ackFirst) ack();
    this.resubscribe(client);
    if (!ackFirst) ack();
  }

  /** What the resources it holds refer to, by type: what it should be asking for. */
  private wanted(): Map<string, Set<string>> {
    const want = new Map<string, Set<string>>([...this.subscribed.keys()].map((t) => [t, new Set()]));
    const add = (t: string, names: string[]) => names.forEach((n) => want.get(t)?.add(n));
    const clusters = this.held.get(TypeUrl.Cluster)!;
    const listeners = this.held.get(TypeUrl.Listener)!;
    for (const c of clusters.values()) {
      add(TypeUrl.ClusterLoadAssignment, edsNamesOf(c.body));
      add(TypeUrl.Secret, adsSecretsOf(c.body));
    }
    for (const l of listeners.values()) {
      add(TypeUrl.RouteConfiguration, rdsNamesOf(l.body));
      add(TypeUrl.Secret, adsSecretsOf(l.body));
    }
    if (this.opts.grpc) {
      add(TypeUrl.Listener, this.opts.grpc.listeners);
      // grpc-js asks for the clusters its routes send to, once it has the routes.
      const routes = this.held.get(TypeUrl.RouteConfiguration)!;
      for (const l of listeners.values()) {
        add(TypeUrl.Cluster, clustersUsedBy(l.body));
        for (const rn of rdsNamesOf(l.body)) {
          const rc = routes.get(rn);
          if (rc) add(TypeUrl.Cluster, clustersUsedBy(rc.body));
        }
      }
    }
    return want;
  }

  /** Asks for exactly what the resources held refer to. */
  private resubscribe(client: XdsTestClient): void {
    for (const [t, now] of this.wanted()) {
      const before = this.subscribed.get(t)!;
      const added = [...now].filter((n) => !before.has(n));
      const removed = [...before].filter((n) => !now.has(n));
      if (added.length === 0 && removed.length === 0) continue;
      this.subscribed.set(t, now);
      this.trace.push(`ask ${short(t)}${added.length ? ` +[${added.join(' ')}]` : ''}${removed.length ? ` -[${removed.join(' ')}]` : ''}`);
      for (const n of removed) this.held.get(t)!.delete(n);
      if (this.variant === 'sotw') client.request(t, [...now], { version_info: this.acked.get(t) ?? '', response_nonce: this.nonces.get(t) ?? '' });
      else {
        const req: DeltaDiscoveryRequest = { type_url: t };
        if (added.length) req.resource_names_subscribe = added;
        if (removed.length) req.resource_names_unsubscribe = removed;
        client.delta(req);
      }
    }
  }

  /**
   * XDS-RULES 8: every cluster a held listener, or a route configuration one of them uses, sends to
   * is held. For grpc, which asks for a cluster only once it has the route, that a CDS response
   * (`hadClusters`: what was held before it) takes away no cluster a held route still uses.
   */
  private checkClusters(after: string, hadClusters?: ReadonlySet<string>): void {
    if (this.opts.grpc && !hadClusters) return;
    const clusters = this.held.get(TypeUrl.Cluster)!;
    const routes = this.held.get(TypeUrl.RouteConfiguration)!;
    const found: string[] = [];
    for (const [ln, l] of this.held.get(TypeUrl.Listener)!) {
      const users: [string, Record<string, unknown>][] = [[`listener ${ln}`, l.body]];
      for (const rn of rdsNamesOf(l.body)) {
        const rc = routes.get(rn);
        if (rc) users.push([`route configuration ${rn}`, rc.body]);
      }
      for (const [who, body] of users) {
        for (const c of clustersUsedBy(body)) {
          const missing = !clusters.has(c) && !this.declined.has(c) && (!this.opts.grpc || hadClusters!.has(c));
          if (missing) found.push(`after a ${short(after)} response, ${who} sends to cluster ${c}, which the proxy ${this.opts.grpc ? 'no longer holds' : 'does not hold'} (XDS-RULES 8)`);
        }
      }
    }
    if (this.resyncing === 'no') this.violations.push(...found);
    else if (this.resyncing === 'after LDS' && found.length === 0) this.resyncing = 'no';
  }

  private closed = false;

  close(): void {
    this.closed = true;
    this.disconnect();
  }
}
