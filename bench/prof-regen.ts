/**
 * Profiling aid: regeneration rounds of 2000 transparent-proxy sidecars (500 services × 4) in one
 * process, no network. Prints the cold generation, then each round's time.
 *
 *   node dist/bench/prof-regen.js                        # endpoint changes (one replica flips health)
 *   WEFT_PROF_STREAMS=1 node dist/bench/prof-regen.js    # each proxy also has a delta stream: serialize + ACK
 *   WEFT_PROF_VARIANT=sotw ...                           # with WEFT_PROF_STREAMS=1: SotW streams instead
 *   WEFT_PROF_MESHWIDE=1 ...                             # a new service each round instead
 *   WEFT_PROF_MESH=1 ...                                 # the Mesh's outbound passthrough switched each round instead
 *   WEFT_PROF_REACHABLE=10 ...                           # each proxy reaches 10 services (default: all)
 *   WEFT_PROF_SERVICES=350 WEFT_PROF_ROUNDS=10 node --cpu-prof dist/bench/prof-regen.js
 *   WEFT_PROF_HEAPSNAPSHOT=/tmp/cp.heapsnapshot ...       # a heap snapshot after the cold generation
 *   WEFT_PROF_ALLOCATIONS=/tmp/rounds.heapprofile ...     # where the rounds allocate, garbage included
 *   WEFT_PROF_CPU_DIR=/tmp/rounds ...                     # a CPU profile of each round apart (round-1.cpuprofile, ...)
 *   WEFT_PROF_STREAMS=1 WEFT_PROF_RESUME=1 ...             # then every delta proxy leaves and comes back naming what it holds
 *   WEFT_PROF_LINGER_MS=10000 ...                         # the reconciler's lingerMs (default 0: departed proxies are forgotten)
 *   WEFT_PROF_WARM_UP=20 ...                              # weft-cp's warm-up first, 20 rounds (src/ads/warmup.ts)
 *   WEFT_PROF_DIRECT_ACCESS=200 ...                       # the last 200 proxies with direct access to every service
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { AdsStream, messageType, Reconciler, SnapshotCache, TypeUrl, warmUp } from '../src/ads/index.js';
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse } from '../src/ads/stream.js';
import { PRE_ENCODED, requestDeserializer, responseSerializer, type PreEncoded } from '../src/ads/wire.js';
import { createLogger, defaultRegistry } from '../src/core/index.js';
import { openStore } from '../src/store/index.js';

const S = Number(process.env.WEFT_PROF_SERVICES ?? 500), R = 4;
const REACH = process.env.WEFT_PROF_REACHABLE ? Number(process.env.WEFT_PROF_REACHABLE) : undefined;
// WEFT_PROF_DIRECT_ACCESS=N: the last N proxies have Kuma's direct access to every service (`*`).
const DIRECT = Number(process.env.WEFT_PROF_DIRECT_ACCESS ?? 0);
const tpOf = (s: number, i = s * R) => ({
  redirectPortInbound: 15006,
  redirectPortOutbound: 15001,
  ...(REACH !== undefined && { reachableServices: Array.from({ length: REACH }, (_, i) => `svc-${(s + 1 + i) % S}`) }),
  ...(i >= S * R - DIRECT && { directAccessServices: ['*'] }),
});
const store = await openStore({ type: 'embedded', dataDir: mkdtempSync(join(tmpdir(), 'prof-')) }, { registry: defaultRegistry() });
const ops = [];
for (let s = 0; s < S; s++) for (let r = 0; r < R; r++) {
  const i = s * R + r;
  ops.push({ op: 'upsert' as const, resource: { type: 'Dataplane', mesh: 'default', name: `svc-${s}-${r}`, labels: {}, spec: { networking: { address: `10.0.${i >> 8}.${i & 255}`, inbound: [{ port: 8080, tags: { 'kuma.io/service': `svc-${s}` } }], transparentProxying: tpOf(s, i) } } } });
}
await store.create({ type: 'Mesh', mesh: '', name: 'default', labels: {}, spec: {} });
await store.write(ops);
const cache = new SnapshotCache();
// WEFT_PROF_STREAMS=1: each proxy also has a stream (no network), delta or, with
// WEFT_PROF_VARIANT=sotw, SotW: responses are serialized as on the wire and ACKed as Envoy does,
// so a round's time includes sending.
const streams = process.env.WEFT_PROF_STREAMS === '1';
const sotw = process.env.WEFT_PROF_VARIANT === 'sotw';
const serialize = responseSerializer(sotw ? 'envoy.service.discovery.v3.DiscoveryResponse' : 'envoy.service.discovery.v3.DeltaDiscoveryResponse');
const acks: (() => void)[] = [];
const deltaRequest = messageType('envoy.service.discovery.v3.DeltaDiscoveryRequest');
const readDelta = requestDeserializer('envoy.service.discovery.v3.DeltaDiscoveryRequest', 'resource_names_subscribe', 'initial_resource_versions');
const sent = { count: 0, resources: 0 };
const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };
/** Like Envoy: the endpoints of the EDS clusters it got. */
const edsNames = (names: string[]) => names.filter((n) => n.startsWith('svc-'));
const attached = new Map<string, AdsStream>();
function attach(id: string, resumeWith?: readonly Buffer[]): void {
  let edsSubscribed: string[] = [];
  const s = new AdsStream({
    variant: sotw ? 'sotw' : 'delta', cache, identity: { kind: 'unauthenticated' }, controlPlaneId: 'prof', nackBackoffMs: 5000, hooks,
    send: (r) => {
      serialize(r);
      sent.count++;
      // The pre-encoded chunks, as the server writes them: reading `resources` would build each resource's plain form.
      sent.resources += ((r as PreEncoded)[PRE_ENCODED] ?? (r as DeltaDiscoveryResponse).resources ?? []).length;
      if (sotw) {
        const d = r as DiscoveryResponse;
        acks.push(() => {
          const names = d.type_url === TypeUrl.ClusterLoadAssignment ? edsSubscribed : [];
          s.handle({ type_url: d.type_url, version_info: d.version_info, response_nonce: d.nonce, resource_names: names });
          if (d.type_url !== TypeUrl.Cluster) return;
          const eds = edsNames(((d as PreEncoded)[PRE_ENCODED] ?? []).map((x) => x.name));
          if (eds.join() !== edsSubscribed.join()) s.handle({ type_url: TypeUrl.ClusterLoadAssignment, resource_names: (edsSubscribed = eds) });
        });
        return;
      }
      const d = r as DeltaDiscoveryResponse;
      acks.push(() => {
        s.handle({ type_url: d.type_url, response_nonce: d.nonce });
        const eds = edsNames(((d as PreEncoded)[PRE_ENCODED] ?? d.resources).map((x) => x.name));
        if (d.type_url === TypeUrl.Cluster && eds.length > 0) s.handle({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: eds });
      });
    },
  });
  attached.set(id, s);
  if (resumeWith) {
    // Back on a new stream: its requests, as on the wire, read by the server's deserializer.
    for (const b of resumeWith) s.handle(readDelta(b) as DeltaDiscoveryRequest);
    return;
  }
  s.handle({ node: { id }, type_url: TypeUrl.Cluster, ...(sotw && { resource_names: [] }) });
  s.handle({ type_url: TypeUrl.Listener, ...(sotw && { resource_names: [] }) });
}
async function drainAcks(): Promise<void> {
  while (acks.length) acks.splice(0).forEach((a) => a());
}
const rec = new Reconciler({ store, cache, logger: createLogger('p', 'silent'), metrics: new Registry(), debounceMs: 0, debounceMaxMs: 0, lingerMs: Number(process.env.WEFT_PROF_LINGER_MS ?? 0) });
rec.start();
// WEFT_PROF_WARM_UP=N: weft-cp's warm-up (src/ads/warmup.ts), N rounds, before the proxies come.
if (process.env.WEFT_PROF_WARM_UP) console.log('warm-up', await warmUp({ dir: mkdtempSync(join(tmpdir(), 'prof-warm-up-')), maxMs: 60_000, rounds: Number(process.env.WEFT_PROF_WARM_UP), secure: false }));
let t = performance.now();
for (let s = 0; s < S; s++) for (let r = 0; r < R; r++) rec.track(`default.svc-${s}-${r}`);
await rec.settle();
if (streams) {
  for (let s = 0; s < S; s++) for (let r = 0; r < R; r++) attach(`default.svc-${s}-${r}`);
  await drainAcks();
}
// WEFT_PROF_RESUME=1 (delta streams): every proxy leaves and comes back at once naming the versions
// it holds: as after a failover to another replica, which has never seen them (weft-cp forgets
// them at once without WEFT_PROF_LINGER_MS), or back to this one within its linger.
if (streams && !sotw && process.env.WEFT_PROF_RESUME === '1') {
  console.log('cold generation and streams ms', Math.round(performance.now() - t));
  const ids = [...attached.keys()];
  // As Envoy comes back: each type asked again with the versions it holds (XDS-RULES 20). Encoded
  // here, before the clock starts: that is the proxies' work.
  const encode = (req: DeltaDiscoveryRequest) => Buffer.from(deltaRequest.encode(deltaRequest.fromObject(req)).finish());
  const held = new Map(
    ids.map((id) => {
      const versions = (t: TypeUrl) => Object.fromEntries([...(cache.get(id)!.resources.get(t) ?? [])].map(([n, r]) => [n, r.version]));
      const clusters = versions(TypeUrl.Cluster);
      return [
        id,
        [
          encode({ node: { id }, type_url: TypeUrl.Cluster, initial_resource_versions: clusters }),
          encode({ type_url: TypeUrl.Listener, initial_resource_versions: versions(TypeUrl.Listener) }),
          encode({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: edsNames(Object.keys(clusters)), initial_resource_versions: versions(TypeUrl.ClusterLoadAssignment) }),
        ],
      ];
    }),
  );
  for (const id of ids) {
    attached.get(id)!.close();
    rec.untrack(id);
  }
  sent.count = sent.resources = 0;
  for (let round = 0; round < Number(process.env.WEFT_PROF_ROUNDS ?? 1); round++) {
    t = performance.now();
    for (const id of ids) {
      rec.track(id);
      attach(id, held.get(id));
    }
    await rec.settle();
    await new Promise((r) => setTimeout(r, 50));
    await rec.settle();
    await drainAcks();
    console.log('resume ms', Math.round(performance.now() - t), 'responses', sent.count, 'resources', sent.resources);
    sent.count = sent.resources = 0;
    for (const id of ids) {
      attached.get(id)!.close();
      rec.untrack(id);
    }
  }
  rec.close();
  await store.close();
  process.exit(0);
}
// WEFT_PROF_HEAPSNAPSHOT=FILE: a heap snapshot once every proxy has its config.
if (process.env.WEFT_PROF_HEAPSNAPSHOT) (await import('node:v8')).writeHeapSnapshot(process.env.WEFT_PROF_HEAPSNAPSHOT);
console.log('cold generation ms', Math.round(performance.now() - t), 'rss MB', Math.round(process.memoryUsage().rss / 1048576));
// Endpoint changes: one replica of svc-7 flips between ready and not ready (WEFT_PROF_ROUNDS times).
const rounds = Number(process.env.WEFT_PROF_ROUNDS ?? 1);
// WEFT_PROF_ALLOCATIONS=FILE: where the rounds allocate (garbage included), as a .heapprofile for DevTools.
const allocations = process.env.WEFT_PROF_ALLOCATIONS ? new (await import('node:inspector')).Session() : undefined;
const post = (method: string, params?: object) => new Promise<unknown>((res, rej) => allocations!.post(method, params ?? {}, (err, r) => (err ? rej(err) : res(r))));
if (allocations) {
  allocations.connect();
  await post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
}
// WEFT_PROF_CPU_DIR=DIR: each round's CPU profile apart, to tell the first round (code run for the first time) from later ones.
const cpuDir = process.env.WEFT_PROF_CPU_DIR;
const profiler = cpuDir ? new (await import('node:inspector')).Session() : undefined;
const profile = (method: string) => new Promise<unknown>((res, rej) => profiler!.post(method, {}, (err, r) => (err ? rej(err) : res(r))));
if (profiler) {
  profiler.connect();
  await profile('Profiler.enable');
}
for (let i = 0; i < rounds; i++) {
  if (profiler) await profile('Profiler.start');
  t = performance.now();
  // WEFT_PROF_MESHWIDE=1: a new service each round instead (every proxy reaches it).
  if (process.env.WEFT_PROF_MESH === '1') await store.upsert({ type: 'Mesh', mesh: '', name: 'default', labels: {}, spec: { networking: { outbound: { passthrough: i % 2 === 1 } } } });
  else if (process.env.WEFT_PROF_MESHWIDE === '1') await store.upsert({ ...ops[0]!.resource, name: `new-${i}`, spec: { networking: { address: '10.9.9.9', inbound: [{ port: 8080, tags: { 'kuma.io/service': `new-${i}` } }], transparentProxying: {} } } });
  else await store.upsert({ ...ops[28]!.resource, spec: { networking: { address: '10.9.9.9', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'svc-7' }, health: { ready: i % 2 === 1 } }], transparentProxying: tpOf(7) } } });
  await new Promise((r) => setTimeout(r, 5));
  await rec.settle();
  await drainAcks();
  const ms = Math.round(performance.now() - t);
  if (profiler) {
    const { profile: p } = (await profile('Profiler.stop')) as { profile: unknown };
    (await import('node:fs')).writeFileSync(join(cpuDir!, `round-${i + 1}.cpuprofile`), JSON.stringify(p));
  }
  (globalThis as { gc?: () => void }).gc?.();
  const kind = process.env.WEFT_PROF_MESH === '1' ? 'mesh change' : process.env.WEFT_PROF_MESHWIDE === '1' ? 'mesh-wide change' : 'endpoint change';
  console.log(`${kind} ms`, ms, 'rss MB', Math.round(process.memoryUsage().rss / 1048576), 'heap MB', Math.round(process.memoryUsage().heapUsed / 1048576));
}
if (allocations) {
  const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: unknown };
  (await import('node:fs')).writeFileSync(process.env.WEFT_PROF_ALLOCATIONS!, JSON.stringify(profile));
}
rec.close();
await store.close();
