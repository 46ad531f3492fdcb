import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { isLoopbackPeer, loopbackOnlyAuthenticator, refuseAllAuthenticator, StreamError, TypeUrl, type Authenticator } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { meshSet, startTestAds, type TestAds } from '../helpers/xds-fixtures.js';

/** Stands in for dataplane tokens (a later issue): the `x-dataplane` header names the identity. */
const headerAuthenticator: Authenticator = {
  authenticate({ metadata }) {
    const v = metadata.get('x-dataplane')[0];
    if (typeof v !== 'string') throw new StreamError(grpc.status.UNAUTHENTICATED, 'no x-dataplane header');
    const [mesh, name] = v.split('/');
    return { kind: 'dataplane', mesh: mesh!, name: name! };
  },
};

describe('ADS server: identity', () => {
  let ads: TestAds;
  const clients: XdsTestClient[] = [];
  const client = (...args: ConstructorParameters<typeof XdsTestClient>) => {
    const c = new XdsTestClient(...args);
    clients.push(c);
    return c;
  };
  before(async () => {
    ads = await startTestAds({ authenticator: headerAuthenticator });
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await ads.stop();
  });

  it('serves a proxy whose node.id matches its identity', async () => {
    ads.cache.set('default.web-1', meshSet({ web: [['10.0.0.1', 80]] }));
    const c = client(ads.address, 'sotw', { id: 'default.web-1' }, { metadata: { 'x-dataplane': 'default/web-1' } });
    c.subscribe(TypeUrl.Cluster, []);
    assert.equal((await c.next(TypeUrl.Cluster)).resources.length, 1);
    c.close();
  });

  it("closes with PERMISSION_DENIED when a proxy asks for another dataplane's config", async () => {
    ads.cache.set('default.db-1', meshSet({ db: [['10.0.0.1', 5432]] }));
    const c = client(ads.address, 'delta', { id: 'default.db-1' }, { metadata: { 'x-dataplane': 'default/web-1' } });
    c.delta({ type_url: TypeUrl.Cluster });
    const status = await c.closed;
    assert.equal(status.code, grpc.status.PERMISSION_DENIED);
    assert.match(status.details, /node.id "default.db-1" does not match the token, which is for dataplane "web-1" in mesh "default"/);
    assert.equal(c.received.length, 0, 'nothing of db-1 was sent');
  });

  it('closes with UNAUTHENTICATED without credentials, and INVALID_ARGUMENT without a node id', async () => {
    const anon = client(ads.address, 'sotw', { id: 'default.web-1' });
    anon.subscribe(TypeUrl.Cluster, []);
    assert.equal((await anon.closed).code, grpc.status.UNAUTHENTICATED);
    const noId = client(ads.address, 'sotw', {}, { metadata: { 'x-dataplane': 'default/web-1' } });
    noId.subscribe(TypeUrl.Cluster, []);
    const s = await noId.closed;
    assert.equal(s.code, grpc.status.INVALID_ARGUMENT);
    assert.match(s.details, /node\.id/);
  });
});

