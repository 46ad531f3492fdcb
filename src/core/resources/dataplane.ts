import { z } from 'zod';
import { addressSchema, portSchema, tagsSchema, durationSchema } from '../validation.js';
import { checkTags, opaque, SERVICE_TAG } from './common.js';

const inbound = z.strictObject({
  /** Port Envoy listens on for this inbound. */
  port: portSchema,
  /** Port of the application the inbound forwards to; defaults to `port`. */
  servicePort: portSchema.optional(),
  /** Address of the application; Kuma's default is 127.0.0.1. */
  serviceAddress: addressSchema.optional(),
  /** Address the inbound listener binds; defaults to `networking.address`. */
  address: addressSchema.optional(),
  name: z.string().min(1).optional(),
  tags: tagsSchema,
  /** `ready: false` keeps this inbound out of other proxies' endpoints. */
  health: z.strictObject({ ready: z.boolean() }).optional(),
  serviceProbe: z
    .strictObject({
      interval: durationSchema.optional(),
      timeout: durationSchema.optional(),
      unhealthyThreshold: z.number().int().min(1).optional(),
      healthyThreshold: z.number().int().min(1).optional(),
      tcp: z.strictObject({}).optional(),
    })
    .optional(),
  state: z.enum(['Ready', 'NotReady', 'Ignored']).optional(),
});

const backendRef = z.strictObject({
  kind: z.enum(['MeshService', 'MeshExternalService', 'MeshMultiZoneService']),
  name: z.string().min(1).optional(),
  port: portSchema.optional(),
  labels: z.record(z.string(), z.string()).optional(),
});

const outbound = z.strictObject({
  /** Port the service is reachable on from this proxy. */
  port: portSchema,
  /** Address the outbound listener binds; defaults to 127.0.0.1. */
  address: addressSchema.optional(),
  tags: tagsSchema.optional(),
  backendRef: backendRef.optional(),
});

const gateway = z.strictObject({
  type: z.enum(['DELEGATED', 'BUILTIN']).default('DELEGATED'),
  tags: tagsSchema,
});

const transparentProxying = z.strictObject({
  redirectPortInbound: portSchema.default(15006),
  redirectPortOutbound: portSchema.default(15001),
  redirectPortInboundV6: portSchema.optional(),
  directAccessServices: z.array(z.string().min(1)).optional(),
  /** Narrows the outbound config to these services (all services of the mesh when absent). */
  reachableServices: z.array(z.string().min(1)).optional(),
  reachableBackends: opaque.optional(),
  ipFamilyMode: z.enum(['DualStack', 'IPv4', 'IPv6', 'dualstack', 'ipv4', 'ipv6']).optional(),
});

const networking = z
  .strictObject({
    /** Address other proxies use to reach this one (Envoy binds it unless advertisedAddress is set). */
    address: addressSchema,
    advertisedAddress: addressSchema.optional(),
    inbound: z.array(inbound).optional(),
    outbound: z.array(outbound).optional(),
    gateway: gateway.optional(),
    transparentProxying: transparentProxying.optional(),
    admin: z.strictObject({ port: portSchema }).optional(),
  })
  .superRefine((n, ctx) => {
    const inbounds = n.inbound ?? [];
    if (inbounds.length === 0 && n.gateway === undefined) {
      ctx.addIssue({ code: 'custom', path: ['inbound'], message: 'must have at least one inbound or a gateway' });
    }
    if (inbounds.length > 0 && n.gateway !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['gateway'], message: 'cannot be set together with inbound' });
    }
    const bound = new Map<string, number>();
    inbounds.forEach((ib, i) => {
      checkTags(ctx, ib.tags, ['inbound', i, 'tags'], { requireService: true });
      const key = `${ib.address ?? n.address}:${ib.port}`;
      const prev = bound.get(key);
      if (prev !== undefined) ctx.addIssue({ code: 'custom', path: ['inbound', i, 'port'], message: `${key} is already used by inbound[${prev}]` });
      else bound.set(key, i);
    });
    if (n.gateway) checkTags(ctx, n.gateway.tags, ['gateway', 'tags'], { requireService: true });
    const outs = new Map<string, number>();
    (n.outbound ?? []).forEach((ob, i) => {
      if (ob.tags === undefined && ob.backendRef === undefined) {
        ctx.addIssue({ code: 'custom', path: ['outbound', i], message: 'must set tags or backendRef' });
      } else if (ob.tags !== undefined && ob.backendRef !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['outbound', i, 'backendRef'], message: 'cannot be set together with tags' });
      }
      checkTags(ctx, ob.tags, ['outbound', i, 'tags'], { requireService: true });
      const key = `${ob.address ?? '127.0.0.1'}:${ob.port}`;
      const prev = outs.get(key);
      if (prev !== undefined) ctx.addIssue({ code: 'custom', path: ['outbound', i, 'port'], message: `${key} is already used by outbound[${prev}]` });
      else outs.set(key, i);
    });
  });

export const dataplaneSpec = z.strictObject({
  networking,
  metrics: opaque.optional(),
  probes: opaque.optional(),
});

export type DataplaneSpec = z.infer<typeof dataplaneSpec>;
export type Inbound = NonNullable<DataplaneSpec['networking']['inbound']>[number];
export type Outbound = NonNullable<DataplaneSpec['networking']['outbound']>[number];

/** Tag sets of a Dataplane: one per inbound, or the gateway's. */
export function dataplaneTagSets(dp: DataplaneSpec): Record<string, string>[] {
  const sets = (dp.networking.inbound ?? []).map((ib) => ib.tags);
  if (dp.networking.gateway) sets.push(dp.networking.gateway.tags);
  return sets;
}

export function dataplaneServices(dp: DataplaneSpec): string[] {
  return [...new Set(dataplaneTagSets(dp).map((t) => t[SERVICE_TAG]).filter((s): s is string => s !== undefined))];
}

/**
 * Does a Dataplane carry every tag of a tag-bound token? Every inbound (or the gateway) must have
 * them all, so a token for `kuma.io/service: web` cannot register a Dataplane that also serves
 * another service.
 */
export function dataplaneHasTags(dp: DataplaneSpec, tags: Readonly<Record<string, string>>): boolean {
  const sets = dataplaneTagSets(dp);
  return sets.length > 0 && sets.every((set) => Object.entries(tags).every(([k, v]) => set[k] === v));
}
