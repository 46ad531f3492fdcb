/** The SPIFFE ID of a service of a mesh, as Kuma writes it: `spiffe://<mesh>/<service>`. */
export function spiffeId(mesh: string, service: string): string {
  return `spiffe://${mesh}/${encodeURIComponent(service)}`;
}

/** Prefix every SPIFFE ID of a mesh starts with. */
export function meshSpiffePrefix(mesh: string): string {
  return `spiffe://${mesh}/`;
}

/** Kuma's extra SANs: one `kuma://<tag>/<value>` per tag of the Dataplane (the service tag excepted). */
export function kumaTagUri(tag: string, value: string): string {
  return `kuma://${tag}/${encodeURIComponent(value)}`;
}

/** The xDS `node.id` of a Dataplane: `<mesh>.<name>`. A mesh name has no "." (a Dataplane name may). */
export function nodeIdOf(mesh: string, name: string): string {
  return `${mesh}.${name}`;
}

/** The mesh and Dataplane name a `node.id` stands for, or undefined when it is not `<mesh>.<name>`. */
export function splitNodeId(id: string): { mesh: string; name: string } | undefined {
  const dot = id.indexOf('.');
  if (dot <= 0 || dot === id.length - 1) return undefined;
  return { mesh: id.slice(0, dot), name: id.slice(dot + 1) };
}
