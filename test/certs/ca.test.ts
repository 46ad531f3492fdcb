import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createRootCa, DataplaneTokens, MeshCertificates, readCsr, SecretBox, signWorkloadCertificate } from '../../src/certs/index.js';
import { decodeResource, defaultRegistry, isWeftError, type ResourceInput } from '../../src/core/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { keyAndCsr, mtlsHandshake, type Identity } from '../helpers/pki.js';

const registry = defaultRegistry();
const input = (doc: Record<string, unknown>): ResourceInput => decodeResource(doc, registry).resource;
const mtlsMesh = (name: string, enabled: string, backends: string[]) =>
  input({ type: 'Mesh', name, mtls: { enabledBackend: enabled, backends: backends.map((b) => ({ name: b, type: 'builtin', dpCert: { rotation: { expiration: '1h' } } })) } });
const dp = (mesh: string, name: string, service: string, extra: Record<string, string> = {}) =>
  input({ type: 'Dataplane', mesh, name, networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': service, ...extra } }] } });

describe('built-in CA and workload certificates', () => {
  let dir: string;
  let store: Store;
  let now = Date.now();
  let tokens: DataplaneTokens;
  let certs: MeshCertificates;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-ca-'));
    store = await openStore({ type: 'embedded', dataDir: dir }, { registry });
    const box = SecretBox.fromKey(randomBytes(32));
    tokens = new DataplaneTokens(store, box, undefined, () => now);
    certs = new MeshCertificates(store, box, tokens, undefined, () => now);
    await store.create(mtlsMesh('tls', 'ca-1', ['ca-1']));
    await store.create(mtlsMesh('other', 'ca-1', ['ca-1']));
    await store.create(dp('tls', 'web-1', 'web', { version: 'v1' }));
    await store.create(dp('tls', 'backend-1', 'backend'));
    await store.create(dp('other', 'web-1', 'web'));
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function identity(mesh: string, name: string, uris: string[]): Promise<Identity> {
    const { keyPem, csrPem } = await keyAndCsr(uris);
    const { token } = await tokens.issue(mesh, name, 3600_000);
    const issued = await certs.issueForDataplane(token, mesh, name, csrPem);
    return { keyPem, certPem: issued.certificate, caBundle: issued.caBundle };
  }

  it('signs a CSR into a SPIFFE certificate from an ECDSA P-256 root, for the lifetime the Mesh sets', async () => {
    const id = await identity('tls', 'web-1', ['spiffe://tls/web', 'kuma://version/v1']);
    const cert = new X509Certificate(id.certPem);
    assert.equal(cert.subjectAltName, 'URI:spiffe://tls/web, URI:kuma://version/v1');
    assert.equal(cert.ca, false);
    const life = Date.parse(cert.validTo) - now;
    assert.ok(life > 3590_000 && life <= 3600_000, `1h lifetime from dpCert.rotation.expiration (${life})`);
    const root = new X509Certificate(id.caBundle[0]!);
    assert.ok(root.ca && cert.checkIssued(root) && cert.verify(root.publicKey));
    assert.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  });

  it('real mTLS handshake: peers with certificates of the mesh and the expected SPIFFE IDs succeed', async () => {
    const web = await identity('tls', 'web-1', ['spiffe://tls/web']);
    const backend = await identity('tls', 'backend-1', ['spiffe://tls/backend']);
    assert.equal(await mtlsHandshake({ ...backend, allowClient: 'spiffe://tls/web' }, { ...web, expectServer: 'spiffe://tls/backend' }), 'ok');
  });

  it('real mTLS handshake: the wrong SPIFFE ID is refused by the peer that checks it', async () => {
    const web = await identity('tls', 'web-1', ['spiffe://tls/web']);
    const backend = await identity('tls', 'backend-1', ['spiffe://tls/backend']);
    assert.match(await mtlsHandshake({ ...backend, allowClient: 'spiffe://tls/web' }, { ...web, expectServer: 'spiffe://tls/db' }), /expected spiffe:\/\/tls\/db/);
  });

  it("real mTLS handshake: a certificate from another mesh's CA is refused", async () => {
    const stranger = await identity('other', 'web-1', ['spiffe://other/web']);
    const backend = await identity('tls', 'backend-1', ['spiffe://tls/backend']);
    const r = await mtlsHandshake({ ...backend, allowClient: 'spiffe://other/web' }, { ...stranger, caBundle: backend.caBundle, expectServer: 'spiffe://tls/backend' });
    assert.notEqual(r, 'ok');
  });

  it('real mTLS handshake: an expired certificate is refused', async () => {
    const real = now;
    now = real - 2 * 3600_000; // issued two hours ago with a 1h lifetime
    const old = await identity('tls', 'web-1', ['spiffe://tls/web']);
    now = real;
    const backend = await identity('tls', 'backend-1', ['spiffe://tls/backend']);
    const r = await mtlsHandshake({ ...backend, allowClient: 'spiffe://tls/web' }, { ...old, expectServer: 'spiffe://tls/backend' });
    assert.notEqual(r, 'ok');
  });

  it('CA rotation: both roots are trusted while both backends are listed; dropping the old one revokes its certificates', async () => {
    await store.create(mtlsMesh('rot', 'ca-1', ['ca-1']));
    await store.create(dp('rot', 'web-1', 'web'));
    await store.create(dp('rot', 'backend-1', 'backend'));
    const oldWeb = await identity('rot', 'web-1', ['spiffe://rot/web']);
    await store.update(mtlsMesh('rot', 'ca-2', ['ca-1', 'ca-2']));
    const newBackend = await identity('rot', 'backend-1', ['spiffe://rot/backend']);
    assert.equal(newBackend.caBundle.length, 2, 'trust bundle holds both roots during the switch');
    assert.notEqual(new X509Certificate(newBackend.certPem).issuer, new X509Certificate(oldWeb.certPem).issuer, 'new certificates come from the new CA');
    assert.equal(await mtlsHandshake({ ...newBackend, allowClient: 'spiffe://rot/web' }, { ...oldWeb, caBundle: newBackend.caBundle, expectServer: 'spiffe://rot/backend' }), 'ok', 'old and new interoperate during the switch');
    await store.update(mtlsMesh('rot', 'ca-2', ['ca-2']));
    const bundle = await certs.trustBundle('rot');
    assert.equal(bundle.length, 1);
    const r = await mtlsHandshake({ ...newBackend, caBundle: bundle, allowClient: 'spiffe://rot/web' }, { ...oldWeb, caBundle: bundle, expectServer: 'spiffe://rot/backend' });
    assert.notEqual(r, 'ok', 'a certificate of the dropped CA is refused');
  });

  it('CA rotation ends by itself: once every dataplane holds a certificate of the new CA, the old root leaves the bundle', async () => {
    await store.create(mtlsMesh('auto', 'ca-1', ['ca-1']));
    await store.create(dp('auto', 'web-1', 'web'));
    await store.create(dp('auto', 'backend-1', 'backend'));
    await identity('auto', 'web-1', ['spiffe://auto/web']);
    await identity('auto', 'backend-1', ['spiffe://auto/backend']);
    const told: string[] = [];
    certs.onTrustBundleChange = (mesh) => told.push(mesh);
    try {
      await store.update(mtlsMesh('auto', 'ca-2', ['ca-1', 'ca-2']));
      const web = await identity('auto', 'web-1', ['spiffe://auto/web']);
      assert.equal(web.caBundle.length, 2, 'backend-1 still holds a ca-1 certificate: both roots stay');
      assert.deepEqual(told, []);
      const backend = await identity('auto', 'backend-1', ['spiffe://auto/backend']);
      assert.equal(backend.caBundle.length, 1, 'everyone moved: only the new root is left');
      assert.ok(new X509Certificate(backend.certPem).checkIssued(new X509Certificate(backend.caBundle[0]!)));
      assert.deepEqual(told, ['auto'], 'proxies are told the bundle changed');
      assert.equal(await mtlsHandshake({ ...backend, allowClient: 'spiffe://auto/web' }, { ...web, caBundle: backend.caBundle, expectServer: 'spiffe://auto/backend' }), 'ok');
      // Switching back makes ca-1 a current CA again.
      await store.update(mtlsMesh('auto', 'ca-1', ['ca-1', 'ca-2']));
      const back = await identity('auto', 'web-1', ['spiffe://auto/web']);
      assert.equal(back.caBundle.length, 2);
    } finally {
      certs.onTrustBundleChange = undefined;
    }
  });

  it('forgets the certificates it issued once they expire, so Dataplane names that come and go do not pile up', async () => {
    await store.create(mtlsMesh('churn', 'ca-1', ['ca-1']));
    const box = SecretBox.fromKey(randomBytes(32));
    const churn = new MeshCertificates(store, box, tokens, undefined, () => now, 16);
    const { csrPem } = await keyAndCsr(['spiffe://churn/web']);
    const issue = async (i: number) => {
      await store.create(dp('churn', `pod-${i}`, 'web'));
      const { token } = await tokens.issue('churn', `pod-${i}`, 3600_000);
      await churn.issueForDataplane(token, 'churn', `pod-${i}`, csrPem);
    };
    const start = now;
    try {
      for (let i = 0; i < 20; i++) await issue(i);
      assert.equal(churn.issuedRecords, 20, 'none expired: all kept');
      now += 2 * 3600_000; // the first 20 certificates (1 h) have expired
      for (let i = 20; i < 40; i++) await issue(i);
      assert.equal(churn.issuedRecords, 20, 'the expired ones were dropped');
    } finally {
      now = start;
    }
  });

  it('forgets a deleted mesh: its issuance records and its CA keys opened in memory, and nothing of other meshes', async () => {
    await store.create(mtlsMesh('brief', 'ca-1', ['ca-1']));
    await store.create(dp('brief', 'web-1', 'web'));
    await identity('brief', 'web-1', ['spiffe://brief/web']);
    await identity('other', 'web-1', ['spiffe://other/web']);
    const before = certs.issuedRecords;
    assert.ok(certs.meshesKept().includes('brief') && certs.meshesKept().includes('other'));
    certs.forgetMesh('brief');
    assert.deepEqual(certs.meshesKept().filter((m) => m === 'brief'), []);
    assert.ok(certs.meshesKept().includes('other'), 'another mesh keeps its state');
    assert.equal(certs.issuedRecords, before - 1);
    await store.delete({ type: 'Mesh', mesh: '', name: 'brief' });
  });

  it('a token bound to tags gets certificates for Dataplanes with those tags only', async () => {
    const { token } = await tokens.issue('tls', undefined, 3600_000, { 'kuma.io/service': 'web' });
    const { csrPem } = await keyAndCsr(['spiffe://tls/web']);
    const issued = await certs.issueForDataplane(token, 'tls', 'web-1', csrPem);
    assert.match(new X509Certificate(issued.certificate).subjectAltName ?? '', /URI:spiffe:\/\/tls\/web/);
    const other = await keyAndCsr(['spiffe://tls/backend']);
    await assert.rejects(certs.issueForDataplane(token, 'tls', 'backend-1', other.csrPem), (e: unknown) => isWeftError(e, 'forbidden') && /bound to tags/.test(e.message));
    await assert.rejects(tokens.issue('tls', undefined, 3600_000), (e: unknown) => isWeftError(e, 'invalid_resource'));
  });

  it('refuses a CSR for an identity the dataplane does not have, and a token of another dataplane', async () => {
    const { csrPem } = await keyAndCsr(['spiffe://tls/backend']);
    const { token } = await tokens.issue('tls', 'web-1', 3600_000);
    await assert.rejects(certs.issueForDataplane(token, 'tls', 'web-1', csrPem), (e: unknown) => isWeftError(e, 'forbidden') && /spiffe:\/\/tls\/backend/.test(e.message));
    const mine = await keyAndCsr(['spiffe://tls/web']);
    await assert.rejects(certs.issueForDataplane(token, 'tls', 'backend-1', mine.csrPem), (e: unknown) => isWeftError(e, 'forbidden') && /token is for dataplane "web-1"/.test(e.message));
    await assert.rejects(certs.issueForDataplane(token, 'tls', 'web-1', 'not a csr'), (e: unknown) => isWeftError(e, 'invalid_resource'));
  });

  it('signs with an RSA root too (Kuma compatibility), and refuses truncated or altered CSRs', async () => {
    const rsa = await createRootCa({ mesh: 'r', backend: 'rsa', keyType: 'RSA', rsaBits: 2048, validForMs: 3600_000 });
    const { csrPem } = await keyAndCsr(['spiffe://r/web']);
    const csr = await readCsr(csrPem);
    const pem = await signWorkloadCertificate({ ca: rsa, publicKey: csr.publicKey, uris: csr.uris, notBefore: new Date(), notAfter: new Date(Date.now() + 60_000) });
    const root = new X509Certificate(rsa.certPem);
    assert.ok(new X509Certificate(pem).verify(root.publicKey));
    const body = csrPem.split('\n').filter((l) => !l.startsWith('-----')).join('');
    const truncated = `-----BEGIN CERTIFICATE REQUEST-----\n${body.slice(0, 80)}\n-----END CERTIFICATE REQUEST-----\n`;
    await assert.rejects(readCsr(truncated), (e: unknown) => isWeftError(e, 'invalid_resource') && /csr/.test(e.violations[0]!.field));
    const der = Buffer.from(body, 'base64');
    der[der.length - 5]! ^= 0x01; // flip a bit of the signature
    const altered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    await assert.rejects(readCsr(altered), (e: unknown) => isWeftError(e, 'invalid_resource'));
  });

  it('validates a provided CA when the Mesh is applied', async () => {
    const ca = await createRootCa({ mesh: 'p', backend: 'b', validForMs: 3600_000 });
    const other = await createRootCa({ mesh: 'p', backend: 'c', validForMs: 3600_000 });
    const mesh = (certPem: string, keyPem: string) => ({ type: 'Mesh', name: 'p', mtls: { enabledBackend: 'b', backends: [{ name: 'b', type: 'provided', conf: { cert: { inlineString: certPem }, key: { inlineString: keyPem } } }] } });
    assert.doesNotThrow(() => decodeResource(mesh(ca.certPem, ca.keyPem), registry));
    assert.throws(
      () => decodeResource(mesh(ca.certPem, other.keyPem), registry),
      (e: unknown) => isWeftError(e, 'invalid_resource') && e.violations.some((v) => v.field === 'mtls.backends[0].conf.key' && v.message === 'does not match the certificate'),
    );
  });
});
