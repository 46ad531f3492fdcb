/**
 * ADS benchmark: N simulated proxies in worker processes (each a real ADS client that decodes and
 * ACKs), against weft-cp running as its own process. JSON on stdout and in bench/results/.
 *
 *   npm run bench:ads                                  # 500 services x 4 = 2000 proxies, SotW and delta, all reachable
 *   WEFT_BENCH_REACHABLE=10 npm run bench:ads          # each proxy reaches 10 services
 *   WEFT_BENCH_SERVICES=50 WEFT_BENCH_VARIANTS=delta npm run bench:ads
 *   WEFT_BENCH_CLIENT=grpc-js npm run bench:ads        # proxies on grpc-js instead of the lean node:http2 clients
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TypeUrl } from '../src/ads/index.js';
import { VERSION } from '../src/core/index.js';
import { binPath } from '../test/helpers/bin.js';
import { spawnControlPlane, type CpProcess } from '../test/helpers/cp-process.js';
import { benchClient, pct, procStats, waitFor } from './common.js';
import { decodeMode } from './decode-modes.js';

const SERVICES = Number(process.env.WEFT_BENCH_SERVICES ?? 500);
const REPLICAS = Number(process.env.WEFT_BENCH_REPLICAS ?? 4);
const REACHABLE = process.env.WEFT_BENCH_REACHABLE ?? 'all';
const WORKERS = Number(process.env.WEFT_BENCH_WORKERS ?? 4);
const VARIANTS = (process.env.WEFT_BENCH_VARIANTS ?? 'sotw,delta').split(',') as ('sotw' | 'delta')[];
const TIMEOUT_MS = Number(process.env.WEFT_BENCH_TIMEOUT_MS ?? 300_000);
// How many endpoint changes, and mesh-wide changes, are measured (one after another, PAUSE_MS apart).
const CHANGES = Number(process.env.WEFT_BENCH_CHANGES ?? 5);
const PAUSE_MS = Number(process.env.WEFT_BENCH_CHANGE_PAUSE_MS ?? 1000);
// WEFT_BENCH_KINDS: which kinds of change are measured, comma-separated (default all three):
// `endpoint`, `service` (a new service, when every service is reachable) and `mesh`.
const KIND_NAMES = ['endpoint', 'service', 'mesh'] as const;
const KINDS = new Set((process.env.WEFT_BENCH_KINDS ?? KIND_NAMES.join(',')).split(','));
for (const k of KINDS) if (!(KIND_NAMES as readonly string[]).includes(k)) throw new Error(`WEFT_BENCH_KINDS: unknown kind ${k} (${KIND_NAMES.join(', ')})`);
// WEFT_BENCH_TLS=1: the ADS port with TLS as shipped (xds.tls.mode auto), the proxies trusting its certificate.
const TLS = process.env.WEFT_BENCH_TLS === '1';
// WEFT_BENCH_NACK_STORM_S=N: last, every proxy rejects every CDS response for N seconds (see nackStorm).
const STORM_S = Number(process.env.WEFT_BENCH_NACK_STORM_S ?? 0);
// WEFT_BENCH_NACK_BACKOFF_MAX_MS: weft-cp's xds.nackBackoffMaxMs (its default: 60 s; 5000 keeps every backoff at 5 s, as before 2026-12-05).
const NACK_BACKOFF_MAX_MS = process.env.WEFT_BENCH_NACK_BACKOFF_MAX_MS || undefined;
// WEFT_BENCH_FAILOVER=1 (delta, the default client): every proxy's connection drops at once and comes back (see below).
const FAILOVER = process.env.WEFT_BENCH_FAILOVER === '1';
// WEFT_BENCH_STALLED=N (the default client): after cold start, N proxies spread over the services
// stop reading their stream (a congested link), their connection kept; they use gRPC's default
// window (64 KiB). No change is expected to reach them; the others' figures show what they cost.
const STALLED = Number(process.env.WEFT_BENCH_STALLED ?? 0);
// WEFT_BENCH_DECODE: how far the simulated proxies decode each response (bench/decode-modes.ts).
const DECODE = decodeMode();
if (DECODE !== 'objects' && benchClient() !== 'http2') throw new Error('WEFT_BENCH_DECODE needs the default client (WEFT_BENCH_CLIENT unset)');
if (STALLED > 0 && benchClient() !== 'http2') throw new Error('WEFT_BENCH_STALLED needs the default client (WEFT_BENCH_CLIENT unset)');
// WEFT_BENCH_LINGER_MS: weft-cp's xds.lingerMs (how long it keeps a departed proxy's config); its default otherwise.
const LINGER_MS = process.env.WEFT_BENCH_LINGER_MS || undefined;
// WEFT_BENCH_PIN=1: weft-cp (every thread) on CPU 0, the simulated proxies and this driver on CPU 1,
// as when the proxies run elsewhere: the control plane has one core to itself and no more.
const PIN = process.env.WEFT_BENCH_PIN === '1';

/** Binds every thread of process `pid` to CPU `cpu` (threads it starts later inherit it). */
function pin(pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}

