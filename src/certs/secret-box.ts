import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { WeftError } from '../core/index.js';

/** The error of a control plane whose secrets key is not the one its store's secrets were sealed with. */
export function wrongSecretsKey(keyPath: string, what: string): WeftError {
  return new WeftError('invalid_config', `the secrets key (${keyPath}) cannot open ${what}: it was sealed with another key. Every control plane sharing a store must use the same key file: copy it from the first one.`, [
    { field: 'secrets.keyFile', message: 'not the key this store was sealed with' },
  ]);
}

/**
 * Encrypts secrets kept in the store (token signing keys, built-in CA keys) with AES-256-GCM, so
 * a copy of the database alone reveals no key. The 32-byte key lives in a file of its own, mode 0600.
 */
export class SecretBox {
  private constructor(
    private readonly key: Buffer,
    /** The key file, for errors. */
    readonly path = 'the secrets key',
  ) {}

  /** Reads the key file, creating it (random, mode 0600) when `create` is set and it is missing. */
  static fromFile(path: string, create: boolean): SecretBox {
    if (create) {
      try {
        writeFileSync(path, randomBytes(32).toString('base64'), { mode: 0o600, flag: 'wx' });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    const key = Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
    if (key.length !== 32) throw new Error(`${path} must hold 32 bytes of base64 (it holds ${key.length})`);
    return new SecretBox(key, path);
  }

  static fromKey(key: Buffer): SecretBox {
    if (key.length !== 32) throw new Error('a secret box key is 32 bytes');
    return new SecretBox(key);
  }

  private refusal?: WeftError;

  /** From now on `seal` throws `why`: this key is not the one the store's secrets were sealed with. */
  refuseSealing(why: WeftError): void {
    this.refusal = why;
  }

  /** `v1.<iv>.<tag>.<ciphertext>`, base64url parts. `context` is bound in (e.g. the resource name). */
  seal(plaintext: string, context: string): string {
    if (this.refusal) throw this.refusal;
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(context));
    const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final()]);
    return ['v1', iv.toString('base64url'), c.getAuthTag().toString('base64url'), ct.toString('base64url')].join('.');
  }

  /** The plaintext; throws when `sealed` is damaged, or was sealed with another key or context. */
  open(sealed: string, context: string): string {
    const [v, iv, tag, ct] = sealed.split('.');
    if (v !== 'v1' || !iv || !tag || ct === undefined) throw new Error('not a sealed secret');
    const d = createDecipheriv('aes-256-gcm', this.key, Buffer.from(iv, 'base64url'));
    d.setAAD(Buffer.from(context));
    d.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([d.update(Buffer.from(ct, 'base64url')), d.final()]).toString('utf8');
  }

  /**
   * `open` for a secret kept in the store: one this key cannot open was sealed by a control plane
   * with another key (`what` names it in the error), which is a configuration error.
   */
  openStored(sealed: string, context: string, what: string): string {
    try {
      return this.open(sealed, context);
    } catch {
      throw wrongSecretsKey(this.path, what);
    }
  }

  /** Whether this key opens `sealed` (sealed with this key and context, and not damaged). */
  opens(sealed: string, context: string): boolean {
    try {
      this.open(sealed, context);
      return true;
    } catch {
      return false;
    }
  }
}
