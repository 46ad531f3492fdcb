import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
// grpc-js-xds's RBAC engine (gRFC A41): an independent reading of Envoy's RBAC semantics.
import { parseConfig } from '@grpc/grpc-js-xds/build/src/rbac.js';
import { messageType } from '../../src/ads/index.js';
import { decodeResource, defaultRegistry, type Resource } from '../../src/core/index.js';
import { generateProxyConfig, TypeUrl, type MeshContext } from '../../src/xds/index.js';

const registry = defaultRegistry();
const res = (doc: Record<string, unknown>) => ({ ...decodeResource(doc, registry).resource, version: '1', creationTime: '', modificationTime: '' }) as Resource;
const MTLS = { mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } };

function context(target: Record<string, unknown>, policies: Record<string, unknown>[], meshSpec: Record<string, unknown> = MTLS): MeshContext {
  const dataplane = res({ type: 'Dataplane', mesh: 'default', name: 'target-1', ...target }) as MeshContext['dataplane'];
  const ps = policies.map((p) => res({ mesh: 'default', ...p }));
  return {
    mesh: res({ type: 'Mesh', name: 'default', ...meshSpec }) as MeshContext['mesh'],
    dataplane,
    dataplanes: [dataplane],
    trafficPermissions: ps.filter((p) => p.type === 'TrafficPermission') as MeshContext['trafficPermissions'],
    meshTrafficPermissions: ps.filter((p) => p.type === 'MeshTrafficPermission') as MeshContext['meshTrafficPermissions'],
    trustBundle: ['-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n'],
  };
}

const inbound = (tags: Record<string, string>, extra: Record<string, unknown> = {}) => ({ networking: { address: '10.0.0.1', inbound: [{ port: 7000, tags, ...extra }] } });

type Rbac = { rules: Record<string, unknown>; shadow_rules?: Record<string, unknown> };

/** The RBAC config on the TLS filter chain of the proxy's inbound listener (HTTP or network filter). */
function rbacOf(ctx: MeshContext): Rbac | undefined {
  const listener = generateProxyConfig(ctx)[TypeUrl.Listener]!.find((l) => String(l.name).startsWith('inbound:')) as { filter_chains: { filter_chain_match?: { transport_protocol?: string }; filters: { name: string; typed_config: Record<string, unknown> }[] }[] };
  const chain = listener.filter_chains.find((c) => c.filter_chain_match?.transport_protocol === 'tls') ?? listener.filter_chains[0]!;
  for (const f of chain.filters) {
    if (f.name === 'envoy.filters.network.rbac') return f.typed_config as Rbac;
    if (f.name === 'envoy.filters.network.http_connection_manager') {
      const http = (f.typed_config.http_filters as { name: string; typed_config: Rbac }[]).find((h) => h.name === 'envoy.filters.http.rbac');
      if (http) return http.typed_config;
    }
  }
  return undefined;
}

/** Would a caller presenting these URI SANs be let in? Decided by grpc-js-xds's RBAC engine. */
function allows(rules: Record<string, unknown>, sans: string[]): boolean {
  const type = messageType('envoy.config.rbac.v3.RBAC');
  const decoded = type.toObject(type.decode(type.encode(type.fromObject(rules)).finish()), { defaults: true, oneofs: true, enums: String, longs: String });
  const engine = parseConfig(decoded as Parameters<typeof parseConfig>[0]);
  return engine.apply({
    tls: true,
    peerCertificate: { subjectaltname: sans.map((s) => `URI:${s}`).join(', '), subject: {} },
  } as unknown as Parameters<typeof engine.apply>[0]);
}

const id = (service: string, tags: Record<string, string> = {}, mesh = 'default') => [`spiffe://${mesh}/${service}`, ...Object.entries(tags).map(([k, v]) => `kuma://${k}/${v}`)];

