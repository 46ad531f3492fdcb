/** Identity of a stored resource. Global types (Mesh) have `mesh: ''`. */
export interface ResourceKey {
  type: string;
  mesh: string;
  name: string;
}

/** What a client asks to store. `spec` is the resource body: every field that is not metadata. */
export interface ResourceInput<S = unknown> extends ResourceKey {
  labels: Record<string, string>;
  spec: S;
}

/** A stored resource. `version` changes on every write that changes it (optimistic concurrency). */
export interface Resource<S = unknown> extends ResourceInput<S> {
  version: string;
  creationTime: string;
  modificationTime: string;
}

export const MESH_TYPE = 'Mesh';

export function keyOf(r: ResourceKey): ResourceKey {
  return { type: r.type, mesh: r.mesh, name: r.name };
}

export function describeKey(k: ResourceKey): string {
  return k.mesh === '' ? `${k.type} "${k.name}"` : `${k.type} "${k.name}" in mesh "${k.mesh}"`;
}

/** Orders resources by name (code-unit order, as the stores list them), for deterministic output. */
export function compareNames(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
