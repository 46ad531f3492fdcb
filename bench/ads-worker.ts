/**
 * One process of simulated proxies for bench/ads.ts. Each proxy is a real ADS client on Envoy's
 * protos (bench/h2-client.ts, or src/ads/test-client.ts with WEFT_BENCH_CLIENT=grpc-js): it
 * subscribes like Envoy (CDS and LDS wildcard, then EDS for the clusters it got), decodes every
 * response and ACKs it. Talks to the parent over IPC.
 */
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { TypeUrl } from '../src/ads/index.js';
import { XdsTestClient, type Received } from '../src/ads/test-client.js';
import { benchClient } from './common.js';
import { cutNow, H2AdsClient } from './h2-client.js';

interface Start {
  cmd: 'start';
  address: string;
  variant: 'sotw' | 'delta';
  /** The control plane's ADS certificate (PEM), to connect with TLS trusting it. */
  tlsCa?: string;
  nodeIds: string[];
  /** Proxies that will stall (WEFT_BENCH_STALLED): they connect with gRPC's default window, 64 KiB. */
  stallable?: string[];
}
interface Watch {
  cmd: 'watch';
  /**
   * A cluster name to appear in CDS (a new service: a proxy has it all once an LDS response follows
   * the cluster's), a CLA whose endpoint count becomes `count`, or a listener whose first filter
   * chain becomes the one named `chain`.
   */
  kind: 'cluster' | 'endpoints' | 'listener';
  name: string;
  count?: number;
  chain?: string;
  /** Only these node ids are expected to see it. */
  expect: string[];
}
/** From now on, reject every response of this type (a NACK storm: a config the proxies cannot take). */
interface Reject {
  cmd: 'reject';
  typeUrl: string;
}
type Msg = Start | Watch | Reject | { cmd: 'stop' } | { cmd: 'count' } | { cmd: 'drop' } | { cmd: 'resume' } | { cmd: 'stall' };

// HTTP/2 flow-control window of each proxy's connection: Envoy's default for the xDS cluster of
// its bootstrap is 256 MiB (initial stream and connection window); grpc-js's own is 64 KiB.
const FLOW_WINDOW = Number(process.env.WEFT_BENCH_FLOW_WINDOW ?? 268_435_456);

const CLIENT = benchClient();

type Client = Pick<XdsTestClient, 'variant' | 'ack' | 'nack' | 'delta' | 'subscribe' | 'close'>;
const clients = new Map<string, Client>();
/** Proxies that stopped reading (WEFT_BENCH_STALLED): no change is expected to reach them. */
const stalled = new Set<string>();
let stallable = new Set<string>();
const ready = new Set<string>();
let watch: Watch | undefined;
let seen = new Map<string, number>();
/** For a new cluster: when each proxy got the first LDS response after it. */
let listeners = new Map<string, number>();
let bytes = 0;
/** Streams of grpc-js clients ended while the run went on; set once the run stops. */
let grpcCut = 0;
let stopping = false;
let rejectType: string | undefined;
/** Responses of `rejectType` received (and rejected) since the last count. */
let rejected = 0;
/** Per proxy: the last version of each type it took, which a SotW NACK names. */
const taken = new Map<string, Map<string, string>>();
/**
 * Delta, with WEFT_BENCH_FAILOVER=1: per proxy and type, the version of each resource it holds,
 * which it names when it comes back (initial_resource_versions), as Envoy does.
 */
const FAILOVER = process.env.WEFT_BENCH_FAILOVER === '1';
const held = new Map<string, Map<string, Map<string, string>>>();
const states = new Map<string, { eds: Set<string>; got: Set<string> }>();

function hold(id: string, r: Received): void {
  let byType = held.get(id);
  if (!byType) held.set(id, (byType = new Map()));
  let versions = byType.get(r.typeUrl);
  if (!versions) byType.set(r.typeUrl, (versions = new Map()));
  for (const x of r.resources) versions.set(x.name, x.version ?? '');
  for (const n of r.removed) versions.delete(n);
}

/**
 * This process's garbage-collection pauses since the change watched began (ms, and the longest):
 * the simulated proxies are JavaScript, and a collection that lands in a change delays every
 * proxy of this process behind it, which Envoy's C++ would not.
 */
