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
