import { randomUUID } from 'node:crypto';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, exportPKCS8, exportSPKI, generateKeyPair, importPKCS8, jwtVerify, SignJWT } from 'jose';
import { isWeftError, SigningKeyType, DataplaneTokenRevocationType, WeftError, type Logger, type Resource, type SigningKeySpec, type TokenRevocationSpec } from '../core/index.js';
import type { Store } from '../store/index.js';
import type { SecretBox } from './secret-box.js';

const ISSUER = 'weft';

/** Who a verified dataplane token speaks for. */
export interface DataplaneIdentity {
  mesh: string;
  /** The Dataplane the token is for; absent for a token bound to tags. */
  name?: string;
  /** A token bound to tags: valid for any Dataplane of the mesh whose every inbound has them. */
  tags?: Record<string, string>;
  /** The token's id (`jti`): what a DataplaneTokenRevocation lists. */
  tokenId: string;
  expiresAt: Date;
}

export interface IssuedToken {
  token: string;
  id: string;
  expiresAt: Date;
}

function isTags(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length > 0 && Object.values(v).every((x) => typeof x === 'string');
}

function refuse(reason: string): WeftError {
  return new WeftError('unauthorized', `dataplane token refused: ${reason}`);
}

/** What a mesh's token signing key is sealed with (`SecretBox` context), and how errors name it. */
export const signingKeySeal = (mesh: string, keyId: string) => ({ context: `${mesh}/${keyId}`, what: `the token signing key of mesh "${mesh}"` });

/**
 * Dataplane tokens: ES256 JWTs signed with a key per mesh, bound to one Dataplane (mesh and
 * name), with an expiry. Keys live in the store (the private half sealed by the SecretBox) so
 * every replica verifies alike. Revocation: list the token id in a DataplaneTokenRevocation, or
 * rotate the mesh's key and drop the old one (every older token fails).
 */
export class DataplaneTokens {
  private readonly publicKeys = new Map<string, KeyObject>();

