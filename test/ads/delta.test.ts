import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { createServingCertificate } from '../../src/certs/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { AdsStream, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { GRPC_UNAVAILABLE, StreamError, type DeltaDiscoveryResponse } from '../../src/ads/stream.js';
import type { Received } from '../../src/ads/test-client.js';
import { nackRunTests } from '../helpers/nack-runs.js';
import { adsSuite, cla, cluster, listener, meshSet, route, startTestAds, type TestAds } from '../helpers/xds-fixtures.js';

const { Cluster: CDS, ClusterLoadAssignment: EDS, Listener: LDS, RouteConfiguration: RDS } = TypeUrl;
let n = 0;
const nodeId = () => `default.delta-${++n}`;
const names = (r: { resources: { name: string }[] }) => r.resources.map((x) => x.name).sort();

/** The LDS pieces that follow `first` until `total` listeners have come. */
async function restOf(c: XdsTestClient, first: Received, total: number): Promise<Received[]> {
  const rest: Received[] = [];
  for (let n = first.resources.length; n < total; ) {
    const r = await c.next(LDS);
    rest.push(r);
    n += r.resources.length;
  }
  return rest;
}

/** Pieces as small as in the tests of their rules: 16 KiB. */
const PIECE_BYTES = 16 * 1024;

/** A set with `n` clusters and `n` listeners: well over PIECE_BYTES of each. */
function bigSet(n: number, tag = 'c') {
  const cs = Array.from({ length: n }, (_, i) => `${tag}-${i}`);
  return {
    [CDS]: cs.map((c) => cluster(c)),
    [EDS]: cs.map((c) => cla(c, [['10.0.0.1', 80]])),
    [LDS]: cs.map((c, i) => listener(`l-${c}`, 10000 + i, 'routes')),
    [RDS]: [route('routes', cs[0]!)],
  };
}

