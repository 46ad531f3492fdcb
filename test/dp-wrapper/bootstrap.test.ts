import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { messageType } from '../../src/ads/index.js';
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
      const back = type.toObject(type.decode(type.encode(type.fromObject(b)).finish()), { enums: String, defaults: false });
      assert.equal((back.node as { id: string }).id, opts.nodeId);
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
  });
});
