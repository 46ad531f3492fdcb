import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { collectingLogger } from '../helpers/log-lines.js';
import { nackRunTests } from '../helpers/nack-runs.js';
import { adsSuite, cla, cluster, listener, meshSet, route, startTestAds, type TestAds } from '../helpers/xds-fixtures.js';
import { until } from '../helpers/until.js';

const { Cluster: CDS, ClusterLoadAssignment: EDS, Listener: LDS, RouteConfiguration: RDS } = TypeUrl;
let n = 0;
const nodeId = () => `default.sotw-${++n}`;
const names = (r: { resources: { name: string }[] }) => r.resources.map((x) => x.name).sort();

describe('ADS state of the world', () => {
  const suite = adsSuite('sotw', { nackBackoffMs: 400 });
  const connect = suite.connect;
  let ads: TestAds;
  before(() => {
    ads = suite.ads();
  });

  it('rule 1: every response has a nonce, unique on the stream', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    c.subscribe(LDS, []);
    const a = await c.next(CDS);
    const b = await c.next(LDS);
    assert.ok(a.nonce && b.nonce && a.nonce !== b.nonce);
  });

  it('rule 2: node is needed on the first request only', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []); // carries node
    const r = await c.next(CDS);
    c.ack(r); // no node
    c.subscribe(EDS, ['web']); // no node
    assert.equal((await c.next(EDS)).resources[0]!.name, 'web');
  });

  it('rule 3: a reconnecting client that holds the current version gets no resend', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const first = connect(id);
    first.subscribe(CDS, []);
    const r = await first.next(CDS);
    first.ack(r);
    first.close();
    const again = connect(id);
    again.subscribe(CDS, [], { version_info: r.version });
    assert.ok(await again.quiet(300), 'nothing resent');
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    assert.equal((await again.next(CDS)).resources.length, 2, 'but a change is sent');
  });

  it('rules 3 and 12: a reconnecting client that names its resources is sent them, even at the version it last accepted', async () => {
    // As grpc-js-xds: it accepted [pay] at version V, then dropped pay (its route went; the empty
    // response did not arrive before the stream broke), and on a new stream asks for pay again,
    // still saying V. It holds nothing: answering nothing left it without the cluster for good.
    const id = nodeId();
    ads.cache.set(id, meshSet({ pay: [['10.0.0.1', 80]] }));
    const first = connect(id);
    first.subscribe(CDS, ['pay']);
    const r = await first.next(CDS);
    first.ack(r, ['pay']);
    first.subscribe(CDS, [], { version_info: r.version, response_nonce: r.nonce });
    first.close();
    const again = connect(id);
    again.subscribe(CDS, ['pay'], { version_info: r.version });
    const resent = await again.next(CDS);
    assert.deepEqual(resent.resources.map((c) => c.name), ['pay']);
    assert.equal(resent.version, r.version, 'the same version: nothing changed but the subscription');
  });

  it('rules 4 and 6: an ACK is recorded and nothing is resent in answer to it', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    const r = await c.next(CDS);
    c.ack(r);
    assert.ok(await c.quiet(300, CDS));
    assert.equal(ads.server.status.get(id)!.types.CDS!.lastAckedVersion, r.version);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    assert.ok(await c.quiet(200, CDS), 'an identical snapshot sends nothing');
  });

  it('rule 5: a NACK is recorded with its error; the config is retried only after the backoff, as is a new one', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    const r = await c.next(CDS);
    const t0 = Date.now();
    c.nack(r, 'cluster web: bad thing');
    assert.ok(await c.quiet(250, CDS), 'no hot loop resending the rejected config');
    const st = ads.server.status.get(id)!.types.CDS!;
    assert.equal(st.lastNack?.message, 'cluster web: bad thing');
    assert.equal(st.lastNack?.version, r.version);
    assert.equal(st.lastAckedVersion, undefined);
    const retry = await c.next(CDS, 3000);
    assert.ok(Date.now() - t0 >= 380, `retried after the backoff (400 ms), not before (${Date.now() - t0} ms)`);
    assert.equal(retry.version, r.version, 'the same config, whole');
    assert.deepEqual(names(retry), ['web']);
    assert.notEqual(retry.nonce, r.nonce);
    const t1 = Date.now();
    c.nack(retry, 'again');
    await new Promise((res) => setTimeout(res, 100));
    ads.cache.set(id, meshSet({ web: [['10.0.0.2', 80]], api: [['10.0.0.3', 80]] }));
    const next = await c.next(CDS, 3000);
    assert.ok(Date.now() - t1 >= 380, `a new config waits out the backoff too (${Date.now() - t1} ms)`);
    assert.equal(next.resources.length, 2);
    c.ack(next);
    assert.ok(await c.quiet(600, CDS), 'once ACKed, nothing more');
    assert.equal(ads.server.status.get(id)!.types.CDS!.lastAckedVersion, next.version);
  });

  it('rules 5 and 8: while the proxy has rejected its new routes, the clusters its old routes use stay', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'api'));
    const c = connect(id);
    c.subscribe(CDS, []);
    c.ack(await c.next(CDS));
    c.subscribe(RDS, ['http-routes']);
    c.ack(await c.next(RDS));
    // api goes, and the routes move to web; the proxy rejects the new routes and keeps its own.
    // (The clusters the proxy holds stay as they are while the routes are in flight: no CDS yet.)
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }, 'web'));
    c.nack(await c.next(RDS), 'route rejected');
    assert.ok(await c.quiet(250, CDS), 'api is not dropped while the proxy routes to it');
    const retried = await c.next(RDS, 3000);
    assert.deepEqual(names(retried), ['http-routes'], 'the routes again, after the backoff');
    c.ack(retried);
    const after = await c.next(CDS);
    assert.deepEqual(names(after), ['web'], 'api goes once the routes that left it are taken');
  });

  it('rules 5 and 8: while clusters wait out a NACK, routes that would use a new one wait with them', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    c.ack(await c.next(CDS));
    c.subscribe(RDS, ['http-routes']);
    c.ack(await c.next(RDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'web'));
    c.nack(await c.next(CDS), 'cluster api rejected');
    await until('the NACK is recorded', () => !!ads.server.status.get(id)!.types.CDS!.lastNack);
    // Meanwhile the routes move to api, which the proxy does not hold.
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'api'));
    assert.ok(await c.quiet(250, RDS), 'no route to a cluster the proxy lacks');
    const order = [];
    for (let i = 0; i < 2; i++) order.push((await c.next(undefined, 3000)).typeUrl);
    assert.deepEqual(order, [CDS, RDS], 'after the backoff: the clusters again, then the routes');
  });

  it('rules 5 and 11: the NACK of an earlier response still in flight counts, though its request is otherwise stale', async () => {
    const id = nodeId();
    const set = (web: string, api: string) => meshSet({ web: [[web, 80]], api: [[api, 80]] });
    ads.cache.set(id, set('10.0.0.1', '10.0.0.2'));
    const c = connect(id);
    c.subscribe(EDS, ['web', 'api']);
    c.ack(await c.next(EDS));
    ads.cache.set(id, set('10.0.0.11', '10.0.0.2'));
    const first = await c.next(EDS);
    ads.cache.set(id, set('10.0.0.11', '10.0.0.12'));
    const second = await c.next(EDS);
    assert.deepEqual([names(first), names(second)], [['web'], ['api']], 'each carries only what changed (rule 14)');
    // The proxy answers both in order: it rejected web's endpoints, took api's.
    c.nack(first, 'endpoints of web rejected', '', ['web', 'api']);
    c.ack(second);
    const again = await c.next(EDS, 3000);
    assert.deepEqual(names(again), ['api', 'web'], 'after the backoff, the type again whole');
    assert.equal(ads.server.status.get(id)!.types.EDS!.lastNack?.message, 'endpoints of web rejected');
  });

  it('rule 8: on a change, clusters go first, then endpoints, listeners and routes', async () => {
    const id = nodeId();
    const c = connect(id);
    c.subscribe(CDS, []);
    c.subscribe(EDS, ['web']);
    c.subscribe(LDS, []);
    c.subscribe(RDS, ['http-routes']);
    await new Promise((r) => setTimeout(r, 100));
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const order = [];
    for (let i = 0; i < 4; i++) order.push((await c.next()).typeUrl);
    assert.deepEqual(order, [CDS, EDS, LDS, RDS]);
  });

  // With names that do not cover the snapshot ("other" is never asked for), answers shared between
  // streams must still keep what rule 8 holds back.
  const rule8Cases: [string, string[], Record<string, [string, number][]>][] = [
    ['CDS wildcard', [], {}],
    ['clusters named, as grpc-js does', ['old', 'new', 'newer'], { other: [['10.0.0.9', 80]] }],
  ];
  for (const [how, cdsNames, extra] of rule8Cases) {
    it(`rule 8: a removed cluster stays until the proxy has taken routes that no longer use it (${how})`, async () => {
      const id = nodeId();
      ads.cache.set(id, meshSet({ old: [['10.0.0.1', 80]], new: [['10.0.0.2', 80]], ...extra }, 'old'));
      const c = connect(id);
      c.subscribe(CDS, cdsNames);
      c.ack(await c.next(CDS));
      c.subscribe(EDS, ['old', 'new']);
      c.ack(await c.next(EDS));
      c.subscribe(LDS, []);
      c.ack(await c.next(LDS));
      c.subscribe(RDS, ['http-routes']);
      c.ack(await c.next(RDS));
      // Now routes move to a new cluster "newer", and "old" goes away.
      ads.cache.set(id, meshSet({ new: [['10.0.0.2', 80]], newer: [['10.0.0.3', 80]], ...extra }, 'newer'));
      const cds = await c.next(CDS);
      assert.deepEqual(cds.resources.map((r) => r.name).sort(), ['new', 'newer', 'old'], 'the added cluster comes first; old is kept while routes still use it');
      c.ack(cds);
      const rds = await c.next(RDS);
      assert.equal((rds.resources[0]!.body.virtual_hosts as { routes: { route: { cluster: string } }[] }[])[0]!.routes[0]!.route.cluster, 'newer');
      assert.ok(await c.quiet(150, CDS), 'removal waits for the route ACK');
      c.ack(rds);
      const final = await c.next(CDS);
      assert.deepEqual(final.resources.map((r) => r.name).sort(), ['new', 'newer']);
    });
  }

  it('rule 8: proxies sent the same clusters share the answer that keeps a removed one, and each lets it go after its own route ACK', async () => {
    const ids = [nodeId(), nodeId(), nodeId(), nodeId()];
    // The last proxy was sent other clusters: it keeps its own removed one.
    const first = (i: number) => (i === 3 ? 'gone' : 'old');
    const clients = [];
    for (const [i, id] of ids.entries()) {
      ads.cache.set(id, meshSet({ [first(i)]: [['10.0.0.1', 80]], new: [['10.0.0.2', 80]] }, first(i)));
      const c = connect(id);
      c.subscribe(CDS, []);
      c.ack(await c.next(CDS));
      c.subscribe(EDS, [first(i), 'new']);
      c.ack(await c.next(EDS));
      c.subscribe(LDS, []);
      c.ack(await c.next(LDS));
      c.subscribe(RDS, ['http-routes']);
      c.ack(await c.next(RDS));
      clients.push(c);
    }
    for (const id of ids) ads.cache.set(id, meshSet({ new: [['10.0.0.2', 80]], newer: [['10.0.0.3', 80]] }, 'newer'));
    const rdss = [];
    for (const [i, c] of clients.entries()) {
      const cds = await c.next(CDS);
      assert.deepEqual(cds.resources.map((r) => r.name).sort(), ['new', 'newer', first(i)].sort(), `proxy ${i}`);
      c.ack(cds);
      rdss.push(await c.next(RDS));
    }
    // Only the first proxy takes the new routes: only it lets "old" go.
    clients[0]!.ack(rdss[0]!);
    assert.deepEqual((await clients[0]!.next(CDS)).resources.map((r) => r.name).sort(), ['new', 'newer']);
    assert.ok(await clients[1]!.quiet(150, CDS), 'the others still route to old');
    for (const [i, c] of clients.entries()) if (i > 0) c.ack(rdss[i]!);
    for (const [i, c] of clients.entries()) if (i > 0) assert.deepEqual((await c.next(CDS)).resources.map((r) => r.name).sort(), ['new', 'newer']);
  });

  it('rule 9: an updated cluster is followed by its endpoints even when they did not change', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    c.ack(await c.next(CDS));
    c.subscribe(EDS, ['web']);
    c.ack(await c.next(EDS));
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[CDS] = [{ ...(set[CDS]![0] as object), connect_timeout: { seconds: 9 } }];
    ads.cache.set(id, set);
    c.ack(await c.next(CDS));
    const eds = await c.next(EDS);
    assert.equal(eds.resources[0]!.name, 'web');
  });

  it('rule 11: a request with a stale nonce is ignored', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    const first = await c.next(CDS);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const second = await c.next(CDS);
    c.ack(first); // nonce of the first response: stale
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(ads.server.status.get(id)!.types.CDS!.lastAckedVersion, undefined, 'stale ACK not recorded');
    c.ack(second);
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(ads.server.status.get(id)!.types.CDS!.lastAckedVersion, second.version);
  });

  it('rule 12: a name added to the subscription is sent even if it was sent before', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.subscribe(EDS, ['web', 'api']);
    const a = await c.next(EDS);
    assert.equal(a.resources.length, 2);
    c.subscribe(EDS, ['web'], { version_info: a.version, response_nonce: a.nonce });
    const b = await c.next(EDS);
    assert.deepEqual(b.resources.map((r) => r.name), [], 'web is unchanged, and leaving api out is not a deletion (rule 14)');
    c.subscribe(EDS, ['web', 'api'], { version_info: b.version, response_nonce: b.nonce });
    const again = await c.next(EDS);
    assert.deepEqual(again.resources.map((r) => r.name), ['api'], 'api again, though the client had it before');
  });

  it('rule 12: a name dropped and asked for again while its type waits is sent, though the drop was never answered', async () => {
    // As grpc-js-xds and Envoy do, the client forgets a route the moment it unsubscribes it. Here
    // routes wait behind clusters the client rejected (rule 8 holds them during the backoff), so
    // the drop is not answered; the route asked for again before the backoff ends must still come.
    const id = nodeId();
    const set = (timeout: number) => ({
      [CDS]: [cluster('web', { connect_timeout: { seconds: timeout } }), cluster('api')],
      [EDS]: [cla('web', [['10.0.0.1', 80]]), cla('api', [['10.0.0.2', 80]])],
      [LDS]: [listener('l-web', 8080, 'r-web'), listener('l-api', 8081, 'r-api')],
      [RDS]: [route('r-web', 'web'), route('r-api', 'api')],
    });
    ads.cache.set(id, set(5));
    const c = connect(id);
    c.subscribe(CDS, ['web', 'api']);
    c.ack(await c.next(CDS), ['web', 'api']);
    c.subscribe(RDS, ['r-web', 'r-api']);
    const routes = await c.next(RDS);
    assert.deepEqual(names(routes), ['r-api', 'r-web']);
    c.ack(routes, ['r-web', 'r-api']);
    ads.cache.set(id, set(6));
    c.nack(await c.next(CDS), 'cluster web rejected', '', ['web', 'api']);
    c.subscribe(RDS, ['r-web'], { version_info: routes.version, response_nonce: routes.nonce });
    c.subscribe(RDS, ['r-web', 'r-api'], { version_info: routes.version, response_nonce: routes.nonce });
    const again = await c.next(RDS, 3000);
    assert.deepEqual(names(again), ['r-api'], 'the route the client dropped, once the clusters go again');
  });

  it('rules 11 and 12: a stale request\'s ACK is ignored, but not the names it asks for; one it dropped and the next asks for again is sent', async () => {
    // The client has not read the response in flight when it drops api (and forgets it), then asks
    // for api again: both requests carry the nonce of the response before. Ignoring their names,
    // the server saw [web, api] before and after, and never sent api again.
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.subscribe(EDS, ['web', 'api']);
    const a = await c.next(EDS);
    c.ack(a, ['web', 'api']);
    ads.cache.set(id, meshSet({ web: [['10.0.0.9', 80]], api: [['10.0.0.2', 80]] }));
    await until('a response in flight', () => ads.server.status.get(id)!.types.EDS!.lastSentVersion !== a.version);
    c.subscribe(EDS, ['web'], { version_info: a.version, response_nonce: a.nonce });
    c.subscribe(EDS, ['web', 'api'], { version_info: a.version, response_nonce: a.nonce });
    const got = new Set<string>();
    for (const end = Date.now() + 3000; !got.has('api') && Date.now() < end; ) {
      const r = await c.next(EDS, Math.max(end - Date.now(), 1)).catch(() => undefined);
      if (!r) break;
      for (const n of names(r)) got.add(n);
      c.ack(r, ['web', 'api']);
    }
    assert.ok(got.has('api'), `api sent again (got ${[...got].join(', ')})`);
  });

  it('rule 13: empty first list and "*" mean everything; after explicit names an empty list means nothing', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const legacy = connect(id);
    legacy.subscribe(CDS, []);
    assert.equal((await legacy.next(CDS)).resources.length, 2);
    const star = connect(id);
    star.subscribe(CDS, ['*']);
    assert.equal((await star.next(CDS)).resources.length, 2);
    const named = connect(id);
    named.subscribe(CDS, ['web']);
    const one = await named.next(CDS);
    assert.deepEqual(one.resources.map((r) => r.name), ['web']);
    named.subscribe(CDS, [], { version_info: one.version, response_nonce: one.nonce });
    assert.equal((await named.next(CDS)).resources.length, 0);
  });

  it('rule 14: LDS and CDS carry the full set, and a missing name is a deletion', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.subscribe(CDS, []);
    const a = await c.next(CDS);
    c.ack(a);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]], db: [['10.0.0.3', 5432]] }));
    const b = await c.next(CDS);
    assert.deepEqual(b.resources.map((r) => r.name).sort(), ['api', 'db', 'web'], 'unchanged clusters are in the set too');
    c.ack(b);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const d = await c.next(CDS);
    assert.deepEqual(d.resources.map((r) => r.name), ['web']);
  });

  it('rule 14: RDS, EDS and SDS carry only what changed; leaving one out is not a deletion', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]], db: [['10.0.0.3', 5432]] }));
    const c = connect(id);
    c.subscribe(EDS, ['web', 'api', 'db']);
    const a = await c.next(EDS);
    assert.equal(a.resources.length, 3, 'the first response has everything asked for');
    c.ack(a, ['web', 'api', 'db']);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.7', 80]], db: [['10.0.0.3', 5432]] }));
    const b = await c.next(EDS);
    assert.deepEqual(b.resources.map((r) => r.name), ['api'], 'one service moved: one assignment');
    assert.notEqual(b.version, a.version);
  });

  it('rule 15: a name asked for before it exists is pushed when it appears', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.subscribe(EDS, ['web', 'later']);
    const a = await c.next(EDS);
    assert.deepEqual(a.resources.map((r) => r.name), ['web']);
    c.ack(a, ['web', 'later']);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], later: [['10.0.0.9', 80]] }));
    const b = await c.next(EDS);
    assert.deepEqual(b.resources.map((r) => r.name), ['later']);
  });
});

