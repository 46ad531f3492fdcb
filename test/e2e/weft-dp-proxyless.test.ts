import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { freePort } from '../helpers/postgres.js';
import { startWeftDp, type WeftDpProcess } from '../helpers/weft-dp.js';

/**
 * Proxyless end to end through two weft-dp wrappers: each registers its Dataplane from a
 * template, gets a certificate for a key made on its node, writes the gRPC bootstrap and identity
 * files, and relays xDS to the control plane over TLS with its token. The apps are real
 * grpc-js-xds server and client processes that know nothing but GRPC_XDS_BOOTSTRAP.
 */
const MESH = 'shop';
const helper = (name: string) => fileURLToPath(new URL(`../helpers/${name}`, import.meta.url));

const TEMPLATE = `type: Dataplane
mesh: ${MESH}
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
    - port: {{ port }}
      tags:
        kuma.io/service: {{ service }}
        kuma.io/protocol: grpc
`;

describe('weft-dp --proxyless: two wrappers, a grpc-js-xds server and client, mTLS', () => {
  let cp: TestControlPlane;
  let dir: string;
  let template: string;
  let backendPort: number;
  const wrappers: WeftDpProcess[] = [];
  const apps: ChildProcess[] = [];
  const calls: { ok: boolean; backend?: string; code?: number }[] = [];

  const common = (name: string, token: string) => [
    '--cp-address',
    `https://${cp.xdsAddress}`,
    '--ca-cert-file',
    join(cp.dataDir, 'xds-tls.crt'),
    '--dataplane-token-file',
    token,
    '--dataplane-file',
    template,
    '--work-dir',
    join(dir, name),
    '--ready-port',
    '0',
    '--ready-address',
    '127.0.0.1',
    '--proxyless',
    '--refresh-interval',
    '500ms',
  ];

  async function tokenFile(name: string): Promise<string> {
    const r = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: MESH, name });
    const path = join(dir, `${name}.token`);
    writeFileSync(path, String(r.body.token), { mode: 0o600 });
    return path;
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-dp-e2e-'));
    template = join(dir, 'dataplane.yaml');
    writeFileSync(template, TEMPLATE);
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_DEBOUNCE_MS: '20', WEFT_XDS_EPHEMERAL_CLEANUP_MS: '500' });
    assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/${MESH}`, { type: 'Mesh', name: MESH, mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } })).status, 201);
    backendPort = await freePort();
  });

  after(async () => {
    for (const a of apps) a.kill('SIGKILL');
    for (const w of wrappers) w.child.kill('SIGKILL');
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let backend: WeftDpProcess;
  let frontend: WeftDpProcess;
  it('each wrapper registers its Dataplane, gets its certificate and becomes ready', async () => {
    // Settings may come from WEFT_DP_* variables as well as flags.
    backend = startWeftDp([...common('backend-1', await tokenFile('backend-1')).filter((a, i, all) => a !== '--proxyless' && all[i - 1] !== '--cp-address' && a !== '--cp-address')], {
      WEFT_DP_CP_ADDRESS: `https://${cp.xdsAddress}`,
      WEFT_DP_PROXYLESS: 'true',
      WEFT_DP_DATAPLANE_VAR: `name=backend-1,port=${backendPort},service=backend`,
    });
    frontend = startWeftDp([...common('frontend-1', await tokenFile('frontend-1')), '--name', 'frontend-1', '--dataplane-var', 'port=1', '--dataplane-var', 'service=frontend']);
    wrappers.push(backend, frontend);
    for (const w of [backend, frontend]) {
      const running = await w.line((l) => l.msg === 'weft-dp running');
      const ready = await fetch(`http://127.0.0.1:${String(running.readyPort)}/ready`);
      assert.equal(ready.status, 200);
    }
    const dp = await http(cp.apiUrl, 'GET', `/meshes/${MESH}/dataplanes/backend-1`);
    assert.equal(dp.status, 200);
    assert.deepEqual(dp.body.labels, { 'weft.io/ephemeral': 'true', 'weft.io/proxyless': 'true' });
    const keyFile = join(dir, 'backend-1', 'identity.key');
    assert.equal(statSync(keyFile).mode & 0o777, 0o600, 'the private key file is 0600');
    assert.equal(statSync(join(dir, 'backend-1')).mode & 0o777, 0o700);
    assert.match(readFileSync(keyFile, 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
    const api = JSON.stringify((await http(cp.apiUrl, 'GET', `/meshes/${MESH}/dataplanes/backend-1/_config`)).body);
    assert.doesNotMatch(api, /PRIVATE KEY/, 'the control plane never had the key');
  });

  it('the apps, given only GRPC_XDS_BOOTSTRAP, talk mTLS through the mesh', async () => {
    const bootstrapOf = async (w: WeftDpProcess) => String((await w.line((l) => typeof l.GRPC_XDS_BOOTSTRAP === 'string')).GRPC_XDS_BOOTSTRAP);
    const server = spawn(process.execPath, [helper('xds-server-app.js')], {
      env: { ...process.env, GRPC_XDS_BOOTSTRAP: await bootstrapOf(backend), GRPC_XDS_EXPERIMENTAL_RBAC: 'true', NAME: 'backend-1', ADDRESS: `127.0.0.1:${backendPort}` },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const client = spawn(process.execPath, [helper('xds-client-app.js')], {
      env: { ...process.env, GRPC_XDS_BOOTSTRAP: await bootstrapOf(frontend), TARGET: 'xds:///backend', XDS_CREDS: '1', RUN_MS: '60000' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    apps.push(server, client);
    createInterface({ input: client.stdout! }).on('line', (l) => calls.push(JSON.parse(l) as { ok: boolean; backend?: string }));
    const t0 = Date.now();
    while (calls.filter((c) => c.ok).length < 3) {
      assert.ok(Date.now() - t0 < 30_000, `no successful calls; last: ${JSON.stringify(calls.slice(-2))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(calls.find((c) => c.ok)!.backend!, /^backend-1\|.*URI:spiffe:\/\/shop\/frontend/);
  });

  it('a CA rotation: both wrappers move to the new CA by themselves, the old root is dropped, and no call fails', async () => {
    const from = calls.length;
    const mesh = { type: 'Mesh', name: MESH, mtls: { enabledBackend: 'ca-2', backends: [{ name: 'ca-1', type: 'builtin' }, { name: 'ca-2', type: 'builtin' }] } };
    assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/${MESH}`, mesh)).status, 200);
    const moved = (name: string) => {
      const cert = new X509Certificate(readFileSync(join(dir, name, 'identity.crt'), 'utf8'));
      const roots = readFileSync(join(dir, name, 'ca.crt'), 'utf8').match(/BEGIN CERTIFICATE/g)?.length;
      return /CA ca-2/.test(cert.issuer) && roots === 1;
    };
    const t0 = Date.now();
    while (!(moved('backend-1') && moved('frontend-1'))) {
      assert.ok(Date.now() - t0 < 40_000, 'both wrappers hold ca-2 certificates and only the ca-2 root within 40 s');
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 3000)); // calls keep flowing on the new CA alone
    const during = calls.slice(from);
    assert.ok(during.length > 50, `calls kept being made (${during.length})`);
    assert.deepEqual(during.filter((c) => !c.ok), [], 'no call failed during the rotation');
  });

  it('SIGTERM: not ready, deregistered, exit code 0', async () => {
    frontend.child.kill('SIGTERM');
    assert.equal(await frontend.exited, 0);
    assert.equal((await http(cp.apiUrl, 'GET', `/meshes/${MESH}/dataplanes/frontend-1`)).status, 404);
  });

  it('a Dataplane whose wrapper dies without deregistering is removed once its proxy is gone', async () => {
    for (const a of apps) a.kill('SIGKILL');
    backend.child.kill('SIGKILL');
    await backend.exited;
    const t0 = Date.now();
    while ((await http(cp.apiUrl, 'GET', `/meshes/${MESH}/dataplanes/backend-1`)).status !== 404) {
      assert.ok(Date.now() - t0 < 10_000, 'backend-1 still registered 10 s after its proxy left');
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it('start-up problems: a clear message and exit code 1, no stack trace', async () => {
    const token = await tokenFile('x-1');
    const missingVar = startWeftDp([...common('x-1', token), '--dataplane-var', 'name=x-1']);
    assert.equal(await missingVar.exited, 1);
    assert.match(missingVar.stderr, /weft-dp: the Dataplane template needs "port" \(line 7\), "service" \(line 9\): give --dataplane-var port=VALUE/);
    assert.doesNotMatch(missingVar.stderr, /\bat .*\.js:\d+/);

    const noFile = startWeftDp([...common('x-1', join(dir, 'nope.token')), '--dataplane-var', 'name=x-1', '--dataplane-var', 'port=1', '--dataplane-var', 'service=x']);
    assert.equal(await noFile.exited, 1);
    assert.match(noFile.stderr, /cannot read the dataplane token file .*nope\.token: ENOENT/);

    const wrongToken = startWeftDp([...common('y-1', token), '--dataplane-var', 'name=y-1', '--dataplane-var', 'port=1', '--dataplane-var', 'service=x']);
    assert.equal(await wrongToken.exited, 1);
    assert.match(wrongToken.stderr, /the token is for dataplane "x-1" in mesh "shop", not "y-1"/);
    assert.doesNotMatch(wrongToken.stderr, /DeprecationWarning/, 'no Node warning noise for a control plane addressed by IP');

    const invalid = startWeftDp([...common('x-1', token), '--dataplane-var', 'name=x-1', '--dataplane-var', 'port=70000', '--dataplane-var', 'service=x']);
    assert.equal(await invalid.exited, 1);
    assert.match(invalid.stderr, /Dataplane "x-1" is invalid\n  networking\.inbound\[0\]\.port: must be 1-65535/);
  });

  it('a token bound to tags registers, and gets certificates for, any Dataplane carrying them, and no other', async () => {
    const r = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: MESH, tags: { 'kuma.io/service': 'batch' } });
    const token = join(dir, 'batch.token');
    writeFileSync(token, String(r.body.token), { mode: 0o600 });
    const ok = startWeftDp([...common('batch-7', token), '--dataplane-var', 'name=batch-7', '--dataplane-var', 'port=1', '--dataplane-var', 'service=batch']);
    wrappers.push(ok);
    await ok.line((l) => l.msg === 'weft-dp running');
    assert.match(readFileSync(join(dir, 'batch-7', 'identity.crt'), 'utf8'), /^-----BEGIN CERTIFICATE-----/);
    ok.child.kill('SIGTERM');
    assert.equal(await ok.exited, 0);
    const wrong = startWeftDp([...common('web-9', token), '--dataplane-var', 'name=web-9', '--dataplane-var', 'port=1', '--dataplane-var', 'service=web']);
    assert.equal(await wrong.exited, 1);
    assert.match(wrong.stderr, /the token is bound to tags \{"kuma.io\/service":"batch"\}/);
  });

  it('an unreachable control plane is "not yet": it retries with backoff until stopped', async () => {
    const port = await freePort();
    const w = startWeftDp([...common('x-1', await tokenFile('x-1')).map((a) => (a === `https://${cp.xdsAddress}` ? `https://127.0.0.1:${port}` : a)), '--dataplane-var', 'name=x-1', '--dataplane-var', 'port=1', '--dataplane-var', 'service=x']);
    wrappers.push(w);
    const first = await w.line((l) => l.msg === 'bootstrap: control plane not ready yet; retrying');
    assert.equal(first.code, grpc.status[grpc.status.UNAVAILABLE]);
    await w.line((l) => l.msg === 'bootstrap: control plane not ready yet; retrying' && Number(l.attempt) >= 2);
    w.child.kill('SIGTERM');
    assert.equal(await w.exited, 1, 'stopped before it ever started');
    const timed = startWeftDp(
      [...common('x-1', await tokenFile('x-1')).map((a) => (a === `https://${cp.xdsAddress}` ? `https://127.0.0.1:${port}` : a)), '--dataplane-var', 'name=x-1', '--dataplane-var', 'port=1', '--dataplane-var', 'service=x', '--start-timeout', '2s'],
    );
    assert.equal(await timed.exited, 1);
    assert.match(timed.stderr, /weft-dp: the control plane was not ready within 2 s \(bootstrap\)/);
  });
});
