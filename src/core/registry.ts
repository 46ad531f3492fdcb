import type { z } from 'zod';
import type { Resource } from './resource.js';
import { MESH_TYPE } from './resource.js';
import { meshSpec, enabledMtlsBackend, type MeshSpec } from './resources/mesh.js';
import { dataplaneSpec, dataplaneTagSets, dataplaneServices, type DataplaneSpec } from './resources/dataplane.js';
import { trafficPermissionSpec, type TrafficPermissionSpec } from './resources/traffic-permission.js';
import { meshTrafficPermissionBody, type MeshTrafficPermissionBody, type TargetRef } from './resources/mesh-traffic-permission.js';
import { meshCaSpec, secretsKeyCheckSpec, secretSpec, signingKeySpec, tokenRevocationSpec, type MeshCaSpec, type SecretsKeyCheckSpec, type SecretSpec, type SigningKeySpec, type TokenRevocationSpec } from './resources/tokens.js';

export interface Column<S> {
  header: string;
  value(r: Resource<S>): string;
}

/**
 * Everything the control plane needs to know about a resource type. Adding a type (every future
 * Mesh* policy) is one of these declarations plus one `register` line.
 */
export interface ResourceType<S = unknown> {
  /** `type:` as written in YAML. */
  readonly name: string;
  /** URL segment in the HTTP API, as Kuma spells it. */
  readonly plural: string;
  /** Other names weftctl accepts (singular, short forms). */
  readonly aliases: readonly string[];
  readonly scope: 'global' | 'mesh';
  /** Schema of the body (all fields but metadata); gives the TypeScript type and the defaults. */
  readonly schema: z.ZodType<S>;
  /** Tag sets the `tag` filter of list calls matches against. */
  readonly tagSets?: (spec: S) => Record<string, string>[];
  /** Extra table columns for `weftctl get`. */
  readonly columns?: readonly Column<S>[];
  /** Kept by the control plane for itself (keys): never read or written through the API. */
  readonly internal?: boolean;
  /** What API reads show instead of the stored body (write-only fields such as secret data). */
  readonly redact?: (spec: S) => S;
  /**
   * The fields set in `spec` that are accepted and kept (Kuma's YAML has them) but not acted on:
   * writes answer with a warning naming them, so nobody takes them for applied.
   */
  readonly notApplied?: (spec: S) => string[];
}

/** The keys of `fields` set in `obj`, each prefixed by `at`. */
function setFields(obj: object | undefined, fields: readonly string[], at = ''): string[] {
  if (!obj) return [];
  return fields.filter((f) => (obj as Record<string, unknown>)[f] !== undefined).map((f) => `${at}${f}`);
}

export function defineType<S>(def: ResourceType<S>): ResourceType<S> {
  return Object.freeze(def);
}

export class ResourceRegistry {
  private readonly byName = new Map<string, ResourceType<unknown>>();
  private readonly byAnyName = new Map<string, ResourceType<unknown>>();

  register<S>(def: ResourceType<S>): this {
    const t = def as unknown as ResourceType<unknown>;
    if (this.byName.has(def.name)) throw new Error(`resource type ${def.name} registered twice`);
    this.byName.set(def.name, t);
    for (const n of [def.name, def.plural, ...def.aliases]) {
      const k = n.toLowerCase();
      const prev = this.byAnyName.get(k);
      if (prev && prev !== t) throw new Error(`name "${n}" is used by both ${prev.name} and ${def.name}`);
      this.byAnyName.set(k, t);
    }
    return this;
  }

  /** By exact `type:` name. */
  get(name: string): ResourceType<unknown> | undefined {
    return this.byName.get(name);
  }

  /** By URL segment. */
  byPlural(plural: string): ResourceType<unknown> | undefined {
    const t = this.byAnyName.get(plural.toLowerCase());
    return t && t.plural === plural ? t : undefined;
  }

  /** By any name a user may type: type name, plural or alias, any case. Internal types excluded. */
  resolve(anyName: string): ResourceType<unknown> | undefined {
    const t = this.byAnyName.get(anyName.toLowerCase());
    return t?.internal ? undefined : t;
  }

  /** The types users can see and apply. */
  all(): ResourceType<unknown>[] {
    return [...this.byName.values()].filter((t) => !t.internal);
  }
}

function describeTargetRef(ref: TargetRef): string {
  if (ref.name) return `${ref.kind}/${ref.name}`;
  if (ref.tags) return `${ref.kind}[${Object.entries(ref.tags).map(([k, v]) => `${k}=${v}`).join(',')}]`;
  return ref.kind;
}

