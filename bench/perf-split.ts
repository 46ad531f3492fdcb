/**
 * Where weft-cp's CPU goes during the changes of a bench run, native code included (a V8 CPU
 * profile puts TLS, HTTP/2, syscalls and malloc together as "(program)"). Reads a `perf` recording
 * of weft-cp made with real-time stamps, and the bench's output for the change windows: from each
 * change's start (`startedAt`) until its last proxy had it (`maxMs`), plus 50 ms for the last ACKs.
 * Each sample counts once, by the frame it was taken in (its leaf), in a coarse category. JS
 * functions are one category: V8 moves compiled code, so perf's names for it are not reliable
 * (`--perf-basic-prof` maps only where code was first put); a V8 profile names them.
 *
 *   WEFT_BENCH_CP_NODE_FLAGS=--perf-basic-prof WEFT_BENCH_TLS=1 WEFT_BENCH_VARIANTS=delta WEFT_BENCH_CHANGES=6 \
 *     node dist/bench/ads.js > /tmp/ads.json &
 *   sleep 5; perf record -k realtime -F 1999 -g -o /tmp/perf.data -p "$(pgrep -f '^[^ ]*node .*weft-cp.js run')" -- sleep 45
 *   wait; perf script -i /tmp/perf.data -F pid,tid,time,ip,sym,dso > /tmp/perf.txt
 *   node dist/bench/perf-split.js /tmp/ads.json /tmp/perf.txt [endpointChange|meshWideChange|meshChange]
 *
 * The first change of each kind is left out (its code runs for the first time); changes the
 * recording does not cover entirely are left out too. Figures are per change, in ms of CPU.
 */
import { readFileSync } from 'node:fs';

interface Change {
  startedAt?: number;
  maxMs: number;
}
interface Output {
  results: { variant: string; tls: boolean; [kind: string]: unknown }[];
}

const [jsonFile, perfFile, kind = 'endpointChange'] = process.argv.slice(2);
if (!jsonFile || !perfFile) {
  process.stderr.write('usage: node dist/bench/perf-split.js ADS.json PERF-SCRIPT.txt [endpointChange|meshWideChange|meshChange]\n');
  process.exit(2);
}

const out = JSON.parse(readFileSync(jsonFile, 'utf8')) as Output;
if (out.results.length !== 1) throw new Error(`${jsonFile}: one variant per run, please (WEFT_BENCH_VARIANTS)`);
const changes = ((out.results[0]![kind] as { each?: Change[] } | undefined)?.each ?? []).slice(1);
if (changes.length === 0 || changes.some((c) => c.startedAt === undefined)) throw new Error(`${jsonFile}: no later ${kind} with a startedAt (a bench run from before 2026-12-05?)`);
const windows = changes.map((c) => [c.startedAt! / 1000, (c.startedAt! + c.maxMs + 50) / 1000] as const);

interface Sample {
  pid: number;
  tid: number;
  time: number;
  frames: { sym: string; dso: string }[];
}

/** `perf script -F pid,tid,time,ip,sym,dso`: a header line per sample, then its frames, leaf first. */
function* samples(text: string): Generator<Sample> {
  let cur: Sample | undefined;
  for (const line of text.split('\n')) {
    const head = /^\s*(\d+)\/(\d+)\s+(\d+\.\d+):/.exec(line);
    if (head) {
      if (cur) yield cur;
      cur = { pid: Number(head[1]), tid: Number(head[2]), time: Number(head[3]), frames: [] };
      continue;
    }
    const frame = /^\s+[0-9a-f]+ (.*) \(([^()]*)\)$/.exec(line);
    if (frame && cur) cur.frames.push({ sym: frame[1]!, dso: frame[2]! });
  }
  if (cur) yield cur;
}

function category(s: Sample): string | undefined {
  const leaf = s.frames[0];
  if (!leaf) return 'unknown';
  const stack = s.frames.map((f) => f.sym).join(' ');
  // Waiting for events: the thread was not busy.
  if (/\bepoll_wait\b|\bepoll_pwait\b|futex_wait|\bschedule\b/.test(s.frames.slice(0, 4).map((f) => f.sym).join(' '))) return undefined;
  if (/Scavenge|MarkCompact|Heap::CollectGarbage|ConcurrentMarking|Sweeper/.test(stack)) return 'garbage collection';
  if (/Compil|Turbofan|v8::internal::compiler::|Maglev/.test(stack)) return 'V8 compiling';
  if (leaf.dso.includes('kernel')) {
    if (/\bwrite|writev|sendmsg/.test(stack)) return 'kernel: writes';
    if (/\bread\b|readv|recvmsg/.test(stack)) return 'kernel: reads';
    return 'kernel: other';
  }
  if (/^(SSL_|ssl3_|tls1?_|ossl_|aesni_|EVP_|BIO_|CRYPTO_|gcm_)/.test(leaf.sym) || leaf.sym.startsWith('node::crypto::') || /libssl|libcrypto/.test(leaf.dso)) return 'TLS (OpenSSL, node::crypto)';
  if (leaf.sym.startsWith('nghttp2_') || leaf.sym.startsWith('node::http2::')) return 'HTTP/2 (nghttp2, node::http2)';
  if (leaf.sym.startsWith('JS:') || leaf.sym.startsWith('Builtins_') || leaf.dso.startsWith('/tmp/perf-') || leaf.dso.includes('.map')) return 'JS (code and V8 builtins)';
  if (leaf.sym.startsWith('v8::')) return 'V8 runtime (not GC)';
  if (/libc\.so|ld-linux/.test(leaf.dso)) return 'libc (malloc, memmove, syscall stubs)';
  return 'other native (Node, libuv)';
}

const main = new Map<string, number>();
const others = new Map<string, number>();
let first = Infinity;
let last = -Infinity;
const all = [...samples(readFileSync(perfFile, 'utf8'))];
for (const s of all) {
  first = Math.min(first, s.time);
  last = Math.max(last, s.time);
}
const covered = windows.filter(([a, b]) => a >= first && b <= last);
if (covered.length === 0) throw new Error(`${perfFile}: the recording (${first}-${last}) covers none of the changes; recorded with -k realtime?`);
for (const s of all) {
  if (!covered.some(([a, b]) => s.time >= a && s.time < b)) continue;
  const c = category(s);
  if (!c) continue;
  const into = s.tid === s.pid ? main : others;
  into.set(c, (into.get(c) ?? 0) + 1);
}
/** A sample stands for 1/F s of a thread's CPU (`perf record -F`; WEFT_PERF_FREQUENCY if not 1999). */
const sampleMs = 1000 / Number(process.env.WEFT_PERF_FREQUENCY ?? 1999);
const per = (n: number) => Number(((n * sampleMs) / covered.length).toFixed(1));
const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
const table = (m: Map<string, number>) =>
  Object.fromEntries([...m].sort((a, b) => b[1] - a[1]).map(([k, n]) => [k, { msPerChange: per(n), share: Number((n / total(m)).toFixed(3)) }]));

console.log(
  JSON.stringify(
    {
      variant: out.results[0]!.variant,
      tls: out.results[0]!.tls,
      kind,
      changes: covered.length,
      mainThreadMsPerChange: per(total(main)),
      mainThread: table(main),
      otherThreadsMsPerChange: per(total(others)),
      otherThreads: table(others),
    },
    null,
    2,
  ),
);
