import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http2, { type ServerHttp2Stream } from 'node:http2';
import { describe, it, type TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { createServingCertificate } from '../../src/certs/index.js';
import { BufferPool, http2StreamOf, poolFor, TURN_BYTES, TurnWriter } from '../../src/ads/turn-writer.js';
import { deframer, frame } from '../../bench/grpc-framing.js';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { cla, cluster, listener, route, startTestAds } from '../helpers/xds-fixtures.js';

const identity = (b: Buffer) => b;
const METHOD = '/weft.test.Turns/Stream';

/** The event loop's turn count: one tick per turn while the test runs. */
function turnCounter(t: TestContext): () => number {
  let turn = 0;
  let on = true;
  const tick = () => {
    turn++;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  t.after(() => (on = false));
  return () => turn;
}

/** A server from `listen`, and a grpc-js client of it that collects its messages and the status that ends the call. */
async function serve(t: TestContext, handler: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => void) {
  const { port, ca } = await listen(t, handler);
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca)), { 'grpc.max_receive_message_length': -1 });
  t.after(() => client.close());
  const call = client.makeBidiStreamRequest(METHOD, identity, identity);
  const got: Buffer[] = [];
  call.on('data', (b: Buffer) => got.push(b));
  call.on('error', () => {});
  // The status, once every message before it has been read too.
  const read = new Promise((resolve) => call.on('end', resolve));
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve)).then(async (s) => (await read, s));
  call.write(Buffer.from('hello'));
  return { got, status, call };
}

/** A grpc-js server over TLS (port 0) whose one bidi method hands each call to `handler`. */
async function listen(t: TestContext, handler: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => void) {
  const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
  const server = new grpc.Server();
  server.addService({ Stream: { path: METHOD, requestStream: true, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } }, { Stream: handler });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false), (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.after(() => server.forceShutdown());
  return { port, ca: m.certPem };
}

/**
 * A client on node:http2 that reads nothing for `pauseMs`, so HTTP/2's flow-control window
 * (64 KiB) fills and the server's writes stay unfinished; then its messages and grpc-status.
 */
async function slowReader(t: TestContext, handler: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => void, pauseMs: number) {
  const { port, ca } = await listen(t, handler);
  const session = http2.connect(`https://127.0.0.1:${port}`, { ca });
  t.after(() => session.destroy());
  const req = session.request({ ':method': 'POST', ':path': METHOD, 'content-type': 'application/grpc', te: 'trailers' });
  req.write(frame(Buffer.from('hello')));
  const got: Buffer[] = [];
  req.on('data', deframer((m) => got.push(Buffer.from(m))));
  req.pause();
  setTimeout(() => req.resume(), pauseMs);
  const status = new Promise<number>((resolve) => req.on('trailers', (h) => resolve(Number(h['grpc-status']))));
  await new Promise((resolve) => req.on('end', resolve));
  return { got, status: await status };
}

/** `b` in three parts (two for short ones), as a message comes from wire.ts's responseParts. */
function parts(b: Buffer): Buffer[] {
  const a = Math.floor(b.length / 3);
  return [b.subarray(0, a), b.subarray(a, 2 * a), b.subarray(2 * a)];
}

/** Records each write on `stream`: its size, the turn it was made in, and whether the one before it was still unfinished. */
function spy(stream: ServerHttp2Stream, turn: () => number) {
  const writes: { bytes: number; turn: number; overlapping: boolean }[] = [];
  let unfinished = 0;
  const write = stream.write.bind(stream) as (chunk: Buffer, cb?: (err?: Error | null) => void) => boolean;
  (stream as unknown as { write: typeof write }).write = (chunk, cb) => {
    writes.push({ bytes: chunk.length, turn: turn(), overlapping: unfinished > 0 });
    unfinished++;
    return write(chunk, (err) => {
      unfinished--;
      cb?.(err);
    });
  };
  return writes;
}

