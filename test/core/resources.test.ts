import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { z } from 'zod';
import { decodeResource, defaultRegistry, defineType, durationToMs, isWeftError, ResourceRegistry, type Violation } from '../../src/core/index.js';

const registry = defaultRegistry();
const fixtures = new URL('../../../test/fixtures/kuma/', import.meta.url);

function violationsOf(input: unknown): Violation[] {
  try {
    decodeResource(input, registry);
  } catch (err) {
    if (isWeftError(err)) return [...err.violations];
    throw err;
  }
  assert.fail('expected the resource to be rejected');
}

describe('Kuma Universal YAML from the docs', () => {
  for (const file of readdirSync(fixtures).filter((f) => f.endsWith('.yaml'))) {
    it(`accepts ${file} as written`, () => {
      const doc = parse(readFileSync(new URL(file, fixtures), 'utf8')) as Record<string, unknown>;
      const { resource } = decodeResource(doc, registry);
      assert.equal(resource.type, doc.type);
      assert.equal(resource.name, doc.name);
    });
  }

  it('fills in defaults: redirect ports, gateway type, cert lifetime, mTLS mode', () => {
    const dp = decodeResource(
      { type: 'Dataplane', mesh: 'm', name: 'g', networking: { address: '10.0.0.1', gateway: { tags: { 'kuma.io/service': 'gw' } }, transparentProxying: {} } },
      registry,
    ).resource.spec as { networking: { gateway: { type: string }; transparentProxying: { redirectPortInbound: number; redirectPortOutbound: number } } };
    assert.equal(dp.networking.gateway.type, 'DELEGATED');
    assert.equal(dp.networking.transparentProxying.redirectPortInbound, 15006);
    assert.equal(dp.networking.transparentProxying.redirectPortOutbound, 15001);
    const mesh = decodeResource({ type: 'Mesh', name: 'm', mtls: { enabledBackend: 'ca', backends: [{ name: 'ca', type: 'builtin' }] } }, registry).resource.spec as {
      mtls: { backends: { mode: string; dpCert: { rotation: { expiration: string } } }[] };
    };
    assert.equal(mesh.mtls.backends[0]!.mode, 'STRICT');
    assert.equal(mesh.mtls.backends[0]!.dpCert.rotation.expiration, '24h');
  });
});

