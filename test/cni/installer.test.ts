import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ensureChained, keepChained, removeChained } from '../../src/cni/installer.js';

describe('weft-cni installer (CNI config files)', () => {
  const root = mkdtempSync(join(tmpdir(), 'weft-cni-conf-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  const fresh = () => {
    const d = join(root, String(n++));
    return { confDir: d, binDir: join(d, 'bin'), entry: '/x/weft-cni.js', pluginConfig: { weft: { dpUser: 5678 } } };
  };
  const read = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as { name?: string; cniVersion?: string; plugins: { type: string }[] };

  it('with no network configured yet, writes a conflist of its own', () => {
    const o = fresh();
    const f = ensureChained(o);
    assert.equal(f, join(o.confDir, '10-weft.conflist'));
    assert.deepEqual(read(f).plugins, [{ type: 'weft-cni', weft: { dpUser: 5678 } }]);
  });

  it('turns a single-plugin .conf into a .conflist with weft-cni chained after it', () => {
    const o = fresh();
    ensureChained({ ...o, pluginConfig: {} }); // creates the dir (and our own file)...
    rmSync(join(o.confDir, '10-weft.conflist'));
    writeFileSync(join(o.confDir, '05-flannel.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'cbr0', type: 'flannel', delegate: { isDefaultGateway: true } }));
    const f = ensureChained(o)!;
    assert.equal(f, join(o.confDir, '05-flannel.conflist'));
    assert.ok(!existsSync(join(o.confDir, '05-flannel.conf')));
    const list = read(f);
    assert.equal(list.name, 'cbr0');
    assert.equal(list.cniVersion, '0.4.0');
    assert.deepEqual(list.plugins, [{ type: 'flannel', delegate: { isDefaultGateway: true } }, { type: 'weft-cni', weft: { dpUser: 5678 } }]);
    assert.equal(ensureChained(o), undefined, 'nothing to change the second time');
  });

  it('keeps itself chained when another plugin rewrites the config, and uninstall removes only its entry', async () => {
    const o = fresh();
    ensureChained({ ...o, pluginConfig: {} });
    rmSync(join(o.confDir, '10-weft.conflist'));
    const file = join(o.confDir, '10-calico.conflist');
    writeFileSync(file, JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'calico' }, { type: 'portmap' }] }));
    ensureChained(o);
    const seen: string[] = [];
    const stop = keepChained(o, (f) => seen.push(f));
    try {
      // The network plugin rewrites its file without us.
      writeFileSync(file, JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'calico', mtu: 1400 }, { type: 'portmap' }] }));
      const t0 = Date.now();
      while (!read(file).plugins.some((p) => p.type === 'weft-cni')) {
        assert.ok(Date.now() - t0 < 5000, 'chained again within 5 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(
        read(file).plugins.map((p) => p.type),
        ['calico', 'portmap', 'weft-cni'],
      );
      assert.deepEqual(seen, [file]);
    } finally {
      stop();
    }
    assert.deepEqual(removeChained(o.confDir), [file]);
    assert.deepEqual(
      read(file).plugins.map((p) => p.type),
      ['calico', 'portmap'],
    );
    assert.deepEqual(readdirSync(o.confDir).sort(), ['10-calico.conflist']);
  });
});
