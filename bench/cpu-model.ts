/**
 * How a change's p99 follows the CPU spent on it: reads outputs of bench/ads.ts and fits, for the
 * endpoint, the mesh-wide and the Mesh changes apart, p99 = a + b × (weft-cp's CPU + the clients' CPU) over
 * every change of every file (least squares). With the control plane and the simulated proxies on
 * the same 2 cores, a slope near 0.5 s per CPU-second means both cores were busy until the last
 * proxy had its update: the p99 is set by how much CPU the change costs, not by waiting.
 *
 *   for i in 1 2 3; do WEFT_BENCH_VARIANTS=delta node dist/bench/ads.js > /tmp/ads-$i.json; done
 *   node dist/bench/cpu-model.js /tmp/ads-*.json
 */
import { readFileSync } from 'node:fs';

interface Change {
  p99Ms: number;
  cpCpuSeconds: number;
  clientsCpuSeconds: number;
  listener?: { p99Ms: number };
}
interface Output {
  results: { variant: string; endpointChange?: { each?: Change[] }; meshWideChange?: { each?: Change[] } | string; meshChange?: { each?: Change[] } }[];
}

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write('usage: node dist/bench/cpu-model.js OUTPUT.json... (outputs of bench/ads.ts)\n');
  process.exit(2);
}

const points = new Map<string, { cpu: number; cp: number; clients: number; p99: number }[]>();
for (const f of files) {
  const out = JSON.parse(readFileSync(f, 'utf8')) as Output;
  for (const r of out.results) {
    for (const [kind, c] of [
      ['endpoint', r.endpointChange],
      ['mesh-wide', r.meshWideChange],
      ['mesh', r.meshChange],
    ] as const) {
      if (typeof c !== 'object' || !c.each) continue;
      const key = `${r.variant} ${kind}`;
      const list = points.get(key) ?? [];
      // A new service's CPU is counted until its listener arrives (since the twelfth session), so its p99 is the listener's.
      for (const x of c.each) list.push({ cpu: x.cpCpuSeconds + x.clientsCpuSeconds, cp: x.cpCpuSeconds, clients: x.clientsCpuSeconds, p99: x.listener?.p99Ms ?? x.p99Ms });
      points.set(key, list);
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const fits = [...points].map(([change, ps]) => {
  const n = ps.length;
  const mx = ps.reduce((s, p) => s + p.cpu, 0) / n;
  const my = ps.reduce((s, p) => s + p.p99, 0) / n;
  const sxy = ps.reduce((s, p) => s + (p.cpu - mx) * (p.p99 - my), 0);
  const sxx = ps.reduce((s, p) => s + (p.cpu - mx) ** 2, 0);
  const syy = ps.reduce((s, p) => s + (p.p99 - my) ** 2, 0);
  const slope = sxx > 0 ? sxy / sxx : NaN;
  return {
    change,
    changes: n,
    interceptMs: Math.round(my - slope * mx),
    msPerCpuSecond: Math.round(slope),
    r: Number((sxy / Math.sqrt(sxx * syy)).toFixed(2)),
    medianCpCpuSeconds: median(ps.map((p) => p.cp)),
    medianClientsCpuSeconds: median(ps.map((p) => p.clients)),
    medianP99Ms: median(ps.map((p) => p.p99)),
  };
});
process.stdout.write(`${JSON.stringify({ files: files.length, fits }, null, 2)}\n`);
