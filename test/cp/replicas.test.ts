import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { createKeyAndCsr } from '../../src/certs/index.js';
import { isWeftError, spiffeId } from '../../src/core/index.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { postgresMissing, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { systemRequirement } from '../helpers/require.js';

const dp = (name: string) => ({ type: 'Dataplane', mesh: 'secure', name, networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } });

/** How a stream with `token` on `cp` goes: served (its clusters came), or ended with a status. */
async function streamOn(cp: TestControlPlane, nodeId: string, token: string): Promise<string> {
  const c = new XdsTestClient(cp.xdsAddress, 'delta', { id: nodeId }, { metadata: { authorization: `Bearer ${token}` } });
  try {
    c.delta({ type_url: TypeUrl.Cluster });
    return await Promise.race([c.next(TypeUrl.Cluster, 10_000).then(() => 'served'), c.closed.then((s) => `${grpc.status[s.code]}: ${s.details}`)]);
  } finally {
    c.close();
  }
}

describe('replicas on one PostgreSQL share tokens and CAs through the store, with one secrets key', systemRequirement('PostgreSQL server', postgresMissing()), () => {
  let pg: TestPostgres;
  let keyDir: string;
  let url: string;
  let a: TestControlPlane;
  let b: TestControlPlane;
  const env = (keyFile: string) => ({ WEFT_STORE_TYPE: 'postgres', WEFT_STORE_POSTGRES_URL: url, WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_TLS_MODE: 'off', WEFT_SECRETS_KEY_FILE: join(keyDir, keyFile) });
  before(async () => {
    pg = await startPostgres();
    url = await pg.createDatabase(`weft_replicas_${process.pid}`);
    keyDir = mkdtempSync(join(tmpdir(), 'weft-replica-keys-'));
    for (const f of ['shared.key', 'other.key']) writeFileSync(join(keyDir, f), randomBytes(32).toString('base64'), { mode: 0o600 });
    a = await startTestControlPlane(env('shared.key'));
    b = await startTestControlPlane(env('shared.key'));
    const mtls = { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] };
    assert.equal((await http(a.apiUrl, 'PUT', '/meshes/secure', { type: 'Mesh', name: 'secure', mtls })).status, 201);
    for (const name of ['web-1', 'web-2']) assert.equal((await http(a.apiUrl, 'PUT', `/meshes/secure/dataplanes/${name}`, dp(name))).status, 201);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    pg?.stop();
    rmSync(keyDir, { recursive: true, force: true });
  });

  it('a token one replica issues serves on the other; a revocation written through one is refused by both', async () => {
    const issued = await http(a.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'secure', name: 'web-1' });
    assert.equal(issued.status, 200);
    const token = String(issued.body.token);
    assert.equal(await streamOn(b, 'secure.web-1', token), 'served');
    assert.equal(await streamOn(a, 'secure.web-1', token), 'served');
    assert.equal((await http(b.apiUrl, 'PUT', '/meshes/secure/dataplane-token-revocations/leak', { type: 'DataplaneTokenRevocation', mesh: 'secure', name: 'leak', ids: [issued.body.id] })).status, 201);
    for (const cp of [a, b]) {
      let got = '';
      // The other replica learns of the revocation from the store's change feed.
      for (const end = Date.now() + 5000; Date.now() < end && !got.startsWith('UNAUTHENTICATED'); await new Promise((r) => setTimeout(r, 50))) got = await streamOn(cp, 'secure.web-1', token);
      assert.match(got, /^UNAUTHENTICATED: .*revoked by DataplaneTokenRevocation "leak"/);
    }
  });

  it("one mesh CA for both: a certificate from either chains to the other's trust bundle", async () => {
    const bundleA = await a.certificates.trustBundle('secure');
    assert.deepEqual(await b.certificates.trustBundle('secure'), bundleA);
    const root = new X509Certificate(bundleA[0]!);
    const token = String((await http(b.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'secure', name: 'web-2' })).body.token);
    for (const cp of [a, b]) {
      const { csrPem } = await createKeyAndCsr([spiffeId('secure', 'web')]);
      const issued = await cp.certificates.issueForDataplane(token, 'secure', 'web-2', csrPem);
      assert.ok(new X509Certificate(issued.certificate).verify(root.publicKey), 'signed by the one CA');
      assert.deepEqual(issued.caBundle, bundleA);
    }
  });

  it('a replica with another secrets key says which file to share, and issues and seals nothing; it still serves proxies with tokens from the others', async (t) => {
    const c = await startTestControlPlane(env('other.key'));
    t.after(() => c.stop());
    const metrics = await (await fetch(`${c.diagnosticsUrl}/metrics`)).text();
    assert.match(metrics, /^weft_secrets_key_mismatch 1$/m);
    assert.match(await (await fetch(`${a.diagnosticsUrl}/metrics`)).text(), /^weft_secrets_key_mismatch 0$/m);
    const refused = await http(c.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'secure', name: 'web-1' });
    assert.deepEqual([refused.status, refused.body.code], [500, 'invalid_config']);
    assert.match(String(refused.body.message), new RegExp(`^the secrets key \\(${join(keyDir, 'other.key')}\\) cannot open the token signing key of mesh "secure": it was sealed with another key`));
    // A new mesh's first token and CA would be sealed with its key: refused, nothing written.
    const mtls = { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] };
    assert.equal((await http(c.apiUrl, 'PUT', '/meshes/late', { type: 'Mesh', name: 'late', mtls })).status, 201);
    assert.equal((await http(c.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'late', name: 'x' })).body.code, 'invalid_config');
    await assert.rejects(c.certificates.trustBundle('late'), (err: unknown) => isWeftError(err, 'invalid_config'));
    // The right replicas make them as usual, and the wrong one serves what they issue.
    assert.equal((await a.certificates.trustBundle('late')).length, 1);
    const token = String((await http(a.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'secure', name: 'web-2' })).body.token);
    assert.equal(await streamOn(c, 'secure.web-2', token), 'served');
  });
});
