/** Helpers shared by the ADS benchmarks: process figures from /proc, percentiles, worker messages. */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** RSS and CPU seconds (user + system, and system alone: the kernel's share, TCP on loopback included) of a process. */
export function procStats(pid: number): { rssMB: number; cpuSeconds: number; sysSeconds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { rssMB: Math.round(rss), cpuSeconds: (Number(stat[11]) + Number(stat[12])) / 100, sysSeconds: Number(stat[12]) / 100 };
}

export function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
}

/** Resolves with the first `count` messages of `type` from the workers. */
export function waitFor(workers: ChildProcess[], type: string, count: number, ms: number, onMsg?: (m: Record<string, unknown>) => void): Promise<Record<string, unknown>[]> {
  const got: Record<string, unknown>[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${count} "${type}" (got ${got.length})`));
    }, ms);
    const handlers = workers.map((w) => {
      const h = (m: Record<string, unknown>) => {
        if (m.type !== type) return;
        got.push(m);
        onMsg?.(m);
        if (got.length === count) {
          cleanup();
          resolve(got);
        }
      };
      w.on('message', h);
      return h;
    });
    const cleanup = () => {
      clearTimeout(timer);
      workers.forEach((w, i) => w.off('message', handlers[i]!));
    };
  });
}

/**
 * The simulated proxies' ADS client (`WEFT_BENCH_CLIENT`): `http2`, lean clients on node:http2
 * (bench/h2-client.ts, the default), or `grpc-js` (src/ads/test-client.ts).
 */
export function benchClient(): 'http2' | 'grpc-js' {
  const c = process.env.WEFT_BENCH_CLIENT ?? 'http2';
  if (c !== 'http2' && c !== 'grpc-js') throw new Error(`WEFT_BENCH_CLIENT must be http2 or grpc-js, not ${c}`);
  return c;
}