export const MeshType = defineType<MeshSpec>({
  name: MESH_TYPE,
  plural: 'meshes',
  aliases: ['mesh'],
  scope: 'global',
  schema: meshSpec,
  notApplied: (m) => [
    ...setFields(m, ['logging', 'tracing', 'metrics', 'routing', 'constraints', 'meshServices']),
    ...setFields(m.mtls, ['skipValidation'], 'mtls.'),
    ...(m.mtls?.backends ?? []).flatMap((b, i) => setFields(b, ['rootChain'], `mtls.backends[${i}].`)),
  ],
  columns: [
    {
      header: 'MTLS',
      value: (r) => {
        const b = enabledMtlsBackend(r.spec);
        return b ? `${b.type}/${b.name} (${b.mode})` : 'off';
      },
    },
  ],
});

export const DataplaneType = defineType<DataplaneSpec>({
  name: 'Dataplane',
  plural: 'dataplanes',
  aliases: ['dataplane', 'dp', 'dps'],
  scope: 'mesh',
  schema: dataplaneSpec,
  tagSets: dataplaneTagSets,
  notApplied: (d) => [
    ...setFields(d, ['metrics', 'probes']),
    ...setFields(d.networking.transparentProxying, ['reachableBackends'], 'networking.transparentProxying.'),
    ...(d.networking.gateway?.type === 'BUILTIN' ? ['networking.gateway.type: BUILTIN (a built-in gateway needs MeshGateway, which Weft does not have)'] : []),
  ],
  columns: [
    { header: 'ADDRESS', value: (r) => r.spec.networking.advertisedAddress ?? r.spec.networking.address },
    { header: 'SERVICES', value: (r) => dataplaneServices(r.spec).join(',') },
  ],
});

export const TrafficPermissionType = defineType<TrafficPermissionSpec>({
  name: 'TrafficPermission',
  plural: 'traffic-permissions',
  aliases: ['traffic-permission', 'trafficpermission', 'trafficpermissions', 'tp'],
  scope: 'mesh',
  schema: trafficPermissionSpec,
  columns: [
    { header: 'SOURCES', value: (r) => r.spec.sources.map((s) => s.match['kuma.io/service'] ?? '?').join(',') },
    { header: 'DESTINATIONS', value: (r) => r.spec.destinations.map((d) => d.match['kuma.io/service'] ?? '?').join(',') },
  ],
});

export const MeshTrafficPermissionType = defineType<MeshTrafficPermissionBody>({
  name: 'MeshTrafficPermission',
  plural: 'meshtrafficpermissions',
  aliases: ['meshtrafficpermission', 'mtp', 'mtps'],
  scope: 'mesh',
  schema: meshTrafficPermissionBody,
  columns: [
    { header: 'TARGETREF', value: (r) => describeTargetRef(r.spec.spec.targetRef) },
    { header: 'FROM', value: (r) => r.spec.spec.from.map((f) => `${describeTargetRef(f.targetRef)}:${f.default.action}`).join(',') },
  ],
});

export const DataplaneTokenRevocationType = defineType<TokenRevocationSpec>({
  name: 'DataplaneTokenRevocation',
  plural: 'dataplane-token-revocations',
  aliases: ['dataplane-token-revocation'],
  scope: 'mesh',
  schema: tokenRevocationSpec,
  columns: [{ header: 'REVOKED', value: (r) => String(r.spec.ids.length) }],
});

export const SecretType = defineType<SecretSpec>({
  name: 'Secret',
  plural: 'secrets',
  aliases: ['secret'],
  scope: 'mesh',
  schema: secretSpec,
  redact: () => ({ data: '(write-only: set, not shown)' }),
});

export const SigningKeyType = defineType<SigningKeySpec>({
  name: 'DataplaneTokenSigningKey',
  plural: 'dataplane-token-signing-keys',
  aliases: [],
  scope: 'mesh',
  internal: true,
  schema: signingKeySpec,
});

export const MeshCaType = defineType<MeshCaSpec>({
  name: 'MeshCertificateAuthority',
  plural: 'mesh-certificate-authorities',
  aliases: [],
  scope: 'mesh',
  internal: true,
  schema: meshCaSpec,
});

export const SecretsKeyCheckType = defineType<SecretsKeyCheckSpec>({
  name: 'SecretsKeyCheck',
  plural: 'secrets-key-checks',
  aliases: [],
  scope: 'global',
  internal: true,
  schema: secretsKeyCheckSpec,
});

/** The registry of the types this control plane serves. */
export function defaultRegistry(): ResourceRegistry {
  return new ResourceRegistry()
    .register(MeshType)
    .register(DataplaneType)
    .register(TrafficPermissionType)
    .register(MeshTrafficPermissionType)
    .register(DataplaneTokenRevocationType)
    .register(SecretType)
    .register(SigningKeyType)
    .register(MeshCaType)
    .register(SecretsKeyCheckType);
}

/** Flattened `key=value` strings of a resource's tag sets, for the store's tag index. */
export function indexTags(def: ResourceType<unknown> | undefined, spec: unknown): string[] {
  if (!def?.tagSets) return [];
  const out = new Set<string>();
  for (const set of def.tagSets(spec)) for (const [k, v] of Object.entries(set)) out.add(`${k}=${v}`);
  return [...out].sort();
}