describe('TurnWriter: a TLS stream writes its messages a little per turn', () => {
  it("finds grpc-js's HTTP/2 stream under a server call (this fails if a grpc-js upgrade moves it)", async (t) => {
    let found: unknown;
    const { status } = await serve(t, (call) => {
      found = http2StreamOf(call);
      call.end();
    });
    await status;
    assert.ok(found, 'no HTTP/2 stream under the call');
    assert.equal(typeof (found as ServerHttp2Stream).respond, 'function');
  });

  it('rule 8: writes at most TURN_BYTES per turn, one write at a time, and every message arrives whole and in order', async (t) => {
    const turn = turnCounter(t);
    const messages = [randomBytes(200_000), randomBytes(3), randomBytes(40_000), Buffer.alloc(0), randomBytes(TURN_BYTES - 5)];
    let writes: ReturnType<typeof spy> = [];
    let done = 0;
    let progress = 0;
    const { got, status } = await slowReader(
      t,
      (call) => {
        const stream = http2StreamOf(call)!;
        writes = spy(stream, turn);
        call.sendMetadata(new grpc.Metadata());
        const writer = new TurnWriter(stream, TURN_BYTES, () => progress++);
        for (const m of messages) writer.write(parts(m), () => ++done === messages.length && call.end());
      },
      300,
    );
    assert.equal(status, grpc.status.OK);
    assert.deepEqual(
      got.map((b) => b.toString('hex')),
      messages.map((b) => b.toString('hex')),
    );
    const framed = messages.reduce((n, m) => n + m.length + 5, 0);
    assert.equal(
      writes.reduce((n, w) => n + w.bytes, 0),
      framed,
    );
    assert.ok(Math.max(...writes.map((w) => w.bytes)) <= TURN_BYTES, `a write of ${Math.max(...writes.map((w) => w.bytes))} bytes`);
    assert.equal(new Set(writes.map((w) => w.turn)).size, writes.length, 'one write per turn');
    // Small messages share a write: as few writes as the bytes allow.
    assert.equal(writes.length, Math.ceil(framed / TURN_BYTES));
    // Each finished write tells the stream's account that the proxy is taking what it is sent.
    assert.equal(progress, writes.length);
    assert.deepEqual(
      writes.filter((w) => w.overlapping),
      [],
      'a write started before the one before it finished (HTTP/2 would have joined them)',
    );
  });

  it('rule 8: the messages one pump queues (clusters, then listeners) go out in one write while they fit, in order; later ones wait for it', async (t) => {
    const turn = turnCounter(t);
    // A pump's CDS and LDS responses, then (a later pump, once the first write is on its way) more.
    const pump = [randomBytes(2_500), randomBytes(3_000), randomBytes(400)];
    const later = [randomBytes(700), randomBytes(900)];
    const messages = [...pump, ...later];
    let writes: ReturnType<typeof spy> = [];
    let done = 0;
    /** Writes made: while the pump ran, a turn later, and right after the later messages were queued. */
    const seen: number[] = [];
    const { got, status } = await serve(t, (call) => {
      const stream = http2StreamOf(call)!;
      writes = spy(stream, turn);
      call.sendMetadata(new grpc.Metadata());
      const writer = new TurnWriter(stream);
      const finish = () => ++done === messages.length && call.end();
      for (const m of pump) writer.write(parts(m), finish);
      seen.push(writes.length);
      setImmediate(() => {
        seen.push(writes.length);
        for (const m of later) writer.write(parts(m), finish);
        seen.push(writes.length);
      });
    }).then(async (r) => ({ got: r.got, status: (await r.status).code }));
    // Nothing is written while the pump runs (its messages are gathered first), then one write;
    // the later messages wait for it to finish and a turn, as before.
    assert.deepEqual(seen, [0, 1, 1]);
    assert.equal(status, grpc.status.OK);
    assert.deepEqual(
      got.map((b) => b.toString('hex')),
      messages.map((b) => b.toString('hex')),
    );
    const framed = (ms: Buffer[]) => ms.reduce((n, m) => n + m.length + 5, 0);
    assert.deepEqual(
      writes.map((w) => w.bytes),
      [framed(pump), framed(later)],
    );
    assert.ok(writes[1]!.turn > writes[0]!.turn);
    assert.deepEqual(
      writes.filter((w) => w.overlapping),
      [],
    );
  });

  it('streams reuse write buffers from one pool, each only once its write has finished: messages of streams writing side by side arrive whole', async (t) => {
    const turn = turnCounter(t);
    const pool = poolFor(TURN_BYTES);
    // Each stream: messages of random bytes, written while its client reads nothing (HTTP/2's
    // window fills), so writes stay unfinished for a while with the other stream's writes going on.
    const messages = (n: number) => Array.from({ length: n }, (_, i) => randomBytes(30_000 + i * 7_001));
    const writes: ReturnType<typeof spy>[] = [];
    const chunks = new Set<ArrayBufferLike>();
    const run = (mine: Buffer[], pauseMs: number) =>
      slowReader(
        t,
        (call) => {
          const stream = http2StreamOf(call)!;
          const w = spy(stream, turn);
          writes.push(w);
          const write = stream.write.bind(stream) as (chunk: Buffer, cb?: (err?: Error | null) => void) => boolean;
          (stream as unknown as { write: typeof write }).write = (chunk, cb) => (chunks.add(chunk.buffer), write(chunk, cb));
          call.sendMetadata(new grpc.Metadata());
          const writer = new TurnWriter(stream);
          let done = 0;
          for (const m of mine) writer.write(parts(m), () => ++done === mine.length && call.end());
        },
        pauseMs,
      );
    const a = messages(12);
    const b = messages(9);
    const [gotA, gotB] = await Promise.all([run(a, 200), run(b, 350)]);
    for (const [got, sent] of [
      [gotA, a],
      [gotB, b],
    ] as const) {
      assert.equal(got.status, grpc.status.OK);
      assert.equal(got.got.length, sent.length);
      got.got.forEach((m, i) => assert.ok(m.equals(sent[i]!), `message ${i} of ${sent.length} differs from what was written`));
    }
    // Writes of a pool's size came from the pool, and were used again: far fewer buffers than writes.
    const total = writes.flat().length;
    assert.ok(total > 60, `${total} writes`);
    assert.ok(chunks.size * 4 < total, `${chunks.size} distinct buffers for ${total} writes`);
    assert.ok(pool.kept > 0, 'the pool keeps the buffers given back');
  });

  it('a pool keeps what is given back up to its limit, and lets it all go once unused for its idle time', async () => {
    const pool = new BufferPool(1024, 3, 60);
    const taken = [pool.take(), pool.take(), pool.take(), pool.take()];
    assert.equal(new Set(taken).size, 4);
    assert.ok(taken.every((b) => b.length === 1024));
    for (const b of taken) pool.give(b);
    assert.equal(pool.kept, 3, 'kept up to its limit');
    pool.give(Buffer.allocUnsafe(512));
    assert.equal(pool.kept, 3, 'a buffer of another size is not kept');
    const again = pool.take();
    assert.ok(taken.includes(again), 'a kept buffer is taken before a new one is made');
    pool.give(again);
    // Drawn on within its idle time: kept; then unused for as long: let go.
    await new Promise((r) => setTimeout(r, 40));
    pool.give(pool.take());
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(pool.kept, 3, 'used during the last idle period');
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(pool.kept, 0, 'not used for its idle time');
  });

  it('flush: a status that ends the stream comes after every queued message, whole', async (t) => {
    const big = randomBytes(300_000);
    const { got, status } = await serve(t, (call) => {
      const writer = new TurnWriter(http2StreamOf(call)!);
      call.sendMetadata(new grpc.Metadata());
      writer.write(parts(big), () => {});
      writer.write([Buffer.from('last')], () => {});
      writer.flush();
      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'shutting down' });
    });
    const s = await status;
    assert.equal(s.code, grpc.status.UNAVAILABLE, s.details);
    assert.equal(got.length, 2);
    assert.ok(got[0]!.equals(big));
    assert.equal(got[1]!.toString(), 'last');
  });

  it('a stream that goes away with messages queued drops them without an error', async (t) => {
    let writer: TurnWriter | undefined;
    let calledBack = false;
    const { call, got } = await serve(t, (c) => {
      writer = new TurnWriter(http2StreamOf(c)!);
      c.sendMetadata(new grpc.Metadata());
      c.on('error', () => {});
      writer.write([randomBytes(2_000_000)], () => (calledBack = true));
    });
    while (!writer) await new Promise((r) => setTimeout(r, 5));
    call.cancel();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(calledBack, false);
    assert.equal(got.length, 0);
    assert.equal(writer.pendingBytes, 0, 'the queue is dropped once the stream is gone');
  });

  it('rule 8: SotW over TLS through the ADS server: a big LDS set after its CDS, whole and ACKed; at shutdown, UNAVAILABLE only after it', async (t) => {
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const ads = await startTestAds({ credentials: grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false) });
    t.after(() => ads.stop());
    const set = (tag: string) => {
      const names = Array.from({ length: 400 }, (_, i) => `${tag}-${i}`);
      return {
        [TypeUrl.Cluster]: names.map((n) => cluster(n)),
        [TypeUrl.ClusterLoadAssignment]: names.map((n) => cla(n, [['10.0.0.1', 80]])),
        [TypeUrl.Listener]: names.map((n, i) => listener(`l-${n}`, 10000 + i, 'routes')),
        [TypeUrl.RouteConfiguration]: [route('routes', names[0]!)],
      };
    };
    ads.cache.set('default.tls', set('a'));
    const c = new XdsTestClient(ads.address, 'sotw', { id: 'default.tls' }, { tlsCa: m.certPem });
    t.after(() => c.close());
    c.request(TypeUrl.Cluster);
    c.request(TypeUrl.Listener);
    const cds = await c.next(TypeUrl.Cluster);
    const lds = await c.next(TypeUrl.Listener);
    assert.deepEqual([cds.resources.length, lds.resources.length], [400, 400]);
    assert.ok(c.received.indexOf(cds) < c.received.indexOf(lds));
    c.ack(cds);
    c.ack(lds);
    for (let i = 0; i < 50 && ads.server.status.get('default.tls')?.types.LDS?.lastAckedVersion !== lds.version; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(ads.server.status.get('default.tls')!.types.LDS!.lastAckedVersion, lds.version);
    // A new set is queued (its LDS is over 100 KB, so most of it waits for later turns); the server closes at once.
    ads.cache.set('default.tls', set('b'));
    const closing = ads.server.close();
    const next = await c.next(TypeUrl.Listener);
    assert.equal(next.resources.length, 400);
    // Its writes of 16 KiB came from the pool and went back to it: the metric shows what is kept.
    const kept = (await ads.metrics.getSingleMetric('weft_xds_write_buffers_kept_bytes')!.get()).values[0]!.value;
    assert.ok(kept >= TURN_BYTES && kept % TURN_BYTES === 0, `weft_xds_write_buffers_kept_bytes ${kept}`);
    assert.equal(next.resources[0]!.name, 'l-b-0');
    assert.equal((await c.closed).code, grpc.status.UNAVAILABLE);
    await closing;
  });
});

