import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AdsStream, buildSnapshot, InconsistentSnapshotError, messageType, ResourceEncoder, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { SendBudget } from '../../src/ads/budget.js';
import type { DeltaDiscoveryResponse } from '../../src/ads/stream.js';
import { SplitMap } from '../../src/ads/cache.js';
import { PRE_ENCODED, responseSerializer, withEncoded } from '../../src/ads/wire.js';
import { joinShared, type ResourceSet } from '../../src/xds/index.js';
import { cla, cluster, listener, meshSet, route } from '../helpers/xds-fixtures.js';

const L = TypeUrl.Listener;

/** Two routes used by the shared listeners, plus whatever `own` listeners a proxy has. */
function proxySet(shared: readonly Record<string, unknown>[], own: Record<string, unknown>[], routes = ['r1', 'r2']): ResourceSet {
  return {
    [TypeUrl.Cluster]: [cluster('web')],
    [TypeUrl.ClusterLoadAssignment]: [cla('web', [['10.0.0.1', 80]])],
    [L]: joinShared(shared, own),
    [TypeUrl.RouteConfiguration]: routes.map((r) => route(r, 'web')),
  };
}

function refusal(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InconsistentSnapshotError, String(err));
    return err.problems.map((p) => `${p.name}: ${p.message}`).sort();
  }
  assert.fail('expected the snapshot to be refused');
}

describe('shared parts of a type (joinShared)', () => {
  const shared = [listener('vip-1', 81, 'r1'), listener('vip-2', 82, 'r2')];

  it('proxies with the same shared part hold one shared map; each has its own part', () => {
    const cache = new SnapshotCache();
    const a = cache.set('m.a', proxySet(shared, [listener('inbound-a', 8080, 'r1')])).snapshot.resources.get(L)!;
    const b = cache.set('m.b', proxySet(shared, [listener('inbound-b', 8080, 'r2')])).snapshot.resources.get(L)!;
    assert.ok(a instanceof SplitMap && b instanceof SplitMap);
    assert.equal(a.shared, b.shared, 'one map for the shared listeners');
    assert.notEqual(a.own, b.own);
    assert.deepEqual([...a.keys()], ['vip-1', 'vip-2', 'inbound-a']);
    assert.equal(a.get('inbound-a')?.name, 'inbound-a');
    assert.equal(a.get('inbound-b'), undefined);
    assert.equal(a.size, 3);
  });

  it('the same content built again from new objects is the same type set, so the snapshot is unchanged', () => {
    const cache = new SnapshotCache();
    const first = cache.set('m.a', proxySet(shared, [listener('inbound-a', 8080, 'r1')]));
    const copy = structuredClone(shared);
    const again = cache.set('m.a', proxySet(copy, [listener('inbound-a', 8080, 'r1')]));
    assert.equal(again.changed, false);
    assert.equal(again.snapshot, first.snapshot);
    const moved = cache.set('m.a', proxySet(copy, [listener('inbound-a', 9090, 'r1')]));
    assert.equal(moved.changed, true, 'a change in the own part changes the snapshot');
    assert.notEqual(moved.snapshot.typeVersions.get(L), first.snapshot.typeVersions.get(L));
    assert.equal((moved.snapshot.resources.get(L) as SplitMap).shared, (first.snapshot.resources.get(L) as SplitMap).shared);
  });

  it('a name in both parts is a duplicate', () => {
    assert.deepEqual(
      refusal(() => buildSnapshot(new ResourceEncoder(), 'm.a', proxySet(shared, [listener('vip-1', 9999, 'r1')]))),
      ['vip-1: duplicate name in one snapshot'],
    );
  });

  it('references are checked across the parts: a route used by the own part only is used; one used by neither is not', () => {
    const own = [listener('inbound', 8080, 'r3')];
    buildSnapshot(new ResourceEncoder(), 'm.a', proxySet(shared, own, ['r1', 'r2', 'r3']));
    assert.deepEqual(refusal(() => buildSnapshot(new ResourceEncoder(), 'm.a', proxySet(shared, own, ['r1', 'r2', 'r3', 'r4']))), ['r4: is not used by any LDS resource']);
    assert.deepEqual(refusal(() => buildSnapshot(new ResourceEncoder(), 'm.a', proxySet(shared, [listener('inbound', 8080, 'nope')]))), [
      'inbound: refers to RouteConfiguration "nope", which the snapshot lacks',
    ]);
  });

  it('entries are dropped when no snapshot holds them any more', () => {
    const cache = new SnapshotCache();
    cache.set('m.a', proxySet(shared, [listener('inbound-a', 8080, 'r1')]));
    cache.set('m.b', proxySet(shared, [listener('inbound-b', 8080, 'r1')]));
    const held = cache.encoder.size;
    cache.delete('m.a');
    assert.equal(cache.encoder.size, held - 1, 'only inbound-a went');
    cache.delete('m.b');
    assert.equal(cache.encoder.size, 0);
  });
});