describe('ADS NACKs in the log', () => {
  it('rule 5: a run of NACKs with one error is logged once; an ACK or another error starts a new run', async (t) => {
    const { logger, lines: warnings } = collectingLogger('warn');
    const ads = await startTestAds({ logger, nackBackoffMs: 50 });
    t.after(() => ads.stop());
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = new XdsTestClient(ads.address, 'sotw', { id });
    t.after(() => c.close());
    c.subscribe(CDS, []);
    c.nack(await c.next(CDS), 'bad');
    c.nack(await c.next(CDS, 2000), 'bad'); // retried after the backoff, rejected again
    c.nack(await c.next(CDS, 2000), 'worse');
    c.ack(await c.next(CDS, 2000));
    await until('the ACK is recorded', () => !!ads.server.status.get(id)!.types.CDS!.lastAckedVersion);
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    c.nack(await c.next(CDS, 2000), 'worse');
    await until('four NACKs are recorded', () => ads.server.status.get(id)!.types.CDS!.nacks >= 4);
    const logged = warnings.filter((w) => w.nodeId === id && String(w.msg).includes('NACK'));
    assert.deepEqual(
      logged.map((w) => [w.type, w.error]),
      [
        ['CDS', 'bad'],
        ['CDS', 'worse'],
        ['CDS', 'worse'],
      ],
    );
  });
});

nackRunTests('sotw');