describe('ADS incremental (delta)', () => {
  // Small pieces, so that a set of a few hundred resources comes in several.
  const suite = adsSuite('delta', { nackBackoffMs: 400, deltaPieceBytes: PIECE_BYTES });
  const connect = suite.connect;
  let ads: TestAds;
  before(() => {
    ads = suite.ads();
  });

  it('rules 13 and 16: a wildcard subscription gets every resource, each with its content-hash version', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: CDS });
    const r = await c.next(CDS);
    assert.deepEqual(names(r), ['api', 'web']);
    const snap = ads.cache.get(id)!;
    for (const res of r.resources) assert.equal(res.version, snap.resources.get(CDS)!.get(res.name)!.version);
    assert.equal(r.version, snap.version, 'system_version_info is the snapshot version (for debugging)');
  });

  it('rules 6 and 16: only changed resources are sent, and nothing in answer to an ACK', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web', 'api'] });
    c.ack(await c.next(EDS));
    assert.ok(await c.quiet(200, EDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.9', 80]], api: [['10.0.0.2', 80]] }));
    const r = await c.next(EDS);
    assert.deepEqual(names(r), ['web'], 'only the changed assignment');
  });

  it('rule 17: deletions and names that do not exist go in removed_resources', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: CDS, resource_names_subscribe: ['*'] });
    c.ack(await c.next(CDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const r = await c.next(CDS);
    assert.deepEqual(r.removed, ['api']);
    assert.deepEqual(names(r), []);
    c.ack(r);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web', 'ghost'] });
    const e = await c.next(EDS);
    assert.deepEqual(names(e), ['web']);
    assert.deepEqual(e.removed, ['ghost'], 'a subscribed name that does not exist is reported as removed');
    c.ack(e);
    assert.ok(await c.quiet(200, EDS), 'and only once');
  });

  it('rule 18: subscription changes count even with a stale nonce; such ACKs do not', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    const first = await c.next(EDS);
    ads.cache.set(id, meshSet({ web: [['10.0.0.7', 80]], api: [['10.0.0.2', 80]] }));
    await c.next(EDS);
    c.delta({ type_url: EDS, response_nonce: first.nonce, resource_names_subscribe: ['api'] });
    const r = await c.next(EDS);
    assert.deepEqual(names(r), ['api']);
    assert.equal(ads.server.status.get(id)!.types.EDS!.lastAckedVersion, undefined, 'the stale nonce was no ACK');
  });

  it('rule 19: a name subscribed again is sent again even if the client should have it', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.ack(await c.next(EDS));
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    assert.deepEqual(names(await c.next(EDS)), ['web']);
  });

  /** A proxy of meshSet's web and api that takes every type as Envoy does, then drops: the versions it holds, by type. */
  async function takeAllThenDrop(id: string): Promise<Map<string, Record<string, string>>> {
    const first = connect(id);
    const held = new Map<string, Record<string, string>>();
    const take = (r: Received) => {
      const v = held.get(r.typeUrl) ?? {};
      for (const x of r.resources) v[x.name] = x.version!;
      for (const x of r.removed) delete v[x];
      held.set(r.typeUrl, v);
      first.ack(r);
    };
    first.delta({ type_url: CDS });
    first.delta({ type_url: LDS });
    take(await first.next(CDS));
    first.delta({ type_url: EDS, resource_names_subscribe: ['web', 'api'] });
    take(await first.next(EDS));
    take(await first.next(LDS));
    first.delta({ type_url: RDS, resource_names_subscribe: ['http-routes'] });
    take(await first.next(RDS));
    first.close();
    return held;
  }

  it('rule 20: after a reconnect, resources whose version the client already holds are skipped', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const first = connect(id);
    first.delta({ type_url: CDS, resource_names_subscribe: ['*'] });
    const r = await first.next(CDS);
    first.close();
    const web = r.resources.find((x) => x.name === 'web')!;
    const again = connect(id);
    again.delta({ type_url: CDS, resource_names_subscribe: ['*'], initial_resource_versions: { web: web.version!, api: 'stale-version', gone: 'x' } });
    const r2 = await again.next(CDS);
    assert.deepEqual(names(r2), ['api'], 'web matched and was skipped; api was outdated');
    // It never names listeners (static ones, say): the removal waits only the resume wait (rule 8).
    const removal = r2.removed.length > 0 ? r2 : await again.next(CDS, 3000);
    assert.deepEqual(removal.removed, ['gone'], 'a held resource that no longer exists is removed');
  });

  it('rules 8 and 20: back from a reconnect, a cluster its held routes use goes only once the proxy has taken the new routes', async () => {
    const id = nodeId();
    // The routes send to api; the proxy takes everything, then its stream drops.
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'api'));
    const held = await takeAllThenDrop(id);
    // Meanwhile api goes, and the routes now send to web.
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }, 'web'));
    const again = connect(id);
    // As Envoy does on a new stream: every type at once, each with what it holds (rule 20).
    again.delta({ type_url: CDS, initial_resource_versions: held.get(CDS) });
    again.delta({ type_url: EDS, resource_names_subscribe: ['web', 'api'], initial_resource_versions: held.get(EDS) });
    again.delta({ type_url: LDS, initial_resource_versions: held.get(LDS) });
    again.delta({ type_url: RDS, resource_names_subscribe: ['http-routes'], initial_resource_versions: held.get(RDS) });
    const routes = await again.next(RDS);
    assert.deepEqual(names(routes), ['http-routes'], 'the new routes');
    const early = again.received.filter((r) => r.typeUrl === CDS || r.typeUrl === EDS).flatMap((r) => r.removed);
    assert.deepEqual(early, [], 'nothing the held routes use is removed before the new routes are taken');
    again.ack(routes);
    const removal = await again.next(CDS);
    assert.deepEqual([names(removal), removal.removed], [[], ['api']], 'then api goes');
  });

  it('rules 8 and 20: routes that arrived while the event loop stalled are read before the wait for them ends', async () => {
    // Staged against weft-cp's clock (the stream's start); on a machine too busy to stage it in
    // time, it is staged again.
    for (let attempt = 1; ; attempt++) {
      const id = nodeId();
      ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'api'));
      const held = await takeAllThenDrop(id);
      ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }, 'web'));
      const before = ads.server.status.get(id)?.connectedSince;
      const again = connect(id);
      // Its clusters first: the server waits up to 1 s (RESUME_WAIT_MS) for the routes it holds.
      again.delta({ type_url: CDS, initial_resource_versions: held.get(CDS) });
      let since: string | undefined;
      while ((since = ads.server.status.get(id)?.connectedSince) === undefined || since === before) await new Promise((r) => setTimeout(r, 5));
      const t0 = Date.parse(since);
      // The routes come 900 ms later, and right after they are written weft-cp's event loop stalls
      // past the end of the wait, the routes unread in the socket (a long round, a busy machine).
      await new Promise((r) => setTimeout(r, t0 + 900 - Date.now()));
      if (Date.now() > t0 + 960) {
        assert.ok(attempt < 5, 'this machine is too busy to stage a stall around the end of the wait');
        continue;
      }
      again.delta({ type_url: LDS, initial_resource_versions: held.get(LDS) });
      again.delta({ type_url: RDS, resource_names_subscribe: ['http-routes'], initial_resource_versions: held.get(RDS) });
      // The client's writes go out in this turn's check phase; the stall comes after them, as work
      // started by I/O would (Node reads timers' due times once per pass: a stall in a timer would
      // not do). Nothing runs and nothing is read until it ends.
      await new Promise((r) => setImmediate(r));
      while (Date.now() < t0 + 1250);
      const routes = await again.next(RDS);
      const early = again.received.filter((r) => r.typeUrl === CDS).flatMap((r) => r.removed);
      assert.deepEqual(early, [], 'api, which the held routes use, is not removed before the new routes');
      again.ack(routes);
      assert.deepEqual((await again.next(CDS)).removed, ['api'], 'then api goes');
      return;
    }
  });

  it('rule 20: back with every type named at once, a proxy gets only what changed while it was away, and what went is removed', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }, 'web'));
    const held = await takeAllThenDrop(id);
    // Meanwhile api goes (nothing routes to it), web's endpoints change, and the listener moves port.
    const now = meshSet({ web: [['10.0.0.9', 80]] }, 'web');
    now[LDS] = [listener('http', 8081, 'http-routes')];
    ads.cache.set(id, now);
    const again = connect(id);
    again.delta({ type_url: CDS, initial_resource_versions: held.get(CDS) });
    again.delta({ type_url: EDS, resource_names_subscribe: ['web', 'api'], initial_resource_versions: held.get(EDS) });
    again.delta({ type_url: LDS, initial_resource_versions: held.get(LDS) });
    again.delta({ type_url: RDS, resource_names_subscribe: ['http-routes'], initial_resource_versions: held.get(RDS) });
    const got = new Map<string, { sent: string[]; removed: string[] }>();
    const deadline = Date.now() + 3000;
    while ((got.get(CDS)?.removed.length ?? 0) === 0 || (got.get(EDS)?.removed.length ?? 0) === 0 || !got.has(LDS)) {
      const r = await again.next(undefined, Math.max(deadline - Date.now(), 1));
      const g = got.get(r.typeUrl) ?? { sent: [], removed: [] };
      g.sent.push(...names(r));
      g.removed.push(...r.removed);
      got.set(r.typeUrl, g);
      again.ack(r);
    }
    assert.deepEqual(got.get(CDS), { sent: [], removed: ['api'] }, 'web, which it holds, is not sent again; api goes');
    assert.deepEqual(got.get(EDS), { sent: ['web'], removed: ['api'] }, "web's new endpoints; api's go");
    assert.deepEqual(got.get(LDS), { sent: ['http'], removed: [] }, 'the listener held at another version');
    assert.ok(await again.quiet(300), 'nothing more: the routes, unchanged, are not sent again');
    assert.equal(got.has(RDS), false);
  });

  it('rule 20 with many resources held (named in a request the server reads into a Map): nothing is sent again, and then only what changes', async () => {
    const id = nodeId();
    const eps = (n: number) => Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`service-${i}`, [[`10.0.${i}.${n}`, 80]] as [string, number][]]));
    ads.cache.set(id, meshSet(eps(1)));
    const first = connect(id);
    first.delta({ type_url: CDS });
    const r = await first.next(CDS);
    assert.equal(r.resources.length, 80);
    first.close();
    const again = connect(id);
    again.delta({ type_url: LDS });
    again.delta({ type_url: CDS, initial_resource_versions: Object.fromEntries(r.resources.map((x) => [x.name, x.version!])) });
    again.ack(await again.next(LDS));
    assert.ok(await again.quiet(300, CDS), 'every cluster it named is at the version it holds');
    const changed = meshSet(eps(1));
    changed[CDS] = changed[CDS]!.map((c, i) => (i === 7 ? { ...(c as object), connect_timeout: { seconds: 9 } } : c));
    ads.cache.set(id, changed);
    assert.deepEqual(names(await again.next(CDS)), ['service-7']);
  });

  it('rule 21: unsubscribing a name the client never had is harmless', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.ack(await c.next(EDS));
    c.delta({ type_url: EDS, resource_names_unsubscribe: ['never-had'] });
    assert.ok(await c.quiet(200, EDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.5', 80]] }));
    assert.deepEqual(names(await c.next(EDS)), ['web'], 'the stream still works');
  });

  it('rules 5 and 9: a NACK is recorded; an updated cluster brings its endpoints again', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.delta({ type_url: CDS });
    c.ack(await c.next(CDS));
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    const e = await c.next(EDS);
    c.nack(e, 'endpoint rejected');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ads.server.status.get(id)!.types.EDS!.lastNack?.message, 'endpoint rejected');
    const set = meshSet({ web: [['10.0.0.1', 80]] });
    set[CDS] = [{ ...(set[CDS]![0] as object), connect_timeout: { seconds: 7 } }];
    ads.cache.set(id, set);
    c.ack(await c.next(CDS));
    const again = await c.next(EDS, 3000);
    assert.deepEqual(names(again), ['web'], 'EDS resent for the updated cluster, after the backoff');
  });

  it('rule 8: clusters, then endpoints, listeners and routes', async () => {
    const id = nodeId();
    const c = connect(id);
    c.delta({ type_url: CDS });
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.delta({ type_url: LDS });
    c.delta({ type_url: RDS, resource_names_subscribe: ['http-routes'] });
    await new Promise((r) => setTimeout(r, 100));
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const order = [];
    for (let i = 0; i < 4; i++) order.push((await c.next()).typeUrl);
    assert.deepEqual(order, [CDS, EDS, LDS, RDS]);
  });

  it('rules 5 and 17: after a NACK, once the backoff is over, the type comes again whole, and what the rejected response removed is removed again', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web', 'api'] });
    c.ack(await c.next(EDS));
    // web's endpoints change and api's go; the proxy takes none of it (Envoy may take part).
    ads.cache.set(id, meshSet({ web: [['10.0.0.9', 80]] }));
    const rejected = await c.next(EDS);
    assert.deepEqual([names(rejected), rejected.removed], [['web'], ['api']]);
    const t0 = Date.now();
    c.nack(rejected, 'endpoints rejected');
    assert.ok(await c.quiet(250, EDS), 'nothing before the backoff');
    const again = await c.next(EDS, 3000);
    assert.ok(Date.now() - t0 >= 380, `after the backoff (${Date.now() - t0} ms)`);
    assert.deepEqual([names(again), again.removed], [names(rejected), rejected.removed], 'the same answer again, whole');
    c.ack(again);
    assert.ok(await c.quiet(600, EDS), 'once ACKed, nothing more');
  });

  it('rule 5: a NACK of an earlier response still in flight counts, though a later one was sent since', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.ack(await c.next(EDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.2', 80]] }));
    const first = await c.next(EDS);
    ads.cache.set(id, meshSet({ web: [['10.0.0.2', 80], ['10.0.0.3', 80]] }));
    const second = await c.next(EDS);
    // The proxy answers both in order: it rejected the first, so it may not hold what the second built on.
    c.nack(first, 'endpoints rejected');
    c.ack(second);
    const again = await c.next(EDS, 3000);
    assert.deepEqual(names(again), ['web'], 'sent again whole after the backoff');
    assert.equal(ads.server.status.get(id)!.types.EDS!.lastNack?.message, 'endpoints rejected');
  });

  it('rule 8: a removal held back for pending routes still goes out when the snapshot returns to the clusters the proxy had', async () => {
    const id = nodeId();
    const a = () => meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] });
    // Another proxy holds the same clusters, so going back to them gives this proxy the very map it had.
    ads.cache.set(nodeId(), a());
    ads.cache.set(id, a());
    const c = connect(id);
    c.delta({ type_url: CDS });
    c.ack(await c.next(CDS));
    c.delta({ type_url: LDS });
    c.ack(await c.next(LDS));
    // A cluster added and one gone, with new listeners: api's removal waits for them (rule 8).
    const b = meshSet({ web: [['10.0.0.1', 80]], extra: [['10.0.0.3', 80]] }, 'web');
    b[LDS] = [listener('http', 8081, 'http-routes')];
    ads.cache.set(id, b);
    const added = await c.next(CDS);
    assert.deepEqual([names(added), added.removed], [['extra'], []], 'api is kept while the listeners are in flight');
    await c.next(LDS);
    // Back to the first snapshot before the proxy took those listeners: it holds extra, which must go.
    ads.cache.set(id, a());
    const back = await c.next(LDS);
    c.ack(back);
    const removal = await c.next(CDS);
    assert.deepEqual([names(removal), removal.removed], [[], ['extra']]);
  });

  it('rule 13: a named subscription gets only what it names; a name subscribed later comes alone', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.ack(await c.next(EDS));
    // A new service appears (as after a mesh-wide change): its endpoints exist but are not subscribed yet.
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    assert.ok(await c.quiet(200, EDS), 'nothing unsubscribed is sent');
    c.delta({ type_url: EDS, resource_names_subscribe: ['api'] });
    const r = await c.next(EDS);
    assert.deepEqual([names(r), r.removed], [['api'], []]);
    c.ack(r);
    ads.cache.set(id, meshSet({ web: [['10.0.0.9', 80]], api: [['10.0.0.2', 80]] }));
    assert.deepEqual(names(await c.next(EDS)), ['web'], 'later changes still arrive');
  });

  it('rules 8 and 16: a big response comes in pieces with nonces of their own, in order, removals last', async () => {
    const id = nodeId();
    ads.cache.set(id, bigSet(400));
    const c = connect(id);
    c.delta({ type_url: CDS });
    c.delta({ type_url: LDS });
    const got: Received[] = [];
    const seen = new Set<string>();
    while (seen.size < 800) {
      const r = await c.next();
      got.push(r);
      for (const x of r.resources) {
        assert.ok(!seen.has(x.name), `${x.name} sent twice`);
        seen.add(x.name);
      }
    }
    assert.ok(got.length > 2, `${got.length} responses`);
    assert.equal(new Set(got.map((r) => r.nonce)).size, got.length, 'a nonce each');
    const order = got.map((r) => r.typeUrl);
    assert.deepEqual(order, [...order].sort((a, b) => (a === CDS ? 0 : 1) - (b === CDS ? 0 : 1)), 'every cluster before any listener');
    for (const r of got) c.ack(r);
    assert.ok(await c.quiet(200), 'nothing more');
    // Half the listeners go, new ones come: removals ride with the last piece only.
    const next = bigSet(400, 'd');
    next[CDS] = bigSet(400)[CDS];
    next[EDS] = bigSet(400)[EDS];
    ads.cache.set(id, next);
    const pieces = [];
    let removed: string[] = [];
    while (removed.length === 0) {
      const r = await c.next(LDS);
      pieces.push(r);
      removed = r.removed;
    }
    assert.ok(pieces.length > 1);
    assert.equal(pieces.flatMap((r) => r.resources).length, 400, 'all new listeners before the removals');
    assert.equal(removed.length, 400);
  });

  it('rules 4 and 5: only the last piece ACKs the response; a rejected piece is a NACK and the last ACK does not undo it', async () => {
    const id = nodeId();
    ads.cache.set(id, bigSet(400));
    const c = connect(id);
    c.delta({ type_url: LDS });
    const status = () => ads.server.status.get(id)!.types.LDS!;
    const stale = async () => Number(/weft_xds_ignored_requests_total\{reason="stale_nonce"\} (\d+)/.exec(await ads.metrics.metrics())?.[1] ?? 0);
    const staleBefore = await stale();
    const first = await c.next(LDS);
    c.ack(first);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(status().acks, 0, 'one piece acknowledged is not the response');
    for (const r of await restOf(c, first, 400)) c.ack(r);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(status().acks, 1, 'acknowledged with the last piece');
    assert.equal(status().lastAckedVersion, status().lastSentVersion);
    assert.equal(await stale(), staleBefore, "the pieces' ACKs are not stale");

    ads.cache.set(id, bigSet(400, 'e'));
    const a = await c.next(LDS);
    c.nack(a, 'listener rejected');
    for (const r of await restOf(c, a, 400)) c.ack(r);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(status().lastNack?.message, 'listener rejected');
    assert.equal(status().acks, 1, 'not acknowledged: part of it was rejected');
    assert.notEqual(status().lastAckedVersion, status().lastSentVersion);
  });

  it('rule 5: a response rejected in two of its pieces counts once: it is sent again after the first backoff', async () => {
    const id = nodeId();
    ads.cache.set(id, bigSet(400));
    const c = connect(id);
    c.delta({ type_url: LDS });
    const first = await c.next(LDS);
    const rest = await restOf(c, first, 400);
    assert.ok(rest.length > 0, 'in pieces');
    const t = Date.now();
    c.nack(first, 'listener rejected');
    for (const r of rest.slice(0, -1)) c.ack(r);
    c.nack(rest.at(-1)!, 'listener rejected');
    const retry = await c.next(LDS, 5000);
    const ms = Date.now() - t;
    assert.ok(ms >= 380 && ms < 700, `after the backoff (400 ms), not twice it: ${ms} ms`);
    assert.deepEqual(names(retry).slice(0, 3), names(first).slice(0, 3), 'the listeners again, whole');
    assert.equal(ads.server.status.get(id)!.types.LDS!.nacks, 1, 'one response rejected, one NACK recorded');
  });

  it('rules 13 and 17: a named subscription is not told of removals of names it never subscribed', async () => {
    const id = nodeId();
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const c = connect(id);
    c.delta({ type_url: EDS, resource_names_subscribe: ['web'] });
    c.ack(await c.next(EDS));
    c.delta({ type_url: LDS });
    c.ack(await c.next(LDS));
    // A change elsewhere makes the stream look at EDS again while its map is the same.
    const relisten = meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] });
    relisten[LDS] = [listener('http', 8081, 'http-routes')];
    ads.cache.set(id, relisten);
    c.ack(await c.next(LDS));
    ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
    c.ack(await c.next(LDS));
    assert.ok(await c.quiet(200, EDS), 'api was never subscribed: nothing to remove');
    ads.cache.set(id, meshSet({ web: [['10.0.0.9', 80]] }));
    const r = await c.next(EDS);
    assert.deepEqual([names(r), r.removed], [['web'], []]);
  });
});