describe('responses spliced from pre-encoded resources', () => {
  const cache = new SnapshotCache();
  const snap = cache.set('m.a', proxySet([listener('vip-1', 81, 'r1'), listener('vip-2', 82, 'r2')], [])).snapshot;
  const resources = [...snap.resources.get(L)!.values()];

  for (const variant of ['DeltaDiscoveryResponse', 'DiscoveryResponse'] as const) {
    it(`${variant}: decodes to exactly what protobufjs encodes for the same object`, () => {
      const delta = variant === 'DeltaDiscoveryResponse';
      const obj = delta
        ? { system_version_info: snap.version, resources: resources.map((r) => ({ name: r.name, version: r.version, resource: { type_url: L, value: r.bytes } })), type_url: L, removed_resources: ['gone'], nonce: 'n-1', control_plane: { identifier: 'cp-1' } }
        : { version_info: 'v1', resources: resources.map((r) => ({ type_url: L, value: r.bytes })), type_url: L, nonce: 'n-1', control_plane: { identifier: 'cp-1' } };
      const type = messageType(`envoy.service.discovery.v3.${variant}`);
      const serialize = responseSerializer(`envoy.service.discovery.v3.${variant}`);
      const plain = serialize(obj);
      const { resources: _plain, ...head } = obj;
      const marked = withEncoded<typeof obj>(head, resources, (r) => obj.resources.find((x) => ('name' in x ? x.name === r.name : x.value === r.bytes))!);
      assert.ok(marked[PRE_ENCODED], 'marked');
      assert.deepEqual(marked.resources, obj.resources, 'the plain resources, built when read');
      const spliced = serialize(marked);
      assert.notDeepEqual(spliced, plain, 'field order differs, so the bytes differ...');
      const decode = (b: Buffer) => type.toObject(type.decode(b), { longs: String, bytes: Buffer });
      assert.deepEqual(decode(spliced), decode(plain), '...but the message is the same');
      assert.equal((decode(spliced).resources as unknown[]).length, 2);
    });
  }
});

