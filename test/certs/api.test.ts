import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { keyAndCsr } from '../helpers/pki.js';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { createRootCa } from '../../src/certs/index.js';

describe('POST /meshes/{mesh}/dataplanes/{name}/_certificate', () => {
  let cp: TestControlPlane;
  let admin: Record<string, string>;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_API_AUTH: 'always', WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_DEBOUNCE_MS: '20' });
    admin = { authorization: `Bearer ${readFileSync(join(cp.dataDir, 'admin-token'), 'utf8').trim()}` };
    await http(cp.apiUrl, 'PUT', '/meshes/secure', { type: 'Mesh', name: 'secure', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } }, admin);
    for (const [mesh, name] of [['secure', 'web-1'], ['default', 'web-1']]) {
      const r = await http(cp.apiUrl, 'PUT', `/meshes/${mesh}/dataplanes/${name}`, { type: 'Dataplane', mesh, name, networking: { address: '10.0.0.1', inbound: [{ port: 80, tags: { 'kuma.io/service': 'web' } }] } }, admin);
      assert.equal(r.status, 201);
    }
  });
  after(() => cp.stop());

  const token = async (mesh: string, name: string) => String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh, name }, admin)).body.token);

  it('signs the CSR of a dataplane that shows its own token (no admin token needed) and returns the trust bundle', async () => {
    const { csrPem } = await keyAndCsr(['spiffe://secure/web']);
    const r = await http(cp.apiUrl, 'POST', '/meshes/secure/dataplanes/web-1/_certificate', { csr: csrPem }, { authorization: `Bearer ${await token('secure', 'web-1')}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(new X509Certificate(String(r.body.certificate)).subjectAltName, 'URI:spiffe://secure/web');
    assert.equal((r.body.caBundle as string[]).length, 1);
    assert.doesNotMatch(JSON.stringify(r.body), /PRIVATE KEY/);
  });

  it('serves the trust bundle as the SDS Secret mesh_ca, and pushes both roots during a CA rotation', async (t) => {
    const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'secure.web-1' }, { metadata: { authorization: `Bearer ${await token('secure', 'web-1')}` }, tlsCa: readFileSync(join(cp.dataDir, 'xds-tls.crt'), 'utf8') });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Secret, ['mesh_ca']);
    const first = await c.next(TypeUrl.Secret, 5000);
    const pem = (r: typeof first) => String((r.resources[0]!.body.validation_context as { trusted_ca: { inline_string: string } }).trusted_ca.inline_string);
    const { csrPem } = await keyAndCsr(['spiffe://secure/web']);
    const issued = await http(cp.apiUrl, 'POST', '/meshes/secure/dataplanes/web-1/_certificate', { csr: csrPem }, { authorization: `Bearer ${await token('secure', 'web-1')}` });
    assert.equal(pem(first), (issued.body.caBundle as string[]).join(''));
    c.ack(first);
    const r = await http(cp.apiUrl, 'PUT', '/meshes/secure', { type: 'Mesh', name: 'secure', mtls: { enabledBackend: 'ca-2', backends: [{ name: 'ca-1', type: 'builtin' }, { name: 'ca-2', type: 'builtin' }] } }, admin);
    assert.equal(r.status, 200);
    const rotated = await c.next(TypeUrl.Secret, 5000);
    assert.equal(pem(rotated).match(/BEGIN CERTIFICATE/g)?.length, 2, 'old and new roots during the switch');
    assert.ok(pem(rotated).startsWith(pem(first)), 'the old root is kept');
  });

  it('refuses without a token, with another identity, and in a mesh without mTLS', async () => {
    const { csrPem } = await keyAndCsr(['spiffe://secure/db']);
    const none = await http(cp.apiUrl, 'POST', '/meshes/secure/dataplanes/web-1/_certificate', { csr: csrPem });
    assert.equal(none.status, 401);
    const greedy = await http(cp.apiUrl, 'POST', '/meshes/secure/dataplanes/web-1/_certificate', { csr: csrPem }, { authorization: `Bearer ${await token('secure', 'web-1')}` });
    assert.equal(greedy.status, 403);
    assert.equal(greedy.body.code, 'forbidden');
    const plain = await keyAndCsr(['spiffe://default/web']);
    const off = await http(cp.apiUrl, 'POST', '/meshes/default/dataplanes/web-1/_certificate', { csr: plain.csrPem }, { authorization: `Bearer ${await token('default', 'web-1')}` });
    assert.equal(off.status, 409);
    assert.equal(off.body.code, 'mtls_not_enabled');
  });
});

describe('provided CA from Secrets (Kuma\'s `secret` data source)', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1' });
  });
  after(() => cp.stop());

  it('Secrets are write-only through the API; a provided CA reads its certificate and key from them', async () => {
    const root = await createRootCa({ mesh: 'corp', backend: 'corp-ca', validForMs: 86400_000 });
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/corp', { type: 'Mesh', name: 'corp' })).status, 201);
    for (const [name, pem] of [['corp-ca-cert', root.certPem], ['corp-ca-key', root.keyPem]] as const) {
      assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/corp/secrets/${name}`, { type: 'Secret', mesh: 'corp', name, data: b64(pem) })).status, 201);
    }
    const shown = JSON.stringify([(await http(cp.apiUrl, 'GET', '/meshes/corp/secrets/corp-ca-key')).body, (await http(cp.apiUrl, 'GET', '/meshes/corp/secrets')).body]);
    assert.doesNotMatch(shown, /PRIVATE KEY|LS0tLS1CRUdJTi/, 'neither the key nor its base64 is ever read back');
    assert.match(shown, /write-only/);
    const bad = await http(cp.apiUrl, 'PUT', '/meshes/corp/secrets/x', { type: 'Secret', mesh: 'corp', name: 'x', data: 'not base64!' });
    assert.deepEqual(bad.body.violations, [{ field: 'data', message: 'must be base64' }]);

    const provided = (cert: string) => ({ type: 'Mesh', name: 'corp', mtls: { enabledBackend: 'corp-ca', backends: [{ name: 'corp-ca', type: 'provided', conf: { cert: { secret: cert }, key: { secret: 'corp-ca-key' } } }] } });
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/corp', provided('corp-ca-cert'))).status, 200);
    await http(cp.apiUrl, 'PUT', '/meshes/corp/dataplanes/web-1', { type: 'Dataplane', mesh: 'corp', name: 'web-1', networking: { address: '10.0.0.1', inbound: [{ port: 80, tags: { 'kuma.io/service': 'web' } }] } });
    const token = String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'corp', name: 'web-1' })).body.token);
    const { csrPem } = await keyAndCsr(['spiffe://corp/web']);
    const r = await http(cp.apiUrl, 'POST', '/meshes/corp/dataplanes/web-1/_certificate', { csr: csrPem }, { authorization: `Bearer ${token}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(new X509Certificate(String(r.body.certificate)).checkIssued(new X509Certificate(root.certPem)), 'signed by the provided CA');

    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/corp', provided('nope'))).status, 200);
    const missing = await http(cp.apiUrl, 'POST', '/meshes/corp/dataplanes/web-1/_certificate', { csr: csrPem }, { authorization: `Bearer ${token}` });
    assert.equal(missing.status, 400);
    assert.match(String(missing.body.message), /names Secret "nope", which mesh "corp" does not have/);
  });
});
