import { compareNames, PROTOCOL_TAG, SERVICE_TAG, type DataplaneSpec, type Protocol, type Resource } from '../core/index.js';

export interface Endpoint {
  address: string;
  port: number;
}

/** What the mesh knows of one service, gathered from the inbounds that carry its name. */
export interface ServiceInfo {
  /** Ready endpoints, in a stable order (by Dataplane name). */
  endpoints: Endpoint[];
  /** The `kuma.io/protocol` its inbounds agree on; `tcp` when absent or when they disagree. */
  protocol: Protocol;
  /** Distinct ports the service is served on, ascending. */
  ports: number[];
}

/** Services of a mesh, by name: every inbound tagged with one (not-ready inbounds are not endpoints). */
export function meshServices(dataplanes: readonly Resource<DataplaneSpec>[]): Map<string, ServiceInfo> {
  const out = new Map<string, ServiceInfo & { protocols: Set<string> }>();
  for (const dp of [...dataplanes].sort(compareNames)) {
    const net = dp.spec.networking;
    for (const ib of net.inbound ?? []) {
      const service = ib.tags[SERVICE_TAG];
      if (!service) continue;
      let info = out.get(service);
      if (!info) out.set(service, (info = { endpoints: [], protocol: 'tcp', ports: [], protocols: new Set() }));
      info.protocols.add(ib.tags[PROTOCOL_TAG] ?? 'tcp');
      if (!info.ports.includes(ib.port)) info.ports.push(ib.port);
      if (ib.health?.ready === false || ib.state === 'NotReady' || ib.state === 'Ignored') continue;
      info.endpoints.push({ address: ib.address ?? net.advertisedAddress ?? net.address, port: ib.port });
    }
  }
  const result = new Map<string, ServiceInfo>();
  for (const [name, { endpoints, ports, protocols }] of out) {
    const protocol = protocols.size === 1 ? ([...protocols][0] as Protocol) : 'tcp';
    result.set(name, { endpoints, protocol, ports: ports.sort((a, b) => a - b) });
  }
  return result;
}

/**
 * What other Dataplanes contribute to a proxy's config apart from endpoints: service names,
 * protocols and ports. While it stays the same, a Dataplane change elsewhere in the mesh changes
 * only ClusterLoadAssignments (see `withEndpoints`).
 */
export function servicesShape(services: ReadonlyMap<string, ServiceInfo>): string {
  const parts: string[] = [];
  for (const [name, info] of services) parts.push(`${name} ${info.protocol} ${info.ports.join(',')}`);
  return parts.sort().join('\n');
}

/** Does `protocol` run over HTTP (an HTTP connection manager instead of a TCP proxy)? */
export function isHttp(protocol: Protocol): boolean {
  return protocol === 'http' || protocol === 'http2' || protocol === 'grpc';
}

/** Does `protocol` need HTTP/2 to the upstream? */
export function isHttp2(protocol: Protocol): boolean {
  return protocol === 'http2' || protocol === 'grpc';
}

const VIP_BASE = 240 << 24; // 240.0.0.0/5: inside Kuma's default VIP range (240.0.0.0/4), away from 255.x
const VIP_SIZE = 1 << 27;

/** FNV-1a, 32 bits: the same on every replica and in every round. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function ipv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * A virtual IP per service in 240.0.0.0/5, for transparent proxying and `.mesh` DNS. The address is
 * a hash of the name, so it is the same on every control plane replica and stays put while
 * services come and go; a collision (rare in 2^27 addresses) moves the later name, in name order,
 * to the next free address.
 */
export function serviceVips(services: Iterable<string>): Map<string, string> {
  const taken = new Set<number>();
  const out = new Map<string, string>();
  for (const name of [...services].sort()) {
    let offset = fnv1a(name) % VIP_SIZE;
    for (;;) {
      const last = offset & 255;
      if (last !== 0 && last !== 255 && !taken.has(offset)) break;
      offset = (offset + 1) % VIP_SIZE;
    }
    taken.add(offset);
    out.set(name, ipv4((VIP_BASE + offset) >>> 0));
  }
  return out;
}