let gc = { since: Infinity, ms: 0, maxMs: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (e.startTime < gc.since) continue;
    gc.ms += e.duration;
    gc.maxMs = Math.max(gc.maxMs, e.duration);
  }
}).observe({ entryTypes: ['gc'] });

function gcFigures(): { gcMs: number; gcMaxMs: number } {
  return { gcMs: Math.round(gc.ms), gcMaxMs: Math.round(gc.maxMs) };
}

function send(m: unknown): void {
  process.send!(m);
}

function size(r: Received): number {
  const res = (r.raw.resources as { value?: Uint8Array; resource?: { value: Uint8Array } }[] | undefined) ?? [];
  return res.reduce((n, x) => n + (x.value?.length ?? x.resource?.value.length ?? 0), 0);
}

function onResponse(id: string, c: Client, r: Received, state: { eds: Set<string>; got: Set<string> }): void {
  bytes += size(r);
  if (r.typeUrl === rejectType) {
    rejected++;
    c.nack(r, 'Error adding/updating cluster(s): rejected by the bench (NACK storm)', taken.get(id)?.get(r.typeUrl) ?? '');
    return;
  }
  if (c.variant === 'sotw') {
    c.ack(r);
    let t = taken.get(id);
    if (!t) taken.set(id, (t = new Map()));
    t.set(r.typeUrl, r.version);
  } else {
    c.delta({ type_url: r.typeUrl, response_nonce: r.nonce });
    if (FAILOVER) hold(id, r);
  }
  state.got.add(r.typeUrl);
  if (r.typeUrl === TypeUrl.Cluster) {
    const names = r.resources.filter((x) => x.body.type === 'EDS').map((x) => x.name);
    const fresh = names.filter((n) => !state.eds.has(n));
    if (fresh.length > 0 || (c.variant === 'sotw' && names.length !== state.eds.size)) {
      if (c.variant === 'sotw') {
        state.eds = new Set(names);
        c.subscribe(TypeUrl.ClusterLoadAssignment, [...state.eds]);
      } else {
        fresh.forEach((n) => state.eds.add(n));
        c.delta({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: fresh });
      }
    }
    if (names.length === 0) state.got.add(TypeUrl.ClusterLoadAssignment);
    if (watch?.kind === 'cluster' && !seen.has(id) && r.resources.some((x) => x.name === watch!.name)) seen.set(id, Date.now());
  }
  // A new service's listener comes after its cluster (make-before-break, XDS-RULES 8) and a stream
  // sends in order, so the first LDS response after the cluster's is from a snapshot that has it.
  if (r.typeUrl === TypeUrl.Listener && watch?.kind === 'cluster' && seen.has(id) && !listeners.has(id)) listeners.set(id, Date.now());
  if (r.typeUrl === TypeUrl.Listener && watch?.kind === 'listener' && !seen.has(id)) {
    const l = r.resources.find((x) => x.name === watch!.name);
    if ((l?.body.filter_chains as { name?: string }[] | undefined)?.[0]?.name === watch.chain) seen.set(id, Date.now());
  }
  if (r.typeUrl === TypeUrl.ClusterLoadAssignment && watch?.kind === 'endpoints' && !seen.has(id)) {
    const cla = r.resources.find((x) => x.name === watch!.name);
    const eps = cla ? ((cla.body.endpoints as { lb_endpoints?: unknown[] }[] | undefined) ?? []).reduce((n, l) => n + (l.lb_endpoints?.length ?? 0), 0) : -1;
    if (eps === watch.count) seen.set(id, Date.now());
  }
  if (!ready.has(id) && state.got.has(TypeUrl.Cluster) && state.got.has(TypeUrl.ClusterLoadAssignment) && state.got.has(TypeUrl.Listener)) {
    ready.add(id);
    send({ type: 'ready', id, at: Date.now() });
  }
  if (watch && (watch.kind === 'cluster' ? listeners : seen).size === watch.expect.length) {
    send({ type: 'seen', times: [...seen.values()], listenerTimes: [...listeners.values()], bytes, ...gcFigures() });
    watch = undefined;
  }
}