describe('streams over shared parts and the send budget', () => {
  const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };
  /** `text`: the resources' bytes as Latin-1, to look for a string field's value in. */
  type Sent = { node: string; type: string; names: string[]; removed: readonly string[]; nonce: string; bytes: number; text: string };

  /** A delta stream on its own account of `budget`; `written(x)` is the transport having written `x`. */
  function stream(cache: SnapshotCache, node: string, sent: Sent[], budget?: SendBudget) {
    const account = budget?.account();
    const s = new AdsStream({
      variant: 'delta',
      cache,
      identity: { kind: 'unauthenticated' },
      controlPlaneId: 'test',
      nackBackoffMs: 1000,
      hooks,
      budget: account,
      send: (r, bytes) => {
        account?.charge(bytes); // as the server does, until gRPC has written it
        const d = r as DeltaDiscoveryResponse;
        const text = d.resources.map((x) => Buffer.from(x.resource!.value as Uint8Array).toString('latin1')).join('');
        sent.push({ node, type: d.type_url, names: d.resources.map((x) => x.name), removed: d.removed_resources, nonce: d.nonce, bytes, text });
      },
    });
    return { s, account, ack: (x: Sent) => s.handle({ type_url: x.type, response_nonce: x.nonce }), written: (x: Sent) => account!.written(x.bytes) };
  }

  it('a delta stream holding split listeners gets only what changed in either part', () => {
    const cache = new SnapshotCache();
    const sent: Sent[] = [];
    const shared = [listener('vip-1', 81, 'r1'), listener('vip-2', 82, 'r2')];
    cache.set('m.a', proxySet(shared, [listener('inbound', 8080, 'r1')]));
    const { s, ack } = stream(cache, 'm.a', sent);
    s.handle({ node: { id: 'm.a' }, type_url: L });
    assert.deepEqual(sent.pop()!.names.sort(), ['inbound', 'vip-1', 'vip-2']);
    s.handle({ type_url: L, response_nonce: s.id + '-1' });
    cache.set('m.a', proxySet(structuredClone(shared), [listener('inbound', 9090, 'r1')]));
    let r = sent.pop()!;
    assert.deepEqual([r.names, r.removed], [['inbound'], []], 'own part changed');
    ack(r);
    cache.set('m.a', proxySet([shared[0]!, listener('vip-3', 83, 'r2')], [listener('inbound', 9090, 'r1')]));
    r = sent.pop()!;
    assert.deepEqual([r.names, r.removed], [['vip-3'], ['vip-2']], 'shared part changed');
    ack(r);
    cache.set('m.a', proxySet([shared[0]!, listener('vip-3', 83, 'r2')], []));
    r = sent.pop()!;
    assert.deepEqual([r.names, r.removed], [[], ['inbound']], 'own part emptied');
    s.close();
  });

  it('while the budget is spent, streams wait their turn in order and keep CDS before EDS (rule 8)', () => {
    const cache = new SnapshotCache();
    const budget = new SendBudget(1);
    const sent: Sent[] = [];
    for (const n of ['m.a', 'm.b']) cache.set(n, proxySet([listener('vip-1', 81, 'r1'), listener('vip-2', 82, 'r2')], []));
    const a = stream(cache, 'm.a', sent, budget);
    const b = stream(cache, 'm.b', sent, budget);
    a.s.handle({ node: { id: 'm.a' }, type_url: TypeUrl.Cluster });
    assert.equal(sent.length, 1);
    assert.equal(budget.open, false);
    a.s.handle({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: ['web'] });
    b.s.handle({ node: { id: 'm.b' }, type_url: TypeUrl.Cluster });
    assert.equal(sent.length, 1, 'both wait');
    // a waits for its clusters to be written, b for the budget.
    assert.equal(budget.streamsWaiting, 1);
    assert.equal(budget.streamsWriting, 1);
    a.written(sent[0]!);
    assert.equal(sent.length, 2, 'the stream waiting for the budget goes first...');
    assert.deepEqual([sent[1]!.node, sent[1]!.type], ['m.b', TypeUrl.Cluster]);
    assert.equal(budget.streamsWaiting, 1, '...and spent it again, so a, its own writes done, waits its turn behind it');
    b.written(sent[1]!);
    assert.deepEqual([sent[2]!.node, sent[2]!.type], ['m.a', TypeUrl.ClusterLoadAssignment]);
    b.s.close();
    assert.equal(budget.streamsWaiting, 0);
    a.s.close();
  });

  /**
   * Stream m.a sends its clusters and is then cut short by the spent budget, before its endpoints:
   * the budget has room for the clusters and 10 bytes more, and holds 20 bytes of another stream's.
   */
  function cutTurn() {
    const set = proxySet([listener('vip-1', 81, 'r1')], [], ['r1']);
    const sent: Sent[] = [];
    // The size of the clusters' response, from a stream with no budget.
    const sizing = new SnapshotCache();
    sizing.set('m.x', set);
    stream(sizing, 'm.x', sent).s.handle({ node: { id: 'm.x' }, type_url: TypeUrl.Cluster });
    const budget = new SendBudget(sent.pop()!.bytes + 10);
    budget.charge(20);
    const cache = new SnapshotCache();
    const a = stream(cache, 'm.a', sent, budget);
    // Subscribed to both before its config comes, so that one turn sends both.
    a.s.handle({ node: { id: 'm.a' }, type_url: TypeUrl.Cluster });
    a.s.handle({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: ['web'] });
    cache.set('m.a', set);
    assert.deepEqual(sent.map((x) => x.type), [TypeUrl.Cluster], 'the clusters went, then the budget was spent');
    assert.equal(budget.streamsWaiting, 1);
    return { a, budget, sent };
  }

  it('a turn the spent budget cut short goes on when the budget opens, though what it sent before the cut is not yet written', () => {
    const { a, budget, sent } = cutTurn();
    budget.refund(20); // the other stream's bytes are written
    assert.deepEqual(sent.map((x) => x.type), [TypeUrl.Cluster, TypeUrl.ClusterLoadAssignment], 'the rest of the turn, its clusters still unwritten');
    assert.equal(budget.streamsWriting, 1);
    for (const x of sent) a.written(x);
    assert.deepEqual([budget.bytesInFlight, budget.streamsWriting], [0, 0]);
    a.s.close();
  });

  it('a cut turn that its own write lets go on: counted once among the streams writing, and nothing left charged', () => {
    const { a, budget, sent } = cutTurn();
    // The other stream's 20 bytes stay: the budget opens when a's clusters are written.
    a.written(sent[0]!);
    assert.deepEqual(sent.map((x) => x.type), [TypeUrl.Cluster, TypeUrl.ClusterLoadAssignment], 'the rest of the turn, once the budget opened');
    assert.equal(budget.streamsWriting, 1, 'one stream, one count');
    a.written(sent[1]!);
    assert.deepEqual([budget.bytesInFlight, budget.streamsWriting], [20, 0]);
    a.s.close();
  });

  it('a stream whose last response is not yet written sends nothing more; the changes made meanwhile go out as one once it is, while other streams go on', () => {
    const cache = new SnapshotCache();
    const budget = new SendBudget(1024 * 1024);
    const sent: Sent[] = [];
    const at = (ip: string) => meshSet({ web: [[ip, 80]] });
    for (const n of ['m.slow', 'm.fast']) cache.set(n, at('10.0.0.1'));
    const slow = stream(cache, 'm.slow', sent, budget);
    const fast = stream(cache, 'm.fast', sent, budget);
    for (const [x, n] of [[slow, 'm.slow'], [fast, 'm.fast']] as const) x.s.handle({ node: { id: n }, type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: ['web'] });
    const [first, fastFirst] = sent.splice(0);
    fast.written(fastFirst!);
    fast.ack(fastFirst!);
    // The slow proxy's first response stays unwritten (its connection takes nothing) through three changes.
    for (const ip of ['10.0.0.2', '10.0.0.3', '10.0.0.4']) {
      cache.set('m.slow', at(ip));
      cache.set('m.fast', at(ip));
      const out = sent.splice(0);
      assert.deepEqual(out.map((x) => x.node), ['m.fast'], `${ip}: the fast proxy is sent it, the slow one nothing`);
      fast.written(out[0]!);
      fast.ack(out[0]!);
    }
    assert.equal(budget.bytesInFlight, first!.bytes, 'the slow stream holds one response, not one per change');
    assert.equal(budget.streamsWriting, 1);
    assert.deepEqual(slow.account?.unwritten?.bytes, first!.bytes);
    slow.written(first!);
    const out = sent.splice(0);
    assert.deepEqual(out.map((x) => [x.node, x.type]), [['m.slow', TypeUrl.ClusterLoadAssignment]], 'once written: one response...');
    assert.ok(out[0]!.text.includes('10.0.0.4'), '...with the latest endpoints');
    assert.equal(slow.account?.unwritten?.bytes, out[0]!.bytes);
    // Written at once from now on: each change goes out as it comes.
    slow.written(out[0]!);
    slow.ack(out[0]!);
    assert.equal(slow.account?.unwritten, undefined);
    assert.equal(budget.streamsWriting, 0);
    cache.set('m.slow', at('10.0.0.5'));
    assert.deepEqual(sent.splice(0).map((x) => x.node), ['m.slow']);
    slow.s.close();
    fast.s.close();
  });
});

