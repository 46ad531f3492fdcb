import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inNs, netnsMissing, sh } from '../helpers/netns.js';
import { systemRequirement } from '../helpers/require.js';

/**
 * weft-cni the way a container runtime uses it: installed by `weft-cni install` into a CNI
 * config dir next to Debian's reference plugins, then called chained after `bridge` +
 * `host-local` with CNI_* variables and the network config on stdin.
 */
const REFERENCE_PLUGINS = '/usr/lib/cni';
const weftCni = new URL('../../src/cmd/weft-cni.js', import.meta.url).pathname;

function cniMissing(): string | undefined {
  return netnsMissing() ?? (existsSync(join(REFERENCE_PLUGINS, 'bridge')) && existsSync(join(REFERENCE_PLUGINS, 'host-local')) ? undefined : `no reference CNI plugins in ${REFERENCE_PLUGINS} (Debian's containernetworking-plugins)`);
}

interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

function exec(file: string, env: Record<string, string>, stdin: string, args: string[] = []): Promise<Exec> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin);
  });
}

describe('weft-cni, chained after bridge and host-local', systemRequirement('network namespaces and the reference CNI plugins', cniMissing()), () => {
  const id = process.pid % 10000;
  const ns = `wcni-${id}`;
  const netnsPath = `/var/run/netns/${ns}`;
  const bridge = `wbr${id}`;
  let dir: string;
  let confDir: string;
  let binDir: string;
  let api: Server;
  let apiUrl: string;
  const pods: Record<string, Record<string, string> | 'hang'> = {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-cni-'));
    confDir = join(dir, 'net.d');
    binDir = join(dir, 'bin');
    mkdirSync(confDir);
    // The node's primary network, as a runtime would have it.
    writeFileSync(
      join(confDir, '10-bridge.conflist'),
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'testnet',
        plugins: [{ type: 'bridge', bridge, isGateway: true, ipMasq: false, ipam: { type: 'host-local', subnet: '10.78.0.0/24', dataDir: join(dir, 'ipam') } }],
      }),
    );
    sh('ip', ['netns', 'add', ns]);
    // Runtimes bring up the container's loopback with the reference `loopback` plugin first.
    const lo = await exec(join(REFERENCE_PLUGINS, 'loopback'), { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'lo', CNI_NETNS: netnsPath, CNI_IFNAME: 'lo', CNI_PATH: REFERENCE_PLUGINS }, JSON.stringify({ cniVersion: '1.0.0', name: 'lo', type: 'loopback' }));
    assert.equal(lo.code, 0, lo.stdout + lo.stderr);
    // A stand-in for the Kubernetes API (a peer we do not own): pod annotations, or no answer.
    api = createServer((req, res) => {
      const name = decodeURIComponent(req.url!.split('/').pop()!);
      const pod = pods[name];
      if (pod === 'hang') return;
      if (!pod) return void res.writeHead(404).end('{}');
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ metadata: { name, annotations: pod } }));
    });
    await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
    apiUrl = `http://127.0.0.1:${(api.address() as { port: number }).port}`;
  });

  after(() => {
    api?.closeAllConnections();
    api?.close();
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      // gone
    }
    try {
      sh('ip', ['link', 'del', bridge]);
    } catch {
      // gone
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const conflist = () => JSON.parse(readFileSync(join(confDir, '10-bridge.conflist'), 'utf8')) as { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
  const env = (command: string, containerId: string, extra: Record<string, string> = {}) => ({
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: netnsPath,
    CNI_IFNAME: 'eth0',
    CNI_PATH: `${binDir}:${REFERENCE_PLUGINS}`,
    ...extra,
  });
  const pluginPath = (type: string) => (existsSync(join(binDir, type)) ? join(binDir, type) : join(REFERENCE_PLUGINS, type));

  /** What a runtime does for ADD/CHECK (in order) and DEL (in reverse), passing prevResult along. */
  async function runtime(command: 'ADD' | 'CHECK' | 'DEL', containerId: string, extra: Record<string, string> = {}, prev?: unknown): Promise<{ results: Exec[]; result?: Record<string, unknown> }> {
    const list = conflist();
    const plugins = command === 'DEL' ? [...list.plugins].reverse() : list.plugins;
    const results: Exec[] = [];
    let prevResult = prev;
    for (const p of plugins) {
      const conf = { cniVersion: list.cniVersion, name: list.name, ...p, ...(prevResult ? { prevResult } : {}) };
      const r = await exec(pluginPath(String(p.type)), env(command, containerId, extra), JSON.stringify(conf));
      results.push(r);
      if (r.code !== 0) return { results };
      if (command === 'ADD') prevResult = JSON.parse(r.stdout);
    }
    return { results, result: prevResult as Record<string, unknown> };
  }

  const ourRules = () => inNs(ns, 'iptables-save', []).split('\n').filter((l) => l.includes('weft/transparent-proxy'));

  it('weft-cni install chains the plugin after the primary network and installs its shim', async () => {
    const r = await exec(process.execPath, {}, '', [weftCni, 'install', '--cni-conf-dir', confDir, '--cni-bin-dir', binDir, '--plugin-config', JSON.stringify({ weft: { dpUser: 5678 } })]);
    assert.equal(r.code, 0, r.stderr);
    const list = conflist();
    assert.deepEqual(
      list.plugins.map((p) => p.type),
      ['bridge', 'weft-cni'],
    );
    assert.deepEqual(list.plugins[1], { type: 'weft-cni', weft: { dpUser: 5678 } });
    assert.equal(statSync(join(binDir, 'weft-cni')).mode & 0o777, 0o755);
    const again = await exec(process.execPath, {}, '', [weftCni, 'install', '--cni-conf-dir', confDir, '--cni-bin-dir', binDir, '--plugin-config', JSON.stringify({ weft: { dpUser: 5678 } })]);
    assert.equal(again.code, 0);
    assert.equal(conflist().plugins.length, 2, 'installing twice chains it once');
  });

  it('VERSION answers the spec versions it supports', async () => {
    const r = await exec(join(binDir, 'weft-cni'), { CNI_COMMAND: 'VERSION' }, '');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
  });

  let addResult: Record<string, unknown> | undefined;
  it('ADD: passes the bridge result through unchanged and installs the rules in the namespace', async () => {
    const { results, result } = await runtime('ADD', 'c1');
    assert.ok(results.every((r) => r.code === 0), results.map((r) => r.stdout + r.stderr).join('\n'));
    const bridgeResult = JSON.parse(results[0]!.stdout) as Record<string, unknown>;
    assert.deepEqual(result, bridgeResult, 'prevResult passed through unchanged');
    assert.ok((bridgeResult.ips as unknown[]).length > 0, 'bridge + host-local gave the container an address');
    assert.ok(ourRules().length > 0);
    assert.match(inNs(ns, 'iptables-save', []), /^-A WEFT_OUTBOUND_REDIRECT -p tcp .*--to-ports 15001$/m);
    assert.match(results[1]!.stderr, /"msg":"rules installed"/);
    addResult = result;
  });

  it('CHECK: passes while the rules are there, fails with error JSON when they are not', async () => {
    const ok = await runtime('CHECK', 'c1', {}, addResult);
    assert.ok(ok.results.every((r) => r.code === 0), ok.results.map((r) => r.stdout + r.stderr).join('\n'));
    inNs(ns, 'iptables', ['-t', 'nat', '-F', 'WEFT_OUTBOUND']);
    const bad = await runtime('CHECK', 'c1', {}, addResult);
    const last = bad.results.at(-1)!;
    assert.equal(last.code, 1);
    const err = JSON.parse(last.stdout) as { code: number; msg: string; details: string };
    assert.equal(err.code, 100);
    assert.equal(err.msg, 'the transparent-proxy rules are not in place');
    assert.match(err.details, /WEFT_OUTBOUND: 0 of our rules, expected \d+/);
  });

  it('DEL removes the rules (in reverse plugin order), and succeeds again when the namespace is gone', async () => {
    const { results } = await runtime('DEL', 'c1', {}, addResult);
    assert.ok(results.every((r) => r.code === 0), results.map((r) => r.stdout + r.stderr).join('\n'));
    assert.deepEqual(ourRules(), []);
    const gone = await exec(join(binDir, 'weft-cni'), { ...env('DEL', 'c1'), CNI_NETNS: '/var/run/netns/does-not-exist' }, JSON.stringify({ cniVersion: '1.0.0', name: 'testnet', type: 'weft-cni' }));
    assert.equal(gone.code, 0, gone.stdout);
  });

  it('bad input gets CNI error JSON with a code and the field, and a non-zero exit', async () => {
    const call = (stdin: string, extra: Record<string, string> = {}) => exec(join(binDir, 'weft-cni'), { ...env('ADD', 'c2'), ...extra }, stdin);
    const cases: [string, number, RegExp, Record<string, string>?][] = [
      ['not json', 6, /not JSON/],
      [JSON.stringify({ cniVersion: '9.9.9', name: 'n', type: 'weft-cni' }), 1, /cniVersion 9\.9\.9 is not supported/],
      [JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'weft-cni', weft: { redirectInboundPort: 0, dpUser: 5678 } }), 7, /invalid transparent-proxy settings/],
      [JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'weft-cni' }), 4, /CNI_NETNS: required/, { CNI_NETNS: '' }],
      [JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'weft-cni' }), 4, /CNI_COMMAND "NOPE"/, { CNI_COMMAND: 'NOPE' }],
    ];
    for (const [stdin, code, msg, extra] of cases) {
      const r = await call(stdin, extra);
      assert.equal(r.code, 1, stdin);
      const e = JSON.parse(r.stdout) as { cniVersion: string; code: number; msg: string; details?: string };
      assert.equal(e.code, code, r.stdout);
      assert.match(e.msg, msg);
    }
    const bad = JSON.parse((await call(JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'weft-cni', weft: { redirectInboundPort: 0, dpUser: 5678 } }))).stdout) as { details: string };
    assert.match(bad.details, /weft\.redirectInboundPort: must be at least 1/);
    assert.deepEqual(ourRules(), [], 'nothing was applied');
  });

  it('Kubernetes: pods without the sidecar annotation are skipped; annotated pods get their settings; a silent API is "try again later"', async () => {
    const k8s = (pod: string) => ({ CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=${pod}` });
    const withK8s = { cniVersion: '1.0.0', name: 'testnet', type: 'weft-cni', weft: { dpUser: 5678 }, kubernetes: { apiServer: apiUrl, timeoutMs: 500 } };
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [] };
    pods['plain'] = { 'app.kubernetes.io/name': 'plain' };
    pods['meshed'] = { 'kuma.io/sidecar-injected': 'true', 'traffic.kuma.io/exclude-outbound-ports': '5432' };
    pods['stuck'] = 'hang';

    const plain = await exec(join(binDir, 'weft-cni'), { ...env('ADD', 'p1'), ...k8s('plain') }, JSON.stringify({ ...withK8s, prevResult }));
    assert.equal(plain.code, 0, plain.stdout);
    assert.deepEqual(JSON.parse(plain.stdout), prevResult);
    assert.deepEqual(ourRules(), []);

    const meshed = await exec(join(binDir, 'weft-cni'), { ...env('ADD', 'p2'), ...k8s('meshed') }, JSON.stringify({ ...withK8s, prevResult }));
    assert.equal(meshed.code, 0, meshed.stdout + meshed.stderr);
    assert.ok(ourRules().some((l) => /--dport 5432 .*-j RETURN/.test(l)), 'the pod annotation excluded port 5432');

    const t0 = Date.now();
    const stuck = await exec(join(binDir, 'weft-cni'), { ...env('ADD', 'p3'), ...k8s('stuck') }, JSON.stringify({ ...withK8s, prevResult }));
    assert.equal(stuck.code, 1);
    assert.equal((JSON.parse(stuck.stdout) as { code: number }).code, 11);
    assert.ok(Date.now() - t0 < 5000, 'gave up after the timeout');
    await exec(join(binDir, 'weft-cni'), env('DEL', 'p2'), JSON.stringify(withK8s));
    assert.deepEqual(ourRules(), []);
  });

  it('weft-cni uninstall removes only its own entry', async () => {
    const r = await exec(process.execPath, {}, '', [weftCni, 'uninstall', '--cni-conf-dir', confDir]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      conflist().plugins.map((p) => p.type),
      ['bridge'],
    );
  });
});