  constructor(
    private readonly store: Store,
    private readonly box: SecretBox,
    private readonly logger?: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  private async keys(mesh: string): Promise<Resource<SigningKeySpec>[]> {
    const { items } = await this.store.list(SigningKeyType.name, { mesh });
    return (items as Resource<SigningKeySpec>[]).sort((a, b) => (a.creationTime < b.creationTime ? 1 : a.creationTime > b.creationTime ? -1 : b.name.localeCompare(a.name)));
  }

  /** Creates a new signing key for the mesh; new tokens use it. Old keys keep verifying unless dropped. */
  async rotate(mesh: string, opts: { dropPrevious?: boolean } = {}): Promise<string> {
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
    const keyId = randomUUID();
    const name = `signing-key-${Date.now().toString(36)}-${keyId.slice(0, 8)}`;
    const previous = await this.keys(mesh);
    await this.store.write([
      {
        op: 'create',
        resource: {
          type: SigningKeyType.name,
          mesh,
          name,
          labels: {},
          spec: { keyId, algorithm: 'ES256', publicKeyPem: await exportSPKI(publicKey), sealedPrivateKey: this.box.seal(await exportPKCS8(privateKey), signingKeySeal(mesh, keyId).context) },
        },
      },
      ...(opts.dropPrevious ? previous.map((k) => ({ op: 'delete' as const, key: { type: k.type, mesh, name: k.name } })) : []),
    ]);
    this.logger?.info({ mesh, keyId, dropped: opts.dropPrevious ? previous.length : 0 }, 'dataplane token signing key rotated');
    return keyId;
  }

  private async signingKey(mesh: string): Promise<Resource<SigningKeySpec>> {
    let [current] = await this.keys(mesh);
    if (!current) {
      try {
        await this.rotate(mesh);
      } catch (err) {
        if (!isWeftError(err, 'already_exists')) throw err;
      }
      [current] = await this.keys(mesh);
    }
    return current!;
  }

  /**
   * Issues a token for Dataplane `name` of `mesh`, or (name undefined) for any Dataplane of the
   * mesh carrying `tags` on every inbound; valid for `validForMs`.
   */
  async issue(mesh: string, name: string | undefined, validForMs: number, tags?: Record<string, string>): Promise<IssuedToken> {
    if (name === undefined && (!tags || Object.keys(tags).length === 0)) throw new WeftError('invalid_resource', 'a dataplane token needs a name or tags', [{ field: 'name', message: 'required unless tags are given' }]);
    if (!(await this.store.get({ type: 'Mesh', mesh: '', name: mesh }))) throw new WeftError('mesh_not_found', `mesh "${mesh}" does not exist`);
    const key = await this.signingKey(mesh);
    const seal = signingKeySeal(mesh, key.spec.keyId);
    const privateKey = await importPKCS8(this.box.openStored(key.spec.sealedPrivateKey, seal.context, seal.what), 'ES256');
    const id = randomUUID();
    const now = this.now();
    const expiresAt = new Date(now + validForMs);
    const token = await new SignJWT({ mesh, ...(name !== undefined ? { name } : {}), ...(tags && Object.keys(tags).length > 0 ? { tags } : {}) })
      .setProtectedHeader({ alg: 'ES256', kid: key.spec.keyId, typ: 'JWT' })
      .setIssuer(ISSUER)
      .setSubject(name !== undefined ? `${mesh}/${name}` : `${mesh}/tags`)
      .setJti(id)
      .setIssuedAt(Math.floor(now / 1000))
      .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
      .sign(privateKey);
    return { token, id, expiresAt };
  }

  /**
   * Verifies a token; resolves to its identity or rejects with an `unauthorized` WeftError saying
   * why (expired, forged, another mesh's, revoked...). Every refusal is logged as a security event,
   * without the token.
   */
  async verify(token: string, expect: { mesh?: string } = {}): Promise<DataplaneIdentity> {
    try {
      return await this.check(token, expect);
    } catch (err) {
      if (isWeftError(err, 'unauthorized')) this.logger?.warn({ event: 'security', reason: err.message }, 'dataplane token refused');
      throw err;
    }
  }

  private async check(token: string, expect: { mesh?: string }): Promise<DataplaneIdentity> {
    let kid: string | undefined;
    let claims: Record<string, unknown>;
    try {
      const header = decodeProtectedHeader(token);
      if (header.alg !== 'ES256') throw refuse(`algorithm ${String(header.alg)} is not accepted (ES256 only)`);
      kid = header.kid;
      claims = decodeJwt(token);
    } catch (err) {
      if (isWeftError(err)) throw err;
      throw refuse('it is not a JWT');
    }
    const mesh = claims.mesh;
    const name = typeof claims.name === 'string' ? claims.name : undefined;
    const tags = isTags(claims.tags) ? claims.tags : undefined;
    if (typeof mesh !== 'string' || (name === undefined && tags === undefined)) throw refuse('it names no mesh and dataplane (or tags)');
    if (expect.mesh !== undefined && mesh !== expect.mesh) throw refuse(`it is for mesh "${mesh}", not "${expect.mesh}"`);
    const key = (await this.keys(mesh)).find((k) => k.spec.keyId === kid);
    if (!key) throw refuse(`it is signed by a key mesh "${mesh}" does not have (rotated away, or another mesh's)`);
    let publicKey = this.publicKeys.get(key.spec.keyId);
    if (!publicKey) this.publicKeys.set(key.spec.keyId, (publicKey = createPublicKey(key.spec.publicKeyPem)));
    try {
      await jwtVerify(token, publicKey, { issuer: ISSUER, algorithms: ['ES256'], currentDate: new Date(this.now()), requiredClaims: ['exp', 'jti'] });
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw refuse(`it expired at ${new Date(Number(claims.exp) * 1000).toISOString()}`);
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) throw refuse('its signature is not valid (forged or altered)');
      throw refuse((err as Error).message);
    }
    const id = String(claims.jti);
    const { items } = await this.store.list(DataplaneTokenRevocationType.name, { mesh });
    const revoked = (items as Resource<TokenRevocationSpec>[]).find((r) => r.spec.ids.includes(id));
    if (revoked) throw refuse(`token ${id} is revoked by DataplaneTokenRevocation "${revoked.name}"`);
    return { mesh, ...(name !== undefined ? { name } : {}), ...(tags ? { tags } : {}), tokenId: id, expiresAt: new Date(Number(claims.exp) * 1000) };
  }
}
