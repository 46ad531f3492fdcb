import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { spawnControlPlane } from '../helpers/cp-process.js';

const dataDir = mkdtempSync(join(tmpdir(), 'weft-durable-'));
after(() => rmSync(dataDir, { recursive: true, force: true }));
const env = { WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0' };

const dp = (name: string) => ({
  type: 'Dataplane',
  mesh: 'default',
  name,
  networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] },
});

describe('embedded store durability', () => {
  it('keeps every acknowledged write when weft-cp is killed with SIGKILL mid-stream', async () => {
    const cp = await spawnControlPlane(env);
    const acked: string[] = [];
    let stop = false;
    // Four writers keep requests in flight; the kill lands while some are unanswered.
    const writer = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const name = `dp-${w}-${i}`;
        try {
          const res = await fetch(`${cp.apiUrl}/meshes/default/dataplanes/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(dp(name)) });
          if (res.status === 201) acked.push(name);
          else throw new Error(`unexpected ${res.status}`);
        } catch (err) {
          if (stop) return;
          throw err;
        }
      }
    };
    const writers = [0, 1, 2, 3].map((w) => writer(w).catch((err: unknown) => (stop ? undefined : Promise.reject(err))));
    while (acked.length < 200) await new Promise((r) => setTimeout(r, 5));
    stop = true;
    cp.child.kill('SIGKILL');
    const { signal } = await cp.exited;
    assert.equal(signal, 'SIGKILL');
    await Promise.all(writers);
    const snapshot = [...acked];

    const again = await spawnControlPlane(env);
    try {
      const res = await fetch(`${again.apiUrl}/meshes/default/dataplanes?size=1000`);
      const body = (await res.json()) as { total: number; items: { name: string }[] };
      const stored = new Set(body.items.map((i) => i.name));
      const lost = snapshot.filter((n) => !stored.has(n));
      assert.deepEqual(lost, [], `acknowledged but lost after kill -9: ${lost.join(', ')}`);
      assert.ok(body.total >= snapshot.length);
    } finally {
      again.child.kill('SIGTERM');
      const { code } = await again.exited;
      assert.equal(code, 0, 'SIGTERM is a clean shutdown');
    }
  });
});
