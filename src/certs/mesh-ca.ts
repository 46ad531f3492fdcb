import { readFileSync } from 'node:fs';
import {
  dataplaneHasTags,
  dataplaneTagSets,
  durationToMs,
  enabledMtlsBackend,
  isWeftError,
  kumaTagUri,
  MeshCaType,
  SERVICE_TAG,
  spiffeId,
  WeftError,
  type DataplaneSpec,
  type Logger,
  type MeshCaSpec,
  type MeshSpec,
  type MtlsBackend,
  type Resource,
  type SecretSpec,
  validateProvidedCa,
} from '../core/index.js';
import type { Store } from '../store/index.js';
import type { SecretBox } from './secret-box.js';
import type { DataplaneTokens } from './tokens.js';
import { createRootCa, readCsr, signWorkloadCertificate, type CaMaterial } from './x509.js';

const CA_VALIDITY_MS = 10 * 365 * 86400_000;

export interface IssuedCertificate {
  certificate: string;
  /** PEM roots the peer should trust: every CA of the mesh's backends (two during a CA rotation). */
  caBundle: string[];
  spiffeIds: string[];
  expiresAt: Date;
}

async function dataSource(store: Store, mesh: string, ds: Record<string, string | undefined>, field: string): Promise<string> {
  if (ds.inlineString) return ds.inlineString;
  if (ds.inline) return Buffer.from(ds.inline, 'base64').toString('utf8');
  if (ds.file) return readFileSync(ds.file, 'utf8');
  const secret = (await store.get({ type: 'Secret', mesh, name: ds.secret! })) as Resource<SecretSpec> | undefined;
  if (!secret) throw new WeftError('invalid_resource', `provided CA: ${field} names Secret "${ds.secret}", which mesh "${mesh}" does not have`, [{ field: `conf.${field}.secret`, message: `no Secret "${ds.secret}" in mesh "${mesh}"` }]);
  return Buffer.from(secret.spec.data.replace(/\s+/g, ''), 'base64').toString('utf8');
}

/** By default, `issued` is not swept below this many records per mesh. */
const ISSUED_SWEEP_MIN = 1024;

/** What a mesh's built-in CA key is sealed with (`SecretBox` context), and how errors name it. */
export const caKeySeal = (mesh: string, backend: string) => ({ context: `${mesh}/ca-${backend}`, what: `the CA key of mesh "${mesh}"` });

/**
 * The CAs of each mesh and the workload certificates they sign. A dataplane's key never leaves its
 * node: the data-plane wrapper sends a CSR with its token, this checks the CSR asks only for
 * identities the Dataplane has (a SPIFFE ID per inbound service, kuma:// URIs for its tags) and signs.
 */
export class MeshCertificates {
  constructor(
    private readonly store: Store,
    private readonly box: SecretBox,
    private readonly tokens: DataplaneTokens,
    private readonly logger?: Logger,
    private readonly now: () => number = Date.now,
    /** `issued` is not swept below this many records per mesh. */
    private readonly issuedSweepMin = ISSUED_SWEEP_MIN,
  ) {}

  /** The CA of a backend: a builtin one is created on first use; a provided one is read and checked. */
  async ca(mesh: string, backend: MtlsBackend): Promise<CaMaterial> {
    if (backend.type === 'provided') {
      const conf = backend.conf as { cert: Record<string, string>; key: Record<string, string> };
      const material = { certPem: await dataSource(this.store, mesh, conf.cert, 'cert'), keyPem: await dataSource(this.store, mesh, conf.key, 'key') };
      const problems = validateProvidedCa(material.certPem, material.keyPem, new Date(this.now()));
      if (problems.length > 0) throw new WeftError('invalid_resource', `provided CA of backend "${backend.name}" cannot be used`, problems);
      return material;
    }
    const key = { type: MeshCaType.name, mesh, name: `ca-${backend.name}` };
    let stored = (await this.store.get(key)) as Resource<MeshCaSpec> | undefined;
    if (!stored) {
      const conf = (backend.conf ?? {}) as { caCert?: { RSAbits?: number; expiration?: string } };
      const keyType = conf.caCert?.RSAbits ? 'RSA' : 'ECDSA';
      const ca = await createRootCa({ mesh, backend: backend.name, keyType, rsaBits: conf.caCert?.RSAbits, validForMs: conf.caCert?.expiration ? durationToMs(conf.caCert.expiration) : CA_VALIDITY_MS, now: new Date(this.now()) });
      try {
        await this.store.create({ ...key, labels: {}, spec: { backend: backend.name, keyType, certPem: ca.certPem, sealedKeyPem: this.box.seal(ca.keyPem, caKeySeal(mesh, backend.name).context) } });
        this.logger?.info({ mesh, backend: backend.name, keyType }, 'built-in CA created');
      } catch (err) {
        if (!isWeftError(err, 'already_exists')) throw err;
      }
      stored = (await this.store.get(key)) as Resource<MeshCaSpec>;
    }
    // One material object per stored version, so the signer parsed from it is reused.
    const cacheKey = `${mesh}/${backend.name}/${stored.version}`;
    let material = this.materials.get(cacheKey);
    if (!material) {
      const seal = caKeySeal(mesh, backend.name);
      material = { certPem: stored.spec.certPem, keyPem: this.box.openStored(stored.spec.sealedKeyPem, seal.context, seal.what) };
      for (const k of this.materials.keys()) if (k.startsWith(`${mesh}/${backend.name}/`)) this.materials.delete(k);
      this.materials.set(cacheKey, material);
    }
    return material;
  }

