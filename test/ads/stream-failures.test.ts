import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AdsStream, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { SendBudget } from '../../src/ads/budget.js';
import type { DeltaDiscoveryResponse } from '../../src/ads/stream.js';
import { meshSet } from '../helpers/xds-fixtures.js';

const EDS = TypeUrl.ClusterLoadAssignment;
const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };

/**
 * A delta stream subscribed to web's endpoints, whose transport throws from its `failAt`-th send
 * on (a bug in the transport, or in the stream, stands for any). Its failures are collected.
 */
function proxy(cache: SnapshotCache, id: string, opts: { failAt?: number; budget?: SendBudget; nackBackoffMs?: number } = {}) {
  const sent: DeltaDiscoveryResponse[] = [];
  const failures: unknown[] = [];
  const s = new AdsStream({
    variant: 'delta',
    cache,
    identity: { kind: 'unauthenticated' },
    controlPlaneId: 'test',
    nackBackoffMs: opts.nackBackoffMs ?? 1000,
    hooks,
    budget: opts.budget,
    onFailure: (err) => failures.push(err),
    send: (r, bytes) => {
      if (sent.length + 1 >= (opts.failAt ?? Infinity)) throw new Error(`transport broke on ${id}`);
      opts.budget?.charge(bytes);
      sent.push(r as DeltaDiscoveryResponse);
    },
  });
  s.handle({ node: { id }, type_url: EDS, resource_names_subscribe: ['web'] });
  return { s, sent, failures, ack: (r: DeltaDiscoveryResponse) => s.handle({ type_url: EDS, response_nonce: r.nonce }) };
}

const endpoints = (ip: string) => meshSet({ web: [[ip, 80]] });

describe('a stream that fails outside a request ends alone', () => {
  it("in the reconciler's round: the round goes on for the proxies after it", () => {
    const cache = new SnapshotCache();
    for (const id of ['m.a', 'm.b']) cache.set(id, endpoints('10.0.0.1'));
    const a = proxy(cache, 'm.a', { failAt: 2 });
    const b = proxy(cache, 'm.b');
    a.ack(a.sent[0]!);
    b.ack(b.sent[0]!);
    // The round publishes a's snapshot, whose pump throws, then b's.
    assert.doesNotThrow(() => cache.set('m.a', endpoints('10.0.0.2')));
    cache.set('m.b', endpoints('10.0.0.2'));
    assert.deepEqual(a.failures.map((e) => (e as Error).message), ['transport broke on m.a']);
    assert.equal(b.sent.length, 2, 'the proxy after it got its change');
    // Closed: what comes next is not sent, nor does it fail again.
    cache.set('m.a', endpoints('10.0.0.3'));
    assert.deepEqual([a.sent.length, a.failures.length], [1, 1]);
  });

  it('at the end of a backoff: no exception escapes the timer', async () => {
    const cache = new SnapshotCache();
    cache.set('m.a', endpoints('10.0.0.1'));
    const a = proxy(cache, 'm.a', { failAt: 2, nackBackoffMs: 30 });
    a.s.handle({ type_url: EDS, response_nonce: a.sent[0]!.nonce, error_detail: { code: 3, message: 'rejected' } });
    // The resend after the backoff throws inside the stream's timer; an escape would fail this test
    // as an uncaught exception.
    for (let i = 0; i < 50 && a.failures.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(a.failures.map((e) => (e as Error).message), ['transport broke on m.a']);
  });

  it('when the send budget opens: the streams waiting behind it still get their turn', () => {
    const cache = new SnapshotCache();
    const budget = new SendBudget(1);
    for (const id of ['m.a', 'm.b', 'm.c']) cache.set(id, endpoints('10.0.0.1'));
    const c = proxy(cache, 'm.c', { budget });
    assert.equal(budget.open, false, "c's first response holds the budget");
    const a = proxy(cache, 'm.a', { budget, failAt: 1 });
    const b = proxy(cache, 'm.b', { budget });
    assert.equal(budget.streamsWaiting, 2);
    // c's response is written: a's turn throws, b's turn comes all the same.
    budget.refund(budget.bytesInFlight);
    assert.deepEqual(a.failures.map((e) => (e as Error).message), ['transport broke on m.a']);
    assert.equal(b.sent.length, 1);
    assert.equal(c.sent.length, 1);
  });
});
