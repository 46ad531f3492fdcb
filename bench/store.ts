/**
 * Store benchmark: write rate, read/list latency and RSS of the embedded store (and of
 * PostgreSQL when WEFT_BENCH_POSTGRES_URL is set). JSON on stdout.
 *
 *   npm run bench:store                     # 2000 dataplanes
 *   WEFT_BENCH_N=10000 npm run bench:store
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultRegistry, VERSION, type ResourceInput } from '../src/core/index.js';
import { openStore, type Store } from '../src/store/index.js';

const N = Number(process.env.WEFT_BENCH_N ?? 2000);
const registry = defaultRegistry();

function dataplane(i: number): ResourceInput {
  return {
    type: 'Dataplane',
    mesh: 'bench',
    name: `dp-${i}`,
    labels: {},
    spec: { networking: { address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, inbound: [{ port: 8080, servicePort: 8080, serviceAddress: '127.0.0.1', tags: { 'kuma.io/service': `svc-${i % 500}`, 'kuma.io/protocol': 'http' } }] } },
  };
}

function pct(sorted: number[], p: number): number {
  return Number(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!.toFixed(3));
}

async function measure(store: Store) {
  await store.create({ type: 'Mesh', mesh: '', name: 'bench', labels: {}, spec: {} });
  const rssBefore = process.memoryUsage().rss;
  const lat: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    const s = performance.now();
    await store.create(dataplane(i));
    lat.push(performance.now() - s);
  }
  const seqSeconds = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);

  const t1 = performance.now();
  await Promise.all(Array.from({ length: N }, (_, i) => store.update({ ...dataplane(i), labels: { round: '2' } })));
  const concurrentSeconds = (performance.now() - t1) / 1000;

  const t2 = performance.now();
  const ops = Array.from({ length: N }, (_, i) => ({ op: 'upsert' as const, resource: { ...dataplane(i), labels: { round: '3' } } }));
  await store.write(ops);
  const batchSeconds = (performance.now() - t2) / 1000;

  const getLat: number[] = [];
  for (let i = 0; i < 500; i++) {
    const s = performance.now();
    await store.get({ type: 'Dataplane', mesh: 'bench', name: `dp-${(i * 7) % N}` });
    getLat.push(performance.now() - s);
  }
  getLat.sort((a, b) => a - b);
  const t3 = performance.now();
  const all = await store.list('Dataplane', { mesh: 'bench' });
  const listAllMs = performance.now() - t3;
  const t4 = performance.now();
  const tagged = await store.list('Dataplane', { mesh: 'bench', tags: { 'kuma.io/service': 'svc-7' } });
  const listTagMs = performance.now() - t4;

  return {
    dataplanes: N,
    sequentialCreates: { perSecond: Math.round(N / seqSeconds), p50Ms: pct(lat, 50), p99Ms: pct(lat, 99) },
    concurrentUpdates: { perSecond: Math.round(N / concurrentSeconds) },
    oneBatchOfUpserts: { seconds: Number(batchSeconds.toFixed(3)), perSecond: Math.round(N / batchSeconds) },
    get: { p50Ms: pct(getLat, 50), p99Ms: pct(getLat, 99) },
    listAll: { items: all.items.length, ms: Number(listAllMs.toFixed(1)) },
    listByTag: { items: tagged.items.length, ms: Number(listTagMs.toFixed(1)) },
    rssMB: Math.round(process.memoryUsage().rss / 1048576),
    rssGrowthMB: Math.round((process.memoryUsage().rss - rssBefore) / 1048576),
  };
}

const out: Record<string, unknown> = { version: VERSION, node: process.version, date: new Date().toISOString() };
const dir = mkdtempSync(join(tmpdir(), 'weft-bench-'));
try {
  const rssStart = process.memoryUsage().rss;
  const embedded = await openStore({ type: 'embedded', dataDir: dir }, { registry });
  out.embedded = { rssAtStartMB: Math.round(rssStart / 1048576), ...(await measure(embedded)) };
  await embedded.close();
  if (process.env.WEFT_BENCH_POSTGRES_URL) {
    const pg = await openStore({ type: 'postgres', url: process.env.WEFT_BENCH_POSTGRES_URL }, { registry });
    out.postgres = await measure(pg);
    await pg.close();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
