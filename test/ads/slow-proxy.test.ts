import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { createServingCertificate } from '../../src/certs/index.js';
import { relayTo } from '../helpers/tcp-relay.js';
import { until } from '../helpers/until.js';
import { meshSet, startTestAds, type TestAds } from '../helpers/xds-fixtures.js';

const CDS = TypeUrl.Cluster;

/** Version `v` of a config of 3000 clusters (about 1 MB of CDS): every cluster renamed from one version to the next. */
const big = (v: number) => meshSet(Object.fromEntries(Array.from({ length: 3000 }, (_, i) => [`svc-${i}-v${v}-${'x'.repeat(200)}`, [['10.0.0.1', 80]] as [string, number][]])));

const metric = async (ads: TestAds, name: string) => ((await ads.metrics.getSingleMetric(name)?.get())?.values ?? []).reduce((n, v) => n + v.value, 0);

describe('a proxy that reads slowly', () => {
  // Over TLS, as weft-cp serves by default (its writes go through TurnWriter), and in plaintext
  // (through grpc-js's own write path).
  for (const tls of [true, false]) {
    it(`holds at most one response of the send budget however many changes pass; it gets the latest at once when it reads, and the other proxies are served meanwhile (${tls ? 'TLS' : 'plaintext'})`, { timeout: 30_000 }, async (t) => {
      // A budget of three such responses: one copy per change for the slow proxy would spend it by
      // the third change, and the fast proxy would then wait.
      const m = tls ? await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 }) : undefined;
      const credentials = m && grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false);
      const oneResponse = 1_100_000;
      const ads = await startTestAds({ credentials, sendBudgetBytes: 3 * oneResponse });
      const relay = await relayTo(ads.address);
      // SotW, where every cluster change sends the whole set (rule 14).
      const slow = new XdsTestClient(relay.address, 'sotw', { id: 'default.slow' }, { ownConnection: true, tlsCa: m?.certPem });
      const fast = new XdsTestClient(ads.address, 'delta', { id: 'default.fast' }, { ownConnection: true, tlsCa: m?.certPem });
      t.after(async () => {
        slow.close();
        fast.close();
        relay.close();
        await ads.stop();
      });
      ads.cache.set('default.slow', meshSet({ web: [['10.0.0.1', 80]] }));
      ads.cache.set('default.fast', meshSet({ web: [['10.0.0.1', 80]] }));
      slow.subscribe(CDS, []);
      slow.ack(await slow.next(CDS));
      fast.delta({ type_url: CDS });
      fast.ack(await fast.next(CDS));
      await until('nothing in flight', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) === 0);

      // The slow proxy's link takes nothing more; five new configs come for it, one after another.
      relay.holdToClient();
      const heldAt = Date.now();
      ads.cache.set('default.slow', big(1));
      await until('the first big response is stuck', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) > 500_000);
      const held = await metric(ads, 'weft_xds_send_bytes_in_flight');
      assert.ok(held <= oneResponse, `one response in flight: ${held} bytes`);
      for (let v = 2; v <= 5; v++) {
        ads.cache.set('default.slow', big(v));
        // The fast proxy is served each time, whatever the slow one holds.
        ads.cache.set('default.fast', meshSet({ web: [['10.0.0.1', 80]], [`api-${v}`]: [['10.0.0.2', 80]] }));
        const r = await fast.next(CDS, 2000);
        assert.ok(r.resources.some((x) => x.name === `api-${v}`), `change ${v} reached the fast proxy`);
        fast.ack(r);
        // The fast proxy's response may still count for a moment after it arrived (its write's callback).
        await until(`change ${v}: nothing more queued for the slow proxy than its first response`, async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) === held, 1000);
      }
      assert.equal(await metric(ads, 'weft_xds_streams_writing'), 1, 'one stream behind on its writes');
      assert.equal(await metric(ads, 'weft_xds_streams_waiting_to_send'), 0, 'the budget never closed');
      const status = ads.server.status.get('default.slow')!;
      assert.equal(status.unwritten?.bytes, held, 'its status shows what it has not taken...');
      const since = Date.parse(status.unwritten!.since);
      assert.ok(since >= heldAt - 50 && since <= Date.now(), `...and since when: ${status.unwritten!.since}`);
      assert.equal(ads.server.status.get('default.fast')?.unwritten, undefined);

      // The link frees up: the slow proxy reads the stuck response, then one more with the latest set.
      relay.releaseToClient();
      const first = await slow.next(CDS, 10_000);
      assert.ok(first.resources.every((x) => /-v1-/.test(x.name)), 'the response it was being sent (version 1)');
      slow.ack(first);
      const latest = await slow.next(CDS, 10_000);
      assert.equal(latest.resources.length, 3000);
      assert.ok(latest.resources.every((x) => /-v5-/.test(x.name)), 'then the latest (version 5), versions 2-4 skipped');
      slow.ack(latest);
      assert.ok(await slow.quiet(300, CDS), 'and nothing else');
      await until('nothing in flight', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) === 0);
      await until('unwritten cleared', () => ads.server.status.get('default.slow')?.unwritten === undefined);
      assert.equal(await metric(ads, 'weft_xds_streams_writing'), 0);
      assert.equal(ads.server.status.get('default.slow')?.types.CDS?.responses, 3, 'three CDS responses in all, not six');
    });
  }
});
