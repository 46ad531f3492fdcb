import { mkdirSync, rmSync } from 'node:fs';
import { Registry } from 'prom-client';
import { createLogger, defaultRegistry, initialPolicies, nodeIdOf, type Logger, type ResourceInput } from '../core/index.js';
import { openStore, type Store } from '../store/index.js';
import { createRootCa } from '../certs/x509.js';
import { SendBudget } from './budget.js';
import { SnapshotCache } from './cache.js';
import { messageType, TypeUrl } from './protos.js';
import { Reconciler } from './reconciler.js';
import { XdsStatus } from './status.js';
import { AdsStream, type DeltaDiscoveryResponse, type DiscoveryResponse, type Variant } from './stream.js';
import { PRE_ENCODED, requestDeserializer, responseParts, responseSerializer, type PreEncoded } from './wire.js';

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

function dataplane(s: number, r: number, opts: { ready?: boolean; service?: string; reach?: boolean } = {}): ResourceInput {
  const i = s * REPLICAS + r;
  const service = opts.service ?? `svc-${s}`;
  return {
    type: 'Dataplane',
    mesh: MESH,
    name: `${service}-${r}`,
    labels: {},
    spec: {
      networking: {
        address: `10.250.${i >> 8}.${i & 255}`,
        inbound: [{ port: 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': s % 2 === 0 ? 'http' : 'tcp' }, ...(opts.ready !== undefined && { health: { ready: opts.ready } }) }],
        transparentProxying: {
          redirectPortInbound: 15006,
          redirectPortOutbound: 15001,
          // Half the proxies reach a few services, half all of them: both shapes of config.
          ...(opts.reach && { reachableServices: [1, 2, 3].map((k) => `svc-${(s + k) % SERVICES}`) }),
        },
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
  if (warmed) return { rounds: 0, ms: 0, responses, failures: 0, skipped: 'this process is warm already' };
  if (opts.maxMs <= 0) return { rounds: 0, ms: 0, responses, failures: 0, skipped: 'off (xds.warmUpMs is 0)' };
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
    const dps: ResourceInput[] = [];
    for (let s = 0; s < SERVICES; s++) for (let r = 0; r < REPLICAS; r++) dps.push(dataplane(s, r, { reach: s % 2 === 1 }));
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
    const proxies = new Proxies(opts.secure);
    for (const dp of dps) {
      reconciler.track(nodeIdOf(MESH, dp.name));
      const variant: Variant = streams.length % 2 === 0 ? 'delta' : 'sotw';
      const account = budget.account();
      const stream: AdsStream = new AdsStream({
        variant,
        cache,
        identity: { kind: 'dataplane', mesh: MESH, name: dp.name },
        controlPlaneId: 'warm-up',
        nackBackoffMs: 5000,
        hooks: status,
        budget: account,
        send: (r, bytes) => {
          account.charge(bytes);
          proxies.received(stream, variant, r);
          account.written(bytes);
        },
      });
      streams.push(stream);
      proxies.connect(stream, variant, nodeIdOf(MESH, dp.name));
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
    opts.logger?.info({ rounds, ms, responses, failures: failed, ...(skipped && { skipped }) }, 'warmed up: proxies of a private mesh went through every kind of change');
    return { rounds, ms, responses, failures: failed, ...(skipped && { skipped }) };
  } catch (err) {
    opts.logger?.warn({ err }, 'warm-up failed; starting all the same (the first changes after start may be slower)');
    return { rounds, ms: Math.round(performance.now() - started), responses, failures: await failures(), skipped: `failed: ${(err as Error).message}` };
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

/**
 * The simulated proxies, answering as Envoy does: an ACK for each response, and EDS for the
 * clusters they got (delta: the names; SotW: the whole list, repeated in each EDS ACK). Responses
 * are encoded as the server encodes them; answers are encoded, then read by the server's request
 * decoders.
 */
class Proxies {
  private readonly waiting: (() => void)[] = [];
  private readonly encode: Record<Variant, (r: object) => unknown>;
  private readonly request = { sotw: messageType('envoy.service.discovery.v3.DiscoveryRequest'), delta: messageType('envoy.service.discovery.v3.DeltaDiscoveryRequest') };
  private readonly decode = {
    sotw: requestDeserializer('envoy.service.discovery.v3.DiscoveryRequest', 'resource_names'),
    delta: requestDeserializer('envoy.service.discovery.v3.DeltaDiscoveryRequest', 'resource_names_subscribe', 'initial_resource_versions'),
  };
  /** SotW: the EDS names each proxy subscribes. */
  private readonly eds = new WeakMap<AdsStream, string[]>();
  /** Responses received. */
  responses = 0;

  constructor(secure: boolean) {
    const sotw = 'envoy.service.discovery.v3.DiscoveryResponse',
      delta = 'envoy.service.discovery.v3.DeltaDiscoveryResponse';
    this.encode = secure ? { sotw: responseParts(sotw), delta: responseParts(delta) } : { sotw: responseSerializer(sotw), delta: responseSerializer(delta) };
  }

  private send(stream: AdsStream, variant: Variant, req: Record<string, unknown>): void {
    const type = this.request[variant];
    stream.handle(this.decode[variant](Buffer.from(type.encode(type.fromObject(req)).finish())) as never);
  }

  connect(stream: AdsStream, variant: Variant, id: string): void {
    this.send(stream, variant, { node: { id }, type_url: TypeUrl.Cluster });
    this.send(stream, variant, { type_url: TypeUrl.Listener });
  }

  received(stream: AdsStream, variant: Variant, r: DiscoveryResponse | DeltaDiscoveryResponse): void {
    this.responses++;
    this.encode[variant](r);
    const eds = r.type_url === TypeUrl.Cluster ? ((r as PreEncoded)[PRE_ENCODED] ?? []).flatMap((x) => x.refs) : [];
    this.waiting.push(() => {
      if (variant === 'delta') {
        this.send(stream, variant, { type_url: r.type_url, response_nonce: r.nonce });
        if (eds.length > 0) this.send(stream, variant, { type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: eds });
        return;
      }
      const held = this.eds.get(stream) ?? [];
      const d = r as DiscoveryResponse;
      this.send(stream, variant, { type_url: d.type_url, version_info: d.version_info, response_nonce: d.nonce, resource_names: d.type_url === TypeUrl.ClusterLoadAssignment ? held : [] });
      if (d.type_url === TypeUrl.Cluster && eds.join() !== held.join()) {
        this.eds.set(stream, eds);
        this.send(stream, variant, { type_url: TypeUrl.ClusterLoadAssignment, resource_names: eds });
      }
    });
  }

  /** Answers every response, and the responses the answers bring, until none is left. */
  answer(): void {
    while (this.waiting.length > 0) for (const a of this.waiting.splice(0)) a();
  }
}
