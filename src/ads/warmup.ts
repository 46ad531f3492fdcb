import { mkdirSync, rmSync } from 'node:fs';
import { Registry } from 'prom-client';
import { createLogger, defaultRegistry, initialPolicies, nodeIdOf, type Logger, type ResourceInput } from '../core/index.js';
import { grpcServerListenerName, PROXYLESS_LABEL } from '../xds/index.js';
import { openStore, type Store } from '../store/index.js';
import { createRootCa } from '../certs/x509.js';
import { SendBudget } from './budget.js';
import { SnapshotCache } from './cache.js';
import { messageType, SHORT_NAME, TypeUrl } from './protos.js';
import { Reconciler } from './reconciler.js';
import { XdsStatus } from './status.js';
import { AdsStream, type DeltaDiscoveryResponse, type DiscoveryResponse, type Variant } from './stream.js';
import { PRE_ENCODED, requestDeserializer, responseParts, responseSerializer, type PreEncoded } from './wire.js';
import type { EncodedResource } from './cache.js';

/*
 * The warm-up (docs/ads.md, "Warm-up"). V8 compiles a function to fast code only once it has run
 * often enough, and with what it learnt of the values that went through it. A control plane that
 * has just started has never run its change paths (a round over connected proxies, diffs against
 * what each holds, endpoint-only rounds): its first changes ran them slowly, the first round of a
 * Mesh change taking 1.7 times as long as the third (bench/README.md, twenty-third session).
 *
 * So before the xDS port opens, a private mesh of simulated proxies goes through the changes a
 * control plane makes every day, on the real code: reconciler, snapshot cache, streams of both
 * variants, responses encoded as the server encodes them, answers decoded as the server decodes
 * them. Nothing of it is shared with the control plane: its own store (SQLite in a directory of
 * its own, removed before and after), cache, status, metrics registry and send budget.
 */

export interface WarmUpOptions {
  /** A directory of its own for the private store: removed before (a warm-up killed midway) and after. */
  dir: string;
  /** Stop after this long (checked between rounds). */
  maxMs: number;
  /** Rounds at most (DEFAULT_ROUNDS). */
  rounds?: number;
  /** The server writes responses as parts over TLS (TurnWriter), whole in plaintext: the one it uses is warmed. */
  secure: boolean;
  logger?: Logger;
}

/** What set responses off: the proxies connecting, then in each round mTLS switched, endpoints, a service, the Mesh, a policy. */
type Step = 'connect' | 'mtls' | 'endpoints' | 'service' | 'mesh' | 'policy';

export interface WarmUpResult {
  rounds: number;
  ms: number;
  /** Responses the simulated proxies were sent (and answered), by what set them off. */
  responses: Record<Step, number>;
  /** The same, by kind of proxy, and by type (CDS, EDS, LDS, RDS, SDS). */
  byKind: Record<WarmUpProxyKind, number>;
  byType: Record<string, number>;
  /** Requests that subscribed resources by name, by type (Envoy names EDS, RDS and SDS; a proxyless app every type). */
  named: Record<string, number>;
  /** Snapshots that failed their checks: a bug, the warm-up's mesh is valid. */
  failures: number;
  /** Why nothing, or not everything, was done. */
  skipped?: string;
}

const MESH = 'weft-warm-up';
const SERVICES = 12;
const REPLICAS = 3;
/** Enough, here, for first rounds close to later ones (bench/README.md, twenty-third session; bench/prof-regen.ts, WEFT_PROF_WARM_UP). */
export const DEFAULT_ROUNDS = 20;

/** Compiled code serves every control plane a process starts, so once per process is enough. */
let warmed = false;

/**
 * What a simulated proxy is: most are transparent-proxy sidecars (half reaching a few services,
 * half all of them); the third replica of the first four services is another kind, so that their
 * translation runs too, and the second of the first service is a proxyless app as well (proxies
 * take turns between delta and SotW, so it has one of each).
 */
export type WarmUpProxyKind = 'transparent' | 'proxyless' | 'explicit' | 'direct';
type Kind = WarmUpProxyKind;

function kindOf(s: number, r: number): Kind {
  if (s === 0 && r > 0) return 'proxyless';
  if (r !== 2 || s > 3) return 'transparent';
  return s === 1 ? 'explicit' : 'direct';
}

/** The services a proxy of service `s` calls, when it names them. */
const othersOf = (s: number): string[] => [1, 2, 3].map((k) => `svc-${(s + k) % SERVICES}`);
const addressOf = (s: number, r: number): string => {
  const i = s * REPLICAS + r;
  return `10.250.${i >> 8}.${i & 255}`;
};

