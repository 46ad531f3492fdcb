/**
 * Certificate benchmark: sign 1000 workload CSRs (ECDSA P-256) with a built-in root, the way the
 * control plane does for each dataplane (parse the CSR, check its signature, sign). JSON out.
 *
 *   npm run bench:certs
 *   WEFT_BENCH_N=5000 npm run bench:certs
 */
import { createRootCa, readCsr, signWorkloadCertificate } from '../src/certs/index.js';
import { VERSION } from '../src/core/index.js';
import { keyAndCsr } from '../test/helpers/pki.js';

const N = Number(process.env.WEFT_BENCH_N ?? 1000);
const ca = await createRootCa({ mesh: 'bench', backend: 'ca-1', validForMs: 86400_000 });
const csrs: string[] = [];
for (let i = 0; i < N; i++) csrs.push((await keyAndCsr([`spiffe://bench/svc-${i % 500}`])).csrPem);

const lat: number[] = [];
const t0 = performance.now();
for (const csrPem of csrs) {
  const s = performance.now();
  const csr = await readCsr(csrPem);
  await signWorkloadCertificate({ ca, publicKey: csr.publicKey, uris: csr.uris, notBefore: new Date(), notAfter: new Date(Date.now() + 86400_000) });
  lat.push(performance.now() - s);
}
const seconds = (performance.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const out = {
  version: VERSION,
  node: process.version,
  date: new Date().toISOString(),
  csrs: N,
  seconds: Number(seconds.toFixed(3)),
  perSecond: Math.round(N / seconds),
  p50Ms: Number(lat[Math.floor(N / 2)]!.toFixed(2)),
  p99Ms: Number(lat[Math.floor(N * 0.99)]!.toFixed(2)),
  target: '1000 in <= 1 s',
};
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