  private readonly materials = new Map<string, CaMaterial>();

  private async mesh(mesh: string): Promise<Resource<MeshSpec>> {
    const m = (await this.store.get({ type: 'Mesh', mesh: '', name: mesh })) as Resource<MeshSpec> | undefined;
    if (!m) throw new WeftError('mesh_not_found', `mesh "${mesh}" does not exist`);
    return m;
  }

  /** Per mesh, per Dataplane: the backend and expiry of the last certificate this replica issued. */
  private readonly issued = new Map<string, Map<string, { backend: string; expiresAt: number }>>();
  /** Per mesh: the size of `issued` at which it is next swept. */
  private readonly sweepAt = new Map<string, number>();

  /**
   * Drops the records of certificates that have expired: one counts as not issued anyway, and
   * Dataplanes that are gone (names of short-lived workloads come and go) would otherwise stay for
   * good. Amortized: a sweep runs when the records have doubled since the last.
   */
  private sweepExpired(mesh: string, perMesh: Map<string, { expiresAt: number }>, now: number): void {
    if (perMesh.size < (this.sweepAt.get(mesh) ?? this.issuedSweepMin)) return;
    for (const [name, r] of perMesh) if (r.expiresAt <= now) perMesh.delete(name);
    this.sweepAt.set(mesh, Math.max(this.issuedSweepMin, 2 * perMesh.size));
  }

  /** Meshes this replica keeps anything of: issuance records, retired roots, opened CA keys. */
  meshesKept(): string[] {
    const meshes = new Set([...this.issued.keys(), ...this.retired.keys()]);
    for (const k of this.materials.keys()) meshes.add(k.slice(0, k.indexOf('/')));
    return [...meshes];
  }

  /**
   * Forgets a deleted mesh: its issuance records, its retired roots, and its CAs' keys opened in
   * memory. Its CAs went with it from the store; a mesh made again under the name starts afresh.
   */
  forgetMesh(mesh: string): void {
    this.issued.delete(mesh);
    this.sweepAt.delete(mesh);
    this.retired.delete(mesh);
    for (const k of this.materials.keys()) if (k.startsWith(`${mesh}/`)) this.materials.delete(k);
  }

  /** Certificates this replica issued whose records it keeps (for tests and diagnostics). */
  get issuedRecords(): number {
    let n = 0;
    for (const m of this.issued.values()) n += m.size;
    return n;
  }

  /** Per mesh: backends whose roots left the trust bundle because every Dataplane moved on. */
  private readonly retired = new Map<string, Set<string>>();
  /** Called when a mesh's trust bundle changes without a store change (an old root retired). */
  onTrustBundleChange?: (mesh: string) => void;

  /**
   * Roots of the backends the Mesh lists: during a CA rotation (enabledBackend switched, the old
   * backend still listed) both, until every Dataplane of the mesh holds a valid certificate from
   * the new one; then the old root is dropped (see retireOldRoots). Removing the old backend from
   * the Mesh drops it at once.
   */
  async trustBundle(mesh: string): Promise<string[]> {
    const m = await this.mesh(mesh);
    const out: string[] = [];
    const retired = this.retired.get(mesh);
    for (const b of m.spec.mtls?.backends ?? []) {
      if (b.name !== m.spec.mtls?.enabledBackend && retired?.has(b.name)) continue;
      if (b.type === 'builtin') {
        // A built-in CA's certificate is stored in clear: its key is not opened for the bundle.
        const stored = (await this.store.get({ type: MeshCaType.name, mesh, name: `ca-${b.name}` })) as Resource<MeshCaSpec> | undefined;
        if (stored) out.push(stored.spec.certPem);
        else if (b.name === m.spec.mtls?.enabledBackend) out.push((await this.ca(mesh, b)).certPem);
        continue;
      }
      out.push((await this.ca(mesh, b)).certPem);
    }
    return out;
  }

  /** Identities the Dataplane may hold: a SPIFFE ID per inbound service, and kuma:// URIs for its tags. */
  entitledUris(mesh: string, dp: Resource<DataplaneSpec>): { spiffe: string[]; tags: string[] } {
    const spiffe = new Set<string>();
    const tags = new Set<string>();
    for (const set of dataplaneTagSets(dp.spec)) {
      for (const [k, v] of Object.entries(set)) {
        if (k === SERVICE_TAG) spiffe.add(spiffeId(mesh, v));
        else tags.add(kumaTagUri(k, v));
      }
    }
    return { spiffe: [...spiffe].sort(), tags: [...tags].sort() };
  }

