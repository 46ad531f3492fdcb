import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { Reconciler, SnapshotCache, TypeUrl } from '../../src/ads/index.js';
import { createLogger, defaultRegistry } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { generateProxyConfig, type MeshContext, type ResourceSet } from '../../src/xds/index.js';
import { dataplaneInput, meshInput } from '../helpers/fixtures.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('reconciler', () => {
  let dir: string;
  let store: Store;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-rec-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
    await store.create(meshInput('a'));
    await store.create(meshInput('b'));
    // Both reach every service of their mesh (transparent proxy), so any Dataplane change affects them.
    const reachingAll = (mesh: string, name: string) => ({ ...dataplaneInput(mesh, name), spec: { networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }], transparentProxying: {} } } });
    await store.create(reachingAll('a', 'dp-a'));
    await store.create(reachingAll('b', 'dp-b'));
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function setup(debounceMs: number, debounceMaxMs: number, generate: (ctx: MeshContext) => ResourceSet = generateProxyConfig, lingerMs = 0) {
    const calls: string[] = [];
    const cache = new SnapshotCache();
    const metrics = new Registry();
    const r = new Reconciler({
      store,
      cache,
      logger: createLogger('test', 'silent'),
      metrics,
      debounceMs,
      debounceMaxMs,
      lingerMs,
      generate: (ctx) => {
        calls.push(`${ctx.mesh.name}.${ctx.dataplane.name}`);
        return generate(ctx);
      },
    });
    r.start();
    return { r, cache, calls, metrics };
  }

  it('rule 23: a burst of changes is debounced into one regeneration', async () => {
    const { r, calls } = setup(80, 1000);
    r.track('a.dp-a');
    await r.settle();
    assert.deepEqual(calls, ['a.dp-a'], 'generated at once on connect');
    for (let i = 0; i < 20; i++) await store.upsert(dataplaneInput('a', `burst-${i}`, { service: 'api' }));
    await sleep(30);
    assert.equal(calls.length, 1, 'nothing during the burst');
    await sleep(150);
    assert.deepEqual(calls, ['a.dp-a', 'a.dp-a'], 'one regeneration after it');
    r.close();
  });

  it('rule 23: a change stream that never pauses still regenerates within the maximum wait', async () => {
    const { r, calls } = setup(100, 250);
    r.track('a.dp-a');
    await r.settle();
    const t0 = Date.now();
    while (calls.length < 2 && Date.now() - t0 < 1500) {
      await store.upsert(dataplaneInput('a', 'flapping', { port: 1000 + (Date.now() % 1000) }));
      await sleep(30);
    }
    assert.equal(calls.length, 2);
    assert.ok(Date.now() - t0 < 600, `regenerated within the max wait (${Date.now() - t0} ms)`);
    r.close();
  });

  it('regenerates only connected proxies of the mesh a change touched', async () => {
    const { r, calls } = setup(10, 100);
    r.track('a.dp-a');
    r.track('b.dp-b');
    await r.settle();
    calls.length = 0;
    await store.upsert(dataplaneInput('b', 'new-in-b', { service: 'db' }));
    await sleep(60);
    await r.settle();
    assert.deepEqual(calls, ['b.dp-b']);
    r.close();
  });

  it('regenerates only the proxies a Dataplane change can affect', async () => {
    await store.create(meshInput('c'));
    const withOutbound = (name: string, service: string, calls: string) => ({ ...dataplaneInput('c', name, { service }), spec: { networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': service } }], outbound: [{ port: 9000, tags: { 'kuma.io/service': calls } }] } } });
    await store.create(withOutbound('calls-api', 'web', 'api'));
    await store.create(withOutbound('calls-db', 'worker', 'db'));
    await store.create({ ...dataplaneInput('c', 'reaches-all', { service: 'gw' }), spec: { networking: { address: '10.0.0.2', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'gw' } }], transparentProxying: {} } } });
    await store.create(dataplaneInput('c', 'api-1', { service: 'api' }));
    const { r, calls } = setup(10, 100);
    for (const n of ['calls-api', 'calls-db', 'reaches-all', 'api-1']) r.track(`c.${n}`);
    await r.settle();
    calls.length = 0;
    await store.upsert(dataplaneInput('c', 'api-2', { service: 'api' })); // a new endpoint of api
    await sleep(40);
    await r.settle();
    assert.deepEqual(calls.sort(), ['c.calls-api', 'c.reaches-all']);
    calls.length = 0;
    await store.upsert(dataplaneInput('c', 'api-1', { service: 'api', port: 9999 })); // a tracked proxy changes itself
    await sleep(40);
    await r.settle();
    assert.deepEqual(calls.sort(), ['c.api-1', 'c.calls-api', 'c.reaches-all']);
    calls.length = 0;
    await store.upsert({ type: 'TrafficPermission', mesh: 'c', name: 'tp', labels: {}, spec: { sources: [{ match: { 'kuma.io/service': '*' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] } });
    await sleep(40);
    await r.settle();
    assert.equal(calls.length, 4, 'a policy change regenerates every proxy of the mesh');
    r.close();
  });

  it('drops the snapshot of a proxy whose last stream closed, and rebuilds it when it returns', async () => {
    const { r, cache, calls } = setup(10, 100);
    r.track('a.dp-a');
    r.track('a.dp-a'); // a second stream of the same proxy
    await r.settle();
    r.untrack('a.dp-a');
    assert.ok(cache.get('a.dp-a'), 'kept while one stream remains');
    r.untrack('a.dp-a');
    assert.equal(cache.get('a.dp-a'), undefined);
    r.track('a.dp-a');
    await r.settle();
    assert.ok(cache.get('a.dp-a'));
    assert.equal(calls.length, 2);
    r.close();
  });

  it('keeps a departed proxy\'s snapshot current for lingerMs, answers its return from it, then drops it', async () => {
    const { r, cache, calls, metrics } = setup(10, 100, generateProxyConfig, 1500);
    const metric = async (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(await metrics.metrics())?.[1]);
    r.track('a.dp-a');
    await r.settle();
    const before = cache.get('a.dp-a')!;
    r.untrack('a.dp-a');
    assert.equal(cache.get('a.dp-a'), before, 'kept after its last stream closed');
    assert.equal(await metric('weft_xds_lingering_proxies'), 1);
    // A change while it is away: its snapshot follows.
    await store.upsert(dataplaneInput('a', 'while-away', { service: 'while-away' }));
    await sleep(40);
    await r.settle();
    assert.deepEqual(calls, ['a.dp-a', 'a.dp-a'], 'regenerated while away');
    const current = cache.get('a.dp-a')!;
    assert.notEqual(current.version, before.version);
    assert.ok(current.resources.get(TypeUrl.Cluster)!.has('while-away'));
    // Back within the linger: no new translation, and the kept snapshot stays.
    r.track('a.dp-a');
    await r.settle();
    assert.equal(calls.length, 2, 'answered from the kept snapshot');
    assert.equal(cache.get('a.dp-a'), current);
    assert.equal(await metric('weft_xds_proxies_returned_total'), 1);
    assert.equal(await metric('weft_xds_lingering_proxies'), 0);
    // Gone for longer than the linger: dropped, then translated anew when it returns.
    r.untrack('a.dp-a');
    const left = Date.now();
    assert.ok(cache.get('a.dp-a'), 'kept for a new linger when it leaves again');
    while (cache.get('a.dp-a') && Date.now() - left < 5000) await sleep(50);
    assert.equal(cache.get('a.dp-a'), undefined, 'dropped after the linger');
    assert.ok(Date.now() - left >= 1400, `not before the linger (${Date.now() - left} ms)`);
    assert.equal(await metric('weft_xds_lingering_proxies'), 0);
    await store.upsert(dataplaneInput('a', 'while-gone', { service: 'while-gone' }));
    await sleep(40);
    await r.settle();
    assert.equal(calls.length, 2, 'not regenerated once dropped');
    r.track('a.dp-a');
    await r.settle();
    assert.equal(calls.length, 3);
    assert.ok(cache.get('a.dp-a')!.resources.get(TypeUrl.Cluster)!.has('while-gone'));
    assert.equal(await metric('weft_xds_proxies_returned_total'), 1);
    await store.delete({ type: 'Dataplane', mesh: 'a', name: 'while-away' });
    await store.delete({ type: 'Dataplane', mesh: 'a', name: 'while-gone' });
    r.close();
  });

  it('does not publish config that fails its checks; the proxy keeps its last good snapshot', async () => {
    let broken = false;
    const { r, cache, metrics } = setup(10, 100, (ctx) => {
      const set = generateProxyConfig(ctx);
      return broken ? { ...set, [TypeUrl.ClusterLoadAssignment]: [{ cluster_name: 'orphan', endpoints: [] }] } : set;
    });
    r.track('a.dp-a');
    await r.settle();
    const good = cache.get('a.dp-a')!;
    broken = true;
    await store.upsert(dataplaneInput('a', 'trigger', { service: 'web' }));
    await sleep(50);
    await r.settle();
    assert.equal(cache.get('a.dp-a'), good);
    assert.match(await metrics.metrics(), /weft_xds_generation_failures_total [1-9]/);
    r.close();
  });
});
