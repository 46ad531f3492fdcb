import {
  kumaTagUri,
  meshSpiffePrefix,
  SERVICE_TAG,
  spiffeId,
  type DataplaneSpec,
  type Inbound,
  type MeshTrafficPermissionBody,
  type Resource,
  type TargetRef,
  type TrafficPermissionSpec,
} from '../core/index.js';

/**
 * Zero-trust permissions as Envoy RBAC (docs/permissions.md has the precedence rules).
 *
 * A rule says what happens to callers matching a principal (an identity in the caller's
 * certificate: its SPIFFE ID and kuma:// tag URIs). A caller gets the action of the most specific
 * rule that matches it; at equal specificity Deny wins. With MeshTrafficPermissions selecting an
 * inbound, legacy TrafficPermissions are ignored there (Kuma: do not mix them); otherwise every
 * TrafficPermission whose destination matches the inbound allows its sources. No matching rule
 * means denied.
 */

type Principal = Record<string, unknown>;
type Action = 'Allow' | 'Deny' | 'AllowWithShadowDeny';

interface Rule {
  /** Readable origin, used as the RBAC policy name: `MeshTrafficPermission/<name>/from[0]`. */
  source: string;
  principal: Principal;
  action: Action;
  /** Specificity, compared element by element: from-kind, from-tags, target-kind, target-tags. */
  rank: readonly number[];
}

const FROM_RANK: Record<string, number> = { Mesh: 0, MeshSubset: 1, MeshService: 2, MeshServiceSubset: 3 };
const TOP_RANK: Record<string, number> = { Mesh: 0, MeshSubset: 1, MeshService: 2, MeshServiceSubset: 3, Dataplane: 4 };

function compareRank(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

const uriSan = (m: Record<string, string>): Principal => ({ authenticated: { principal_name: m } });

/** Callers holding every tag of `tags` (`*` matches any value); no tags: any identity of the mesh. */
function tagsPrincipal(mesh: string, tags: Record<string, string>): Principal {
  const ids = Object.keys(tags)
    .sort()
    .map((k) => {
      const v = tags[k]!;
      if (k === SERVICE_TAG) return uriSan(v === '*' ? { prefix: meshSpiffePrefix(mesh) } : { exact: spiffeId(mesh, v) });
      return uriSan(v === '*' ? { prefix: `kuma://${k}/` } : { exact: kumaTagUri(k, v) });
    });
  if (ids.length === 0) return uriSan({ prefix: meshSpiffePrefix(mesh) });
  return ids.length === 1 ? ids[0]! : { and_ids: { ids } };
}

function tagsMatch(selector: Record<string, string>, tags: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => tags[k] !== undefined && (v === '*' || tags[k] === v));
}

function fromPrincipal(mesh: string, ref: TargetRef): Principal {
  const tags = { ...(ref.tags ?? {}) };
  if ((ref.kind === 'MeshService' || ref.kind === 'MeshServiceSubset') && ref.name) tags[SERVICE_TAG] = ref.name;
  return tagsPrincipal(mesh, ref.kind === 'Mesh' ? {} : tags);
}

/** Does a MeshTrafficPermission's top-level targetRef select this inbound of this Dataplane? */
function selects(ref: TargetRef, dp: Resource<DataplaneSpec>, inbound: Inbound): boolean {
  const tags = inbound.tags;
  switch (ref.kind) {
    case 'Mesh':
      return true;
    case 'MeshSubset':
      return tagsMatch(ref.tags ?? {}, tags);
    case 'MeshService':
      return ref.name === undefined || tags[SERVICE_TAG] === ref.name;
    case 'MeshServiceSubset':
      return (ref.name === undefined || tags[SERVICE_TAG] === ref.name) && tagsMatch(ref.tags ?? {}, tags);
    case 'Dataplane':
      return (
        (ref.name === undefined || ref.name === dp.name) &&
        tagsMatch(ref.labels ?? {}, dp.labels) &&
        (ref.sectionName === undefined || ref.sectionName === inbound.name || ref.sectionName === String(inbound.port))
      );
    default:
      return false;
  }
}

/** The permission rules that apply to one inbound. */
export function inboundRules(
  mesh: string,
  dp: Resource<DataplaneSpec>,
  inbound: Inbound,
  mtps: readonly Resource<MeshTrafficPermissionBody>[],
  tps: readonly Resource<TrafficPermissionSpec>[],
): Rule[] {
  const rules: Rule[] = [];
  for (const p of mtps) {
    const top = p.spec.spec.targetRef;
    if (!selects(top, dp, inbound)) continue;
    p.spec.spec.from.forEach((f, i) => {
      rules.push({
        source: `MeshTrafficPermission/${p.name}/from[${i}]`,
        principal: fromPrincipal(mesh, f.targetRef),
        action: f.default.action,
        rank: [FROM_RANK[f.targetRef.kind] ?? 0, Object.keys(f.targetRef.tags ?? {}).length, TOP_RANK[top.kind] ?? 0, Object.keys(top.tags ?? {}).length],
      });
    });
  }
  if (rules.length > 0) return rules;
  for (const p of tps) {
    if (!p.spec.destinations.some((d) => tagsMatch(d.match, inbound.tags))) continue;
    p.spec.sources.forEach((s, i) => rules.push({ source: `TrafficPermission/${p.name}/sources[${i}]`, principal: tagsPrincipal(mesh, s.match), action: 'Allow', rank: [] }));
  }
  return rules;
}

/** Does any rule depend on which Dataplane it is (not only on the inbound's tags)? */
export function dependsOnDataplane(mtps: readonly Resource<MeshTrafficPermissionBody>[]): boolean {
  return mtps.some((p) => p.spec.spec.targetRef.kind === 'Dataplane');
}

/**
 * Envoy RBAC `rules` (action ALLOW) for a list of rules: one policy per allowing rule, excluding
 * callers that an at-least-as-specific Deny matches. `shadow` treats AllowWithShadowDeny as Deny
 * (for `shadow_rules`, which log what would be denied without denying it).
 */
export function rbacRules(rules: readonly Rule[], shadow = false): { action: 'ALLOW'; policies: Record<string, unknown> } {
  const denies = (r: Rule) => r.action === 'Deny' || (shadow && r.action === 'AllowWithShadowDeny');
  const policies: Record<string, unknown> = {};
  for (const r of rules) {
    if (denies(r)) continue;
    const over = rules.filter((d) => denies(d) && compareRank(d.rank, r.rank) >= 0).map((d) => d.principal);
    const principal = over.length === 0 ? r.principal : { and_ids: { ids: [r.principal, { not_id: over.length === 1 ? over[0] : { or_ids: { ids: over } } }] } };
    policies[r.source] = { permissions: [{ any: true }], principals: [principal] };
  }
  return { action: 'ALLOW', policies };
}

export function hasShadowDeny(rules: readonly Rule[]): boolean {
  return rules.some((r) => r.action === 'AllowWithShadowDeny');
}
