import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { defaultRegistry, isWeftError } from '../../src/core/index.js';
import { openStore } from '../../src/store/index.js';
import { dataplaneInput, meshInput } from '../helpers/fixtures.js';
import { storeConformance } from '../helpers/store-suite.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'weft-store-'));
  dirs.push(d);
  return d;
}
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const registry = defaultRegistry();
storeConformance('embedded', () => openStore({ type: 'embedded', dataDir: tempDir() }, { registry }));

describe('embedded store on disk', () => {
  it('keeps what it acknowledged across a reopen, with private file modes', async () => {
    const dir = join(tempDir(), 'data');
    const a = await openStore({ type: 'embedded', dataDir: dir }, { registry });
    await a.create(meshInput('m'));
    const dp = await a.create(dataplaneInput('m', 'dp'));
    await a.close();
    const b = await openStore({ type: 'embedded', dataDir: dir }, { registry });
    assert.deepEqual(await b.get({ type: 'Dataplane', mesh: 'm', name: 'dp' }), dp);
    const next = await b.update(dataplaneInput('m', 'dp', { port: 1 }));
    assert.ok(BigInt(next.version) > BigInt(dp.version), 'revisions continue after a reopen');
    await b.close();
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(join(dir, 'weft.db')).mode & 0o777, 0o600);
  });

  it('refuses a second store on the same data dir', async () => {
    const dir = tempDir();
    const a = await openStore({ type: 'embedded', dataDir: dir }, { registry });
    await a.create(meshInput('m'));
    await assert.rejects(
      openStore({ type: 'embedded', dataDir: dir }, { registry }).then((s) => s.ping()),
      (err: unknown) => isWeftError(err, 'store_unavailable') && /in use by another control plane/.test(err.message),
    );
    await a.close();
  });
});
