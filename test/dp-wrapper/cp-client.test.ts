import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { CpClient } from '../../src/dp-wrapper/cp-client.js';
import { XdsRelay } from '../../src/dp-wrapper/relay.js';
import { createLogger } from '../../src/core/index.js';
import { relayTo } from '../helpers/tcp-relay.js';
import { meshSet, startTestAds } from '../helpers/xds-fixtures.js';

describe("weft-dp's connection to the control plane", () => {
  /**
   * A proxyless app's xDS stream goes app → weft-dp's relay → control plane. The control plane
   * vanishes without a word (a TCP relay that stops passing bytes); it does not ping here, so only
   * weft-dp's own pings can tell.
   */
  async function relayedApp(t: { after(fn: () => unknown): void }, keepalive?: { timeMs: number; timeoutMs: number }) {
    const ads = await startTestAds({ connections: { keepaliveTimeMs: 0 } });
    const wire = await relayTo(ads.address);
    const cp = new CpClient({ address: `http://${wire.address}`, ...(keepalive && { keepalive }) });
    const relay = new XdsRelay(cp, createLogger('weft-dp', process.env.WEFT_TEST_LOG_LEVEL ?? 'silent'));
    const port = await relay.listen();
    const app = new XdsTestClient(`127.0.0.1:${port}`, 'sotw', { id: 'default.app' }, { ownConnection: true });
    t.after(async () => {
      app.close();
      relay.close();
      cp.client.close();
      wire.close();
      await ads.stop();
    });
    ads.cache.set('default.app', meshSet({ app: [['10.0.0.1', 8080]] }));
    app.subscribe(TypeUrl.Cluster, []);
    app.ack(await app.next(TypeUrl.Cluster));
    return { app, wire };
  }

  it('pings while a relayed xDS stream is open: a control plane gone silent ends the app stream, so the app reconnects', async (t) => {
    const { app, wire } = await relayedApp(t, { timeMs: 100, timeoutMs: 200 });
    wire.freeze();
    const start = Date.now();
    const status = await Promise.race([app.closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 3000))]);
    assert.ok(status, 'the app stream was still open 3 s after the control plane went silent');
    assert.equal(status.code, grpc.status.UNAVAILABLE, status.details);
    assert.ok(Date.now() - start < 2000, `ended after ${Date.now() - start} ms`);
  });

  it('without pings the app would keep the silent control plane for as long as TCP lets it', async (t) => {
    const { app, wire } = await relayedApp(t, { timeMs: 0, timeoutMs: 0 });
    wire.freeze();
    const status = await Promise.race([app.closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 1000))]);
    assert.equal(status, undefined);
  });
});
