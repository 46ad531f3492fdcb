import { isWeftError, MeshCaType, SecretsKeyCheckType, SigningKeyType, type MeshCaSpec, type Resource, type SecretsKeyCheckSpec, type SigningKeySpec, type WeftError } from '../core/index.js';
import type { Store } from '../store/index.js';
import { caKeySeal } from './mesh-ca.js';
import { wrongSecretsKey, type SecretBox } from './secret-box.js';
import { signingKeySeal } from './tokens.js';

const CHECK_KEY = { type: SecretsKeyCheckType.name, mesh: '', name: 'secrets-key' };
const CHECK_TEXT = 'weft secrets key';

/**
 * Control planes sharing a store must share the secrets key: what one seals (token signing keys,
 * CA keys), the others open. The first to start on a store seals a known text in it; every one
 * after checks that its key opens it. One whose key does not gets the error back, and seals
 * nothing from then on (`SecretBox.refuseSealing`): it cannot make keys the others cannot open.
 * A store from before this check has its first sealed secrets tried instead, then gets the check.
 */
export async function checkSecretsKey(store: Store, box: SecretBox): Promise<WeftError | undefined> {
  let check = (await store.get(CHECK_KEY)) as Resource<SecretsKeyCheckSpec> | undefined;
  if (!check) {
    const key = ((await store.list(SigningKeyType.name, { limit: 1 })).items as Resource<SigningKeySpec>[])[0];
    const ca = ((await store.list(MeshCaType.name, { limit: 1 })).items as Resource<MeshCaSpec>[])[0];
    const sealed = [...(key ? [{ text: key.spec.sealedPrivateKey, ...signingKeySeal(key.mesh, key.spec.keyId) }] : []), ...(ca ? [{ text: ca.spec.sealedKeyPem, ...caKeySeal(ca.mesh, ca.spec.backend) }] : [])];
    for (const s of sealed) if (!box.opens(s.text, s.context)) return wrongSecretsKey(box.path, s.what);
    try {
      check = (await store.create({ ...CHECK_KEY, labels: {}, spec: { sealed: box.seal(CHECK_TEXT, CHECK_KEY.name) } })) as Resource<SecretsKeyCheckSpec>;
    } catch (err) {
      // Another control plane starting at the same moment wrote it first.
      if (!isWeftError(err, 'already_exists')) throw err;
      check = (await store.get(CHECK_KEY)) as Resource<SecretsKeyCheckSpec>;
    }
  }
  return box.opens(check.spec.sealed, CHECK_KEY.name) ? undefined : wrongSecretsKey(box.path, 'the secrets in this store');
}
