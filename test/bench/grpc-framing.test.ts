import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deframer, frame } from '../../bench/grpc-framing.js';
import { seeded } from '../helpers/seeded.js';

function bytes(rand: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

/** Feeds the framed messages in chunks of the sizes `cut` picks; returns what came out. */
function run(msgs: Buffer[], cut: () => number): Buffer[] {
  const wire = Buffer.concat(msgs.map(frame));
  const got: Buffer[] = [];
  const feed = deframer((m) => got.push(Buffer.from(m)));
  for (let at = 0; at < wire.length; ) {
    const n = Math.max(1, cut());
    feed(wire.subarray(at, at + n));
    at += n;
  }
  return got;
}

describe('bench gRPC framing (the lean clients and floor server)', () => {
  it('frame writes the 5-byte prefix: uncompressed, big-endian length', () => {
    assert.deepEqual([...frame(Buffer.from('abc'))], [0, 0, 0, 0, 3, 0x61, 0x62, 0x63]);
    assert.deepEqual([...frame(Buffer.alloc(0))], [0, 0, 0, 0, 0]);
  });

  it('gives back each message whole, one byte at a time, with empty messages among them', () => {
    const msgs = [Buffer.from('first'), Buffer.alloc(0), Buffer.from('third message'), Buffer.alloc(0)];
    assert.deepEqual(run(msgs, () => 1), msgs);
  });

  it('gives back several messages from one chunk, and one message from many', () => {
    const small = [Buffer.from('a'), Buffer.from('bb'), Buffer.from('ccc')];
    assert.deepEqual(run(small, () => 1 << 20), small);
    const big = [bytes(seeded(1), 300_000)];
    assert.deepEqual(run(big, () => 16_384), big);
  });

  it('gives back every message in order, however the bytes are cut (200 seeded framings)', () => {
    for (let trial = 0; trial < 200; trial++) {
      const rand = seeded(trial + 7);
      const msgs = Array.from({ length: 1 + Math.floor(rand() * 7) }, () => bytes(rand, rand() < 0.2 ? 0 : Math.floor(rand() * 70_000)));
      // Tiny cuts split the prefix itself; big ones hold several messages and parts of others.
      const most = trial % 3 === 0 ? 6 : 20_000;
      const got = run(msgs, () => 1 + Math.floor(rand() * most));
      assert.equal(got.length, msgs.length, `trial ${trial}: message count`);
      got.forEach((g, i) => assert.ok(g.equals(msgs[i]!), `trial ${trial}: message ${i} differs`));
    }
  });
});