function dataplane(s: number, r: number, opts: { ready?: boolean; service?: string } = {}): ResourceInput {
  const service = opts.service ?? `svc-${s}`;
  const kind = kindOf(s, r); // svc-new (s = SERVICES) is a transparent sidecar too
  const others = othersOf(s);
  return {
    type: 'Dataplane',
    mesh: MESH,
    name: `${service}-${r}`,
    labels: kind === 'proxyless' ? { [PROXYLESS_LABEL]: 'true' } : {},
    spec: {
      networking: {
        address: addressOf(s, r),
        inbound: [{ port: 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': s === 0 ? 'grpc' : s % 2 === 0 ? 'http' : 'tcp' }, ...(opts.ready !== undefined && { health: { ready: opts.ready } }) }],
        // An app naming the services it calls, on ports of its own.
        ...(kind === 'explicit' && { outbound: others.map((o, k) => ({ port: 20_000 + k, tags: { 'kuma.io/service': o } })) }),
        ...(kind !== 'proxyless' &&
          kind !== 'explicit' && {
            transparentProxying: {
              redirectPortInbound: 15006,
              redirectPortOutbound: 15001,
              // Half the proxies reach a few services, half all of them: both shapes of config.
              ...(s % 2 === 1 && { reachableServices: others }),
              // Kuma's direct access: to every service, and to a few.
              ...(kind === 'direct' && { directAccessServices: s === 2 ? ['*'] : others }),
            },
          }),
      },
    },
  };
}

/**
 * Runs the warm-up, once per process: later calls return at once. Never throws: a failure is
 * logged and the control plane starts all the same, its first changes slower.
 */
export async function warmUp(opts: WarmUpOptions): Promise<WarmUpResult> {
  const responses: Record<Step, number> = { connect: 0, mtls: 0, endpoints: 0, service: 0, mesh: 0, policy: 0 };
  const byKind: Record<Kind, number> = { transparent: 0, proxyless: 0, explicit: 0, direct: 0 };
  const byType: Record<string, number> = Object.fromEntries(Object.values(SHORT_NAME).map((t) => [t, 0]));
  const named: Record<string, number> = { ...byType };
  if (warmed) return { rounds: 0, ms: 0, responses, byKind, byType, named, failures: 0, skipped: 'this process is warm already' };
  if (opts.maxMs <= 0) return { rounds: 0, ms: 0, responses, byKind, byType, named, failures: 0, skipped: 'off (xds.warmUpMs is 0)' };
  warmed = true;
  const started = performance.now();
  const metrics = new Registry();
  const failures = async () => ((await metrics.getSingleMetric('weft_xds_generation_failures_total')?.get())?.values ?? []).reduce((n, v) => n + v.value, 0);
  const streams: AdsStream[] = [];
  let store: Store | undefined;
  let reconciler: Reconciler | undefined;
  let rounds = 0;
  try {
    rmSync(opts.dir, { recursive: true, force: true });
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    store = await openStore({ type: 'embedded', dataDir: opts.dir }, { registry: defaultRegistry() });
    const members: { dp: ResourceInput; kind: Kind; listeners?: string[] }[] = [];
    for (let s = 0; s < SERVICES; s++) {
      for (let r = 0; r < REPLICAS; r++) {
        const kind = kindOf(s, r);
        // A proxyless app names the listeners it needs, as grpc-js-xds does: the services it
        // calls (one of them, svc-new, comes and goes: XDS-RULES 15) and its server's, by the
        // address it binds.
        const listeners = kind === 'proxyless' ? [...othersOf(s), 'svc-new', grpcServerListenerName(addressOf(s, r), 8080)] : undefined;
        members.push({ dp: dataplane(s, r), kind, listeners });
      }
    }
    const dps = members.map((m) => m.dp);
    await store.write([
      { op: 'create', resource: { type: 'Mesh', mesh: '', name: MESH, labels: {}, spec: {} } },
      ...initialPolicies(MESH, {}).map((resource) => ({ op: 'create' as const, resource })),
      ...dps.map((resource) => ({ op: 'create' as const, resource })),
    ]);
    const root = (await createRootCa({ mesh: MESH, backend: 'ca-1', validForMs: 3_600_000 })).certPem;
    const cache = new SnapshotCache();
    // Its debug lines would read as the control plane's own rounds; a failure still shows.
    const logger = opts.logger?.child({}, { level: 'warn' }) ?? createLogger('warm-up', 'silent');
    reconciler = new Reconciler({ store, cache, logger, metrics, debounceMs: 0, debounceMaxMs: 0, trustBundle: () => Promise.resolve([root]) });
    reconciler.start();
    const status = new XdsStatus('warm-up', metrics);
    const budget = new SendBudget(64 * 1024 * 1024, metrics);
    const proxies = new Proxies(opts.secure, byKind, byType, named);
    for (const [i, { dp, kind, listeners }] of members.entries()) {
      reconciler.track(nodeIdOf(MESH, dp.name));
      const variant: Variant = i % 2 === 0 ? 'delta' : 'sotw';
      const account = budget.account();
      const proxy = new SimulatedProxy(variant, kind, listeners);
      proxy.stream = new AdsStream({
        variant,
        cache,
        identity: { kind: 'dataplane', mesh: MESH, name: dp.name },
        controlPlaneId: 'warm-up',
        nackBackoffMs: 5000,
        hooks: status,
        budget: account,
        send: (r, bytes) => {
          account.charge(bytes);
          proxies.received(proxy, r);
          account.written(bytes);
        },
      });
      streams.push(proxy.stream);
      proxies.connect(proxy, nodeIdOf(MESH, dp.name));
    }
    const step = async (kind: Step, change: () => Promise<unknown>) => {
      const before = proxies.responses;
      await change();
      await reconciler!.settle();
      proxies.answer();
      responses[kind] += proxies.responses - before;
    };
    await step('connect', () => Promise.resolve());
    const most = opts.rounds ?? DEFAULT_ROUNDS;
    while (rounds < most && performance.now() - started < opts.maxMs) {
      const k = rounds++;
      const mtls = k % 2 === 1;
      const mesh = (passthrough: boolean): ResourceInput => ({
        type: 'Mesh',
        mesh: '',
        name: MESH,
        labels: {},
        spec: { networking: { outbound: { passthrough } }, ...(mtls && { mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } }) },
      });
      // Every other round with mTLS: identities, the trust bundle over SDS, permissions as RBAC.
      await step('mtls', () => store!.upsert(mesh(true)));
      // A replica not ready, then ready again: an endpoint-only round.
      await step('endpoints', () => store!.upsert(dataplane(2, 1, { ready: mtls })));
      // A service appears, then goes: every proxy that reaches it gets new clusters and listeners.
      await step('service', () => (mtls ? store!.delete({ type: 'Dataplane', mesh: MESH, name: 'svc-new-0' }) : store!.upsert(dataplane(SERVICES, 0, { service: 'svc-new' }))));
      // The Mesh's outbound passthrough: every proxy, whatever it reaches.
      await step('mesh', () => store!.upsert(mesh(false)));
      // A policy: with mTLS on, every inbound's RBAC (each round denies another service).
      await step('policy', () =>
        store!.upsert({
          type: 'MeshTrafficPermission',
          mesh: MESH,
          name: 'warm-up',
          labels: {},
          spec: {
            spec: {
              targetRef: { kind: 'Mesh' },
              from: [
                { targetRef: { kind: 'Mesh' }, default: { action: 'Allow' } },
                { targetRef: { kind: 'MeshService', name: `svc-${k % SERVICES}` }, default: { action: 'Deny' } },
              ],
            },
          },
        }),
      );
    }
    const ms = Math.round(performance.now() - started);
    const failed = await failures();
    const skipped = rounds < most ? `stopped after ${rounds} of ${most} rounds: xds.warmUpMs (${opts.maxMs}) reached` : undefined;
    opts.logger?.info({ rounds, ms, responses, byKind, byType, named, failures: failed, ...(skipped && { skipped }) }, 'warmed up: proxies of a private mesh went through every kind of change');
    return { rounds, ms, responses, byKind, byType, named, failures: failed, ...(skipped && { skipped }) };
  } catch (err) {
    opts.logger?.warn({ err }, 'warm-up failed; starting all the same (the first changes after start may be slower)');
    return { rounds, ms: Math.round(performance.now() - started), responses, byKind, byType, named, failures: await failures(), skipped: `failed: ${(err as Error).message}` };
  } finally {
    for (const s of streams) s.close();
    reconciler?.close();
    await store?.close().catch(() => undefined);
    try {
      rmSync(opts.dir, { recursive: true, force: true });
    } catch {
      // Said already if it failed before; a directory that cannot be removed holds only the private mesh.
    }
  }
}

const routeClusters = new WeakMap<EncodedResource, readonly string[]>();

/** The clusters a route configuration's routes send to (what grpc-js-xds subscribes over CDS). */
function clustersOf(r: EncodedResource): readonly string[] {
  let names = routeClusters.get(r);
  if (!names) {
    type Action = { cluster?: string; weighted_clusters?: { clusters?: { name?: string }[] } };
    const type = messageType('envoy.config.route.v3.RouteConfiguration');
    const rc = type.toObject(type.decode(r.bytes)) as { virtual_hosts?: { routes?: { route?: Action }[] }[] };
    const out = new Set<string>();
    for (const vh of rc.virtual_hosts ?? []) {
      for (const route of vh.routes ?? []) {
        if (route.route?.cluster) out.add(route.route.cluster);
        for (const w of route.route?.weighted_clusters?.clusters ?? []) if (w.name) out.add(w.name);
      }
    }
    routeClusters.set(r, (names = [...out]));
  }
  return names;
}

/**
 * What a response's resources ask for next: EDS for clusters, RDS for listeners, SDS for both; a
 * proxyless app also asks CDS for its routes' clusters.
 */
const FOLLOWS: readonly { type: TypeUrl; from: readonly TypeUrl[]; refs: (r: EncodedResource) => readonly string[] }[] = [
  { type: TypeUrl.Cluster, from: [TypeUrl.RouteConfiguration], refs: clustersOf },
  { type: TypeUrl.ClusterLoadAssignment, from: [TypeUrl.Cluster], refs: (r) => r.refs },
  { type: TypeUrl.RouteConfiguration, from: [TypeUrl.Listener], refs: (r) => r.refs },
  { type: TypeUrl.Secret, from: [TypeUrl.Cluster, TypeUrl.Listener], refs: (r) => r.secretRefs },
];

/** SotW sends these whole (XDS-RULES 14): a response replaces what the proxy held of the type. */
const WHOLE = new Set<TypeUrl>([TypeUrl.Cluster, TypeUrl.Listener]);
/** Types a proxy holds, to follow what they name. */
const HELD = new Set<TypeUrl>([TypeUrl.Cluster, TypeUrl.Listener, TypeUrl.RouteConfiguration]);

/** One simulated proxy: what it holds of the types others follow from, and the names it subscribed. */
class SimulatedProxy {
  stream!: AdsStream;
  readonly held = new Map<TypeUrl, Map<string, EncodedResource>>();
  readonly subscribed = new Map<TypeUrl, string[]>();
  /**
   * Types it subscribes by name. Envoy: every type but CDS and LDS, which it takes whole
   * (wildcard). A proxyless app (grpc-js-xds): every type, starting from the listeners it names.
   */
  readonly named: ReadonlySet<TypeUrl>;

  constructor(
    readonly variant: Variant,
    readonly kind: Kind,
    /** A proxyless app: the listeners it asks for. */
    readonly listeners?: readonly string[],
  ) {
    this.named = new Set(listeners ? Object.values(TypeUrl) : [TypeUrl.ClusterLoadAssignment, TypeUrl.RouteConfiguration, TypeUrl.Secret]);
  }
}

/**
 * The simulated proxies, answering as Envoy does: an ACK for each response, and subscriptions to
 * what the resources it holds name (EDS for its clusters, RDS for its listeners' routes, SDS for
 * the secrets either asks for over ADS; delta: the names added and removed; SotW: the whole list,
 * repeated in each ACK of that type). Responses are encoded as the server encodes them; answers
 * are encoded, then read by the server's request decoders.
 */
class Proxies {
  private readonly waiting: (() => void)[] = [];
  private readonly encode: Record<Variant, (r: object) => unknown>;
  private readonly request = { sotw: messageType('envoy.service.discovery.v3.DiscoveryRequest'), delta: messageType('envoy.service.discovery.v3.DeltaDiscoveryRequest') };
  private readonly decode = {
    sotw: requestDeserializer('envoy.service.discovery.v3.DiscoveryRequest', 'resource_names'),
    delta: requestDeserializer('envoy.service.discovery.v3.DeltaDiscoveryRequest', 'resource_names_subscribe', 'initial_resource_versions'),
  };
  /** Responses received. */
  responses = 0;

  constructor(
    secure: boolean,
    /** Responses received by kind of proxy and by type, counted here. */
    private readonly byKind: Record<Kind, number>,
    private readonly byType: Record<string, number>,
    /** Requests subscribing names, by type, counted here. */
    private readonly named: Record<string, number>,
  ) {
    const sotw = 'envoy.service.discovery.v3.DiscoveryResponse',
      delta = 'envoy.service.discovery.v3.DeltaDiscoveryResponse';
    this.encode = secure ? { sotw: responseParts(sotw), delta: responseParts(delta) } : { sotw: responseSerializer(sotw), delta: responseSerializer(delta) };
  }

  private send(p: SimulatedProxy, req: Record<string, unknown>): void {
    if ((req.resource_names as unknown[] | undefined)?.length || (req.resource_names_subscribe as unknown[] | undefined)?.length) this.named[SHORT_NAME[req.type_url as TypeUrl]]!++;
    const type = this.request[p.variant];
    p.stream.handle(this.decode[p.variant](Buffer.from(type.encode(type.fromObject(req)).finish())) as never);
  }

  /** Its first requests: Envoy's, CDS and LDS wildcard; a proxyless app's, the listeners it names. */
  connect(p: SimulatedProxy, id: string): void {
    if (p.listeners) {
      const names = [...p.listeners];
      p.subscribed.set(TypeUrl.Listener, names);
      return this.send(p, { node: { id }, type_url: TypeUrl.Listener, ...(p.variant === 'sotw' ? { resource_names: names } : { resource_names_subscribe: names }) });
    }
    this.send(p, { node: { id }, type_url: TypeUrl.Cluster });
    this.send(p, { type_url: TypeUrl.Listener });
  }

  received(p: SimulatedProxy, r: DiscoveryResponse | DeltaDiscoveryResponse): void {
    this.responses++;
    this.byKind[p.kind]++;
    this.byType[SHORT_NAME[r.type_url as TypeUrl]]!++;
    this.encode[p.variant](r);
    const type = r.type_url as TypeUrl;
    const resources = (r as PreEncoded)[PRE_ENCODED] ?? [];
    if (HELD.has(type)) {
      // SotW sends CDS and LDS whole each time; delta what changed, and the names removed.
      const held = p.variant === 'sotw' && WHOLE.has(type) ? new Map<string, EncodedResource>() : (p.held.get(type) ?? new Map<string, EncodedResource>());
      if (p.variant === 'delta') for (const name of (r as DeltaDiscoveryResponse).removed_resources) held.delete(name);
      for (const x of resources) held.set(x.name, x);
      p.held.set(type, held);
    }
    this.waiting.push(() => {
      if (p.variant === 'delta') this.send(p, { type_url: type, response_nonce: r.nonce });
      else {
        const d = r as DiscoveryResponse;
        this.send(p, { type_url: type, version_info: d.version_info, response_nonce: d.nonce, resource_names: p.subscribed.get(type) ?? [] });
      }
      for (const f of FOLLOWS) if (f.from.includes(type) && p.named.has(f.type)) this.follow(p, f.type, f.from, f.refs);
    });
  }

  /** Subscribes what the proxy's resources of `from` name of `type` now, if that changed. */
  private follow(p: SimulatedProxy, type: TypeUrl, from: readonly TypeUrl[], refs: (r: EncodedResource) => readonly string[]): void {
    const wanted = new Set<string>();
    for (const t of from) for (const x of p.held.get(t)?.values() ?? []) for (const n of refs(x)) wanted.add(n);
    const before = p.subscribed.get(type) ?? [];
    const now = [...wanted].sort();
    if (now.join() === before.join()) return;
    p.subscribed.set(type, now);
    if (p.variant === 'sotw') this.send(p, { type_url: type, resource_names: now });
    else {
      const had = new Set(before);
      this.send(p, { type_url: type, resource_names_subscribe: now.filter((n) => !had.has(n)), resource_names_unsubscribe: before.filter((n) => !wanted.has(n)) });
    }
    // What it no longer subscribes it drops, and what that named is no longer asked for either
    // (a proxyless app's route gone: its clusters too).
    const held = p.held.get(type);
    let dropped = false;
    for (const name of held?.keys() ?? []) {
      if (wanted.has(name)) continue;
      held!.delete(name);
      dropped = true;
    }
    if (dropped) for (const f of FOLLOWS) if (f.from.includes(type) && p.named.has(f.type)) this.follow(p, f.type, f.from, f.refs);
  }

  /** Answers every response, and the responses the answers bring, until none is left. */
  answer(): void {
    while (this.waiting.length > 0) for (const a of this.waiting.splice(0)) a();
  }
}