function reachableOf(s: number): string[] | undefined {
  if (REACHABLE === 'all') return undefined;
  const n = Number(REACHABLE);
  return Array.from({ length: n }, (_, i) => `svc-${(s + 1 + i) % SERVICES}`);
}

function dataplane(s: number, r: number, service = `svc-${s}`, ready = true) {
  const i = s * REPLICAS + r;
  const reach = reachableOf(s);
  return {
    type: 'Dataplane',
    mesh: 'default',
    name: `${service}-${r}`,
    networking: {
      address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
      inbound: [{ port: 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': 'tcp' }, health: { ready } }],
      transparentProxying: reach ? { reachableServices: reach } : {},
    },
  };
}

/** Seconds weft-cp's main thread has spent in garbage collection since it started (prom-client's histogram, every kind). */
async function cpGcSeconds(cp: CpProcess): Promise<number> {
  const text = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
  return [...text.matchAll(/^nodejs_gc_duration_seconds_sum\{[^}]*\} (\S+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
}

/** The CP's memory by kind, from its own Prometheus metrics: V8 heap used and committed, buffers outside the heap. */
async function memoryOf(cp: CpProcess): Promise<Record<string, number>> {
  const text = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
  const mb = (name: string) => Math.round(Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN) / 1048576);
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
  return {
    rssMB: mb('process_resident_memory_bytes'),
    heapUsedMB: mb('nodejs_heap_size_used_bytes'),
    heapTotalMB: mb('nodejs_heap_size_total_bytes'),
    externalMB: mb('nodejs_external_memory_bytes'),
    // Response bytes handed to gRPC and not yet written, streams waiting for the send budget, and
    // streams with responses not yet written (behind).
    sendBytesInFlight: value('weft_xds_send_bytes_in_flight'),
    streamsWaitingToSend: value('weft_xds_streams_waiting_to_send'),
    streamsWriting: value('weft_xds_streams_writing'),
  };
}

/** The sum of a metric's values, from the CP's Prometheus metrics. */
async function metricOf(cp: CpProcess, name: string): Promise<number> {
  const text = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
}

/** Signals the CP to write a heap snapshot into dir, waits until the file is complete, and returns its memory then. */
async function heapSnapshot(cp: CpProcess, dir: string): Promise<Record<string, number>> {
  const before = new Set(readdirSync(dir));
  cp.child.kill('SIGUSR2');
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    // The snapshot is written on the CP's main thread: once it answers again, the file is complete.
    if (readdirSync(dir).some((f) => !before.has(f) && f.endsWith('.heapsnapshot'))) {
      // A kept-alive connection may have been reset while the CP was busy: ask again.
      for (let i = 0; ; i++) {
        try {
          return await memoryOf(cp);
        } catch (e) {
          if (i === 3) throw e;
        }
      }
    }
  }
}

type Measured = { p99Ms: number; listener?: { p99Ms: number } } & Record<string, unknown>;

/**
 * The first change (its code paths run for the first time since start) apart from the later
 * ones (steady state), each with every figure, and the later p99s' median and worst.
 */
function summary(changes: Measured[]) {
  const medianWorst = (xs: number[]) => {
    const later = xs.slice(1).sort((a, b) => a - b);
    return later.length ? { median: later[Math.floor((later.length - 1) / 2)], worst: later.at(-1) } : undefined;
  };
  const listeners = changes.flatMap((c) => (c.listener ? [c.listener.p99Ms] : []));
  return {
    first: changes[0],
    laterP99Ms: medianWorst(changes.map((c) => c.p99Ms)),
    ...(listeners.length === changes.length && { laterListenerP99Ms: medianWorst(listeners) }),
    each: changes,
  };
}

async function api(cp: CpProcess, method: string, path: string, body: unknown): Promise<void> {
  const res = await fetch(`${cp.apiUrl}${path}`, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
}

async function scenario(variant: 'sotw' | 'delta') {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-bench-ads-'));
  // WEFT_BENCH_CP_PROFILE=DIR writes a V8 CPU profile of weft-cp there.
  const cpFlags = process.env.WEFT_BENCH_CP_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.WEFT_BENCH_CP_PROFILE}`] : [];
  // WEFT_BENCH_CP_NODE_FLAGS: more flags for weft-cp's node (e.g. --trace-gc; its lines land in WEFT_BENCH_CP_LOG).
  cpFlags.push(...(process.env.WEFT_BENCH_CP_NODE_FLAGS ?? '').split(' ').filter(Boolean));
  // WEFT_BENCH_CP_HEAPSNAPSHOT=DIR writes a heap snapshot of weft-cp there after cold start.
  const snapshotDir = process.env.WEFT_BENCH_CP_HEAPSNAPSHOT;
  if (snapshotDir) cpFlags.push('--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`);
  const cp = await spawnControlPlane(
    { WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0', WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_TLS_MODE: TLS ? 'auto' : 'off', WEFT_LOG_LEVEL: 'debug', ...(NACK_BACKOFF_MAX_MS && { WEFT_XDS_NACK_BACKOFF_MAX_MS: NACK_BACKOFF_MAX_MS }), ...(LINGER_MS && { WEFT_XDS_LINGER_MS: LINGER_MS }) },
    [process.execPath, ...cpFlags, binPath('weft-cp'), 'run'],
  );
  const workers: ChildProcess[] = [];
  try {
    if (PIN) {
      pin(cp.child.pid!, 0);
      pin(process.pid, 1);
    }
    while (!cp.logs.some((l) => l.includes('"ADS listening"'))) await new Promise((r) => setTimeout(r, 20));
    const xds = (JSON.parse(cp.logs.find((l) => l.includes('"ADS listening"'))!) as { address: string }).address;
    const all: ReturnType<typeof dataplane>[] = [];
    for (let s = 0; s < SERVICES; s++) for (let r = 0; r < REPLICAS; r++) all.push(dataplane(s, r));
    for (let i = 0; i < all.length; i += 500) await api(cp, 'POST', '/_apply', { resources: all.slice(i, i + 500) });
    const ids = all.map((d) => `default.${d.name}`);
    const indexOf = new Map(ids.map((id, i) => [id, i]));
    const base = procStats(cp.child.pid!);

    const workerPath = fileURLToPath(new URL('./ads-worker.js', import.meta.url));
    // WEFT_BENCH_CLIENT_PROFILE=DIR writes a V8 CPU profile of each client process there.
    const clientProfile = process.env.WEFT_BENCH_CLIENT_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.WEFT_BENCH_CLIENT_PROFILE}`] : [];
    // WEFT_BENCH_CLIENT_NODE_FLAGS: more flags for the client processes' node (e.g. --trace-gc: its lines go to stdout, before the JSON).
    clientProfile.push(...(process.env.WEFT_BENCH_CLIENT_NODE_FLAGS ?? '').split(' ').filter(Boolean));
    for (let w = 0; w < WORKERS; w++) workers.push(fork(workerPath, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: clientProfile }));
    if (PIN) for (const w of workers) pin(w.pid!, 1);
    await waitFor(workers, 'up', WORKERS, 30_000);
    const t0 = Date.now();
    const readyP = waitFor(workers, 'ready', ids.length, TIMEOUT_MS);
    const tlsCa = TLS ? readFileSync(join(dataDir, 'xds-tls.crt'), 'utf8') : undefined;
    const stallable = STALLED > 0 ? ids.filter((_, j) => j % Math.max(2, Math.floor(ids.length / STALLED)) === 1).slice(0, STALLED) : [];
    workers.forEach((w, i) => w.send({ cmd: 'start', address: xds, variant, tlsCa, nodeIds: ids.filter((_, j) => j % WORKERS === i), stallable: stallable.filter((id) => indexOf.get(id)! % WORKERS === i) }));
    await readyP;
    const coldStart = (Date.now() - t0) / 1000;
    if (stallable.length > 0) {
      const stalledP = waitFor(workers, 'stalled', WORKERS, 30_000);
      workers.forEach((w) => w.send({ cmd: 'stall' }));
      await stalledP;
    }
    const afterCold = procStats(cp.child.pid!);
    const memoryAfterCold = await memoryOf(cp);
    // WEFT_BENCH_SMAPS=FILE: the CP's memory mappings at this point, to see what its RSS is made of.
    if (process.env.WEFT_BENCH_SMAPS) writeFileSync(process.env.WEFT_BENCH_SMAPS, readFileSync(`/proc/${cp.child.pid}/smaps`));
    // A heap snapshot collects garbage first, so the heap used after it is what the CP keeps.
    const memoryAfterSnapshot = snapshotDir ? await heapSnapshot(cp, snapshotDir) : undefined;

    const measure = async (kind: 'cluster' | 'endpoints' | 'listener', name: string, expect: string[], change: () => Promise<void>, count?: number, chain?: string) => {
      const seenP = waitFor(workers, 'seen', WORKERS, TIMEOUT_MS);
      const watchingP = waitFor(workers, 'watching', WORKERS, TIMEOUT_MS);
      workers.forEach((w, i) => w.send({ cmd: 'watch', kind, name, count, chain, expect: expect.filter((id) => indexOf.get(id)! % WORKERS === i) }));
      await watchingP;
      // A proxy that has not seen the change after 30 s: what weft-cp says it sent it and it took.
      const onMissing = (m: { type?: string; ids?: string[] }) => {
        if (m.type !== 'missing') return;
        for (const id of m.ids ?? []) {
          void fetch(`${cp.apiUrl}/meshes/default/dataplanes/${id.slice('default.'.length)}/_status`)
            .then((r) => r.text())
            .then((t) => process.stderr.write(`weft-cp's status of ${id}: ${t}\n`), () => {});
        }
      };
      workers.forEach((w) => w.on('message', onMissing));
      const gcBefore = await cpGcSeconds(cp);
      const before = procStats(cp.child.pid!);
      const clientsBefore = workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0);
      const clientsSysBefore = workers.reduce((n, w) => n + procStats(w.pid!).sysSeconds, 0);
      const at = Date.now();
      await change();
      const apiMs = Date.now() - at;
      const seen = await seenP.catch((e: Error) => {
        throw new Error(`${kind} ${name}: ${e.message}`);
      }).finally(() => workers.forEach((w) => w.off('message', onMissing)));
      const rounds = cp.logs
        .filter((l) => l.includes('"proxy configs regenerated'))
        .map((l) => JSON.parse(l) as { ms: number; full: number; endpointsOnly: number; time: string })
        .map((r) => ({ ...r, endsAt: Date.parse(r.time) }));
      const times = seen.flatMap((m) => m.times as number[]).map((t) => t - at);
      const listenerTimes = seen.flatMap((m) => m.listenerTimes as number[]).map((t) => t - at);
      const bytes = seen.reduce((n, m) => n + Number(m.bytes ?? 0), 0);
      const after = procStats(cp.child.pid!);
      const clientsAfter = workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0);
      const clientsSysAfter = workers.reduce((n, w) => n + procStats(w.pid!).sysSeconds, 0);
      // Read after the CPU figures, so that serving the metrics is not counted in them.
      const cpGcMs = Math.round(((await cpGcSeconds(cp)) - gcBefore) * 1000);
      return {
        // When the change began (epoch ms, just before the API call): to find it in a profile (bench/perf-split.ts).
        startedAt: at,
        proxies: times.length,
        p50Ms: pct(times, 50),
        p99Ms: pct(times, 99),
        maxMs: Math.max(...times),
        // A new service: until each proxy has its listener too (the LDS after the cluster), when
        // the service can be used. CPU, rounds and bytes are counted until then.
        ...(kind === 'cluster' && { listener: { p50Ms: pct(listenerTimes, 50), p99Ms: pct(listenerTimes, 99), maxMs: Math.max(...listenerTimes) } }),
        cpCpuSeconds: Number((after.cpuSeconds - before.cpuSeconds).toFixed(2)),
        // Of which in the kernel (system time): sockets, TCP on loopback.
        cpSysSeconds: Number((after.sysSeconds - before.sysSeconds).toFixed(2)),
        // Its main thread's garbage-collection pauses from just before the API call until every
        // proxy had the change, and a little after (the metrics are read once the CPU is).
        cpGcMs,
        // The control plane's last regeneration round: proxies rebuilt and how long until every
        // response was handed to its stream (the rest of the latency is debounce and delivery).
        cpRound: rounds.at(-1) && { ms: rounds.at(-1)!.ms, full: rounds.at(-1)!.full, endpointsOnly: rounds.at(-1)!.endpointsOnly },
        // Where the time went, in ms from just before the API call: the call's answer, the round's
        // start (after the debounce) and end (its log line), the first proxy to have the change.
        timeline: { api: apiMs, roundStart: rounds.at(-1) && rounds.at(-1)!.endsAt - rounds.at(-1)!.ms - at, roundEnd: rounds.at(-1) && rounds.at(-1)!.endsAt - at, first: Math.min(...times) },
        // The simulated proxies' CPU over the same time, on the same 2 cores.
        clientsCpuSeconds: Number((clientsAfter - clientsBefore).toFixed(2)),
        clientsSysSeconds: Number((clientsSysAfter - clientsSysBefore).toFixed(2)),
        // The simulated proxies' garbage-collection pauses in the change, summed over their
        // processes, and the longest (ms): a pause delays every proxy of its process behind it.
        clientsGcMs: seen.reduce((n, m) => n + Number(m.gcMs ?? 0), 0),
        clientsGcMaxMs: Math.max(...seen.map((m) => Number(m.gcMaxMs ?? 0))),
        // The CP's RSS once the change is delivered, to see whether it keeps growing.
        cpRssMB: after.rssMB,
        // Resource payload the proxies received for this change, summed over all of them.
        bytesSent: bytes,
      };
    };

    // Endpoint changes: one replica of svc-7 goes unhealthy, then healthy again, and so on;
    // proxies reaching svc-7 must see 3, then 4 endpoints.
    const reachesSvc7 = ids.filter((_, j) => {
      const s = Math.floor(j / REPLICAS);
      const reach = reachableOf(s);
      return !reach || reach.includes('svc-7');
    });
    const endpointChanges = [];
    for (let i = 0; KINDS.has('endpoint') && i < CHANGES; i++) {
      // The first change too waits: the proxies' last ACKs of cold start are still coming in.
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      const ready = i % 2 === 1;
      endpointChanges.push(await measure('endpoints', 'svc-7', reachesSvc7, () => api(cp, 'PUT', '/meshes/default/dataplanes/svc-7-0', dataplane(7, 0, 'svc-7', ready)), ready ? REPLICAS : REPLICAS - 1));
    }

    // Mesh-wide changes: each a new service every proxy reaches (only when all services are reachable).
    const meshWideChanges = [];
    for (let i = 0; REACHABLE === 'all' && KINDS.has('service') && i < CHANGES; i++) {
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      meshWideChanges.push(await measure('cluster', `svc-new-${i}`, ids, () => api(cp, 'PUT', `/meshes/default/dataplanes/svc-new-${i}-0`, dataplane(SERVICES, 0, `svc-new-${i}`))));
    }

    // Mesh changes, in both scenarios: the Mesh's outbound passthrough switched off and on in
    // turn, which changes every proxy's outbound passthrough listener (Kuma's
    // networking.outbound.passthrough). With 10 services reachable this is the mesh-wide change.
    const meshChanges = [];
    for (let i = 0; KINDS.has('mesh') && i < CHANGES; i++) {
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      const passthrough = i % 2 === 1;
      const chain = passthrough ? 'outbound:passthrough:ipv4' : 'outbound:blackhole';
      meshChanges.push(await measure('listener', 'outbound:passthrough:ipv4', ids, () => api(cp, 'PUT', '/meshes/default', { type: 'Mesh', name: 'default', networking: { outbound: { passthrough } } }), undefined, chain));
    }

    // A failover: every proxy's connection drops at once, as when the replica serving them dies,
    // and one replica of svc-7 changes while they are away. Then they all come back at once on new
    // connections, each naming the versions it holds (initial_resource_versions, XDS-RULES 20), as
    // Envoy does. Measured: until every proxy reaching svc-7 has its new endpoints, what the
    // proxies were sent, and the CPU. They come back to the same weft-cp: within xds.lingerMs it
    // kept their config current, as for proxies back from a network blip; with
    // WEFT_BENCH_LINGER_MS=0 it has forgotten them, and this costs what a replica taking over
    // another's proxies pays.
    let failover;
    if (FAILOVER && variant === 'delta' && benchClient() === 'http2') {
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      // From the drop on: with a linger, the change's round while they are away is theirs too.
      const atDrop = procStats(cp.child.pid!);
      const FULL = 'weft_xds_proxy_regenerations_total\\{kind="full"\\}';
      const [fullAtDrop, returnedAtDrop] = [await metricOf(cp, FULL), await metricOf(cp, 'weft_xds_proxies_returned_total')];
      const downP = waitFor(workers, 'down', WORKERS, TIMEOUT_MS);
      workers.forEach((w) => w.send({ cmd: 'drop' }));
      await downP;
      while ((await metricOf(cp, 'weft_xds_connected_proxies')) > 0) await new Promise((r) => setTimeout(r, 250));
      const ready = CHANGES % 2 === 1;
      await api(cp, 'PUT', '/meshes/default/dataplanes/svc-7-0', dataplane(7, 0, 'svc-7', ready));
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      const connected: number[] = [];
      failover = await measure('endpoints', 'svc-7', reachesSvc7, async () => {
        const at = Date.now();
        workers.forEach((w) => w.send({ cmd: 'resume' }));
        void (async () => {
          // Every 250 ms: a scrape of weft-cp's metrics with 2000 connections costs it a few ms.
          while ((await metricOf(cp, 'weft_xds_connected_proxies')) < ids.length) await new Promise((r) => setTimeout(r, 250));
          connected.push(Date.now() - at);
        })();
      }, ready ? REPLICAS : REPLICAS - 1);
      while (connected.length === 0) await new Promise((r) => setTimeout(r, 50));
      const cpuFromDrop = Number((procStats(cp.child.pid!).cpuSeconds - atDrop.cpuSeconds).toFixed(2));
      failover = {
        ...failover,
        allConnectedMs: connected[0],
        lingerMs: LINGER_MS === undefined ? 'default' : Number(LINGER_MS),
        cpCpuSecondsFromDrop: cpuFromDrop,
        // Proxies answered from the config kept for them, and those translated anew (while away or on return).
        returned: (await metricOf(cp, 'weft_xds_proxies_returned_total')) - returnedAtDrop,
        fullRegenerations: (await metricOf(cp, FULL)) - fullAtDrop,
      };
    }

    // A NACK storm: a config every proxy rejects, as when their Envoy version cannot take it. The
    // Mesh's passthrough is switched once more, which changes every proxy's clusters (passthrough or
    // blackhole), and from then on each proxy rejects every CDS response. weft-cp sends CDS again
    // after each backoff; counted: how often, and what it costs.
    let nackStorm;
    if (STORM_S > 0) {
      // The last change's tail first (a cluster removal held for the listeners, XDS-RULES 8), so it is not rejected too.
      await new Promise((r) => setTimeout(r, PAUSE_MS));
      workers.forEach((w) => w.send({ cmd: 'reject', typeUrl: TypeUrl.Cluster }));
      const before = procStats(cp.child.pid!);
      const clientsBefore = workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0);
      await api(cp, 'PUT', '/meshes/default', { type: 'Mesh', name: 'default', networking: { outbound: { passthrough: CHANGES % 2 === 1 } } });
      await new Promise((r) => setTimeout(r, STORM_S * 1000));
      const countsP = waitFor(workers, 'count', WORKERS, TIMEOUT_MS);
      workers.forEach((w) => w.send({ cmd: 'count' }));
      const counts = await countsP;
      const after = procStats(cp.child.pid!);
      const rejected = counts.reduce((n, m) => n + Number(m.rejected), 0);
      nackStorm = {
        seconds: STORM_S,
        nackBackoffMaxMs: NACK_BACKOFF_MAX_MS === undefined ? 'default' : Number(NACK_BACKOFF_MAX_MS),
        // CDS responses the proxies received and rejected: the first, then one per retry.
        cdsResponses: rejected,
        perProxy: Number((rejected / ids.length).toFixed(2)),
        resourceBytes: counts.reduce((n, m) => n + Number(m.bytes), 0),
        cpCpuSeconds: Number((after.cpuSeconds - before.cpuSeconds).toFixed(2)),
        clientsCpuSeconds: Number((workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0) - clientsBefore).toFixed(2)),
      };
    }

    const final = procStats(cp.child.pid!);
    const memoryAtEnd = await memoryOf(cp);
    // With WEFT_BENCH_CP_HEAPSNAPSHOT, a second snapshot (a full collection first) tells garbage from what is held.
    const memoryAtEndAfterSnapshot = snapshotDir ? await heapSnapshot(cp, snapshotDir) : undefined;
    const cutP = waitFor(workers, 'cut', WORKERS, 30_000);
    workers.forEach((w) => w.send({ cmd: 'stop' }));
    // Streams weft-cp ended under a live proxy during the run (keepalive, a failure): 0 in a healthy run.
    const proxiesCut = (await cutP).reduce((n, m) => n + Number(m.count), 0);
    if (proxiesCut > 0) process.stderr.write(`${proxiesCut} proxies had their stream ended by weft-cp during the run\n`);
    await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
    return {
      variant,
      client: benchClient(),
      decode: DECODE,
      tls: TLS,
      pinned: PIN,
      proxies: ids.length,
      proxiesCut,
      ...(STALLED > 0 && { stalled: stallable.length }),
      services: SERVICES,
      reachable: REACHABLE,
      coldStart: { seconds: coldStart, cpCpuSeconds: Number((afterCold.cpuSeconds - base.cpuSeconds).toFixed(2)) },
      endpointChange: summary(endpointChanges),
      meshWideChange: REACHABLE === 'all' ? summary(meshWideChanges) : 'n/a: proxies reach a fixed list of services (see meshChange)',
      meshChange: summary(meshChanges),
      ...(failover && { failover }),
      ...(nackStorm && { nackStorm }),
      cp: { rssMBBeforeProxies: base.rssMB, rssMBWithProxies: afterCold.rssMB, memoryWithProxies: memoryAfterCold, memoryAfterHeapSnapshot: memoryAfterSnapshot, rssMBAtEnd: final.rssMB, memoryAtEnd, memoryAtEndAfterSnapshot, cpuSecondsTotal: final.cpuSeconds },
    };
  } finally {
    workers.forEach((w) => w.kill('SIGKILL'));
    const stopAt = Date.now();
    cp.child.kill('SIGTERM');
    const killer = setTimeout(() => cp.child.kill('SIGKILL'), 60_000);
    const exit = await cp.exited;
    clearTimeout(killer);
    process.stderr.write(`weft-cp ${exit.signal === 'SIGKILL' ? 'was killed: it did not stop' : 'stopped'} ${Date.now() - stopAt} ms after SIGTERM\n`);
    // WEFT_BENCH_CP_LOG=FILE: the CP's log lines (debug level: one line per regeneration round), shutdown included.
    if (process.env.WEFT_BENCH_CP_LOG) writeFileSync(process.env.WEFT_BENCH_CP_LOG, `${cp.logs.join('\n')}\n`);
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const results = [];
for (const v of VARIANTS) results.push(await scenario(v));
const out = { version: VERSION, node: process.version, date: new Date().toISOString(), cores: (await import('node:os')).cpus().length, results };
const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, `ads-${SERVICES}x${REPLICAS}-reach-${REACHABLE}.json`), `${JSON.stringify(out, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
