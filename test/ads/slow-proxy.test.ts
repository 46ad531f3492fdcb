import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
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

/**
 * A server (over TLS or not), a SotW proxy behind a relay that can hold back what is sent to it
 * (SotW: every cluster change sends the whole set, rule 14), and a delta proxy on a direct
 * connection; both hold a first small config, ACKed.
 */
async function slowAndFast(t: TestContext, tls: boolean, opts: { sendBudgetBytes: number; sendStallCutMs?: number }) {
  const m = tls ? await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 }) : undefined;
  const credentials = m && grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false);
  const ads = await startTestAds({ credentials, ...opts });
  const relay = await relayTo(ads.address);
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
  return { ads, relay, slow, fast };
}

describe('a proxy that reads slowly', () => {
  // Over TLS, as weft-cp serves by default (its writes go through TurnWriter), and in plaintext
  // (through grpc-js's own write path).
  for (const tls of [true, false]) {
    it(`holds at most one response of the send budget however many changes pass; it gets the latest at once when it reads, and the other proxies are served meanwhile (${tls ? 'TLS' : 'plaintext'})`, { timeout: 30_000 }, async (t) => {
      // A budget of three such responses: one copy per change for the slow proxy would spend it by
      // the third change, and the fast proxy would then wait.
      const oneResponse = 1_100_000;
      const { ads, relay, slow, fast } = await slowAndFast(t, tls, { sendBudgetBytes: 3 * oneResponse });
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

  for (const tls of [true, false]) {
  it(`is cut when it holds up the others: nothing taken for xds.sendStallCutMs while they wait for the send budget (${tls ? 'TLS' : 'plaintext'})`, { timeout: 30_000 }, async (t) => {
    // A budget smaller than what the stalled proxy's big response leaves unwritten (the socket
    // buffers take the rest): the fast proxy's next change waits.
    const { ads, relay, fast } = await slowAndFast(t, tls, { sendBudgetBytes: 400_000, sendStallCutMs: 400 });
    relay.holdToClient();
    ads.cache.set('default.slow', big(1));
    await until('the big response is stuck, the budget spent', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) > 400_000);
    // Alone, it holds the budget as long as it likes: nobody waits.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(ads.server.status.get('default.slow')?.connected, true, 'not cut while no one waits');
    assert.equal(await metric(ads, 'weft_xds_stalled_streams_cut_total'), 0);

    const asked = Date.now();
    ads.cache.set('default.fast', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    await until('the fast proxy waits for the budget', async () => (await metric(ads, 'weft_xds_streams_waiting_to_send')) === 1, 1000);
    const r = await fast.next(CDS, 5000);
    assert.ok(r.resources.some((x) => x.name === 'api'), 'the change reached the fast proxy...');
    assert.ok(Date.now() - asked < 3000, `...once the stalled one was cut (${Date.now() - asked} ms)`);
    await until('the stalled proxy is offline', () => ads.server.status.get('default.slow')?.connected === false);
    assert.match(ads.server.status.get('default.slow')!.disconnectReason ?? '', /^weft-cp cut its connection: it took nothing of the [\d.]+ (KB|MB) sent to it for [\d.]+ s while other proxies waited for the send budget \(xds.sendStallCutMs\)$/);
    assert.equal(await metric(ads, 'weft_xds_stalled_streams_cut_total'), 1);
    assert.equal(ads.server.status.get('default.fast')?.connected, true, 'the fast proxy keeps its stream');
    assert.equal(await Promise.race([fast.closed.then(() => 'closed'), new Promise((r) => setTimeout(r, 100, 'open'))]), 'open');
    await until('nothing in flight but what the fast proxy has yet to ACK', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) === 0);
  });
  }

  it('is not cut while it takes its config, however slowly: each write that finishes counts (TLS)', { timeout: 30_000 }, async (t) => {
    const { ads, relay, slow, fast } = await slowAndFast(t, true, { sendBudgetBytes: 400_000, sendStallCutMs: 1000 });
    relay.holdToClient();
    ads.cache.set('default.slow', big(1));
    await until('the big response is stuck, the budget spent', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) > 400_000);
    ads.cache.set('default.fast', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    await until('the fast proxy waits for the budget', async () => (await metric(ads, 'weft_xds_streams_waiting_to_send')) === 1, 1000);
    // The slow link lets a little through every 200 ms: the response takes far longer than 1 s to
    // be written whole, but some of it is written well within each second (a margin for a busy
    // machine, whose event loop stalls delay the pulses too).
    const started = Date.now();
    let pulsing = true;
    const pulses = (async () => {
      while (pulsing) {
        relay.releaseToClient();
        await new Promise((r) => setTimeout(r, 1));
        relay.holdToClient();
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    let got;
    try {
      got = await slow.next(CDS, 20_000);
    } finally {
      pulsing = false;
      await pulses;
      relay.releaseToClient();
    }
    const took = Date.now() - started;
    assert.ok(took > 2000, `the response took ${took} ms to come through, over twice the stall limit`);
    assert.ok(got.resources.every((x) => /-v1-/.test(x.name)));
    assert.equal(ads.server.status.get('default.slow')?.connected, true, 'never cut');
    assert.equal(await metric(ads, 'weft_xds_stalled_streams_cut_total'), 0);
    slow.ack(got);
    fast.ack(await fast.next(CDS, 5000));
  });
});
