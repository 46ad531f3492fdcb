import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openFileLimit, openFileLimitOf } from '../../src/core/index.js';
import { binPath } from '../helpers/bin.js';
import { spawnControlPlane } from '../helpers/cp-process.js';

describe('open file limit', () => {
  it("reads this process's soft limit, as the shell's ulimit -Sn shows it", () => {
    assert.equal(openFileLimit(), Number(execFileSync('sh', ['-c', 'ulimit -Sn']).toString().trim()));
    assert.equal(openFileLimitOf('Max cpu time              unlimited            unlimited            seconds\nMax open files            1024                 524288               files\n'), 1024);
    assert.equal(openFileLimitOf('Max open files            unlimited            unlimited            files\n'), undefined);
  });

  it('weft-cp warns at start when each proxy taking a file would leave room for too few', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-nofile-'));
    // Node raises its soft limit to the hard one: the hard one is what counts.
    const cp = await spawnControlPlane({ WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0' }, ['bash', '-c', `ulimit -n 1024 && exec "${process.execPath}" "${binPath('weft-cp')}" run`]);
    try {
      const lines = async () => {
        for (let t0 = Date.now(); Date.now() - t0 < 5000; await new Promise((r) => setTimeout(r, 25))) {
          const found = cp.logs.filter((l) => l.includes('"ADS listening"') || l.includes('open file limit'));
          if (found.length === 2) return found.map((l) => JSON.parse(l) as { level: number; openFileLimit: number; msg: string });
        }
        assert.fail(`no warning:\n${cp.logs.join('\n')}`);
      };
      const [listening, warning] = await lines();
      assert.equal(listening!.openFileLimit, 1024);
      assert.equal(warning!.level, 40);
      assert.match(warning!.msg, /open file limit is 1024: each xDS connection holds one file.*hard limit \(LimitNOFILE=/);
    } finally {
      cp.child.kill('SIGTERM');
      await cp.exited;
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
