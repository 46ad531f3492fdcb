import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { buildSnapshot, ResourceEncoder } from '../../src/ads/index.js';
import { createServingCertificate } from '../../src/certs/index.js';
import { decodeResource, defaultRegistry, isWeftError, type DataplaneSpec, type MeshSpec, type MeshTrafficPermissionBody, type Resource, type TrafficPermissionSpec } from '../../src/core/index.js';
import { generateProxyConfig } from '../../src/xds/index.js';
import { seeded } from '../helpers/seeded.js';

/**
 * What the API accepts, translation must turn into config Envoy takes: a resource that passes
 * validation but makes translation throw would stop config for every proxy of its mesh, and one
 * that translates into config outside Envoy's `(validate.rules)` would be refused by each of them.
 * This damages a small mesh's resources at random (a value replaced by one of a pool of tricky
 * ones, a field or list item dropped, duplicated or added, a subtree put elsewhere) and, for every
 * damaged resource the API's decoding accepts, translates the mesh for each of its proxies and
 * builds their snapshots (which checks every resource against Envoy's rules and references).
 * Refusals must be WeftErrors naming a field. WEFT_RESOURCE_FUZZ_SEED and _CASES run others.
 */

const registry = defaultRegistry();
const svc = (name: string) => ({ 'kuma.io/service': name });
type Doc = Record<string, unknown>;

/** A mesh using most of what translation reads: mTLS, no passthrough, every kind of Dataplane, both permission kinds. */
const MESH: { mesh: Doc; dataplanes: Doc[]; trafficPermissions: Doc[]; meshTrafficPermissions: Doc[] } = {
  mesh: { type: 'Mesh', name: 'default', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin', mode: 'PERMISSIVE' }] }, networking: { outbound: { passthrough: false } } },
  dataplanes: [
    { type: 'Dataplane', mesh: 'default', name: 'web-1', networking: { address: '10.0.0.1', inbound: [{ port: 8080, servicePort: 80, tags: { ...svc('web'), 'kuma.io/protocol': 'http', version: 'v1' } }], transparentProxying: { reachableServices: ['api', 'db'], directAccessServices: ['db'] } } },
    { type: 'Dataplane', mesh: 'default', name: 'api-1', networking: { address: 'fd00::2', inbound: [{ port: 9090, tags: { ...svc('api'), 'kuma.io/protocol': 'grpc' }, health: { ready: true } }], outbound: [{ port: 18080, tags: svc('web') }], transparentProxying: { ipFamilyMode: 'DualStack' } } },
    { type: 'Dataplane', mesh: 'default', name: 'db-1', networking: { address: '10.0.0.3', advertisedAddress: '192.0.2.3', inbound: [{ port: 5432, address: '10.0.0.33', serviceAddress: '127.0.0.2', tags: { ...svc('db'), 'kuma.io/protocol': 'tcp' } }, { port: 5433, tags: svc('db-admin') }] } },
    { type: 'Dataplane', mesh: 'default', name: 'gw-1', networking: { address: '10.0.0.4', gateway: { type: 'DELEGATED', tags: svc('gw') }, outbound: [{ port: 10001, tags: svc('api') }] } },
    { type: 'Dataplane', mesh: 'default', name: 'grpc-1', labels: { 'weft.io/proxyless': 'true' }, networking: { address: '10.0.0.5', inbound: [{ port: 7070, tags: { ...svc('grpcsvc'), 'kuma.io/protocol': 'grpc' } }] } },
  ],
  trafficPermissions: [{ type: 'TrafficPermission', mesh: 'default', name: 'tp-1', sources: [{ match: svc('web') }], destinations: [{ match: svc('*') }] }],
  meshTrafficPermissions: [
    {
      type: 'MeshTrafficPermission',
      mesh: 'default',
      name: 'mtp-1',
      spec: { targetRef: { kind: 'MeshService', name: 'db' }, from: [{ targetRef: { kind: 'MeshSubset', tags: { version: 'v1' } }, default: { action: 'Allow' } }, { targetRef: { kind: 'Mesh' }, default: { action: 'Deny' } }] },
    },
  ],
};

/** Values that have broken parsers before: empty, huge, the longest name, wildcard, IPv6, out of range, wrong type. */
const STRINGS = [
  '', 'web', '*', 'db', '10.0.0.1', '::', '::1', 'fd00::9', '0.0.0.0', 'a'.repeat(300), 'a'.repeat(253), `${'a.'.repeat(126)}a`, 'ünï', '0', '-1', '1h', '0s', 'http', 'http2', 'grpc', 'tcp', 'kafka',
  'Allow', 'Deny', 'Mesh', 'MeshService', 'STRICT', 'builtin', 'ca-1', 'a.b', 'a/b', ' ', 'DualStack', 'ipv6', '__proto__', 'constructor',
];
const NUMBERS = [0, 1, -1, 65535, 65536, 1.5, 1e20, 15001, 15006, 15053, 8080, 9090];
const POOL: unknown[] = [...STRINGS, ...NUMBERS, true, false, null, [], {}, ['x'], svc('x'), { a: 1 }];

const clone = <T>(x: T): T => structuredClone(x);

function damage(doc: Doc, rnd: () => number): Doc {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const out = clone(doc);
  for (let n = rnd() < 0.6 ? 1 : 2; n > 0; n--) {
    let node = out as Record<string | number, unknown>;
    for (let depth = 0; depth < 8; depth++) {
      const keys: (string | number)[] = Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node);
      if (keys.length === 0) break;
      const key = pick(keys);
      const child = node[key];
      if (child !== null && typeof child === 'object' && rnd() < 0.75) {
        node = child as Record<string | number, unknown>;
        continue;
      }
      const op = rnd();
      // Mostly a value of the same type, which gets further into validation and translation.
      const like = typeof child === 'string' ? STRINGS : typeof child === 'number' ? NUMBERS : POOL;
      if (op < 0.6) node[key] = clone(pick(rnd() < 0.7 ? like : POOL));
      else if (op < 0.75) {
        if (Array.isArray(node)) node.splice(key as number, 1);
        else if (key !== 'type') delete node[key];
      } else if (op < 0.9) {
        if (Array.isArray(node)) node.push(clone(child));
        else node[pick(['address', 'port', 'tags', 'name', 'extra', 'mode', 'kind'])] = clone(pick(POOL));
      } else node[key] = clone(out);
      break;
    }
  }
  return out;
}

