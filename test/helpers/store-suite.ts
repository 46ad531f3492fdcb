import assert from 'node:assert/strict';
import { describe, it, before, after } from 'node:test';
import { isWeftError, type ErrorCode } from '../../src/core/index.js';
import type { ChangeEvent, Store } from '../../src/store/index.js';
import { dataplaneInput, meshInput } from './fixtures.js';

export async function rejectsWith(p: Promise<unknown>, code: ErrorCode, index?: number): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isWeftError(err), `expected a WeftError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (index !== undefined) assert.equal(err.index, index);
    return true;
  });
}

/** Collects change events until `n` have arrived or the timeout passes. */
export function collect(store: Store, n: number, timeoutMs = 3000): Promise<ChangeEvent[]> {
  const got: ChangeEvent[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`got ${got.length} of ${n} events: ${JSON.stringify(got)}`));
    }, timeoutMs);
    const off = store.watch((e) => {
      got.push(e);
      if (got.length === n) {
        clearTimeout(timer);
        off();
        resolve(got);
      }
    });
  });
}

/**
 * The behaviour every store engine must have. Each engine's test file runs it with a factory
 * that returns a fresh, empty store.
 */
export function storeConformance(engine: string, open: () => Promise<Store>): void {
  describe(`store conformance: ${engine}`, () => {
    let store: Store;
    before(async () => {
      store = await open();
    });
    after(async () => {
      await store.close();
    });

    it('creates, gets, updates and deletes with increasing versions', async () => {
      await store.create(meshInput('crud'));
      const created = await store.create(dataplaneInput('crud', 'dp-1'));
      assert.equal(created.name, 'dp-1');
      assert.equal(created.mesh, 'crud');
      assert.equal(created.creationTime, created.modificationTime);
      const got = await store.get({ type: 'Dataplane', mesh: 'crud', name: 'dp-1' });
      assert.deepEqual(got, created);
      const updated = await store.update(dataplaneInput('crud', 'dp-1', { port: 9090 }), created.version);
      assert.ok(BigInt(updated.version) > BigInt(created.version));
      assert.equal(updated.creationTime, created.creationTime);
      assert.equal((updated.spec as { networking: { inbound: { port: number }[] } }).networking.inbound[0]!.port, 9090);
      await store.delete({ type: 'Dataplane', mesh: 'crud', name: 'dp-1' });
      assert.equal(await store.get({ type: 'Dataplane', mesh: 'crud', name: 'dp-1' }), undefined);
    });

    it('refuses a create of an existing resource and an update of a missing one', async () => {
      await store.create(meshInput('dups'));
      await rejectsWith(store.create(meshInput('dups')), 'already_exists');
      await rejectsWith(store.update(dataplaneInput('dups', 'ghost')), 'not_found');
      await rejectsWith(store.delete({ type: 'Dataplane', mesh: 'dups', name: 'ghost' }), 'not_found');
    });

    it('refuses an update based on a stale version (optimistic concurrency)', async () => {
      await store.create(meshInput('occ'));
      const v1 = await store.create(dataplaneInput('occ', 'dp'));
      await store.update(dataplaneInput('occ', 'dp', { port: 1111 }), v1.version);
      await rejectsWith(store.update(dataplaneInput('occ', 'dp', { port: 2222 }), v1.version), 'version_conflict');
      await rejectsWith(store.delete({ type: 'Dataplane', mesh: 'occ', name: 'dp' }, v1.version), 'version_conflict');
      const now = await store.get({ type: 'Dataplane', mesh: 'occ', name: 'dp' });
      assert.equal((now!.spec as { networking: { inbound: { port: number }[] } }).networking.inbound[0]!.port, 1111);
    });

    it('lets exactly one of many concurrent updates from the same version win', async () => {
      await store.create(meshInput('race'));
      const base = await store.create(dataplaneInput('race', 'dp'));
      const attempts = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => store.update(dataplaneInput('race', 'dp', { port: 2000 + i }), base.version)));
      assert.equal(attempts.filter((a) => a.status === 'fulfilled').length, 1);
      for (const a of attempts) if (a.status === 'rejected') assert.ok(isWeftError(a.reason, 'version_conflict'));
    });

    it('refuses a resource in a mesh that does not exist and stores nothing', async () => {
      await rejectsWith(store.create(dataplaneInput('nowhere', 'dp')), 'mesh_not_found');
      assert.equal((await store.list('Dataplane', { mesh: 'nowhere' })).total, 0);
    });

    it('upsert reports created, updated and unchanged, and unchanged keeps the version', async () => {
      const a = await store.upsert(meshInput('ups'));
      assert.equal(a.outcome, 'created');
      const b = await store.upsert(meshInput('ups'));
      assert.equal(b.outcome, 'unchanged');
      assert.equal(b.resource!.version, a.resource!.version);
      const c = await store.upsert(meshInput('ups', { networking: { outbound: { passthrough: false } } }));
      assert.equal(c.outcome, 'updated');
      assert.notEqual(c.resource!.version, a.resource!.version);
    });

    it('applies a batch atomically: one failing op leaves nothing written', async () => {
      await rejectsWith(
        store.write([
          { op: 'create', resource: meshInput('atomic') },
          { op: 'create', resource: dataplaneInput('atomic', 'dp-1') },
          { op: 'create', resource: dataplaneInput('missing-mesh', 'dp-2') },
        ]),
        'mesh_not_found',
        2,
      );
      assert.equal(await store.get({ type: 'Mesh', mesh: '', name: 'atomic' }), undefined);
      const ok = await store.write([
        { op: 'create', resource: meshInput('atomic') },
        { op: 'upsert', resource: dataplaneInput('atomic', 'dp-1') },
      ]);
      assert.deepEqual(ok.map((r) => r.outcome), ['created', 'created']);
    });

    it('dry run validates everything and writes nothing', async () => {
      const res = await store.write([{ op: 'create', resource: meshInput('dry') }, { op: 'create', resource: dataplaneInput('dry', 'dp') }], { dryRun: true });
      assert.deepEqual(res.map((r) => r.outcome), ['created', 'created']);
      assert.equal(await store.get({ type: 'Mesh', mesh: '', name: 'dry' }), undefined);
      await rejectsWith(store.write([{ op: 'create', resource: dataplaneInput('dry', 'dp') }], { dryRun: true }), 'mesh_not_found');
    });

    it('deleting a mesh deletes everything in it', async () => {
      await store.create(meshInput('doomed'));
      await store.create(dataplaneInput('doomed', 'a'));
      await store.create(dataplaneInput('doomed', 'b'));
      await store.create(meshInput('survivor'));
      await store.create(dataplaneInput('survivor', 'a'));
      await store.delete({ type: 'Mesh', mesh: '', name: 'doomed' });
      assert.equal((await store.list('Dataplane', { mesh: 'doomed' })).total, 0);
      assert.equal((await store.list('Dataplane', { mesh: 'survivor' })).total, 1);
    });

    it('lists with mesh, tag and name filters, and pages through results in order', async () => {
      await store.create(meshInput('paging'));
      for (let i = 0; i < 7; i++) {
        await store.create(dataplaneInput('paging', `dp-${i}`, { service: i % 2 === 0 ? 'even' : 'odd', tags: { zone: i < 3 ? 'a' : 'b' } }));
      }
      const even = await store.list('Dataplane', { mesh: 'paging', tags: { 'kuma.io/service': 'even' } });
      assert.deepEqual(even.items.map((r) => r.name), ['dp-0', 'dp-2', 'dp-4', 'dp-6']);
      const evenB = await store.list('Dataplane', { mesh: 'paging', tags: { 'kuma.io/service': 'even', zone: 'b' } });
      assert.deepEqual(evenB.items.map((r) => r.name), ['dp-4', 'dp-6']);
      assert.deepEqual((await store.list('Dataplane', { mesh: 'paging', nameContains: '-3' })).items.map((r) => r.name), ['dp-3']);
      const names: string[] = [];
      let after: string | undefined;
      let pages = 0;
      do {
        const page = await store.list('Dataplane', { mesh: 'paging', limit: 3, after });
        assert.equal(page.total, 7);
        names.push(...page.items.map((r) => r.name));
        after = page.next;
        pages++;
      } while (after);
      assert.equal(pages, 3);
      assert.deepEqual(names, ['dp-0', 'dp-1', 'dp-2', 'dp-3', 'dp-4', 'dp-5', 'dp-6']);
      await rejectsWith(store.list('Dataplane', { after: 'garbage!' }), 'invalid_resource');
    });

    it('tells watchers about every committed change, and nothing about failed or dry-run writes', async () => {
      const events = collect(store, 3);
      await store.create(meshInput('watched'));
      await rejectsWith(store.create(meshInput('watched')), 'already_exists');
      await store.write([{ op: 'create', resource: dataplaneInput('watched', 'ghost') }], { dryRun: true });
      await store.create(dataplaneInput('watched', 'dp'));
      await store.delete({ type: 'Dataplane', mesh: 'watched', name: 'dp' });
      const got = await events;
      assert.deepEqual(
        got.map((e) => (e.kind === 'resync' ? 'resync' : `${e.kind} ${e.key.type}/${e.key.name}`)),
        ['create Mesh/watched', 'create Dataplane/dp', 'delete Dataplane/dp'],
      );
      const revs = got.map((e) => (e.kind === 'resync' ? 0n : BigInt(e.revision)));
      assert.ok(revs[0]! < revs[1]! && revs[1]! < revs[2]!, 'revisions increase');
    });

    it('a throwing watcher does not break writes or other watchers', async () => {
      const off = store.watch(() => {
        throw new Error('bad watcher');
      });
      const events = collect(store, 1);
      await store.create(meshInput('robust'));
      assert.equal((await events).length, 1);
      off();
    });
  });
}
