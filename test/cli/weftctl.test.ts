import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { freePort } from '../helpers/postgres.js';
import { binPath, run, weftctl } from '../helpers/bin.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';

const DP_TEMPLATE = `type: Dataplane
mesh: shop
name: {{ name }}
networking:
  address: {{address}}
  inbound:
    - port: {{ port }}
      servicePort: 5000
      tags:
        kuma.io/service: {{ service }}
        kuma.io/protocol: http
`;

describe('weftctl', () => {
  let cp: TestControlPlane;
  let env: Record<string, string>;
  let dir: string;
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  before(async () => {
    cp = await startTestControlPlane();
    env = { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' };
    dir = mkdtempSync(join(tmpdir(), 'weftctl-'));
  });
  after(async () => {
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('applies multi-document YAML with --var templating and reports each outcome', async () => {
    const f = file('shop.yaml', `type: Mesh\nname: shop\n---\n${DP_TEMPLATE}`);
    const r = await weftctl(['apply', '-f', f, '--var', 'name=web-1', '--var', 'address=10.1.0.1', '--var', 'port=8080', '--var', 'service=web'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'Mesh shop created\nTrafficPermission shop/allow-all-shop created\nDataplane shop/web-1 created\n');
    const again = await weftctl(['apply', '-f', f, '--var', 'name=web-1', '--var', 'address=10.1.0.1', '--var', 'port=8080', '--var', 'service=web'], { env });
    assert.equal(again.stdout, 'Mesh shop unchanged\nDataplane shop/web-1 unchanged\n');
  });

  it('reads from stdin with -f -', async () => {
    const r = await weftctl(['apply', '-f', '-', '-v', 'name=web-2', '-v', 'address=10.1.0.2', '-v', 'port=8080', '-v', 'service=web'], { env, stdin: DP_TEMPLATE });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'Dataplane shop/web-2 created\n');
  });

  it("warns of Kuma fields that are kept but not applied, naming them, and applies the rest", async () => {
    const f = file('kuma.yaml', [
      'type: Mesh\nname: kuma-like\nmetrics:\n  enabledBackend: prometheus-1\n  backends:\n  - name: prometheus-1\n    type: prometheus\ntracing:\n  defaultBackend: jaeger\n  backends: []\n',
      'type: Dataplane\nmesh: kuma-like\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound: [{port: 8080, tags: {kuma.io/service: web}}]\nprobes:\n  port: 9000\n',
      'type: Dataplane\nmesh: kuma-like\nname: web-2\nnetworking:\n  address: 10.0.0.2\n  inbound: [{port: 8080, tags: {kuma.io/service: web}}]\n',
    ].join('---\n'));
    const r = await weftctl(['apply', '-f', f], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'Mesh kuma-like created\nTrafficPermission kuma-like/allow-all-kuma-like created\nDataplane kuma-like/web-1 created\nDataplane kuma-like/web-2 created\n');
    assert.equal(
      r.stderr,
      'warning: Mesh kuma-like: kept for compatibility with Kuma, but not applied by Weft: tracing, metrics\nwarning: Dataplane kuma-like/web-1: kept for compatibility with Kuma, but not applied by Weft: probes\n',
    );
  });

  it('--dry-run validates on the control plane and stores nothing', async () => {
    const f = file('dry.yaml', 'type: Mesh\nname: dry\n---\ntype: Dataplane\nmesh: dry\nname: d\nnetworking:\n  address: 10.0.0.1\n  inbound: [{port: 1, tags: {kuma.io/service: d}}]\n');
    const r = await weftctl(['apply', '-f', f, '--dry-run'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'Mesh dry created (dry run)\nTrafficPermission dry/allow-all-dry created (dry run)\nDataplane dry/d created (dry run)\n');
    assert.equal((await http(cp.apiUrl, 'GET', '/meshes/dry')).status, 404);
  });

  it('gets a table, YAML that applies back unchanged, and JSON', async () => {
    const t = await weftctl(['get', 'dataplanes', '-m', 'shop'], { env });
    assert.equal(t.code, 0, t.stderr);
    const lines = t.stdout.trim().split('\n');
    assert.match(lines[0]!, /^MESH\s+NAME\s+ADDRESS\s+SERVICES\s+AGE$/);
    assert.match(lines[1]!, /^shop\s+web-1\s+10\.1\.0\.1\s+web\s+\d+s$/);
    assert.equal(lines.length, 3);

    const y = await weftctl(['get', 'dataplanes', '-m', 'shop', '-o', 'yaml'], { env });
    assert.equal(parseAllDocuments(y.stdout).length, 2);
    const back = await weftctl(['apply', '-f', '-'], { env, stdin: y.stdout });
    assert.equal(back.stdout, 'Dataplane shop/web-1 unchanged\nDataplane shop/web-2 unchanged\n');

    const j = await weftctl(['get', 'dataplane', 'web-1', '-m', 'shop', '-o', 'json'], { env });
    assert.equal(JSON.parse(j.stdout).networking.address, '10.1.0.1');
    const m = await weftctl(['get', 'meshes'], { env });
    assert.match(m.stdout, /^NAME\s+MTLS\s+AGE\n/);
    assert.match(m.stdout, /^shop\s+off\s+\d+s$/m);
    const tagged = await weftctl(['get', 'dataplanes', '-m', 'shop', '--tag', 'kuma.io/service=nothing'], { env });
    assert.equal(tagged.code, 0);
    assert.equal(tagged.stderr, 'no dataplanes in mesh "shop"\n');
  });

  it('deletes, and says so; deleting again fails with not_found', async () => {
    const d = await weftctl(['delete', 'dataplane', 'web-2', '-m', 'shop'], { env });
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.stdout, 'Dataplane shop/web-2 deleted\n');
    const again = await weftctl(['delete', 'dataplane', 'web-2', '-m', 'shop'], { env });
    assert.equal(again.code, 1);
    assert.match(again.stderr, /\[not_found\]/);
  });

  it('names every variable that has no value, with its line, and sends nothing', async () => {
    const f = file('vars.yaml', DP_TEMPLATE);
    const r = await weftctl(['apply', '-f', f, '--var', 'name=x'], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /address \(line 5\)\n\s+port \(line 7\)\n\s+service \(line 10\)/);
  });

  it('reports malformed YAML with document and line, and applies none of the file', async () => {
    const f = file('broken.yaml', 'type: Mesh\nname: half\n---\ntype: Mesh\nname: [oops\n');
    const r = await weftctl(['apply', '-f', f], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /broken\.yaml: document 2, line \d+, column \d+/);
    assert.equal((await http(cp.apiUrl, 'GET', '/meshes/half')).status, 404);
  });

  it('points invalid fields at their document, and applies none of the file', async () => {
    const f = file('invalid.yaml', 'type: Mesh\nname: partial\n---\ntype: Dataplane\nmesh: partial\nname: bad\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 99999\n      tags: {kuma.io/service: x}\n---\ntype: Gizmo\nname: g\n');
    const r = await weftctl(['apply', '-f', f], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /document 2 \(.*invalid\.yaml line 4, Dataplane bad\) networking\.inbound\[0\]\.port: must be 1-65535/);
    assert.match(r.stderr, /document 3 .*type: must be one of: Mesh, Dataplane/);
    assert.equal((await http(cp.apiUrl, 'GET', '/meshes/partial')).status, 404);
  });

  it('rejects unknown types and output formats before calling the control plane', async () => {
    const t = await weftctl(['get', 'widgets'], { env: { ...env, WEFTCTL_CP_ADDRESS: 'http://127.0.0.1:1' } });
    assert.equal(t.code, 1);
    assert.match(t.stderr, /unknown resource type "widgets"; known: meshes, dataplanes/);
    const o = await weftctl(['get', 'meshes', '-o', 'xml'], { env });
    assert.equal(o.code, 1);
    assert.match(o.stderr, /Allowed choices are table, yaml, json/);
  });

  it('says clearly when no control plane answers', async () => {
    const port = await freePort();
    const r = await weftctl(['get', 'meshes'], { env: { ...env, WEFTCTL_CP_ADDRESS: `http://127.0.0.1:${port}` } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot reach the control plane at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
  });

  it('reads the control plane address from its config file', async () => {
    const cfg = file('weftctl.yaml', `cpAddress: ${cp.apiUrl}\n`);
    const r = await weftctl(['get', 'meshes'], { env: { WEFTCTL_CONFIG: cfg, WEFTCTL_CP_ADDRESS: '' } });
    assert.equal(r.code, 0, r.stderr);
  });
});

describe('weftctl against an API that needs the admin token', () => {
  let cp: TestControlPlane;
  let env: Record<string, string>;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_API_AUTH: 'always' });
    env = { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' };
  });
  after(() => cp.stop());

  it('fails without the token and succeeds with --auth-token-file', async () => {
    const stdin = 'type: Mesh\nname: secured\n';
    const denied = await weftctl(['apply', '-f', '-'], { env, stdin });
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /\[unauthorized\]/);
    const ok = await weftctl(['--auth-token-file', join(cp.dataDir, 'admin-token'), 'apply', '-f', '-'], { env, stdin });
    assert.equal(ok.code, 0, ok.stderr);
    const viaEnv = await weftctl(['delete', 'mesh', 'secured'], { env: { ...env, WEFTCTL_AUTH_TOKEN: readFileSync(join(cp.dataDir, 'admin-token'), 'utf8').trim() } });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
  });
});

describe('other binaries', () => {
  it('every package.json bin is an executable file with a node shebang', () => {
    const root = new URL('../../../', import.meta.url);
    const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { bin: Record<string, string> };
    assert.deepEqual(Object.keys(pkg.bin).sort(), ['weft-cni', 'weft-cp', 'weft-dp', 'weftctl']);
    for (const [name, rel] of Object.entries(pkg.bin)) {
      const path = new URL(rel, root);
      assert.ok((statSync(path).mode & 0o111) !== 0, `${name} (${rel}) is executable`);
      assert.match(readFileSync(path, 'utf8'), /^#!\/usr\/bin\/env node\n/, `${name} has a shebang`);
    }
  });

  it('weft-dp without a command prints its usage and exits non-zero', async () => {
    const r = await run(process.execPath, [binPath('weft-dp')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Usage: weft-dp [\s\S]*run \[options\]/);
  });

  it('weft-cni without CNI_COMMAND or a command prints its usage and exits non-zero', async () => {
    const r = await run(process.execPath, [binPath('weft-cni')], { env: { CNI_COMMAND: '' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Usage: weft-cni .*\n[\s\S]*install \[options\]/);
  });
});