describe('subscriptions shared between streams', () => {
  it('equal name sets share one set; names that only join to the same text do not', async () => {
    const { internNames } = await import('../../src/ads/stream.js');
    const others = Array.from({ length: 31 }, (_, i) => `x${String(i).padStart(2, '0')}`);
    const first = internNames(new Set([...others, 'a']));
    assert.equal(internNames(new Set(['a', ...others].reverse())), first, 'the same names in another order: the same set');
    // A client picks its names: "a\nb" must not make another stream's {"a", "b"} resolve to its set.
    const crafted = internNames(new Set([...others, 'a\nb']));
    const honest = internNames(new Set([...others, 'a', 'b']));
    assert.notEqual(honest, crafted);
    assert.deepEqual([...honest].sort(), [...others, 'a', 'b'].sort());
  });

  it('the same delta change to the same set gives the same set, and its content is the change applied', async () => {
    const { changedNames, internNames } = await import('../../src/ads/stream.js');
    const base = internNames(new Set(Array.from({ length: 40 }, (_, i) => `svc-${i}`)));
    const grown = changedNames(base, ['svc-new'], []);
    assert.equal(grown.size, 41);
    assert.ok(grown.has('svc-new') && !base.has('svc-new'), 'a new set; the old one is not changed');
    assert.equal(changedNames(base, ['svc-new'], []), grown, 'another stream making the same change shares the result');
    assert.deepEqual([...changedNames(base, ['svc-new', '*'], ['svc-0'])].sort(), [...grown].filter((n) => n !== 'svc-0').sort(), 'added, then removed; "*" is not a name');
    assert.deepEqual([...changedNames(base, ['svc-1'], ['svc-1'])].sort(), [...base].filter((n) => n !== 'svc-1').sort(), 'removal comes after addition');
    assert.notEqual(changedNames(base, ['svc-other'], []), grown, 'another change, another set');
  });
});
