import { z } from 'zod';
import { durationSchema, errorMap } from '../validation.js';
import { opaque } from './common.js';
import { validateProvidedCa } from './provided-ca.js';

/** Where a provided CA's certificate or key comes from; exactly one source. */
const dataSource = z
  .strictObject({
    secret: z.string().min(1).optional(),
    file: z.string().min(1).optional(),
    inline: z.string().min(1).optional(),
    inlineString: z.string().min(1).optional(),
  })
  .superRefine((ds, ctx) => {
    const set = Object.keys(ds).filter((k) => ds[k as keyof typeof ds] !== undefined);
    if (set.length !== 1) ctx.addIssue({ code: 'custom', path: [], message: 'must set exactly one of: secret, file, inline, inlineString' });
  });

const builtinConf = z.strictObject({
  caCert: z
    .strictObject({
      RSAbits: z.number().int().min(2048).max(8192).optional(),
      expiration: durationSchema.optional(),
    })
    .optional(),
});

const providedConf = z.strictObject({
  cert: dataSource,
  key: dataSource,
});

const backend = z
  .strictObject({
    name: z.string().min(1),
    type: z.enum(['builtin', 'provided']),
    /** PERMISSIVE accepts plaintext and mTLS on inbounds; STRICT only mTLS. */
    mode: z.enum(['PERMISSIVE', 'STRICT']).default('STRICT'),
    dpCert: z
      .strictObject({
        rotation: z.strictObject({ expiration: durationSchema.default('24h') }).default({ expiration: '24h' }),
        requestTimeout: durationSchema.optional(),
      })
      .default({ rotation: { expiration: '24h' } }),
    rootChain: opaque.optional(),
    conf: z.unknown().optional(),
  })
  .superRefine((b, ctx) => {
    const conf = b.conf ?? {};
    const res = (b.type === 'builtin' ? builtinConf : providedConf).safeParse(conf, { error: errorMap });
    // A provided CA given inline is checked now (is a CA, key matches, valid), not at first use.
    if (res.success && b.type === 'provided') {
      const c = res.data as z.infer<typeof providedConf>;
      const text = (ds: typeof c.cert) => ds.inlineString ?? (ds.inline ? Buffer.from(ds.inline, 'base64').toString('utf8') : undefined);
      const cert = text(c.cert);
      const key = text(c.key);
      if (cert !== undefined && key !== undefined) {
        for (const v of validateProvidedCa(cert, key)) ctx.addIssue({ code: 'custom', path: v.field.split('.'), message: v.message });
      }
    }
    if (!res.success) {
      for (const issue of res.error.issues) {
        const keys = issue.code === 'unrecognized_keys' ? issue.keys : [undefined];
        for (const key of keys) {
          ctx.addIssue({
            code: 'custom',
            path: ['conf', ...(issue.path as PropertyKey[]), ...(key === undefined ? [] : [key])],
            message: issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message,
          });
        }
      }
    }
  });

export const meshSpec = z
  .strictObject({
    mtls: z
      .strictObject({
        enabledBackend: z.string().optional(),
        backends: z.array(backend).default([]),
        skipValidation: z.boolean().optional(),
      })
      .optional(),
    networking: z
      .strictObject({
        outbound: z.strictObject({ passthrough: z.boolean().default(true) }).optional(),
      })
      .optional(),
    logging: opaque.optional(),
    tracing: opaque.optional(),
    metrics: opaque.optional(),
    routing: opaque.optional(),
    constraints: opaque.optional(),
    meshServices: opaque.optional(),
    skipCreatingInitialPolicies: z.array(z.string()).optional(),
  })
  .superRefine((mesh, ctx) => {
    const backends = mesh.mtls?.backends ?? [];
    const seen = new Set<string>();
    backends.forEach((b, i) => {
      if (seen.has(b.name)) ctx.addIssue({ code: 'custom', path: ['mtls', 'backends', i, 'name'], message: `duplicate backend name "${b.name}"` });
      seen.add(b.name);
    });
    const enabled = mesh.mtls?.enabledBackend;
    if (enabled !== undefined && enabled !== '' && !seen.has(enabled)) {
      ctx.addIssue({ code: 'custom', path: ['mtls', 'enabledBackend'], message: `must name one of mtls.backends (got "${enabled}")` });
    }
  });

export type MeshSpec = z.infer<typeof meshSpec>;

export type MtlsBackend = NonNullable<MeshSpec['mtls']>['backends'][number];

/** The backend in force, if mTLS is enabled. */
export function enabledMtlsBackend(mesh: MeshSpec): MtlsBackend | undefined {
  const name = mesh.mtls?.enabledBackend;
  if (!name) return undefined;
  return mesh.mtls?.backends.find((b) => b.name === name);
}
