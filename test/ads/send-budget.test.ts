import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SendBudget, type SendAccount } from '../../src/ads/budget.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An account that records when it is cut, and whose stream ends `endsAfterMs` later (as a cut connection's does). */
function stallable(budget: SendBudget, name: string, cuts: string[], endsAfterMs: number): SendAccount {
  const a = budget.account();
  a.onStall = (bytes, ms) => {
    cuts.push(`${name} ${bytes} B after ${ms >= 40 ? '>=40' : ms} ms`);
    setTimeout(() => a.close(), endsAfterMs);
  };
  return a;
}

describe('send budget: a stream that takes nothing while others wait is cut (xds.sendStallCutMs)', () => {
  it('cuts the longest stalled first, and no more than the waiting streams need, counting a cut stream\'s bytes as given back before its stream ends', async () => {
    const budget = new SendBudget(100, undefined, { stallCutMs: 40 });
    const cuts: string[] = [];
    const a = stallable(budget, 'a', cuts, 20);
    const b = stallable(budget, 'b', cuts, 20);
    a.charge(60);
    await sleep(10);
    b.charge(60);
    // Both have stalled past the limit by the time a stream waits.
    await sleep(50);
    let resumed = 0;
    budget.wait(() => resumed++);
    await sleep(60);
    assert.deepEqual(cuts, ['a 60 B after >=40 ms'], 'a alone: the 60 bytes it gives back open the budget');
    assert.equal(resumed, 1, 'the waiting stream went on once a ended');
    assert.equal(budget.bytesInFlight, 60);
    await sleep(100);
    assert.deepEqual(cuts, ['a 60 B after >=40 ms'], 'b is left alone: no one waits now');
  });

  it('cuts the next one too when one is not enough', async () => {
    const budget = new SendBudget(100, undefined, { stallCutMs: 40 });
    const cuts: string[] = [];
    stallable(budget, 'a', cuts, 20).charge(60);
    stallable(budget, 'b', cuts, 20).charge(60);
    stallable(budget, 'c', cuts, 20).charge(60);
    let resumed = 0;
    budget.wait(() => resumed++);
    await sleep(120);
    assert.equal(cuts.length, 2, `180 in flight, 100 allowed: two cut (${cuts.join('; ')})`);
    assert.equal(resumed, 1);
  });

  it('leaves a stalled stream alone while no one waits, and one whose writes go on', async () => {
    const budget = new SendBudget(100, undefined, { stallCutMs: 40 });
    const cuts: string[] = [];
    stallable(budget, 'stalled', cuts, 0).charge(150);
    await sleep(100);
    assert.deepEqual(cuts, [], 'nobody waits');

    // Another budget: a stream whose bytes keep being written starts anew each time they all are.
    const busy = new SendBudget(100, undefined, { stallCutMs: 40 });
    const writer = stallable(busy, 'writer', cuts, 0);
    writer.charge(120);
    let resumed = 0;
    busy.wait(() => resumed++);
    for (let i = 0; i < 6; i++) {
      await sleep(15);
      writer.written(120);
      writer.charge(120);
    }
    assert.deepEqual(cuts, [], 'never 40 ms without all its bytes written');
    writer.written(120);
    assert.equal(resumed, 1);
  });

  it('leaves alone a stream that is taking a big response slowly: each write that finishes counts', async () => {
    const budget = new SendBudget(100, undefined, { stallCutMs: 40 });
    const cuts: string[] = [];
    const slow = stallable(budget, 'slow', cuts, 0);
    slow.charge(1000);
    let resumed = 0;
    budget.wait(() => resumed++);
    for (let i = 0; i < 8; i++) {
      await sleep(15);
      slow.progressed();
    }
    assert.deepEqual(cuts, [], 'written a little every 15 ms for 120 ms: never 40 ms without progress');
    await sleep(80);
    assert.deepEqual(cuts, ['slow 1000 B after >=40 ms'], 'then nothing more: cut');
    assert.equal(resumed, 1);
  });

  it('counts a response written as progress too (plaintext, where responses are written whole)', async () => {
    // Spent until the last of the four is written, so the waiting stream waits throughout.
    const budget = new SendBudget(40, undefined, { stallCutMs: 40 });
    const cuts: string[] = [];
    const slow = stallable(budget, 'slow', cuts, 0);
    // A turn of four responses, written one by one, 25 ms apart: never all written, never stalled.
    for (let i = 0; i < 4; i++) slow.charge(50);
    let resumed = 0;
    budget.wait(() => resumed++);
    for (let i = 0; i < 3; i++) {
      await sleep(25);
      slow.written(50);
    }
    assert.deepEqual(cuts, [], 'a response written every 25 ms');
    await sleep(80);
    assert.deepEqual(cuts, ['slow 50 B after >=40 ms'], 'then nothing more: cut');
    assert.equal(resumed, 1);
  });

  it('never cuts without the transport\'s hook (streams driven in process), nor when the limit is 0', async () => {
    const cuts: string[] = [];
    const plain = new SendBudget(100, undefined, { stallCutMs: 40 });
    plain.account().charge(150);
    let resumed = 0;
    plain.wait(() => resumed++);
    const off = new SendBudget(100);
    stallable(off, 'off', cuts, 0).charge(150);
    off.wait(() => resumed++);
    await sleep(100);
    assert.deepEqual(cuts, []);
    assert.equal(resumed, 0);
  });
});
