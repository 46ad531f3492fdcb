import assert from 'node:assert/strict';
import { describe, it, before, after } from 'node:test';
import { isWeftError, type ErrorCode } from '../../src/core/index.js';
import type { ChangeEvent, Store, WriteOp, WriteResult } from '../../src/store/index.js';
import { dataplaneInput, meshInput } from './fixtures.js';
import { seeded } from './seeded.js';

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

    it('random histories of writes: every read agrees with a model of what was acknowledged, and watchers see each change once, in order', async () => {
      const fresh = await open();
      try {
        await randomHistory(fresh, Number(process.env.WEFT_STORE_HISTORY_SEED ?? 1), Number(process.env.WEFT_STORE_HISTORY_OPS ?? 300));
      } finally {
        await fresh.close();
      }
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

type Key = { type: string; mesh: string; name: string };
type Held = { version: string; spec: string; labels: string };

const keyText = (k: Key) => `${k.type}/${k.mesh}/${k.name}`;

/**
 * A seeded random history against a store, checked after every write against a model: creates,
 * updates, upserts and deletes, alone or in batches (all or nothing, some dry runs), with expected
 * versions right, stale or absent, over two meshes that are deleted (taking their contents) and
 * made again. The model knows what each write must do (outcome, or error code and index); the
 * store's answers, every resource read back, lists whole and paged, and the change events must
 * agree with it. Versions must increase with every change.
 */
async function randomHistory(store: Store, seed: number, steps: number): Promise<void> {
  const rnd = seeded(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const MESHES = ['hist-1', 'hist-2'];
  const NAMES = ['a', 'b', 'c'];
  const keys: Key[] = [...MESHES.map((m) => ({ type: 'Mesh', mesh: '', name: m })), ...MESHES.flatMap((m) => NAMES.map((n) => ({ type: 'Dataplane', mesh: m, name: n })))];
  let model = new Map<string, Held>();
  const expectedEvents: string[] = [];
  const seen: ChangeEvent[] = [];
  const off = store.watch((e) => seen.push(e));
  let lastVersion = 0n;

  const input = (k: Key) =>
    k.type === 'Mesh'
      ? meshInput(k.name, pick([{}, { networking: { outbound: { passthrough: false } } }]))
      : { ...dataplaneInput(k.mesh, k.name, { port: pick([8080, 9090]), service: pick(['web', 'api']) }), labels: pick<Record<string, string>>([{}, { team: 'x' }]) };
  const versionFor = (k: Key) => {
    const held = model.get(keyText(k));
    const r = rnd();
    if (r < 0.5) return undefined;
    if (r < 0.8 && held) return held.version;
    return pick(['1', '999999', held ? String(BigInt(held.version) + 1n) : '2']);
  };
  const randomOp = (): WriteOp => {
    const k = pick(keys);
    const r = rnd();
    if (r < 0.3) return { op: 'create', resource: input(k) };
    if (r < 0.5) return { op: 'update', resource: input(k), expectedVersion: versionFor(k) };
    if (r < 0.75) return { op: 'upsert', resource: input(k), expectedVersion: versionFor(k) };
    return { op: 'delete', key: k, expectedVersion: versionFor(k) };
  };

  /** What the ops must do to `before`: the state after, outcomes and events, or the error. */
  const simulate = (ops: readonly WriteOp[], before: Map<string, Held>) => {
    const state = new Map(before);
    const outcomes: string[] = [];
    const events: string[] = [];
    for (const [index, op] of ops.entries()) {
      const k: Key = op.op === 'delete' ? op.key : op.resource;
      const held = state.get(keyText(k));
      const fail = (code: string) => ({ error: { code, index: ops.length > 1 ? index : undefined } });
      const content = (o: { resource: { spec: unknown; labels: unknown } }) => ({ spec: JSON.stringify(o.resource.spec), labels: JSON.stringify(o.resource.labels) });
      if (op.op === 'delete') {
        if (!held) return fail('not_found');
        if (op.expectedVersion !== undefined && op.expectedVersion !== held.version) return fail('version_conflict');
        if (k.type === 'Mesh') {
          const inside = [...state.keys()].filter((t) => t.startsWith(`Dataplane/${k.name}/`)).sort();
          for (const t of inside) {
            state.delete(t);
            events.push(`delete ${t}`);
          }
        }
        state.delete(keyText(k));
        events.push(`delete ${keyText(k)}`);
        outcomes.push('deleted');
        continue;
      }
      const create = () => {
        if (k.mesh !== '' && !state.has(`Mesh//${k.mesh}`)) return false;
        state.set(keyText(k), { version: '?', ...content(op) });
        events.push(`create ${keyText(k)}`);
        outcomes.push('created');
        return true;
      };
      if (op.op === 'create') {
        if (held) return fail('already_exists');
        if (!create()) return fail('mesh_not_found');
        continue;
      }
      if (!held) {
        if (op.op === 'update' || op.expectedVersion !== undefined) return fail('not_found');
        if (!create()) return fail('mesh_not_found');
        continue;
      }
      if (op.expectedVersion !== undefined && op.expectedVersion !== held.version) return fail('version_conflict');
      const next = content(op);
      if (next.spec === held.spec && next.labels === held.labels) {
        outcomes.push('unchanged');
        continue;
      }
      state.set(keyText(k), { version: '?', ...next });
      events.push(`update ${keyText(k)}`);
      outcomes.push('updated');
    }
    return { state, outcomes, events };
  };

  for (let step = 0; step < steps; step++) {
    const ops = Array.from({ length: rnd() < 0.7 ? 1 : 2 + Math.floor(rnd() * 3) }, randomOp);
    const dryRun = ops.length > 1 && rnd() < 0.2;
    const what = `seed ${seed} step ${step}: ${JSON.stringify(ops.map((o) => [o.op, keyText(o.op === 'delete' ? o.key : o.resource), o.op === 'create' ? '' : (o.expectedVersion ?? '')]))}${dryRun ? ' (dry run)' : ''}`;
    const want = simulate(ops, model);
    let results: WriteResult[] | undefined;
    let error: { code: string; index?: number } | undefined;
    try {
      const only = ops[0]!;
      results = ops.length === 1 ? await single(store, only, model.get(keyText(only.op === 'delete' ? only.key : only.resource))?.version) : await store.write(ops, { dryRun });
    } catch (err) {
      assert.ok(isWeftError(err), `${what}: ${String(err)}`);
      error = { code: err.code, index: err.index };
    }
    if ('error' in want) {
      assert.deepEqual(error, want.error, what);
      continue;
    }
    assert.equal(error, undefined, `${what}: ${JSON.stringify(error)}`);
    assert.deepEqual(results!.map((r) => r.outcome), want.outcomes, what);
    if (dryRun) continue;
    // The versions the store gave: each change a new one, above every earlier one; an unchanged
    // write keeps the version it found (perhaps given earlier in the same batch).
    const versions = new Map([...model].map(([k, h]) => [k, h.version]));
    for (const [i, r] of results!.entries()) {
      const k = keyText(r.key);
      if (r.outcome === 'deleted') {
        versions.delete(k);
        continue;
      }
      if (r.outcome === 'unchanged') {
        assert.equal(r.resource!.version, versions.get(k), `${what}: op ${i} unchanged keeps its version`);
        continue;
      }
      const v = BigInt(r.resource!.version);
      assert.ok(v > lastVersion, `${what}: op ${i} got version ${v}, not above ${lastVersion}`);
      lastVersion = v;
      versions.set(k, r.resource!.version);
    }
    for (const [k, held] of want.state) want.state.set(k, { ...held, version: versions.get(k)! });
    model = want.state;
    expectedEvents.push(...want.events);
    // Every key reads back as the model has it; lists, whole and paged, give the model's names.
    for (const k of keys) {
      const got = await store.get(k);
      const held = model.get(keyText(k));
      assert.deepEqual(got && { version: got.version, spec: JSON.stringify(got.spec), labels: JSON.stringify(got.labels) }, held, `${what}: read ${keyText(k)}`);
    }
    for (const mesh of MESHES) {
      const names = NAMES.filter((n) => model.has(`Dataplane/${mesh}/${n}`));
      assert.deepEqual((await store.list('Dataplane', { mesh })).items.map((r) => r.name), names, `${what}: list ${mesh}`);
      const paged: string[] = [];
      let after: string | undefined;
      do {
        const page = await store.list('Dataplane', { mesh, limit: 1, after });
        paged.push(...page.items.map((r) => r.name));
        after = page.next;
      } while (after);
      assert.deepEqual(paged, names, `${what}: paged list ${mesh}`);
    }
    assert.deepEqual((await store.list('Mesh')).items.map((r) => r.name).filter((n) => MESHES.includes(n)), MESHES.filter((m) => model.has(`Mesh//${m}`)), `${what}: list meshes`);
  }
  // Events come after commit (on PostgreSQL, by notification): wait for as many as were made.
  const changes = () => seen.filter((e) => e.kind !== 'resync');
  for (const t0 = Date.now(); changes().length < expectedEvents.length && Date.now() - t0 < 5000; ) await new Promise((r) => setTimeout(r, 20));
  off();
  const got = changes() as Extract<ChangeEvent, { revision: string }>[];
  // A mesh's contents go in the store's order, before the mesh: runs of deletes are compared as sets.
  const canonical = (list: string[]) => {
    const out: string[] = [];
    let run: string[] = [];
    const flush = () => {
      out.push(...run.sort());
      run = [];
    };
    for (const e of list) {
      if (e.startsWith('delete Dataplane/')) run.push(e);
      else {
        flush();
        out.push(e);
      }
    }
    flush();
    return out;
  };
  assert.deepEqual(canonical(got.map((e) => `${e.kind} ${keyText(e.key)}`)), canonical(expectedEvents), `seed ${seed}: change events`);
  for (let i = 1; i < got.length; i++) assert.ok(BigInt(got[i]!.revision) > BigInt(got[i - 1]!.revision), `seed ${seed}: event revisions increase`);
}

/** One op through the store's own method for it, as the API calls them (`update` tells no outcome: a kept version is "unchanged"). */
async function single(store: Store, op: WriteOp, heldVersion: string | undefined): Promise<WriteResult[]> {
  switch (op.op) {
    case 'create':
      return [{ outcome: 'created', key: op.resource, resource: await store.create(op.resource) }];
    case 'update': {
      const resource = await store.update(op.resource, op.expectedVersion);
      return [{ outcome: resource.version === heldVersion ? 'unchanged' : 'updated', key: op.resource, resource }];
    }
    case 'upsert':
      return [await store.upsert(op.resource, op.expectedVersion)];
    case 'delete':
      await store.delete(op.key, op.expectedVersion);
      return [{ outcome: 'deleted', key: op.key }];
  }
}