describe('ADS delta responses: cut only over 1 MiB, over TLS too', () => {
  for (const tls of [false, true]) {
    it(`${tls ? 'TLS' : 'plaintext'}: a big LDS response comes whole`, async (t) => {
      const m = tls ? await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 }) : undefined;
      const credentials = m ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false) : undefined;
      const ads = await startTestAds({ credentials });
      t.after(() => ads.stop());
      ads.cache.set('default.big', bigSet(400));
      const c = new XdsTestClient(ads.address, 'delta', { id: 'default.big' }, m ? { tlsCa: m.certPem } : {});
      t.after(() => c.close());
      c.delta({ type_url: LDS });
      assert.equal((await c.next(LDS)).resources.length, 400);
    });
  }

  it('a TLS stream that closes with a response still being written gives back the send budget it held', async (t) => {
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const ads = await startTestAds({ credentials: grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false) });
    t.after(() => ads.stop());
    const inFlight = async () => Number(/^weft_xds_send_bytes_in_flight (\S+)/m.exec(await ads.metrics.metrics())?.[1]);
    ads.cache.set('default.big', bigSet(1500));
    const c = new XdsTestClient(ads.address, 'delta', { id: 'default.big' }, { tlsCa: m.certPem });
    c.delta({ type_url: CDS });
    await c.next(CDS);
    // Its LDS, about 400 KB, goes out 16 KiB at a time, each write after the last has finished.
    c.delta({ type_url: LDS });
    for (let i = 0; i < 100 && (await inFlight()) === 0; i++) await new Promise((r) => setImmediate(r));
    assert.ok((await inFlight()) > 0, 'the LDS response is being written');
    c.close();
    for (let i = 0; i < 50 && (await inFlight()) !== 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(await inFlight(), 0);
  });
});

