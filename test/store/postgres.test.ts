import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { defaultRegistry } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { meshInput, dataplaneInput } from '../helpers/fixtures.js';
import { postgresMissing, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { systemRequirement } from '../helpers/require.js';
import { collect, storeConformance } from '../helpers/store-suite.js';

const registry = defaultRegistry();
const req = systemRequirement('PostgreSQL server', postgresMissing());

describe('postgres store', req, () => {
  let server: TestPostgres;
  let n = 0;
  before(async () => {
    server = await startPostgres();
  });
  after(() => server?.stop());

  const fresh = async () => server.createDatabase(`weft_${process.pid}_${n++}`);

  storeConformance('postgres', async () => openStore({ type: 'postgres', url: await fresh() }, { registry }));

  describe('replicas', () => {
    let url: string;
    let a: Store;
    let b: Store;
    before(async () => {
      url = await fresh();
      [a, b] = await Promise.all([openStore({ type: 'postgres', url }, { registry }), openStore({ type: 'postgres', url }, { registry })]);
    });
    after(async () => {
      await a?.close();
      await b?.close();
    });

    it('run migrations once even when started together, and again as a no-op', async () => {
      const c = await openStore({ type: 'postgres', url }, { registry });
      await c.close();
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      const { rows } = await client.query('SELECT version FROM weft_schema_migrations ORDER BY version');
      await client.end();
      assert.deepEqual(rows.map((r: { version: number }) => r.version), [1]);
    });

    it("see each other's writes through LISTEN/NOTIFY within a second", async () => {
      const seen = collect(b, 2, 1000);
      const started = Date.now();
      await a.create(meshInput('shared'));
      await a.create(dataplaneInput('shared', 'dp'));
      const events = await seen;
      assert.ok(Date.now() - started < 1000);
      assert.deepEqual(events.map((e) => (e.kind === 'resync' ? 'resync' : `${e.kind} ${e.key.name}`)), ['create shared', 'create dp']);
      assert.ok(await b.get({ type: 'Dataplane', mesh: 'shared', name: 'dp' }));
    });

    it('keep optimistic concurrency across replicas', async () => {
      const base = await a.create(dataplaneInput('shared', 'contended'));
      const results = await Promise.allSettled([
        a.update(dataplaneInput('shared', 'contended', { port: 1 }), base.version),
        b.update(dataplaneInput('shared', 'contended', { port: 2 }), base.version),
      ]);
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    });

    it('tell watchers to resync after the change feed connection is cut', async () => {
      const resync = new Promise<void>((resolve) => {
        const off = b.watch((e) => {
          if (e.kind === 'resync') {
            off();
            resolve();
          }
        });
      });
      const admin = new pg.Client({ connectionString: url });
      await admin.connect();
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`);
      await admin.end();
      await resync;
      const seen = collect(b, 1, 2000);
      await a.create(dataplaneInput('shared', 'after-reconnect'));
      assert.equal((await seen).length, 1);
    });
  });
});
