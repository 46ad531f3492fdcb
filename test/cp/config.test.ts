import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { isWeftError } from '../../src/core/index.js';
import { ENV_VARS, loadConfig, xdsServingMaterial } from '../../src/cp/index.js';
import { X509Certificate } from 'node:crypto';

const dir = mkdtempSync(join(tmpdir(), 'weft-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));
function file(text: string): string {
  const p = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(p, text);
  return p;
}

describe('control plane configuration', () => {
  it('has the documented defaults: embedded store, Kuma ports, loopback API', () => {
    const c = loadConfig({ env: {} });
    assert.equal(c.store.type, 'embedded');
    assert.equal(c.api.port, 5681);
    assert.equal(c.api.address, '127.0.0.1');
    assert.equal(c.diagnostics.port, 5680);
    assert.equal(c.xds.port, 5678);
    // Kuma's keepalive (15 s, 15 s); no connection age, as Kuma.
    assert.deepEqual([c.xds.keepaliveTimeMs, c.xds.keepaliveTimeoutMs, c.xds.maxConnectionAgeMs], [15_000, 15_000, 0]);
    assert.equal(c.xds.maxStreamsPerConnection, 100);
    assert.equal(loadConfig({ env: { WEFT_XDS_MAX_STREAMS_PER_CONNECTION: '8' } }).xds.maxStreamsPerConnection, 8);
    // A departed proxy's config is kept as long as its ephemeral Dataplane.
    assert.deepEqual([c.xds.lingerMs, c.xds.ephemeralCleanupMs], [10_000, 10_000]);
    assert.equal(loadConfig({ env: { WEFT_XDS_LINGER_MS: '0' } }).xds.lingerMs, 0);
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.api), 'frozen after validation');
  });

  it('reads a file and lets WEFT_* variables override it', () => {
    const f = file('api:\n  port: 7000\n  address: 0.0.0.0\nlog:\n  level: debug\n');
    const c = loadConfig({ file: f, env: { WEFT_API_PORT: '7001', WEFT_DEFAULTS_SKIP_MESH_CREATION: 'true' } });
    assert.equal(c.api.port, 7001);
    assert.equal(c.api.address, '0.0.0.0');
    assert.equal(c.log.level, 'debug');
    assert.equal(c.defaults.skipMeshCreation, true);
  });

  it('reports every bad setting with its path or variable', () => {
    const f = file('api:\n  prot: 1\nstore:\n  type: postgres\n');
    assert.throws(
      () => loadConfig({ file: f, env: { WEFT_DIAGNOSTICS_PORT: 'eighty', WEFT_LOG_LEVEL: 'loud' } }),
      (err: unknown) => {
        assert.ok(isWeftError(err, 'invalid_config'));
        assert.deepEqual(err.violations.map((v) => v.field).sort(), ['WEFT_DIAGNOSTICS_PORT', 'api.prot', 'log.level', 'store.postgres.url']);
        return true;
      },
    );
  });

  it('list variables split on commas: the xDS certificate names a Kubernetes Service too', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-cfg-tls-'));
    try {
      const config = loadConfig({ env: { WEFT_DATA_DIR: dataDir, WEFT_XDS_TLS_DNS_NAMES: 'weft-cp.weft-system, weft-cp.weft-system.svc' } });
      assert.deepEqual(config.xds.tls.dnsNames, ['weft-cp.weft-system', 'weft-cp.weft-system.svc']);
      const m = await xdsServingMaterial(config);
      assert.match(new X509Certificate(m!.certPem).subjectAltName ?? '', /DNS:weft-cp\.weft-system\.svc/);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('says which file cannot be parsed', () => {
    const f = file('api: [\n');
    assert.throws(() => loadConfig({ file: f, env: {} }), (err: unknown) => isWeftError(err, 'invalid_config') && err.message.includes(f));
  });

  it('documents every environment variable and setting in docs/configuration.md', () => {
    const doc = readFileSync(new URL('../../../docs/configuration.md', import.meta.url), 'utf8');
    for (const [name, { path }] of Object.entries(ENV_VARS)) {
      assert.ok(doc.includes(`| \`${path.join('.')}\` | \`${name}\` |`), `${name} (${path.join('.')}) is documented`);
    }
  });
});