nackRunTests('delta');

describe('ADS delta: what a client leaves unanswered is bounded', () => {
  const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };
  const five = ['a', 'b', 'c', 'd', 'e'];
  /** The config with the clusters of `names` only, each with one endpoint. */
  const setOf = (names: string[]) => meshSet(Object.fromEntries(names.map((x) => [x, [['10.0.0.1', 80]] as [string, number][]])));

  let now = 0;
  function open(cache: SnapshotCache) {
    const sent: DeltaDiscoveryResponse[] = [];
    const s = new AdsStream({ variant: 'delta', cache, identity: { kind: 'unauthenticated' }, controlPlaneId: 'test', nackBackoffMs: 1000, hooks, sentSinceAckKept: 2, now: () => now, send: (r) => sent.push(r as DeltaDiscoveryResponse) });
    return { s, sent };
  }

  it('rules 5 and 20: past the bound of removals left unanswered, a NACK ends the stream with UNAVAILABLE, and the client back naming what it holds has them removed', () => {
    const cache = new SnapshotCache();
    const id = 'default.unanswered';
    cache.set(id, setOf(five));
    const { s, sent } = open(cache);
    s.handle({ node: { id }, type_url: EDS, resource_names_subscribe: five });
    const held = Object.fromEntries(sent[0]!.resources.map((r) => [r.name, r.version]));
    s.handle({ type_url: EDS, response_nonce: sent[0]!.nonce });
    // Three removals, each in a response the client leaves unanswered: one more than the stream lists.
    for (let i = 1; i <= 3; i++) cache.set(id, setOf(five.slice(i)));
    assert.deepEqual(sent.slice(1).map((r) => r.removed_resources), [['a'], ['b'], ['c']]);
    assert.throws(
      () => s.handle({ type_url: EDS, response_nonce: sent[1]!.nonce, error_detail: { code: 3, message: 'rejected' } }),
      (err: unknown) => err instanceof StreamError && err.grpcCode === GRPC_UNAVAILABLE && /more than 2 removals were left unanswered: reconnect/.test(err.message),
    );
    s.close();
    // It rejected them, so it holds what it held before; back on a new stream it names that.
    const back = open(cache);
    back.s.handle({ node: { id }, type_url: EDS, resource_names_subscribe: five, initial_resource_versions: held });
    // Rule 8: the removals wait for the routes it holds, which this client never names: 1 s on
    // the stream's timer, and, with a clock moved by hand as here, until 2 s have passed.
    assert.equal(back.sent.length, 0);
    now += 2001;
    back.s.handle({ type_url: EDS, response_nonce: 'none of ours' });
    assert.deepEqual(back.sent.map((r) => [r.resources.length, [...r.removed_resources].sort()]), [[0, ['a', 'b', 'c']]]);
    back.s.close();
  });

  it('rule 5: within the bound, or once an ACK has cleared what was unanswered, a NACK leaves the stream open', () => {
    const cache = new SnapshotCache();
    /** A stream subscribed to five clusters' endpoints, its first response ACKed, then `removals` of them in as many responses left unanswered. */
    const removing = (id: string, removals: number) => {
      cache.set(id, setOf(five));
      const { s, sent } = open(cache);
      s.handle({ node: { id }, type_url: EDS, resource_names_subscribe: five });
      s.handle({ type_url: EDS, response_nonce: sent[0]!.nonce });
      for (let i = 1; i <= removals; i++) cache.set(id, setOf(five.slice(i)));
      assert.equal(sent.length, removals + 1);
      return { s, sent };
    };
    const nack = (s: AdsStream, r: DeltaDiscoveryResponse) => s.handle({ type_url: EDS, response_nonce: r.nonce, error_detail: { code: 3, message: 'rejected' } });
    // Two removals unanswered: as many as the stream lists.
    const within = removing('default.within', 2);
    nack(within.s, within.sent[2]!);
    within.s.close();
    // Three, then answered in order, the last with an ACK: nothing is left unanswered.
    const acked = removing('default.acked', 3);
    for (const r of acked.sent.slice(1)) acked.s.handle({ type_url: EDS, response_nonce: r.nonce });
    cache.set('default.acked', setOf(['e']));
    assert.deepEqual(acked.sent[4]?.removed_resources, ['d']);
    nack(acked.s, acked.sent[4]!);
    acked.s.close();
  });
});
