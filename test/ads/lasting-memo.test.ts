import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { buildSnapshot, Reconciler, ResourceEncoder, SnapshotCache } from '../../src/ads/index.js';
import { createLogger, defaultRegistry, type DataplaneSpec, type MeshSpec, type MeshTrafficPermissionBody, type Resource, type ResourceInput, type TrafficPermissionSpec } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { generateProxyConfig, PROXYLESS_LABEL } from '../../src/xds/index.js';
import { meshInput } from '../helpers/fixtures.js';

const MESH = 'lm';

/**
 * The reconciler keeps translation's memo across rounds (`LastingMemo`): a proxy whose Dataplane,
 * Mesh and policies are the same objects as last round gets last round's listener objects. This
 * checks that against translation from scratch after every step of a sequence of changes to
 * exactly those inputs: policies, a Dataplane's tags, the mesh's mTLS mode, protocols.
 */
describe('reconciler: translation memo kept across rounds', () => {
  let dir: string;
  let store: Store;
  let bundle = ['-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n'];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-lasting-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const dp = (name: string, service: string, address: string, opts: { ready?: boolean; protocol?: string; proxyless?: boolean; tags?: Record<string, string> } = {}): ResourceInput => ({
    type: 'Dataplane',
    mesh: MESH,
    name,
    labels: opts.proxyless ? { [PROXYLESS_LABEL]: 'true' } : ({} as Record<string, string>),
    spec: {
      networking: {
        address,
        inbound: [{ port: 8080, tags: { 'kuma.io/service': service, 'kuma.io/protocol': opts.protocol ?? 'http', ...opts.tags }, ...(opts.ready === false ? { health: { ready: false } } : {}) }],
        ...(opts.proxyless ? {} : { transparentProxying: {} }),
      },
    },
  });
  const mesh = (mode?: 'STRICT' | 'PERMISSIVE') => meshInput(MESH, mode ? { mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin', mode }] } } : {});
  const mtp = (name: string, targetRef: Record<string, unknown>, action: string): ResourceInput => ({
    type: 'MeshTrafficPermission',
    mesh: MESH,
    name,
    labels: {},
    spec: { spec: { targetRef, from: [{ targetRef: { kind: 'MeshService', name: 'web' }, default: { action } }] } },
  });

  async function expectFromScratch(cache: SnapshotCache, ids: string[], step: string): Promise<void> {
    const m = (await store.get({ type: 'Mesh', mesh: '', name: MESH })) as Resource<MeshSpec>;
    const list = async <T>(type: string) => (await store.list(type, { mesh: MESH })).items as Resource<T>[];
    const dataplanes = await list<DataplaneSpec>('Dataplane');
    const trafficPermissions = await list<TrafficPermissionSpec>('TrafficPermission');
    const meshTrafficPermissions = await list<MeshTrafficPermissionBody>('MeshTrafficPermission');
    for (const id of ids) {
      const dataplane = dataplanes.find((d) => `${MESH}.${d.name}` === id)!;
      const full = generateProxyConfig({ mesh: m, dataplane, dataplanes, trafficPermissions, meshTrafficPermissions, trustBundle: m.spec.mtls?.enabledBackend ? bundle : [] });
      assert.equal(cache.get(id)?.version, buildSnapshot(new ResourceEncoder(), id, full).version, `${id} after ${step}`);
    }
  }

  it('through policy, tag, mTLS mode, trust bundle and protocol changes', async () => {
    await store.create(mesh('STRICT'));
    await store.write([
      { op: 'upsert', resource: dp('web-1', 'web', '10.2.0.1') },
      { op: 'upsert', resource: dp('web-2', 'web', '10.2.0.2') },
      { op: 'upsert', resource: dp('api-1', 'api', '10.2.0.3', { protocol: 'tcp' }) },
      { op: 'upsert', resource: dp('grpc-1', 'grpc', '10.2.0.4', { protocol: 'grpc', proxyless: true }) },
    ]);
    const cache = new SnapshotCache();
    const rec = new Reconciler({ store, cache, logger: createLogger('test', 'silent'), metrics: new Registry(), debounceMs: 0, debounceMaxMs: 0, trustBundle: async () => bundle });
    rec.start();
    const ids = ['web-1', 'web-2', 'api-1', 'grpc-1'].map((n) => `${MESH}.${n}`);
    ids.forEach((id) => rec.track(id));
    await rec.settle();
    await expectFromScratch(cache, ids, 'connecting');

    const steps: [string, () => Promise<unknown>][] = [
      ['a policy for api', () => store.upsert(mtp('api-from-web', { kind: 'MeshService', name: 'api' }, 'Deny'))],
      ['an endpoint change', () => store.upsert(dp('web-2', 'web', '10.2.0.2', { ready: false }))],
      ['a policy for one Dataplane', () => store.upsert(mtp('web-1-only', { kind: 'Dataplane', name: 'web-1' }, 'Deny'))],
      ['web-1 tags changed', () => store.upsert(dp('web-1', 'web', '10.2.0.1', { tags: { version: 'v2' } }))],
      ['web-1 address changed', () => store.upsert(dp('web-1', 'web', '10.2.0.11', { tags: { version: 'v2' } }))],
      ['the policy for api flipped', () => store.upsert(mtp('api-from-web', { kind: 'MeshService', name: 'api' }, 'Allow'))],
      ['mTLS PERMISSIVE', () => store.upsert(mesh('PERMISSIVE'))],
      ['outbound passthrough off (a Mesh change that leaves mTLS alone)', () => store.upsert(meshInput(MESH, { ...(mesh('PERMISSIVE').spec as MeshSpec), networking: { outbound: { passthrough: false } } }))],
      [
        'passthrough on again, with a Dataplane change in the same round',
        () =>
          store.write([
            { op: 'upsert', resource: mesh('PERMISSIVE') },
            { op: 'upsert', resource: dp('api-1', 'api', '10.2.0.33', { protocol: 'tcp' }) },
          ]),
      ],
      [
        'a policy and a Dataplane in the same round',
        () =>
          store.write([
            { op: 'upsert', resource: mtp('web-1-only', { kind: 'Dataplane', name: 'web-1' }, 'Allow') },
            { op: 'upsert', resource: dp('web-2', 'web', '10.2.0.2') },
          ]),
      ],
      [
        'a new trust bundle with a mesh change',
        () => {
          bundle = [...bundle, '-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n'];
          return store.upsert(mesh('STRICT'));
        },
      ],
      ['api becomes http', () => store.upsert(dp('api-1', 'api', '10.2.0.3', { protocol: 'http' }))],
      ['the Dataplane policy deleted', () => store.delete({ type: 'MeshTrafficPermission', mesh: MESH, name: 'web-1-only' })],
      ['mTLS off', () => store.upsert(mesh())],
    ];
    for (const [step, change] of steps) {
      await change();
      await new Promise((r) => setTimeout(r, 5));
      await rec.settle();
      await expectFromScratch(cache, ids, step);
    }
    rec.close();
  });

  it('a Mesh or policy change hands translation the unchanged Dataplanes and lists as the same objects', async () => {
    type Inputs = { dataplane: object; dataplanes: object; services: object | undefined; mtps: object; tps: object; mesh: object };
    let round: Inputs[] = [];
    const cache = new SnapshotCache();
    const rec = new Reconciler({
      store,
      cache,
      logger: createLogger('test', 'silent'),
      metrics: new Registry(),
      debounceMs: 0,
      debounceMaxMs: 0,
      trustBundle: async () => bundle,
      generate: (ctx) => {
        round.push({ dataplane: ctx.dataplane, dataplanes: ctx.dataplanes, services: ctx.services, mtps: ctx.meshTrafficPermissions, tps: ctx.trafficPermissions, mesh: ctx.mesh });
        return generateProxyConfig(ctx);
      },
    });
    rec.start();
    const ids = ['web-1', 'web-2', 'api-1'].map((n) => `${MESH}.${n}`);
    ids.forEach((id) => rec.track(id));
    const step = async (change: () => Promise<unknown>) => {
      round = [];
      await change();
      await new Promise((r) => setTimeout(r, 5));
      await rec.settle();
      return round;
    };
    const first = await step(async () => {});
    assert.equal(first.length, 3);
    const byDp = (r: Inputs[], name: string) => r.find((x) => (x.dataplane as Resource<DataplaneSpec>).name === name)!;

    // The Mesh changed (not its mTLS): every proxy regenerated, from the same Dataplane objects,
    // the same list of them (so the same services), and the same policy lists.
    const current = (await store.get({ type: 'Mesh', mesh: '', name: MESH })) as Resource<MeshSpec>;
    const meshChange = await step(() => store.upsert(meshInput(MESH, { ...current.spec, networking: { outbound: { passthrough: false } } })));
    assert.equal(meshChange.length, 3);
    for (const name of ['web-1', 'web-2', 'api-1']) {
      const [a, b] = [byDp(first, name), byDp(meshChange, name)];
      assert.equal(b.dataplane, a.dataplane, `${name}: the same Dataplane object`);
      assert.equal(b.dataplanes, a.dataplanes, `${name}: the same list of Dataplanes`);
      assert.equal(b.services, a.services, `${name}: the same services`);
      assert.equal(b.mtps, a.mtps, `${name}: the same MeshTrafficPermissions`);
      assert.equal(b.tps, a.tps, `${name}: the same TrafficPermissions`);
      assert.notEqual(b.mesh, a.mesh, `${name}: the new Mesh`);
    }

    // A policy and a Dataplane in one round: the changed Dataplane and the policy list are new,
    // the other Dataplanes and the Mesh are the objects of the round before.
    const mixed = await step(() =>
      store.write([
        { op: 'upsert', resource: mtp('web-2-only', { kind: 'Dataplane', name: 'web-2' }, 'Deny') },
        { op: 'upsert', resource: dp('api-1', 'api', '10.2.0.34', { protocol: 'tcp' }) },
      ]),
    );
    assert.equal(mixed.length, 3);
    assert.notEqual(byDp(mixed, 'api-1').dataplane, byDp(meshChange, 'api-1').dataplane, 'api-1 changed: a new object');
    assert.equal((byDp(mixed, 'api-1').dataplane as Resource<DataplaneSpec>).spec.networking.address, '10.2.0.34');
    assert.equal(byDp(mixed, 'web-1').dataplane, byDp(meshChange, 'web-1').dataplane, 'web-1 unchanged: the same object');
    assert.notEqual(byDp(mixed, 'web-1').dataplanes, byDp(meshChange, 'web-1').dataplanes, 'a Dataplane changed: a new list');
    assert.notEqual(byDp(mixed, 'web-1').mtps, byDp(meshChange, 'web-1').mtps, 'a policy changed: a new list');
    assert.equal(byDp(mixed, 'web-1').mesh, byDp(meshChange, 'web-1').mesh, 'the Mesh unchanged: the same object');
    await expectFromScratch(cache, ids, 'a policy and a Dataplane together');
    rec.close();
  });
});
