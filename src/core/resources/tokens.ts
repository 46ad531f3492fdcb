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

/**
 * A known text sealed with the secrets key by the first control plane to start on a store, so
 * that every other one can check it holds the same key (internal: never served; see
 * certs/key-check.ts).
 */
export const secretsKeyCheckSpec = z.strictObject({ sealed: z.string().min(1) });
export type SecretsKeyCheckSpec = z.infer<typeof secretsKeyCheckSpec>;

/**
 * Kuma's Secret: opaque data (base64) that other resources refer to by name, e.g. a provided CA's
 * certificate and key (`conf.cert: {secret: NAME}`). Write-only through the API: reads show that
 * data is set, never the data.
 */
export const secretSpec = z.strictObject({
  data: z
    .string()
    .min(1)
    .refine((s) => /^[A-Za-z0-9+/]+={0,2}$/.test(s.replace(/\s+/g, '')) && s.replace(/\s+/g, '').length % 4 === 0, 'must be base64'),
});
export type SecretSpec = z.infer<typeof secretSpec>;
