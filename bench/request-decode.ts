/**
 * What weft-cp spends reading SotW ACKs: `WEFT_BENCH_ACKS` (2000) EDS ACKs, each naming the same
 * `WEFT_BENCH_NAMES` (500) clusters as Envoy's do, read by the server's request deserializer
 * (src/ads/wire.ts), and for comparison by protobufjs alone. Prints the median of 20 passes of
 * each, in ms per pass, as JSON (also written to bench/results/request-decode.json).
 *
 *   npm run bench:request-decode
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { grpcCodec } from '../src/ads/protos.js';
import { requestDeserializer } from '../src/ads/wire.js';
import { VERSION } from '../src/core/index.js';

const ACKS = Number(process.env.WEFT_BENCH_ACKS ?? 2000);
const NAMES = Number(process.env.WEFT_BENCH_NAMES ?? 500);
const TYPE = 'envoy.service.discovery.v3.DiscoveryRequest';
const codec = grpcCodec(TYPE);
const names = Array.from({ length: NAMES }, (_, i) => `svc-${i}`);
// Each proxy's ACK has its own nonce and one of a few versions, as after a change.
const acks = Array.from({ length: ACKS }, (_, i) =>
  codec.serialize({ version_info: `v${i % 7}-${'x'.repeat(20)}`, resource_names: names, type_url: 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment', response_nonce: String(1000 + i) }),
);

function time(read: (b: Buffer) => Record<string, unknown>): number {
  const passes: number[] = [];
  for (let p = 0; p < 20; p++) {
    const t = performance.now();
    let n = 0;
    for (const b of acks) n += (read(b).resource_names as unknown[]).length;
    if (n !== ACKS * NAMES) throw new Error(`read ${n} names, expected ${ACKS * NAMES}`);
    passes.push(performance.now() - t);
  }
  passes.sort((a, b) => a - b);
  return Number(passes[passes.length >> 1]!.toFixed(2));
}

const out = {
  version: VERSION,
  node: process.version,
  date: new Date().toISOString(),
  acks: ACKS,
  namesEach: NAMES,
  bytesEach: acks[0]!.length,
  msPerPass: { requestDeserializer: time(requestDeserializer(TYPE, 'resource_names')), protobufjs: time(codec.deserialize) },
};
const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'request-decode.json'), `${JSON.stringify(out, null, 2)}\n`);
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
