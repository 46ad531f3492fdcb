import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { spawnControlPlane } from '../helpers/cp-process.js';
import { run } from '../helpers/bin.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/** The fenced block right after a marker comment. */
function blockAfter(marker: string): string[] {
  const at = readme.indexOf(marker);
  assert.ok(at >= 0, `README has the ${marker} marker`);
  const m = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(m, 'a sh block follows the marker');
  return m[1]!.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'));
}

describe('README', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-readme-'));
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  it('names `npm ci && npm start` and `npm test` as its two commands, and package.json has both scripts', () => {
    assert.match(readme, /^npm ci && npm start /m);
    assert.match(readme, /^npm test /m);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    assert.ok(pkg.scripts.start && pkg.scripts.test);
  });

  it('"first five minutes" runs as written against `npm start`', async () => {
    // `npm start` as the README says; only the ports and data dir are moved so tests can run in parallel.
    const cp = await spawnControlPlane({ WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0' }, ['npm', 'start', '--silent'], { cwd: root, detached: true });
    try {
      const outputs: string[] = [];
      for (const line of blockAfter('<!-- first-five-minutes')) {
        const r = await run('bash', ['-c', line], { cwd: root, env: { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' }, timeoutMs: 60_000 });
        assert.equal(r.code, 0, `${line}\n${r.stderr}`);
        outputs.push(r.stdout);
      }
      // The apply lines print exactly what the README's "You should see" block starts with.
      const seen = /You should see:\n\n```\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf('<!-- first-five-minutes')));
      assert.ok(seen, 'a "You should see" block follows the commands');
      assert.ok(seen[1]!.startsWith(outputs[0]! + outputs[1]!), `README shows:\n${seen[1]}\nweftctl printed:\n${outputs[0]}${outputs[1]}`);
      assert.equal(outputs[0], 'Mesh demo created\nTrafficPermission demo/allow-all-demo created\n');
      assert.match(outputs[2]!, /^demo\s+builtin\/ca-1 \(STRICT\)\s+\d+s$/m);
      assert.match(outputs[3]!, /^demo\s+dp-1\s+127\.0\.0\.1\s+demo-app\s+\d+s$/m);
      assert.match(outputs[4]!, /^name: dp-1$/m);
    } finally {
      process.kill(-cp.child.pid!, 'SIGTERM');
      await cp.exited;
    }
  });

  it('the example of a mistake prints what the README shows', async () => {
    const at = readme.indexOf("$ printf 'type: Dataplane");
    const lines = readme.slice(at).split('\n');
    const command = lines[0]!.slice(2);
    const expected = lines.slice(1, lines.indexOf('```')).join('\n');
    const cp = await spawnControlPlane({ WEFT_DATA_DIR: mkdtempSync(join(tmpdir(), 'weft-readme-')), WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0' });
    try {
      await run('bash', ['-c', 'npx weftctl apply -f examples/mesh.yaml'], { cwd: root, env: { WEFTCTL_CP_ADDRESS: cp.apiUrl } });
      const r = await run('bash', ['-c', command], { cwd: root, env: { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' } });
      assert.equal(r.code, 1);
      // npm itself may warn about the machine's npmrc; that is not weftctl's output.
      const stderr = r.stderr.split('\n').filter((l) => !l.startsWith('npm warn')).join('\n');
      assert.equal(stderr.trim(), expected.trim());
    } finally {
      cp.child.kill('SIGTERM');
      await cp.exited;
    }
  });
});
