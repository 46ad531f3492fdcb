import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fromProto3Json, messageType } from '../../src/ads/index.js';
import { VERSION } from '../../src/core/index.js';
import { checkBootstrap, envoyBootstrap, type EnvoyBootstrapOptions } from '../../src/dp-wrapper/envoy-bootstrap.js';

/** Envoy bootstrap golden files (UPDATE_GOLDEN=1 rewrites them), checked with Envoy's protos and rules. */
const dir = new URL('../../../test/dp-wrapper/golden/', import.meta.url);
const base: EnvoyBootstrapOptions = {
  nodeId: 'shop.web-1',
  cluster: 'web',
  cp: { host: 'cp.example.internal', port: 5678, tls: true, caCertPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' },
  token: 'eyJ.test.token',
  adminPort: 9901,
  sdsSocket: '/run/weft-dp/sds.sock',
  variant: 'delta',
};
const CASES: Record<string, EnvoyBootstrapOptions> = {
  'tls-delta': base,
  'ip-sotw-plaintext': { ...base, cp: { host: '10.0.0.5', port: 5678, tls: false }, variant: 'sotw', token: undefined },
};

describe('Envoy bootstrap', () => {
  for (const [name, opts] of Object.entries(CASES)) {
    it(`golden: ${name}, and Envoy's rules pass`, () => {
      const b = envoyBootstrap(opts);
      assert.deepEqual(checkBootstrap(b), []);
      // Encodes against envoy.config.bootstrap.v3.Bootstrap with nothing lost on the way.
      const type = messageType('envoy.config.bootstrap.v3.Bootstrap');
      const back = type.toObject(type.decode(type.encode(type.fromObject(fromProto3Json('envoy.config.bootstrap.v3.Bootstrap', b) as object)).finish()), { enums: String, defaults: false, longs: Number });
      assert.equal((back.node as { id: string }).id, opts.nodeId);
      // The proto3 JSON forms came through: keepalive on the xDS connection, the node's metadata.
      const xds = (back.static_resources as { clusters: Record<string, never>[] }).clusters[0]!;
      assert.deepEqual(xds.upstream_connection_options, { tcp_keepalive: { keepalive_time: { value: 10 }, keepalive_interval: { value: 10 }, keepalive_probes: { value: 3 } } });
      const options = type.lookupType('envoy.extensions.upstreams.http.v3.HttpProtocolOptions');
      const http = options.toObject(options.decode((xds.typed_extension_protocol_options as Record<string, { value: Uint8Array }>)['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']!.value), { longs: Number });
      assert.deepEqual((http.explicit_http_config as { http2_protocol_options: unknown }).http2_protocol_options, { connection_keepalive: { interval: { seconds: 15 }, timeout: { seconds: 15 } } });
      assert.equal((back.node as { metadata: { fields: Record<string, { stringValue: string }> } }).metadata.fields['weft.io/dataplane-version']?.stringValue, VERSION);
      const text = `${JSON.stringify(b, null, 2)}\n`;
      const url = new URL(`${name}.json`, dir);
      if (process.env.UPDATE_GOLDEN === '1') writeFileSync(url, text);
      assert.equal(text, readFileSync(url, 'utf8'), 'bootstrap differs from the golden file (UPDATE_GOLDEN=1 to accept, after review)');
    });
  }

  it('the admin interface is on loopback only, and a broken bootstrap is caught before Envoy sees it', () => {
    const b = envoyBootstrap(base) as { admin: { address: { socket_address: { address: string; port_value: number } } } };
    assert.equal(b.admin.address.socket_address.address, '127.0.0.1');
    b.admin.address.socket_address.port_value = 70000;
    assert.match(checkBootstrap(b as unknown as Record<string, unknown>).join(), /admin\.address\.socket_address\.port_value/);
    // In proto3 JSON forms too: a duration Envoy would refuse, and one that is not a duration.
    const keepalive = (t: unknown) => {
      const c = envoyBootstrap(base) as { static_resources: { clusters: { typed_extension_protocol_options: Record<string, { explicit_http_config: { http2_protocol_options: { connection_keepalive: { timeout: unknown } } } }> }[] } };
      c.static_resources.clusters[0]!.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']!.explicit_http_config.http2_protocol_options.connection_keepalive.timeout = t;
      return checkBootstrap(c as unknown as Record<string, unknown>).join();
    };
    assert.match(keepalive('0.0001s'), /connection_keepalive\.timeout: must be at least 1000000ns/);
    assert.match(keepalive('15 seconds'), /connection_keepalive\.timeout: must be a duration such as "1\.5s"/);
    assert.equal(keepalive('0.5s'), '');
  });
});
