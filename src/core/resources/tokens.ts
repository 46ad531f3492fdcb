import { z } from 'zod';

/**
 * A mesh's dataplane-token signing key (internal: never served by the API). The private key is
 * sealed with the control plane's secret key; the public key is kept in clear for verification.
 */
export const signingKeySpec = z.strictObject({
  keyId: z.string().min(1),
  algorithm: z.literal('ES256'),
  publicKeyPem: z.string().min(1),
  sealedPrivateKey: z.string().min(1),
});
export type SigningKeySpec = z.infer<typeof signingKeySpec>;

/** Dataplane tokens to refuse from now on, by id (the token's `jti`, printed when it is generated). */
export const tokenRevocationSpec = z.strictObject({
  ids: z.array(z.string().min(1)).min(1),
  reason: z.string().optional(),
});
export type TokenRevocationSpec = z.infer<typeof tokenRevocationSpec>;

/** A mesh backend's CA (internal: never served). The private key is sealed like signing keys. */
export const meshCaSpec = z.strictObject({
  backend: z.string().min(1),
  keyType: z.enum(['ECDSA', 'RSA']),
  certPem: z.string().min(1),
  sealedKeyPem: z.string().min(1),
});
export type MeshCaSpec = z.infer<typeof meshCaSpec>;