describe('ADS server: defaults and robustness', () => {
  it('refuses every stream by default, saying why', async (t) => {
    const ads = await startTestAds({ authenticator: refuseAllAuthenticator });
    t.after(() => ads.server.destroy());
    const c = new XdsTestClient(ads.address, 'sotw', { id: 'default.web-1' });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Cluster, []);
    const s = await c.closed;
    assert.equal(s.code, grpc.status.UNAUTHENTICATED);
    assert.match(s.details, /token authentication is not configured/);
    await ads.stop();
  });

  it('allows unauthenticated streams from loopback peers only', () => {
    assert.ok(isLoopbackPeer('127.0.0.1:5000'));
    assert.ok(isLoopbackPeer('ipv4:127.0.0.1:5000'));
    assert.ok(isLoopbackPeer('[::1]:5000'));
    assert.ok(!isLoopbackPeer('10.0.0.1:5000'));
    assert.ok(!isLoopbackPeer('[2001:db8::1]:5000'));
  });

  it('survives garbage, unknown types and a NACK storm without hurting other proxies', async (t) => {
    const ads = await startTestAds();
    t.after(() => ads.server.destroy());
    ads.cache.set('default.good', meshSet({ web: [['10.0.0.1', 80]] }));
    ads.cache.set('default.noisy', meshSet({ web: [['10.0.0.1', 80]] }));
    const good = new XdsTestClient(ads.address, 'sotw', { id: 'default.good' });
    t.after(() => good.close());
    good.subscribe(TypeUrl.Cluster, []);
    good.ack(await good.next(TypeUrl.Cluster));

    // Bytes that are no DiscoveryRequest.
    const raw = new grpc.Client(ads.address, grpc.credentials.createInsecure());
    t.after(() => raw.close());
    const garbage = raw.makeBidiStreamRequest('/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources', (b: Buffer) => b, (b: Buffer) => b);
    const garbageStatus = new Promise<grpc.StatusObject>((resolve) => garbage.on('status', resolve));
    garbage.on('error', () => {});
    garbage.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]));
    assert.notEqual((await garbageStatus).code, grpc.status.OK);
    raw.close();

    // Unknown type URL: ignored, the stream lives.
    const noisy = new XdsTestClient(ads.address, 'sotw', { id: 'default.noisy' });
    t.after(() => noisy.close());
    noisy.subscribe('type.googleapis.com/envoy.config.nonsense.v3.Thing', []);
    noisy.subscribe(TypeUrl.Cluster, []);
    const r = await noisy.next(TypeUrl.Cluster);
    for (let i = 0; i < 200; i++) noisy.nack(r, `storm ${i}`);
    // Wait until the server has taken all 200 (a loaded machine may need a while).
    for (let t0 = Date.now(); !/weft_xds_nacks_total\{type="CDS"\} 200/.test(await ads.metrics.metrics()) && Date.now() - t0 < 10_000; ) await new Promise((res) => setTimeout(res, 50));
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(noisy.received.length, 1, 'a NACK storm gets no responses back');

    ads.cache.set('default.good', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const after = await good.next(TypeUrl.Cluster);
    assert.equal(after.resources.length, 2, 'the good proxy still gets its updates');
    const metrics = await ads.metrics.metrics();
    assert.match(metrics, /weft_xds_ignored_requests_total\{reason="unknown_type"\} 1/);
    assert.match(metrics, /weft_xds_nacks_total\{type="CDS"\} 200/);
    assert.match(metrics, /weft_xds_connected_proxies\{variant="sotw"\} 2/);
    assert.match(metrics, /weft_xds_delivery_seconds_count\{type="CDS"\} [1-9]/);
    good.close();
    noisy.close();
    await ads.stop();
  });

  it('keeps a few requests while credentials are checked, not a flood: the flooding stream is refused, a proxy that asked per type is served', async (t) => {
    // The check waits on a slow store (here 300 ms) for everyone; meanwhile requests are kept.
    const ads = await startTestAds({ authenticator: { authenticate: async (ctx) => (await new Promise((r) => setTimeout(r, 300)), loopbackOnlyAuthenticator.authenticate(ctx)) } });
    t.after(() => ads.server.destroy());
    ads.cache.set('default.proxy', meshSet({ web: [['10.0.0.1', 80]] }));
    const flood = new XdsTestClient(ads.address, 'sotw', { id: 'default.flood' }, { ownConnection: true });
    const proxy = new XdsTestClient(ads.address, 'sotw', { id: 'default.proxy' }, { ownConnection: true });
    t.after(() => (flood.close(), proxy.close()));
    for (let i = 0; i < 100; i++) flood.subscribe(TypeUrl.Cluster, [`c-${i}`]);
    for (const type of [TypeUrl.Cluster, TypeUrl.Listener, TypeUrl.ClusterLoadAssignment, TypeUrl.RouteConfiguration, TypeUrl.Secret]) proxy.subscribe(type, type === TypeUrl.Cluster || type === TypeUrl.Listener ? [] : ['web']);
    const refused = await Promise.race([flood.closed, new Promise<{ code: number; details: string }>((r) => setTimeout(() => r({ code: -1, details: 'still open after 5 s' }), 5000).unref())]);
    assert.equal(refused.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(refused.details, /more than 32 requests before the stream's credentials were checked/);
    assert.deepEqual((await proxy.next(TypeUrl.Cluster)).resources.map((r) => r.name), ['web'], 'what it asked before the check is answered after it');
  });

  it('on shutdown, ends open streams with UNAVAILABLE so proxies go to another replica', async (t) => {
    const ads = await startTestAds();
    t.after(() => ads.server.destroy());
    ads.cache.set('default.web', meshSet({ web: [['10.0.0.1', 80]] }));
    const c = new XdsTestClient(ads.address, 'delta', { id: 'default.web' });
    t.after(() => c.close());
    c.delta({ type_url: TypeUrl.Cluster });
    await c.next(TypeUrl.Cluster);
    const t0 = Date.now();
    await ads.server.close();
    const s = await c.closed;
    assert.equal(s.code, grpc.status.UNAVAILABLE);
    assert.match(s.details, /shutting down/);
    assert.ok(Date.now() - t0 < 3000);
    const late = new XdsTestClient(ads.address, 'sotw', { id: 'default.web' });
    t.after(() => late.close());
    late.subscribe(TypeUrl.Cluster, []);
    assert.notEqual((await late.closed).code, grpc.status.OK, 'no new streams after close');
  });
});

describe('ADS server: delivery time', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** weft_xds_delivery_seconds for CDS: observations and their sum. */
  async function delivery(ads: TestAds, count: number): Promise<number> {
    for (let t0 = Date.now(); Date.now() - t0 < 5000; await sleep(20)) {
      const text = await ads.metrics.metrics();
      if (Number(/^weft_xds_delivery_seconds_count\{type="CDS"\} (\d+)$/m.exec(text)?.[1]) === count) return Number(/^weft_xds_delivery_seconds_sum\{type="CDS"\} (\S+)$/m.exec(text)![1]);
    }
    throw new Error(`no ${count} CDS deliveries recorded`);
  }

  it('times what a new stream is sent from its start when the change is older (a proxy back within xds.lingerMs), and a later change from the change', async (t) => {
    const ads = await startTestAds();
    t.after(() => ads.server.destroy());
    ads.cache.set('default.back', meshSet({ web: [['10.0.0.1', 80]] }));
    await sleep(700); // the snapshot a proxy finds when it comes back was made a while ago
    const c = new XdsTestClient(ads.address, 'sotw', { id: 'default.back' });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Cluster, []);
    c.ack(await c.next(TypeUrl.Cluster));
    const first = await delivery(ads, 1);
    assert.ok(first < 0.5, `timed from the stream's start, not the 700 ms old change (${first} s)`);
    await sleep(500);
    // A change committed 400 ms ago, after the stream started, reaches the proxy now.
    ads.cache.set('default.back', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }), Date.now() - 400);
    c.ack(await c.next(TypeUrl.Cluster));
    const second = (await delivery(ads, 2)) - first;
    assert.ok(second >= 0.4, `timed from the change (${second} s)`);
    c.close();
    await ads.stop();
  });
});
