import { WeftError, type Violation } from './errors.js';
import type { ResourceRegistry, ResourceType } from './registry.js';
import { MESH_TYPE, type Resource, type ResourceInput } from './resource.js';
import { labelsSchema, nameSchema, validate } from './validation.js';

/** Metadata fields of Kuma's Universal format; everything else is the resource body. */
const META_KEYS = new Set(['type', 'mesh', 'name', 'labels', 'creationTime', 'modificationTime']);

/** Kuma's REST/YAML form: metadata and body side by side at the top level. */
export function toWire(r: Resource): Record<string, unknown> {
  const out: Record<string, unknown> = { type: r.type };
  if (r.mesh !== '') out.mesh = r.mesh;
  out.name = r.name;
  if (Object.keys(r.labels).length > 0) out.labels = r.labels;
  out.creationTime = r.creationTime;
  out.modificationTime = r.modificationTime;
  Object.assign(out, r.spec as object);
  return out;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export interface Expected {
  type?: string;
  mesh?: string;
  name?: string;
}

/**
 * Validates one resource in Kuma's Universal form and returns it with defaults applied, or a
 * WeftError carrying every violation. `expected` holds what the URL already says.
 */
export function decodeResource(
  input: unknown,
  registry: ResourceRegistry,
  expected: Expected = {},
): { def: ResourceType<unknown>; resource: ResourceInput } {
  if (!isPlainObject(input)) throw new WeftError('invalid_resource', 'a resource must be a mapping of fields', [{ field: '', message: 'must be an object' }]);
  const typeName = input.type;
  if (typeName === undefined) throw new WeftError('invalid_resource', 'the resource has no type', [{ field: 'type', message: 'required' }]);
  const found = typeof typeName === 'string' ? registry.get(typeName) : undefined;
  const def = found?.internal ? undefined : found;
  if (!def) {
    const known = registry.all().map((t) => t.name).join(', ');
    throw new WeftError('unknown_type', `unknown resource type ${JSON.stringify(typeName)}; known types: ${known}`, [
      { field: 'type', message: `must be one of: ${known}` },
    ]);
  }
  const violations: Violation[] = [];
  if (expected.type !== undefined && expected.type !== def.name) {
    violations.push({ field: 'type', message: `must be ${expected.type} at this URL (got ${def.name})` });
  }

  const name = validate(nameSchema, input.name, 'name');
  if (!name.ok) violations.push(...name.violations);
  // Proxies are known as "<mesh>.<name>", split at the first dot: a mesh name cannot have one.
  else if (def.name === MESH_TYPE && name.value.includes('.')) violations.push({ field: 'name', message: 'a mesh name must not contain "."' });
  else if (expected.name !== undefined && name.value !== expected.name) {
    violations.push({ field: 'name', message: `must match the name in the URL ("${expected.name}")` });
  }

  let mesh = '';
  if (def.scope === 'mesh') {
    const m = validate(nameSchema, input.mesh, 'mesh');
    if (!m.ok) violations.push(...m.violations);
    else {
      mesh = m.value;
      if (expected.mesh !== undefined && mesh !== expected.mesh) violations.push({ field: 'mesh', message: `must match the mesh in the URL ("${expected.mesh}")` });
    }
  } else if (input.mesh !== undefined) {
    violations.push({ field: 'mesh', message: `must not be set: ${def.name} is not inside a mesh` });
  }

  let labels: Record<string, string> = {};
  if (input.labels !== undefined) {
    const l = validate(labelsSchema, input.labels, 'labels');
    if (!l.ok) violations.push(...l.violations);
    else labels = l.value;
  }

  const body: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(input)) if (!META_KEYS.has(k)) body[k] = v;
  const spec = validate(def.schema, body);
  if (!spec.ok) violations.push(...spec.violations);

  if (violations.length > 0 || !spec.ok || !name.ok) {
    const label = typeof input.name === 'string' ? ` "${input.name}"` : '';
    throw new WeftError('invalid_resource', `${def.name}${label} is invalid`, violations);
  }
  return { def, resource: { type: def.name, mesh, name: name.value, labels, spec: spec.value } };
}
