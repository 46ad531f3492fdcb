import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DataplaneTokens, SecretBox } from '../../src/certs/index.js';
import { defaultRegistry, isWeftError, SigningKeyType } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { meshInput } from '../helpers/fixtures.js';

async function refused(p: Promise<unknown>, reason: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isWeftError(err, 'unauthorized'), String(err));
    assert.match(err.message, reason);
    return true;
  });
}

describe('dataplane tokens', () => {
  let dir: string;
  let store: Store;
  let now = Date.parse('2026-11-22T00:00:00Z');
  let tokens: DataplaneTokens;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-tokens-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry: defaultRegistry() });
    await store.create(meshInput('default'));
    await store.create(meshInput('other'));
    tokens = new DataplaneTokens(store, SecretBox.fromKey(randomBytes(32)), undefined, () => now);
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('issues an ES256 token bound to mesh and name that verifies', async () => {
    const t = await tokens.issue('default', 'web-1', 3600_000);
    const [header] = t.token.split('.');
    assert.equal(JSON.parse(Buffer.from(header!, 'base64url').toString()).alg, 'ES256');
    const id = await tokens.verify(t.token);
    assert.deepEqual({ mesh: id.mesh, name: id.name, tokenId: id.tokenId }, { mesh: 'default', name: 'web-1', tokenId: t.id });
  });

  it('keeps the signing key sealed in the store', async () => {
    const { items } = await store.list(SigningKeyType.name, { mesh: 'default' });
    const spec = items[0]!.spec as { sealedPrivateKey: string };
    assert.match(spec.sealedPrivateKey, /^v1\./);
    assert.doesNotMatch(JSON.stringify(items), /BEGIN PRIVATE KEY/);
  });

  it('refuses an expired token', async () => {
    const t = await tokens.issue('default', 'web-1', 60_000);
    now += 61_000;
    await refused(tokens.verify(t.token), /expired at/);
  });

  it('refuses a forged or altered token', async () => {
    const t = await tokens.issue('default', 'web-1', 3600_000);
    const [h, p, sig] = t.token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    const forged = [h, Buffer.from(JSON.stringify({ ...claims, name: 'db-1' })).toString('base64url'), sig].join('.');
    await refused(tokens.verify(forged), /signature is not valid/);
    const none = [Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url'), p, ''].join('.');
    await refused(tokens.verify(none), /algorithm none is not accepted/);
    await refused(tokens.verify('garbage'), /not a JWT/);
  });

  it("refuses another mesh's token where a mesh is expected, and one signed with another mesh's key", async () => {
    const t = await tokens.issue('other', 'web-1', 3600_000);
    await refused(tokens.verify(t.token, { mesh: 'default' }), /for mesh "other", not "default"/);
    const [h, , sig] = t.token.split('.');
    const claims = JSON.parse(Buffer.from(t.token.split('.')[1]!, 'base64url').toString());
    const moved = [h, Buffer.from(JSON.stringify({ ...claims, mesh: 'default' })).toString('base64url'), sig].join('.');
    await refused(tokens.verify(moved), /signed by a key mesh "default" does not have/);
  });

  it('refuses a revoked token, and only that one', async () => {
    const a = await tokens.issue('default', 'web-1', 3600_000);
    const b = await tokens.issue('default', 'web-2', 3600_000);
    await store.create({ type: 'DataplaneTokenRevocation', mesh: 'default', name: 'leaked', labels: {}, spec: { ids: [a.id] } });
    await refused(tokens.verify(a.token), new RegExp(`token ${a.id} is revoked by DataplaneTokenRevocation "leaked"`));
    assert.equal((await tokens.verify(b.token)).name, 'web-2');
  });

  it('rotation: old tokens verify until the old key is dropped, then fail', async () => {
    const old = await tokens.issue('default', 'web-3', 3600_000);
    now += 1000;
    await tokens.rotate('default');
    const fresh = await tokens.issue('default', 'web-3', 3600_000);
    assert.notEqual(JSON.parse(Buffer.from(fresh.token.split('.')[0]!, 'base64url').toString()).kid, JSON.parse(Buffer.from(old.token.split('.')[0]!, 'base64url').toString()).kid);
    assert.equal((await tokens.verify(old.token)).name, 'web-3');
    now += 1000;
    await tokens.rotate('default', { dropPrevious: true });
    await refused(tokens.verify(old.token), /does not have \(rotated away/);
    await refused(tokens.verify(fresh.token), /does not have \(rotated away/);
  });

  it('issues nothing for a mesh that does not exist', async () => {
    await assert.rejects(tokens.issue('nowhere', 'x', 1000), (e: unknown) => isWeftError(e, 'mesh_not_found'));
  });

  it('a sealed key opens only with its key and its context', () => {
    const a = SecretBox.fromKey(randomBytes(32));
    const sealed = a.seal('secret', 'mesh/key');
    assert.equal(a.open(sealed, 'mesh/key'), 'secret');
    assert.throws(() => a.open(sealed, 'other/key'));
    assert.throws(() => SecretBox.fromKey(randomBytes(32)).open(sealed, 'mesh/key'));
  });
});
