/**
 * What a TLS connection keeps after a big write: a node:http2 server (its own process, plaintext or
 * TLS) writes `WEFT_BENCH_BYTES` to each of `WEFT_BENCH_N` client connections, whole or in pieces
 * of `WEFT_BENCH_PIECE` bytes one per event-loop turn, and reports its RSS once every client has
 * all of it. This is why weft-cp writes 16 KiB at a time on a TLS port (TurnWriter, docs/ads.md).
 *
 *   npm run bench:tls-memory        (JSON: server RSS per case)
 */
import { fork } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServingCertificate } from '../src/certs/index.js';
import { VERSION } from '../src/core/index.js';

const N = Number(process.env.WEFT_BENCH_N ?? 2000);
const BYTES = Number(process.env.WEFT_BENCH_BYTES ?? 256 * 1024);
const PIECE = Number(process.env.WEFT_BENCH_PIECE ?? 16 * 1024);

type Case = { tls: boolean; bytes: number; piece: number };

function rssMB(): number {
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024);
}

if (process.argv[2] === 'server') {
  const { tls, bytes, piece, keyPem, certPem } = JSON.parse(process.argv[3]!) as Case & { keyPem: string; certPem: string };
  const payload = Buffer.alloc(bytes, 1);
  const server = tls ? http2.createSecureServer({ key: keyPem, cert: certPem }) : http2.createServer();
  server.on('stream', (stream) => {
    stream.respond({ ':status': 200 });
    let at = 0;
    const next = () => {
      stream.write(payload.subarray(at, (at += piece)));
      if (at < payload.length) setImmediate(next);
    };
    next();
  });
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as { port: number }).port }));
  process.on('message', () => process.send!({ rssMB: rssMB() }));
} else {
  const cert = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
  const cases: Case[] = [
    { tls: false, bytes: BYTES, piece: BYTES },
    { tls: true, bytes: 1024, piece: 1024 },
    { tls: true, bytes: BYTES, piece: BYTES },
    { tls: true, bytes: BYTES, piece: PIECE },
  ];
  const results = [];
  for (const c of cases) {
    const server = fork(fileURLToPath(import.meta.url), ['server', JSON.stringify({ ...c, ...cert })]);
    const { port } = await new Promise<{ port: number }>((r) => server.once('message', r as (m: unknown) => void));
    const sessions: http2.ClientHttp2Session[] = [];
    let done = 0;
    for (let i = 0; i < N; i++) {
      // Envoy's default window for its xDS cluster (256 MiB): the server is never held back by it.
      const s = http2.connect(`${c.tls ? 'https' : 'http'}://127.0.0.1:${port}`, { ca: cert.certPem, settings: { initialWindowSize: 2 ** 31 - 1 } });
      s.once('connect', () => s.setLocalWindowSize(256 * 1024 * 1024));
      let got = 0;
      s.request({ ':path': '/' }).on('data', (d: Buffer) => {
        if ((got += d.length) >= c.bytes) done++;
      });
      sessions.push(s);
      if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
    }
    while (done < N) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 1000));
    server.send('rss');
    const { rssMB: rss } = await new Promise<{ rssMB: number }>((r) => server.once('message', r as (m: unknown) => void));
    results.push({ ...c, connections: N, serverRssMB: rss });
    process.stderr.write(`${c.tls ? 'tls' : 'plaintext'} ${c.bytes} B in ${c.piece} B writes: server RSS ${rss} MB\n`);
    sessions.forEach((s) => s.destroy());
    server.kill();
  }
  const out = { version: VERSION, node: process.version, date: new Date().toISOString(), results };
  const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'tls-memory.json'), `${JSON.stringify(out, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  process.exit(0);
}