process.on('message', (m: Msg) => {
  if (m.cmd === 'start') {
    stallable = new Set(m.stallable ?? []);
    for (const id of m.nodeIds) {
      // Each proxy on its own connection, as real Envoys are (WEFT_BENCH_SHARED_CONNECTIONS=1: one per process).
      const state = { eds: new Set<string>(), got: new Set<string>() };
      states.set(id, state);
      const onR = (r: Received) => onResponse(id, c, r, state);
      const c: Client =
        CLIENT === 'http2'
          ? new H2AdsClient(m.address, m.variant, { id }, { flowControlWindow: stallable.has(id) ? 65_535 : FLOW_WINDOW, tlsCa: m.tlsCa, onResponse: onR })
          : new XdsTestClient(m.address, m.variant, { id }, { ownConnection: process.env.WEFT_BENCH_SHARED_CONNECTIONS !== '1', flowControlWindow: FLOW_WINDOW, tlsCa: m.tlsCa, onResponse: onR });
      clients.set(id, c);
      // grpc-js clients: a stream that ends before 'stop' was ended by weft-cp (see H2AdsClient.cut).
      if (c instanceof XdsTestClient) void c.closed.then(() => void (stopping || cutNow(id, ++grpcCut)));
      if (m.variant === 'sotw') {
        c.subscribe(TypeUrl.Cluster, []);
        c.subscribe(TypeUrl.Listener, []);
      } else {
        c.delta({ type_url: TypeUrl.Cluster });
        c.delta({ type_url: TypeUrl.Listener });
      }
    }
  } else if (m.cmd === 'stall') {
    for (const id of stallable) {
      (clients.get(id) as H2AdsClient | undefined)?.stall();
      stalled.add(id);
    }
    send({ type: 'stalled', count: stalled.size });
  } else if (m.cmd === 'watch') {
    if (stalled.size > 0) m.expect = m.expect.filter((id) => !stalled.has(id));
    watch = m;
    seen = new Map();
    listeners = new Map();
    bytes = 0;
    gc = { since: performance.now(), ms: 0, maxMs: 0 };
    // A change some proxy never sees is worth a line: which proxies, and what they got of the kind watched.
    const w = m;
    setTimeout(() => {
      if (watch !== w) return;
      const done = w.kind === 'cluster' ? listeners : seen;
      const missing = w.expect.filter((id) => !done.has(id));
      process.stderr.write(`worker ${process.pid}: ${missing.length} of ${w.expect.length} proxies have not seen ${w.kind} ${w.name} after 30 s: ${missing.slice(0, 5).map((id) => `${id} (seen${w.kind === 'cluster' ? ' its cluster' : ''}: ${seen.has(id)}, ready: ${ready.has(id)})`).join(', ')}\n`);
      send({ type: 'missing', ids: missing.slice(0, 3) });
    }, 30_000).unref();
    // The change is made only once every worker watches: a busy worker could otherwise read the
    // change's response before this message and never count that proxy.
    send({ type: 'watching' });
    if (m.expect.length === 0) send({ type: 'seen', times: [], listenerTimes: [], bytes: 0, gcMs: 0, gcMaxMs: 0 });
  } else if (m.cmd === 'reject') {
    rejectType = m.typeUrl;
    rejected = 0;
    bytes = 0;
  } else if (m.cmd === 'count') {
    send({ type: 'count', rejected, bytes });
    rejected = 0;
    bytes = 0;
  } else if (m.cmd === 'drop') {
    for (const c of clients.values()) (c as H2AdsClient).drop();
    send({ type: 'down' });
  } else if (m.cmd === 'resume') {
    // Back on a new connection, each type asked again with what the proxy holds (XDS-RULES 20).
    for (const [id, c] of clients) {
      (c as H2AdsClient).resume();
      const versions = (t: string) => Object.fromEntries(held.get(id)?.get(t) ?? []);
      c.delta({ type_url: TypeUrl.Cluster, initial_resource_versions: versions(TypeUrl.Cluster) });
      c.delta({ type_url: TypeUrl.Listener, initial_resource_versions: versions(TypeUrl.Listener) });
      const eds = [...states.get(id)!.eds];
      if (eds.length > 0) c.delta({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: eds, initial_resource_versions: versions(TypeUrl.ClusterLoadAssignment) });
    }
  } else if (m.cmd === 'stop') {
    if (H2AdsClient.reconnects > 0) process.stderr.write(`ads-worker: proxies connected again ${H2AdsClient.reconnects} times (refused while thousands connected)\n`);
    stopping = true;
    send({ type: 'cut', count: H2AdsClient.cut + grpcCut });
    for (const c of clients.values()) c.close();
    setTimeout(() => process.exit(0), 100);
  }
});
send({ type: 'up' });