  /**
   * Signs the CSR of Dataplane `name` in `mesh`, authenticated by its dataplane token. A CSR asking
   * for an identity the Dataplane does not have is refused and logged as a security event.
   */
  async issueForDataplane(token: string, mesh: string, name: string, csrPem: string): Promise<IssuedCertificate> {
    const who = await this.tokens.verify(token, { mesh });
    if (who.name !== undefined && who.name !== name) {
      this.logger?.warn({ event: 'security', mesh, name, tokenFor: who.name }, 'certificate refused: token is for another dataplane');
      throw new WeftError('forbidden', `the token is for dataplane "${who.name}", not "${name}"`);
    }
    const m = await this.mesh(mesh);
    const backend = enabledMtlsBackend(m.spec);
    if (!backend) throw new WeftError('mtls_not_enabled', `mesh "${mesh}" has no enabled mTLS backend`);
    const dp = (await this.store.get({ type: 'Dataplane', mesh, name })) as Resource<DataplaneSpec> | undefined;
    if (!dp) throw new WeftError('not_found', `Dataplane "${name}" not found in mesh "${mesh}"`);
    if (who.tags && !dataplaneHasTags(dp.spec, who.tags)) {
      this.logger?.warn({ event: 'security', mesh, name, tokenTags: who.tags }, 'certificate refused: the Dataplane lacks the tags the token is bound to');
      throw new WeftError('forbidden', `the token is bound to tags ${JSON.stringify(who.tags)}, which Dataplane "${name}" does not carry on every inbound`);
    }
    const csr = await readCsr(csrPem);
    const entitled = this.entitledUris(mesh, dp);
    const allowed = new Set([...entitled.spiffe, ...entitled.tags]);
    const extra = csr.uris.filter((u) => !allowed.has(u));
    if (extra.length > 0 || csr.dnsNames.length > 0) {
      this.logger?.warn({ event: 'security', mesh, name, asked: [...extra, ...csr.dnsNames] }, 'certificate refused: CSR asks for identities the dataplane does not have');
      throw new WeftError('forbidden', `the CSR asks for identities dataplane "${name}" does not have: ${[...extra, ...csr.dnsNames].join(', ')}`, [
        { field: 'csr', message: `may name only ${[...allowed].join(', ')}` },
      ]);
    }
    const spiffe = csr.uris.filter((u) => u.startsWith('spiffe://'));
    if (spiffe.length === 0) throw new WeftError('invalid_resource', 'the CSR names no SPIFFE ID', [{ field: 'csr', message: `must name one of ${entitled.spiffe.join(', ')}` }]);
    const now = this.now();
    const lifetime = durationToMs(backend.dpCert.rotation.expiration);
    const notBefore = new Date(now - 60_000);
    const expiresAt = new Date(now + lifetime);
    const certificate = await signWorkloadCertificate({ ca: await this.ca(mesh, backend), publicKey: csr.publicKey, uris: csr.uris, notBefore, notAfter: expiresAt });
    let perMesh = this.issued.get(mesh);
    if (!perMesh) this.issued.set(mesh, (perMesh = new Map()));
    perMesh.set(name, { backend: backend.name, expiresAt: expiresAt.getTime() });
    this.sweepExpired(mesh, perMesh, now);
    // Switching back to a backend un-retires it.
    this.retired.get(mesh)?.delete(backend.name);
    await this.retireOldRoots(mesh, m);
    return { certificate, caBundle: await this.trustBundle(mesh), spiffeIds: spiffe, expiresAt };
  }

  /**
   * The end of a CA rotation: once every Dataplane of the mesh holds a valid certificate from the
   * enabled backend (as far as this replica issued them), the other backends' roots leave the
   * trust bundle, and proxies are told. A Dataplane that never renews (offline) holds this back:
   * delete it, or remove the old backend from the Mesh.
   */
  private async retireOldRoots(mesh: string, m: Resource<MeshSpec>): Promise<void> {
    const enabled = m.spec.mtls?.enabledBackend;
    const retired = this.retired.get(mesh) ?? new Set<string>();
    const others = (m.spec.mtls?.backends ?? []).map((b) => b.name).filter((b) => b !== enabled && !retired.has(b));
    if (!enabled || others.length === 0) return;
    const issued = this.issued.get(mesh);
    const now = this.now();
    const dps = await this.store.list('Dataplane', { mesh, limit: 100_000 });
    const pending = dps.items.filter((d) => {
      const r = issued?.get(d.name);
      return !r || r.backend !== enabled || r.expiresAt <= now;
    });
    if (pending.length > 0) return;
    for (const b of others) retired.add(b);
    this.retired.set(mesh, retired);
    this.logger?.info({ mesh, enabledBackend: enabled, dropped: others }, 'CA rotation done: every dataplane holds a certificate from the enabled backend; the old roots left the trust bundle');
    this.onTrustBundleChange?.(mesh);
  }
}