describe('permissions (decided by grpc-js-xds RBAC engine)', () => {
  it('no permission matching the inbound: every caller is denied', () => {
    const rbac = rbacOf(context(inbound({ 'kuma.io/service': 'redis' }), [{ type: 'TrafficPermission', name: 'gw', sources: [{ match: { 'kuma.io/service': 'gateway' } }], destinations: [{ match: { 'kuma.io/service': 'demo-app' } }] }]))!;
    assert.equal(allows(rbac.rules, id('gateway')), false);
    assert.equal(allows(rbac.rules, id('demo-app')), false);
  });

  it('TrafficPermissions: the sources of every permission whose destination matches are allowed (the walkthrough)', () => {
    const tps = [
      { type: 'TrafficPermission', name: 'gateway-to-any', sources: [{ match: { 'kuma.io/service': 'gateway' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] },
      { type: 'TrafficPermission', name: 'demo-app-to-redis', sources: [{ match: { 'kuma.io/service': 'demo-app' } }], destinations: [{ match: { 'kuma.io/service': 'redis' } }] },
    ];
    const demo = rbacOf(context(inbound({ 'kuma.io/service': 'demo-app', 'kuma.io/protocol': 'http' }), tps))!;
    assert.equal(allows(demo.rules, id('gateway')), true);
    assert.equal(allows(demo.rules, id('redis')), false);
    const redis = rbacOf(context(inbound({ 'kuma.io/service': 'redis' }), tps))!;
    assert.equal(allows(redis.rules, id('demo-app')), true);
    assert.equal(allows(redis.rules, id('gateway')), true, 'gateway-to-any covers redis too');
    assert.equal(allows(redis.rules, id('web')), false);
    assert.equal(allows(redis.rules, id('demo-app', {}, 'other-mesh')), false, 'another mesh with the same service name');
  });

  it('TrafficPermission tags: all must match; "*" matches any value of a tag the caller has', () => {
    const tp = { type: 'TrafficPermission', name: 'prod', sources: [{ match: { 'kuma.io/service': '*', env: 'prod', team: '*' } }], destinations: [{ match: { 'kuma.io/service': 'redis' } }] };
    const rbac = rbacOf(context(inbound({ 'kuma.io/service': 'redis' }), [tp]))!;
    assert.equal(allows(rbac.rules, id('web', { env: 'prod', team: 'a' })), true);
    assert.equal(allows(rbac.rules, id('web', { env: 'prod' })), false, 'no team tag');
    assert.equal(allows(rbac.rules, id('web', { env: 'dev', team: 'a' })), false);
  });

  it('MeshTrafficPermission: most specific wins, Deny wins ties, AllowWithShadowDeny allows (and shadow-denies)', () => {
    const policies = [
      { type: 'TrafficPermission', name: 'allow-all-default', sources: [{ match: { 'kuma.io/service': '*' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] },
      {
        type: 'MeshTrafficPermission',
        name: 'mesh-wide',
        spec: { targetRef: { kind: 'Mesh' }, from: [{ targetRef: { kind: 'Mesh' }, default: { action: 'Allow' } }, { targetRef: { kind: 'MeshSubset', tags: { env: 'legacy' } }, default: { action: 'Deny' } }] },
      },
      {
        type: 'MeshTrafficPermission',
        name: 'payments',
        spec: {
          targetRef: { kind: 'MeshService', name: 'payments' },
          from: [
            { targetRef: { kind: 'MeshServiceSubset', name: 'orders', tags: { version: 'v2' } }, default: { action: 'Allow' } },
            { targetRef: { kind: 'MeshService', name: 'orders' }, default: { action: 'Deny' } },
            { targetRef: { kind: 'MeshService', name: 'orders' }, default: { action: 'Allow' } },
            { targetRef: { kind: 'MeshService', name: 'audit' }, default: { action: 'AllowWithShadowDeny' } },
          ],
        },
      },
    ];
    const rbac = rbacOf(context(inbound({ 'kuma.io/service': 'payments', 'kuma.io/protocol': 'http' }), policies))!;
    assert.equal(allows(rbac.rules, id('web')), true, 'Mesh allows any service');
    assert.equal(allows(rbac.rules, id('web', { env: 'legacy' })), false, 'the legacy subset is denied');
    assert.equal(allows(rbac.rules, id('orders', { version: 'v1' })), false, 'Deny and Allow for orders at equal specificity: Deny wins');
    assert.equal(allows(rbac.rules, id('orders', { version: 'v2' })), true, 'orders v2 is more specific than the orders Deny');
    assert.equal(allows(rbac.rules, id('orders', { version: 'v2', env: 'legacy' })), true, 'more specific wins over the legacy Deny');
    assert.equal(allows(rbac.rules, id('audit')), true);
    assert.ok(rbac.shadow_rules, 'AllowWithShadowDeny produces shadow rules');
    assert.equal(allows(rbac.shadow_rules, id('audit')), false, 'shadow rules deny audit');
    assert.equal(allows(rbac.shadow_rules, id('web')), true);
  });

  it('legacy TrafficPermissions are ignored where a MeshTrafficPermission applies', () => {
    const policies = [
      { type: 'TrafficPermission', name: 'allow-all-default', sources: [{ match: { 'kuma.io/service': '*' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] },
      { type: 'MeshTrafficPermission', name: 'only-frontend', spec: { targetRef: { kind: 'MeshService', name: 'backend' }, from: [{ targetRef: { kind: 'MeshService', name: 'frontend' }, default: { action: 'Allow' } }] } },
    ];
    const backend = rbacOf(context(inbound({ 'kuma.io/service': 'backend' }), policies))!;
    assert.equal(allows(backend.rules, id('frontend')), true);
    assert.equal(allows(backend.rules, id('web')), false);
    const other = rbacOf(context(inbound({ 'kuma.io/service': 'other' }), policies))!;
    assert.equal(allows(other.rules, id('web')), true, 'no MTP selects "other": allow-all-default still applies there');
  });

  it('a Dataplane targetRef selects by name, labels and sectionName', () => {
    const mtp = (targetRef: Record<string, unknown>) => [{ type: 'MeshTrafficPermission', name: 'dp', spec: { targetRef, from: [{ targetRef: { kind: 'Mesh' }, default: { action: 'Allow' } }] } }];
    const target = { labels: { app: 'payments' }, ...inbound({ 'kuma.io/service': 'payments' }, { name: 'main' }) };
    for (const [ref, selected] of [
      [{ kind: 'Dataplane', name: 'target-1' }, true],
      [{ kind: 'Dataplane', name: 'someone-else' }, false],
      [{ kind: 'Dataplane', labels: { app: 'payments' } }, true],
      [{ kind: 'Dataplane', labels: { app: 'orders' } }, false],
      [{ kind: 'Dataplane', name: 'target-1', sectionName: 'main' }, true],
      [{ kind: 'Dataplane', name: 'target-1', sectionName: '7000' }, true],
      [{ kind: 'Dataplane', name: 'target-1', sectionName: 'admin' }, false],
    ] as const) {
      const rbac = rbacOf(context(target, mtp(ref)))!;
      assert.equal(allows(rbac.rules, id('web')), selected, JSON.stringify(ref));
    }
  });

  it('without mTLS there is no identity, so no RBAC (Kuma: permissions need mTLS)', () => {
    assert.equal(rbacOf(context(inbound({ 'kuma.io/service': 'redis' }), [], {})), undefined);
  });
});
