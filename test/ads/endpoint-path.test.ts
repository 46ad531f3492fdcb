import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { buildSnapshot, Reconciler, ResourceEncoder, SnapshotCache } from '../../src/ads/index.js';
import { createLogger, defaultRegistry, type DataplaneSpec, type MeshSpec, type Resource, type ResourceInput } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { generateProxyConfig, PROXYLESS_LABEL } from '../../src/xds/index.js';
import { meshInput } from '../helpers/fixtures.js';

/**
 * When only endpoints change, the reconciler reuses each proxy's last config with new
 * ClusterLoadAssignments instead of translating it again. This checks that shortcut against the
 * real thing: after every step of a sequence of changes, each proxy's snapshot must equal a full
 * translation of the store as it is then (versions are content hashes).
 */
describe('reconciler: endpoint-only rounds equal full translation', () => {
  let dir: string;
  let store: Store;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-eps-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const dp = (name: string, service: string, address: string, opts: { ready?: boolean; port?: number; protocol?: string; proxyless?: boolean; reach?: string[]; direct?: string[] } = {}): ResourceInput => ({
    type: 'Dataplane',
    mesh: 'eps',
    name,
    labels: opts.proxyless ? { [PROXYLESS_LABEL]: 'true' } : ({} as Record<string, string>),
    spec: {
      networking: {
        address,
        inbound: [{ port: opts.port ?? 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': opts.protocol ?? 'http' }, ...(opts.ready === false ? { health: { ready: false } } : {}) }],
        ...(opts.proxyless ? {} : { transparentProxying: { ...(opts.reach ? { reachableServices: opts.reach } : {}), ...(opts.direct ? { directAccessServices: opts.direct } : {}) } }),
      },
    },
  });

  async function expectFullEquivalence(cache: SnapshotCache, ids: string[], step: string): Promise<void> {
    const mesh = (await store.get({ type: 'Mesh', mesh: '', name: 'eps' })) as Resource<MeshSpec>;
    const dataplanes = (await store.list('Dataplane', { mesh: 'eps' })).items as Resource<DataplaneSpec>[];
    for (const id of ids) {
      const dataplane = dataplanes.find((d) => `eps.${d.name}` === id)!;
      const full = generateProxyConfig({ mesh, dataplane, dataplanes, trafficPermissions: [], meshTrafficPermissions: [], trustBundle: [] });
      assert.equal(cache.get(id)?.version, buildSnapshot(new ResourceEncoder(), id, full).version, `${id} after ${step}`);
    }
  }

  it('through health flips, moves, new replicas, new services and port changes', async () => {
    await store.create(meshInput('eps', {}));
    await store.write([
      { op: 'upsert', resource: dp('web-1', 'web', '10.1.0.1') },
      { op: 'upsert', resource: dp('web-2', 'web', '10.1.0.2') },
      { op: 'upsert', resource: dp('api-1', 'api', '10.1.0.3', { protocol: 'tcp', port: 9000 }) },
      { op: 'upsert', resource: dp('grpc-1', 'grpc', '10.1.0.4', { protocol: 'grpc', proxyless: true, port: 7000 }) },
      { op: 'upsert', resource: dp('narrow-1', 'narrow', '10.1.0.5', { reach: ['api'] }) },
      // Reaches api only, but calls web's Dataplanes by address: web's changes are its too.
      { op: 'upsert', resource: dp('direct-1', 'direct', '10.1.0.8', { reach: ['api'], direct: ['web'] }) },
    ]);
    const cache = new SnapshotCache();
    const metrics = new Registry();
    const rec = new Reconciler({ store, cache, logger: createLogger('test', 'silent'), metrics, debounceMs: 0, debounceMaxMs: 0 });
    rec.start();
    const ids = ['web-1', 'web-2', 'api-1', 'grpc-1', 'narrow-1', 'direct-1'].map((n) => `eps.${n}`);
    ids.forEach((id) => rec.track(id));
    await rec.settle();
    await expectFullEquivalence(cache, ids, 'connecting');

    const steps: [string, () => Promise<unknown>][] = [
      ['web-2 not ready', () => store.upsert(dp('web-2', 'web', '10.1.0.2', { ready: false }))],
      ['web-2 ready again', () => store.upsert(dp('web-2', 'web', '10.1.0.2'))],
      ['api-1 moved', () => store.upsert(dp('api-1', 'api', '10.1.0.33', { protocol: 'tcp', port: 9000 }))],
      ['a new replica of web (untracked)', () => store.upsert(dp('web-3', 'web', '10.1.0.6'))],
      ['the last replica of api not ready', () => store.upsert(dp('api-1', 'api', '10.1.0.33', { protocol: 'tcp', port: 9000, ready: false }))],
      ['a new service', () => store.upsert(dp('db-1', 'db', '10.1.0.7', { protocol: 'tcp', port: 5432 }))],
      ['a port change', () => store.upsert(dp('web-3', 'web', '10.1.0.6', { port: 8081 }))],
      ['a replica deleted', () => store.delete({ type: 'Dataplane', mesh: 'eps', name: 'web-3' })],
      ['two changes in one round', () => Promise.all([store.upsert(dp('web-1', 'web', '10.1.0.11')), store.upsert(dp('api-1', 'api', '10.1.0.33', { protocol: 'tcp', port: 9000 }))])],
    ];
    for (const [step, change] of steps) {
      await change();
      await new Promise((r) => setTimeout(r, 5));
      await rec.settle();
      await expectFullEquivalence(cache, ids, step);
    }
    const counts = Object.fromEntries((await metrics.getSingleMetric('weft_xds_proxy_regenerations_total')!.get()).values.map((v) => [v.labels.kind, v.value]));
    assert.ok((counts.endpoints ?? 0) >= 10, `the endpoint-only path was taken (${JSON.stringify(counts)})`);
    assert.ok((counts.full ?? 0) >= ids.length * 2, 'and full translation where the services changed');
    rec.close();
  });

  it('a proxy connecting between a change and its round does not hide the change from that round', async () => {
    // api-9 stops providing "api" and provides "db"; before the change's round runs, a proxy
    // connects and its round reads the mesh with the change in it. The change's round must still
    // see that "api" lost an endpoint, or proxies reaching only "api" would keep api-9 for ever.
    await store.write([
      { op: 'upsert', resource: dp('api-9', 'api', '10.1.9.1', { protocol: 'tcp', port: 9000 }) },
      { op: 'upsert', resource: dp('api-8', 'api', '10.1.9.2', { protocol: 'tcp', port: 9000 }) },
      { op: 'upsert', resource: dp('db-9', 'db', '10.1.9.3', { protocol: 'tcp', port: 5432 }) },
      { op: 'upsert', resource: dp('narrow-9', 'narrow', '10.1.9.4', { reach: ['api'] }) },
      { op: 'upsert', resource: dp('late-9', 'late', '10.1.9.5', { reach: ['db'] }) },
    ]);
    const cache = new SnapshotCache();
    const rec = new Reconciler({ store, cache, logger: createLogger('test', 'silent'), metrics: new Registry(), debounceMs: 10_000, debounceMaxMs: 10_000 });
    rec.start();
    rec.track('eps.narrow-9');
    await rec.settle();
    await expectFullEquivalence(cache, ['eps.narrow-9'], 'connecting');
    await store.upsert(dp('api-9', 'db', '10.1.9.1', { protocol: 'tcp', port: 5432 }));
    await new Promise((r) => setTimeout(r, 20)); // the change is marked, its round waits for the debounce
    rec.track('eps.late-9'); // its round runs now, while the change's round waits
    while (!cache.get('eps.late-9')) await new Promise((r) => setTimeout(r, 5));
    await rec.settle();
    await expectFullEquivalence(cache, ['eps.narrow-9', 'eps.late-9'], 'a service change with a proxy connecting before its round');
    rec.close();
  });
  it('a proxy with direct access takes the endpoint-only path while the Dataplanes keep their names and addresses', async () => {
    // Direct access listeners name other Dataplanes' addresses: a health flip leaves them as they
    // are, a move or a new Dataplane does not.
    await store.write([
      { op: 'upsert', resource: dp('dx-1', 'dx', '10.1.7.1') },
      { op: 'upsert', resource: dp('da-1', 'da', '10.1.7.9', { reach: ['dx'], direct: ['*'] }) },
    ]);
    const cache = new SnapshotCache();
    const metrics = new Registry();
    const rec = new Reconciler({ store, cache, logger: createLogger('test', 'silent'), metrics, debounceMs: 0, debounceMaxMs: 0 });
    rec.start();
    rec.track('eps.da-1');
    await rec.settle();
    const kinds = async () => Object.fromEntries((await metrics.getSingleMetric('weft_xds_proxy_regenerations_total')!.get()).values.map((v) => [v.labels.kind, v.value]));
    const steps: [string, () => Promise<unknown>, 'endpoints' | 'full'][] = [
      ['dx-1 not ready', () => store.upsert(dp('dx-1', 'dx', '10.1.7.1', { ready: false })), 'endpoints'],
      ['dx-1 ready again', () => store.upsert(dp('dx-1', 'dx', '10.1.7.1')), 'endpoints'],
      ['dx-1 moved', () => store.upsert(dp('dx-1', 'dx', '10.1.7.11')), 'full'],
      ['a new Dataplane of dx', () => store.upsert(dp('dx-2', 'dx', '10.1.7.2')), 'full'],
      ['dx-2 not ready', () => store.upsert(dp('dx-2', 'dx', '10.1.7.2', { ready: false })), 'endpoints'],
      ['dx-2 deleted', () => store.delete({ type: 'Dataplane', mesh: 'eps', name: 'dx-2' }), 'full'],
    ];
    for (const [step, change, kind] of steps) {
      const before = await kinds();
      await change();
      await new Promise((r) => setTimeout(r, 5));
      await rec.settle();
      await expectFullEquivalence(cache, ['eps.da-1'], step);
      const after = await kinds();
      const diff = { endpoints: (after.endpoints ?? 0) - (before.endpoints ?? 0), full: (after.full ?? 0) - (before.full ?? 0) };
      assert.deepEqual(diff, { endpoints: kind === 'endpoints' ? 1 : 0, full: kind === 'full' ? 1 : 0 }, `${step}: da-1's round`);
    }
    rec.close();
  });
});
