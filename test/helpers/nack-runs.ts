import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TypeUrl } from '../../src/ads/index.js';
import type { Received, XdsTestClient } from '../../src/ads/test-client.js';
import { adsSuite, listener, meshSet } from './xds-fixtures.js';

const BASE_MS = 100;
const MOST_MS = 800;

/**
 * Rule 5 for both variants: a config rejected again unchanged waits twice as long each time, up
 * to `nackBackoffMaxMs`; a changed one goes after the first backoff; an ACK ends the run.
 */
export function nackRunTests(variant: 'sotw' | 'delta'): void {
  describe(`ADS ${variant}: a config rejected again and again`, () => {
    const suite = adsSuite(variant, { nackBackoffMs: BASE_MS, nackBackoffMaxMs: MOST_MS });
    let n = 0;
    const nodeId = () => `default.${variant}-nack-run-${++n}`;
    const subscribe = (c: XdsTestClient) => (variant === 'sotw' ? c.subscribe(TypeUrl.Cluster, []) : c.delta({ type_url: TypeUrl.Cluster }));
    /** NACKs `r`; the retry that follows and how long it took. */
    const reject = async (c: XdsTestClient, r: Received, change?: () => void, type: string = TypeUrl.Cluster) => {
      const t = Date.now();
      c.nack(r, 'rejected by the test');
      change?.();
      const retry = await c.next(type, 5000);
      return { retry, ms: Date.now() - t };
    };

    it('rule 5: the same config rejected again waits twice as long each time, up to nackBackoffMaxMs', async () => {
      const id = nodeId();
      suite.ads().cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
      const c = suite.connect(id);
      subscribe(c);
      let r = await c.next(TypeUrl.Cluster);
      const waits: number[] = [];
      for (let i = 0; i < 5; i++) {
        const { retry, ms } = await reject(c, r);
        assert.equal(retry.version, r.version, 'the same config again');
        assert.deepEqual(retry.resources.map((x) => x.name), ['web'], 'whole');
        waits.push(ms);
        r = retry;
      }
      // 100, 200, 400, 800 and 800 ms (not 1600).
      const least = [1, 2, 4, 8, 8].map((k) => k * BASE_MS - 15);
      waits.forEach((ms, i) => assert.ok(ms >= least[i]!, `retry ${i + 1} after ${ms} ms, not before ${least[i]} ms: ${waits.join(', ')}`));
      assert.ok(waits[4]! < 2 * MOST_MS - 200, `the backoff stops growing at ${MOST_MS} ms: ${waits.join(', ')}`);
      const st = suite.ads().server.status.get(id)!.types.CDS!;
      assert.equal(st.nacks, 5, 'each NACK is recorded');
      assert.equal(Date.parse(st.lastNack!.retryAt) - Date.parse(st.lastNack!.at), MOST_MS, 'with when it is sent again');
    });

    it('rule 5: a changed config goes after the first backoff, however long the run; an ACK ends the run', async () => {
      const id = nodeId();
      const ads = suite.ads();
      const a = () => meshSet({ web: [['10.0.0.1', 80]] });
      ads.cache.set(id, a());
      const c = suite.connect(id);
      subscribe(c);
      let r = await c.next(TypeUrl.Cluster);
      for (let i = 0; i < 3; i++) r = (await reject(c, r)).retry; // the next wait would be 800 ms
      const changed = await reject(c, r, () => setTimeout(() => ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] })), 20));
      assert.ok(changed.ms >= BASE_MS - 15 && changed.ms < MOST_MS - 200, `the new config after the first backoff (${BASE_MS} ms), not the grown one: ${changed.ms} ms`);
      assert.deepEqual(changed.retry.resources.map((x) => x.name).sort(), ['api', 'web']);
      // Accepted: the backoff is over, and the run too. The first config comes back at once...
      const t = Date.now();
      c.ack(changed.retry);
      ads.cache.set(id, a());
      const back = await c.next(TypeUrl.Cluster);
      assert.ok(Date.now() - t < MOST_MS / 2, `no backoff after an ACK: ${Date.now() - t} ms`);
      assert.equal(back.version, r.version);
      // ...and rejected once more, it waits the first backoff, not the next of the old run.
      const again = await reject(c, back);
      assert.ok(again.ms >= BASE_MS - 15 && again.ms < MOST_MS / 2, `a new run starts at ${BASE_MS} ms: ${again.ms} ms`);
    });

    it('rule 5: a changed subscription goes after the first backoff too', async () => {
      const id = nodeId();
      suite.ads().cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
      const c = suite.connect(id);
      const ask = (names: string[]) => (variant === 'sotw' ? c.subscribe(TypeUrl.ClusterLoadAssignment, names) : c.delta({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: names }));
      ask(['web']);
      let r = await c.next(TypeUrl.ClusterLoadAssignment);
      for (let i = 0; i < 3; i++) r = (await reject(c, r, undefined, TypeUrl.ClusterLoadAssignment)).retry; // the next wait would be 800 ms
      const more = await reject(c, r, () => setTimeout(() => ask(variant === 'sotw' ? ['web', 'api'] : ['api']), 20), TypeUrl.ClusterLoadAssignment);
      assert.ok(more.ms >= BASE_MS - 15 && more.ms < MOST_MS - 200, `the newly asked name after the first backoff (${BASE_MS} ms), not the grown one: ${more.ms} ms`);
      assert.ok(more.retry.resources.some((x) => x.name === 'api'), 'with the name it asked for');
    });

    it('rules 5 and 8: listeners waiting with rejected clusters go after the first backoff when they change', async () => {
      const id = nodeId();
      const ads = suite.ads();
      ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
      const c = suite.connect(id);
      subscribe(c);
      if (variant === 'sotw') c.subscribe(TypeUrl.Listener, []);
      else c.delta({ type_url: TypeUrl.Listener });
      let r = await c.next(TypeUrl.Cluster);
      c.ack(await c.next(TypeUrl.Listener));
      for (let i = 0; i < 3; i++) r = (await reject(c, r)).retry; // the next wait would be 800 ms
      const t = Date.now();
      c.nack(r, 'cluster web: unknown field');
      // Only the listeners change: they wait with the clusters (rule 8), but not for a grown backoff.
      setTimeout(() => ads.cache.set(id, { ...meshSet({ web: [['10.0.0.1', 80]] }), [TypeUrl.Listener]: [listener('http', 8081, 'http-routes')] }), 20);
      const l = await c.next(TypeUrl.Listener, 5000);
      const ms = Date.now() - t;
      assert.ok(ms >= BASE_MS - 15 && ms < MOST_MS - 200, `the new listeners after the first backoff (${BASE_MS} ms), not the grown one: ${ms} ms`);
      assert.equal((l.resources[0]!.body.address as { socket_address: { port_value: number } }).socket_address.port_value, 8081);
    });
  });
}
