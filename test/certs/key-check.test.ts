import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { checkSecretsKey, DataplaneTokens, MeshCertificates, SecretBox } from '../../src/certs/index.js';
import { defaultRegistry, isWeftError, MeshCaType, SecretsKeyCheckType, SigningKeyType } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { meshInput } from '../helpers/fixtures.js';

/** Checks an error (or a rejection's) is invalid_config naming secrets.keyFile and `what` the key could not open. */
function wrongKey(what: RegExp) {
  return (err: unknown) => {
    assert.ok(isWeftError(err, 'invalid_config'), String(err));
    assert.match(err.message, what);
    assert.match(err.message, /sealed with another key\. Every control plane sharing a store must use the same key file/);
    assert.deepEqual(err.violations.map((v) => v.field), ['secrets.keyFile']);
    return true;
  };
}

describe('the secrets key: every control plane on a store must hold the one its secrets were sealed with', () => {
  let dir: string;
  let store: Store;
  const box = (key: Buffer) => SecretBox.fromKey(key);
  const mine = randomBytes(32);
  const other = randomBytes(32);
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-keycheck-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
    await store.create(meshInput('default'));
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the first to start seals a check in the store; the same key passes it, another key is told why', async () => {
    assert.equal(await checkSecretsKey(store, box(mine)), undefined);
    const check = await store.get({ type: SecretsKeyCheckType.name, mesh: '', name: 'secrets-key' });
    assert.ok(check, 'the check is stored');
    assert.equal(await checkSecretsKey(store, box(mine)), undefined);
    wrongKey(/cannot open the secrets in this store/)(await checkSecretsKey(store, box(other)));
    assert.deepEqual(await store.get({ type: SecretsKeyCheckType.name, mesh: '', name: 'secrets-key' }), check, 'a wrong key changes nothing');
  });

  it('a store from before the check: its sealed token signing key and CA key are tried', async () => {
    // Secrets sealed with one key, and no check yet (as a store written before it existed).
    await new DataplaneTokens(store, box(mine)).issue('default', 'web-1', 60_000);
    wrongKey(/cannot open the token signing key of mesh "default"/)(await checkSecretsKey(store, box(other)));
    assert.equal(await store.get({ type: SecretsKeyCheckType.name, mesh: '', name: 'secrets-key' }), undefined, 'no check written by a wrong key');
    assert.equal(await checkSecretsKey(store, box(mine)), undefined);
  });

  it('a key sealed with another key is an error naming the key file, not a crypto failure', async () => {
    const backend = { name: 'ca-1', type: 'builtin' as const, mode: 'STRICT' as const, dpCert: { rotation: { expiration: '24h' } } };
    await store.create({ ...meshInput('secure'), spec: { mtls: { enabledBackend: 'ca-1', backends: [backend] } } });
    const first = box(mine);
    await new MeshCertificates(store, first, new DataplaneTokens(store, first)).ca('secure', backend);
    await new DataplaneTokens(store, first).issue('secure', 'web-1', 60_000);
    const wrong = box(other);
    const tokens = new DataplaneTokens(store, wrong);
    await assert.rejects(new MeshCertificates(store, wrong, tokens).ca('secure', backend), wrongKey(/cannot open the CA key of mesh "secure"/));
    await assert.rejects(tokens.issue('secure', 'web-2', 60_000), wrongKey(/cannot open the token signing key of mesh "secure"/));
  });

  it('a key the check found wrong seals nothing: no signing key or CA of its own for a new mesh', async () => {
    assert.equal(await checkSecretsKey(store, box(mine)), undefined);
    const wrong = box(other);
    const why = await checkSecretsKey(store, wrong);
    assert.ok(why);
    wrong.refuseSealing(why);
    const backend = { name: 'ca-1', type: 'builtin' as const, mode: 'STRICT' as const, dpCert: { rotation: { expiration: '24h' } } };
    await store.create({ ...meshInput('fresh'), spec: { mtls: { enabledBackend: 'ca-1', backends: [backend] } } });
    const tokens = new DataplaneTokens(store, wrong);
    await assert.rejects(tokens.issue('fresh', 'web-1', 60_000), wrongKey(/cannot open the secrets in this store/));
    await assert.rejects(new MeshCertificates(store, wrong, tokens).ca('fresh', backend), wrongKey(/cannot open the secrets in this store/));
    assert.deepEqual([(await store.list(SigningKeyType.name)).total, (await store.list(MeshCaType.name)).total], [0, 0], 'nothing sealed with the wrong key');
    // The right key makes them as before.
    await new DataplaneTokens(store, box(mine)).issue('fresh', 'web-1', 60_000);
  });
});
