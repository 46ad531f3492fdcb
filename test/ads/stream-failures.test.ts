import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { describe, it } from 'node:test';
import { AdsStream, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { SendBudget } from '../../src/ads/budget.js';
import type { DeltaDiscoveryResponse } from '../../src/ads/stream.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { collectingLogger } from '../helpers/log-lines.js';
import { meshSet, startTestAds } from '../helpers/xds-fixtures.js';
import { until } from '../helpers/until.js';

const EDS = TypeUrl.ClusterLoadAssignment;
const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };

/**
 * A delta stream subscribed to web's endpoints, whose transport throws from its `failAt`-th send
 * on (a bug in the transport, or in the stream, stands for any). Its failures are collected.
 */
function proxy(cache: SnapshotCache, id: string, opts: { failAt?: number; budget?: SendBudget; nackBackoffMs?: number } = {}) {
  const account = opts.budget?.account();
  const sent: DeltaDiscoveryResponse[] = [];
  const failures: unknown[] = [];
  const s = new AdsStream({
    variant: 'delta',
    cache,
    identity: { kind: 'unauthenticated' },
    controlPlaneId: 'test',
    nackBackoffMs: opts.nackBackoffMs ?? 1000,
    hooks,
    budget: account,
    onFailure: (err) => failures.push(err),
    send: (r, bytes) => {
      if (sent.length + 1 >= (opts.failAt ?? Infinity)) throw new Error(`transport broke on ${id}`);
      account?.charge(bytes);
      sent.push(r as DeltaDiscoveryResponse);
    },
  });
  s.handle({ node: { id }, type_url: EDS, resource_names_subscribe: ['web'] });
  return { s, sent, failures, account, ack: (r: DeltaDiscoveryResponse) => s.handle({ type_url: EDS, response_nonce: r.nonce }) };
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
    c.account!.written(budget.bytesInFlight);
    assert.deepEqual(a.failures.map((e) => (e as Error).message), ['transport broke on m.a']);
    assert.equal(b.sent.length, 1);
    assert.equal(c.sent.length, 1);
  });
});

describe('the server ends a stream that failed outside a request', () => {
  it('with INTERNAL and no more than that to the proxy, its error logged, the others served; the status says how each stream ended', { timeout: 20_000 }, async () => {
    const { logger, lines } = collectingLogger('info');
    const ads = await startTestAds({ logger });
    const clients: XdsTestClient[] = [];
    try {
      for (const id of ['m.a', 'm.b']) ads.cache.set(id, endpoints('10.0.0.1'));
      const connect = async (id: string) => {
        const c = new XdsTestClient(ads.address, 'delta', { id });
        clients.push(c);
        c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
        c.ack(await c.next(EDS));
        return c;
      };
      const a = await connect('m.a');
      const b = await connect('m.b');
      await until('nothing in flight', () => ads.server.budget.bytesInFlight === 0);
      // The next response the server charges breaks (a transport bug stands for any): a's, sent
      // from the reconciler's round (cache.set), outside any request of a's.
      const budget = ads.server.budget;
      const charge = budget.charge.bind(budget);
      let broken = false;
      budget.charge = (bytes: number) => {
        if (!broken) {
          broken = true;
          throw new Error('secret detail of a broken transport');
        }
        charge(bytes);
      };
      assert.doesNotThrow(() => ads.cache.set('m.a', endpoints('10.0.0.2')));
      const status = await a.closed;
      assert.equal(status.code, grpc.status.INTERNAL);
      assert.equal(status.details, 'internal error', "the proxy is not told weft-cp's internals");
      const logged = lines.find((l) => l.msg === 'xDS stream failed');
      assert.equal(logged?.nodeId, 'm.a');
      assert.match(String((logged?.err as { message?: string } | undefined)?.message), /secret detail of a broken transport/);
      assert.equal(ads.server.streamCount, 1, "a's stream is gone");
      await until('m.a disconnected', () => ads.server.status.get('m.a')?.connected === false);
      assert.equal(ads.server.status.get('m.a')?.disconnectReason, 'weft-cp ended the stream: INTERNAL: internal error');
      // b is served on, and the budget is left as it was (the failed send charged nothing).
      ads.cache.set('m.b', endpoints('10.0.0.3'));
      const r = await b.next(EDS);
      assert.match(JSON.stringify(r.resources), /10\.0\.0\.3/);
      b.ack(r);
      await until('nothing in flight', () => budget.bytesInFlight === 0);
      assert.equal(budget.streamsWaiting, 0);
      // a reconnects, as Envoy does after INTERNAL, and gets its config.
      const again = await connect('m.a');
      assert.equal(ads.server.status.get('m.a')?.connected, true);
      assert.equal(ads.server.status.get('m.a')?.disconnectReason, undefined, 'connected again: no reason to show');
      again.close();
      await until('m.a disconnected', () => ads.server.status.get('m.a')?.connected === false);
      assert.equal(ads.server.status.get('m.a')?.disconnectReason, 'the proxy closed its stream');
      // Shutdown ends the rest with UNAVAILABLE, which tells them to go to another replica.
      await ads.stop(); // idempotent: the finally below stops it again
      await until('m.b disconnected', () => ads.server.status.get('m.b')?.connected === false);
      assert.equal(ads.server.status.get('m.b')?.disconnectReason, 'weft-cp ended the stream: UNAVAILABLE: control plane is shutting down; reconnect to another replica');
    } finally {
      clients.forEach((c) => c.close());
      await ads.stop();
    }
  });
});