const asResource = <S>(doc: Doc): Resource<S> => ({ ...decodeResource(doc, registry).resource, version: '1', creationTime: '', modificationTime: '' }) as Resource<S>;

describe('every resource the API accepts translates into config that passes Envoy\'s rules', () => {
  const cases = Number(process.env.WEFT_RESOURCE_FUZZ_CASES ?? 1200);
  const seed = Number(process.env.WEFT_RESOURCE_FUZZ_SEED ?? 1);
  let caPem: string;
  before(async () => {
    caPem = (await createServingCertificate({ dnsNames: ['ca'], ips: [], validForMs: 3600_000 })).certPem;
  });

  it(`${cases} damaged resources, seed ${seed}`, () => {
    const rnd = seeded(seed);
    let accepted = 0;
    for (let i = 0; i < cases; i++) {
      const docs = clone(MESH);
      const kind = (['mesh', 'dataplanes', 'dataplanes', 'dataplanes', 'trafficPermissions', 'meshTrafficPermissions'] as const)[Math.floor(rnd() * 6)]!;
      let damaged: Doc;
      if (kind === 'mesh') damaged = docs.mesh = damage(docs.mesh, rnd);
      else {
        const j = Math.floor(rnd() * docs[kind].length);
        damaged = docs[kind][j] = damage(docs[kind][j]!, rnd);
      }
      const what = `case ${i}: ${JSON.stringify(damaged).slice(0, 400)}`;
      try {
        asResource(damaged);
      } catch (err) {
        assert.ok(isWeftError(err), `${what}: refused with ${(err as Error).stack}`);
        assert.ok(err.code === 'unknown_type' || err.violations.length > 0, `${what}: refused naming no field (${err.message})`);
        continue;
      }
      accepted++;
      const mesh = asResource<MeshSpec>(docs.mesh);
      // A damaged mesh or resource name moves it out of this mesh: the others then go without it.
      const ours = <S>(list: Doc[]) => list.map((d) => asResource<S>(d)).filter((r) => r.mesh === 'default');
      const dataplanes = ours<DataplaneSpec>(docs.dataplanes);
      const trafficPermissions = ours<TrafficPermissionSpec>(docs.trafficPermissions);
      const meshTrafficPermissions = ours<MeshTrafficPermissionBody>(docs.meshTrafficPermissions);
      for (const dataplane of dataplanes) {
        const set = generateProxyConfig({ mesh, dataplane, dataplanes, trafficPermissions, meshTrafficPermissions, trustBundle: mesh.spec.mtls?.enabledBackend ? [caPem] : [] });
        assert.doesNotThrow(() => buildSnapshot(new ResourceEncoder(), `default.${dataplane.name}`, set), what);
      }
    }
    // Damage both kinds: some still valid, most refused.
    assert.ok(accepted > cases / 20 && accepted < cases / 2, `${accepted} of ${cases} accepted`);
  });
});
