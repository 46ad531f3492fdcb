/**
 * The transport's floor for an endpoint change: the same simulated proxies as bench/ads.ts (each a
 * real delta ADS client on its own connection, decoding and ACKing), against a server that does
 * nothing but deliver (bench/ads-floor-server.ts). Each round, the server writes one new
 * ClusterLoadAssignment to every stream; the time is from the command to each proxy decoding it.
 * weft-cp's endpoint change cannot be faster than this on the same machine, plus its API call,
 * debounce and round. JSON on stdout and in bench/results/.
 *
 *   npm run bench:ads-floor                                  # 2000 proxies; servers on grpc-js and node:http2
 *   WEFT_BENCH_CLIENT=grpc-js npm run bench:ads-floor        # the proxies on grpc-js (default: lean, as in bench/ads.ts)
 *   WEFT_BENCH_PROXIES=500 WEFT_FLOOR_TRANSPORTS=http2 npm run bench:ads-floor
 *   WEFT_BENCH_TLS=1 npm run bench:ads-floor                 # over TLS, as weft-cp's ADS port by default
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../src/core/index.js';
import { benchClient, pct, procStats, waitFor } from './common.js';
import { decodeMode } from './decode-modes.js';

const PROXIES = Number(process.env.WEFT_BENCH_PROXIES ?? 2000);
const WORKERS = Number(process.env.WEFT_BENCH_WORKERS ?? 4);
const ROUNDS = Number(process.env.WEFT_BENCH_ROUNDS ?? 7);
const TRANSPORTS = (process.env.WEFT_FLOOR_TRANSPORTS ?? 'grpc-js,http2').split(',');

async function scenario(transport: string) {
  const server = fork(fileURLToPath(new URL('./ads-floor-server.js', import.meta.url)), [], { env: { ...process.env, WEFT_FLOOR_TRANSPORT: transport }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const workers: ChildProcess[] = [];
  try {
    const [listening] = await waitFor([server], 'listening', 1, 30_000);
    const ids = Array.from({ length: PROXIES }, (_, i) => `default.p-${i}`);
    const workerPath = fileURLToPath(new URL('./ads-worker.js', import.meta.url));
    // WEFT_BENCH_CLIENT_PROFILE=DIR writes a V8 CPU profile of each client process there (as in bench/ads.ts).
    const execArgv = process.env.WEFT_BENCH_CLIENT_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.WEFT_BENCH_CLIENT_PROFILE}`] : [];
    for (let w = 0; w < WORKERS; w++) workers.push(fork(workerPath, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv }));
    await waitFor(workers, 'up', WORKERS, 30_000);
    const t0 = Date.now();
    const readyP = waitFor(workers, 'ready', ids.length, 120_000);
    workers.forEach((w, i) => w.send({ cmd: 'start', address: `127.0.0.1:${String(listening!.port)}`, variant: 'delta', tlsCa: listening!.tlsCa as string | undefined, nodeIds: ids.filter((_, j) => j % WORKERS === i) }));
    await readyP;
    const connect = (Date.now() - t0) / 1000;
    const rounds: { p50Ms: number; p99Ms: number; maxMs: number; serverCpuSeconds: number; clientsCpuSeconds: number }[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      await new Promise((res) => setTimeout(res, 1000)); // let the ACKs of the last round settle
      const count = r % 2 === 0 ? 3 : 4;
      workers.forEach((w, i) => w.send({ cmd: 'watch', kind: 'endpoints', name: 'svc-7', count, expect: ids.filter((_, j) => j % WORKERS === i) }));
      const serverBefore = procStats(server.pid!).cpuSeconds;
      const clientsBefore = workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0);
      const seenP = waitFor(workers, 'seen', WORKERS, 60_000);
      const at = Date.now();
      server.send({ cmd: 'change', count });
      const times = (await seenP).flatMap((m) => m.times as number[]).map((t) => t - at);
      rounds.push({
        p50Ms: pct(times, 50),
        p99Ms: pct(times, 99),
        maxMs: Math.max(...times),
        serverCpuSeconds: Number((procStats(server.pid!).cpuSeconds - serverBefore).toFixed(2)),
        clientsCpuSeconds: Number((workers.reduce((n, w) => n + procStats(w.pid!).cpuSeconds, 0) - clientsBefore).toFixed(2)),
      });
    }
    const median = (k: keyof (typeof rounds)[number]): number => pct(rounds.map((x) => x[k]), 50);
    workers.forEach((w) => w.send({ cmd: 'stop' }));
    return {
      transport,
      tls: process.env.WEFT_BENCH_TLS === '1',
      decode: decodeMode(),
      client: benchClient(),
      proxies: PROXIES,
      connectSeconds: connect,
      median: { p50Ms: median('p50Ms'), p99Ms: median('p99Ms'), maxMs: median('maxMs'), serverCpuSeconds: median('serverCpuSeconds'), clientsCpuSeconds: median('clientsCpuSeconds') },
      rounds,
      serverRssMB: procStats(server.pid!).rssMB,
    };
  } finally {
    await new Promise((r) => setTimeout(r, 300));
    workers.forEach((w) => w.kill('SIGKILL'));
    server.kill('SIGKILL');
  }
}

const results = [];
for (const t of TRANSPORTS) results.push(await scenario(t));
const out = { version: VERSION, node: process.version, date: new Date().toISOString(), cores: cpus().length, results };
const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, `ads-floor-${PROXIES}${process.env.WEFT_BENCH_TLS === '1' ? '-tls' : ''}.json`), `${JSON.stringify(out, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