describe('validation reports every violation with its field path', () => {
  const cases: { name: string; input: unknown; expected: Violation[] }[] = [
    {
      name: 'a Dataplane with several mistakes',
      input: {
        type: 'Dataplane',
        mesh: 'default',
        name: 'dp-1',
        networking: {
          address: 'not an address!',
          inbound: [
            { port: 70000, tags: { 'kuma.io/protocol': 'smtp' } },
            { port: 8080, servicePort: 0, tags: { 'kuma.io/service': 'web' }, colour: 'red' },
          ],
          outbound: [{ port: 6379 }],
        },
      },
      expected: [
        { field: 'networking.address', message: 'must be an IP address or a hostname' },
        { field: 'networking.inbound[0].port', message: 'must be 1-65535' },
        { field: 'networking.inbound[1].servicePort', message: 'must be 1-65535' },
        { field: 'networking.inbound[1].colour', message: 'unknown field' },
        { field: 'networking.inbound[0].tags["kuma.io/service"]', message: 'required' },
        { field: 'networking.inbound[0].tags["kuma.io/protocol"]', message: 'must be one of: tcp, http, http2, grpc, kafka' },
        { field: 'networking.outbound[0]', message: 'must set tags or backendRef' },
      ],
    },
    {
      name: 'metadata problems are reported together with body problems',
      input: { type: 'Dataplane', name: 'Bad Name!', networking: { address: '10.0.0.1' } },
      expected: [
        { field: 'name', message: 'must be 1-253 letters, digits, ".", "_" or "-", starting and ending with a letter or digit' },
        { field: 'mesh', message: 'required' },
        { field: 'networking.inbound', message: 'must have at least one inbound or a gateway' },
      ],
    },
    {
      name: 'a MeshTrafficPermission with a bad kind and action',
      input: {
        type: 'MeshTrafficPermission',
        mesh: 'default',
        name: 'mtp',
        spec: { targetRef: { kind: 'MeshService' }, from: [{ targetRef: { kind: 'Planet' }, default: { action: 'Maybe' } }, { targetRef: { kind: 'Dataplane' }, default: { action: 'Allow' } }] },
      },
      expected: [
        { field: 'spec.from[0].targetRef.kind', message: 'must be one of: Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane, MeshGateway, MeshHTTPRoute' },
        { field: 'spec.from[0].default.action', message: 'must be one of: Allow, Deny, AllowWithShadowDeny' },
      ],
    },
    {
      name: 'a MeshTrafficPermission whose refs miss what their kind needs',
      input: {
        type: 'MeshTrafficPermission',
        mesh: 'default',
        name: 'mtp',
        spec: { targetRef: { kind: 'MeshService' }, from: [{ targetRef: { kind: 'Dataplane' }, default: { action: 'Allow' } }, { targetRef: { kind: 'MeshSubset' }, default: { action: 'Deny' } }] },
      },
      expected: [
        { field: 'spec.targetRef.name', message: 'required for kind MeshService' },
        { field: 'spec.from[0].targetRef.kind', message: 'must be one of: Mesh, MeshSubset, MeshService, MeshServiceSubset' },
        { field: 'spec.from[1].targetRef.tags', message: 'required for kind MeshSubset' },
      ],
    },
    {
      name: 'a TrafficPermission without destinations and a source without a service',
      input: { type: 'TrafficPermission', mesh: 'default', name: 'tp', sources: [{ match: { version: '1' } }], destinations: [] },
      expected: [
        { field: 'destinations', message: 'must have at least 1 item' },
        { field: 'sources[0].match["kuma.io/service"]', message: 'required' },
      ],
    },
    {
      name: 'a Mesh naming a backend it does not have, with a bad duration and a provided CA without key',
      input: { type: 'Mesh', name: 'm', mesh: 'x', mtls: { enabledBackend: 'ca-2', backends: [{ name: 'ca-1', type: 'provided', dpCert: { rotation: { expiration: 'soon' } }, conf: { cert: { file: '/c.pem' } } }] } },
      expected: [
        { field: 'mesh', message: 'must not be set: Mesh is not inside a mesh' },
        { field: 'mtls.backends[0].dpCert.rotation.expiration', message: 'must be a duration such as 30s, 24h, 1d or 10y' },
        { field: 'mtls.backends[0].conf.key', message: 'required' },
        { field: 'mtls.enabledBackend', message: 'must name one of mtls.backends (got "ca-2")' },
      ],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(
        violationsOf(c.input).sort((a, b) => a.field.localeCompare(b.field)),
        [...c.expected].sort((a, b) => a.field.localeCompare(b.field)),
      );
    });
  }

  it('names the unknown type and lists the known ones', () => {
    assert.throws(
      () => decodeResource({ type: 'TrafficRoute2', name: 'x', mesh: 'default' }, registry),
      (err: unknown) => isWeftError(err, 'unknown_type') && /TrafficRoute2/.test(err.message) && /MeshTrafficPermission/.test(err.message),
    );
  });

  it('refuses a dot in a mesh name, since proxies are known as <mesh>.<name>', () => {
    assert.deepEqual(violationsOf({ type: 'Mesh', name: 'prod.eu' }), [{ field: 'name', message: 'a mesh name must not contain "."' }]);
  });

  it('rejects a body that is not a mapping', () => {
    assert.deepEqual(violationsOf(['a', 'list']), [{ field: '', message: 'must be an object' }]);
  });
});

describe('resource type registry', () => {
  it('resolves type names, URL plurals and aliases in any case', () => {
    for (const n of ['Dataplane', 'dataplanes', 'DP', 'dataplane']) assert.equal(registry.resolve(n)?.name, 'Dataplane');
    assert.equal(registry.resolve('traffic-permissions')?.name, 'TrafficPermission');
    assert.equal(registry.resolve('mtp')?.name, 'MeshTrafficPermission');
    assert.equal(registry.byPlural('meshtrafficpermissions')?.name, 'MeshTrafficPermission');
    assert.equal(registry.byPlural('MeshTrafficPermission'), undefined);
  });

  it('makes a new type one declaration', () => {
    const MeshTimeout = defineType({
      name: 'MeshTimeout',
      plural: 'meshtimeouts',
      aliases: ['meshtimeout'],
      scope: 'mesh',
      schema: z.strictObject({ spec: z.strictObject({ idleTimeout: z.string() }) }),
    });
    const r = new ResourceRegistry().register(MeshTimeout);
    const { resource } = decodeResource({ type: 'MeshTimeout', mesh: 'default', name: 't', spec: { idleTimeout: '1h' } }, r);
    assert.deepEqual(resource.spec, { spec: { idleTimeout: '1h' } });
    assert.throws(() => r.register(MeshTimeout), /registered twice/);
  });

  it('parses durations with Kuma units', () => {
    assert.equal(durationToMs('1d'), 86_400_000);
    assert.equal(durationToMs('1h30m'), 5_400_000);
    assert.throws(() => durationToMs('soon'));
  });
});
