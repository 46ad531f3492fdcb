import { z } from 'zod';
import { tagsSchema } from '../validation.js';

export const TARGET_REF_KINDS = ['Mesh', 'MeshSubset', 'MeshService', 'MeshServiceSubset', 'Dataplane', 'MeshGateway', 'MeshHTTPRoute'] as const;

const targetRef = z.strictObject({
  kind: z.enum(TARGET_REF_KINDS),
  name: z.string().min(1).optional(),
  namespace: z.string().min(1).optional(),
  mesh: z.string().min(1).optional(),
  tags: tagsSchema.optional(),
  labels: z.record(z.string(), z.string()).optional(),
  sectionName: z.string().min(1).optional(),
  proxyTypes: z.array(z.enum(['Sidecar', 'Gateway'])).optional(),
});

export type TargetRef = z.infer<typeof targetRef>;

/** Checks that a targetRef carries what its kind needs and is a kind allowed at that place. */
function checkTargetRef(ctx: z.RefinementCtx, ref: TargetRef, path: PropertyKey[], allowed: readonly string[]): void {
  if (!allowed.includes(ref.kind)) {
    ctx.addIssue({ code: 'custom', path: [...path, 'kind'], message: `must be one of: ${allowed.join(', ')}` });
    return;
  }
  const needsName = ref.kind === 'MeshService' || ref.kind === 'MeshServiceSubset';
  const needsTags = ref.kind === 'MeshSubset' || ref.kind === 'MeshServiceSubset';
  if (needsName && ref.name === undefined && ref.labels === undefined) ctx.addIssue({ code: 'custom', path: [...path, 'name'], message: `required for kind ${ref.kind}` });
  if (ref.kind === 'Mesh' && ref.name !== undefined) ctx.addIssue({ code: 'custom', path: [...path, 'name'], message: 'must not be set for kind Mesh' });
  if ((ref.kind === 'Mesh' || ref.kind === 'MeshService') && ref.tags !== undefined) {
    ctx.addIssue({ code: 'custom', path: [...path, 'tags'], message: `must not be set for kind ${ref.kind}` });
  }
  if (needsTags && ref.tags === undefined) ctx.addIssue({ code: 'custom', path: [...path, 'tags'], message: `required for kind ${ref.kind}` });
}

const TOP_KINDS = ['Mesh', 'MeshSubset', 'MeshService', 'MeshServiceSubset', 'Dataplane'] as const;
const FROM_KINDS = ['Mesh', 'MeshSubset', 'MeshService', 'MeshServiceSubset'] as const;

export const MTP_ACTIONS = ['Allow', 'Deny', 'AllowWithShadowDeny'] as const;

/** Resource body of a MeshTrafficPermission: `{ spec: { targetRef, from[] } }` as in Kuma. */
export const meshTrafficPermissionBody = z.strictObject({
  spec: z
    .strictObject({
      /** The proxies this policy configures; the whole mesh when absent. */
      targetRef: targetRef.default({ kind: 'Mesh' }),
      from: z
        .array(
          z.strictObject({
            targetRef,
            default: z.strictObject({ action: z.enum(MTP_ACTIONS) }),
          }),
        )
        .min(1),
    })
    .superRefine((spec, ctx) => {
      checkTargetRef(ctx, spec.targetRef, ['targetRef'], TOP_KINDS);
      spec.from.forEach((f, i) => checkTargetRef(ctx, f.targetRef, ['from', i, 'targetRef'], FROM_KINDS));
    }),
});

export type MeshTrafficPermissionBody = z.infer<typeof meshTrafficPermissionBody>;
