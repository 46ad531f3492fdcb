import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { CERT_PROVIDER_INSTANCE } from '../../src/xds/index.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { keyAndCsr } from '../helpers/pki.js';
import { freePort } from '../helpers/postgres.js';
import { until } from '../helpers/until.js';

/**
 * The proxyless flavour of the zero-trust story, all real: @grpc/grpc-js-xds servers and clients
 * in their own processes, certificates from our CA on keys made "on the node" (here, the test),
 * mTLS through file_watcher certificate providers, permissions as RBAC on the server.
 */
const MESH = 'secure';
const Echo = '/weft.test.Echo/Echo';

interface Call {
  ok: boolean;
  backend?: string;
  code?: number;
  details?: string;
  at: number;
}

describe('proxyless gRPC with mTLS and permissions (grpc-js-xds client and server)', () => {
  let cp: TestControlPlane;
  let dir: string;
  let backendPort: number;
  const children: ChildProcess[] = [];
  const calls: Record<string, Call[]> = { frontend: [], intruder: [] };
  /** What the server process printed: its bound port and serving-state changes. */
  const serving: Record<string, unknown>[] = [];

  const proxyless = (name: string, service: string, port: number) => ({
    type: 'Dataplane',
    mesh: MESH,
    name,
    labels: { 'weft.io/proxyless': 'true' },
    networking: { address: '127.0.0.1', inbound: [{ port, tags: { 'kuma.io/service': service, 'kuma.io/protocol': 'grpc' } }] },
  });

  /** What weft-dp does for a proxyless app: key on the node, CSR signed with the token, files for file_watcher. */
  async function identityFiles(name: string, service: string): Promise<Record<string, string>> {
    const token = String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: MESH, name })).body.token);
    const { keyPem, csrPem } = await keyAndCsr([`spiffe://${MESH}/${service}`, 'kuma://kuma.io/protocol/grpc']);
    const issued = await http(cp.apiUrl, 'POST', `/meshes/${MESH}/dataplanes/${name}/_certificate`, { csr: csrPem }, { authorization: `Bearer ${token}` });
    assert.equal(issued.status, 200, JSON.stringify(issued.body));
    const files = { certificate_file: join(dir, `${name}.crt`), private_key_file: join(dir, `${name}.key`), ca_certificate_file: join(dir, `${name}-ca.crt`) };
    writeFileSync(files.certificate_file, String(issued.body.certificate));
    writeFileSync(files.private_key_file, keyPem, { mode: 0o600 });
    writeFileSync(files.ca_certificate_file, (issued.body.caBundle as string[]).join(''));
    return files;
  }

  function bootstrap(name: string, files: Record<string, string>): string {
    return JSON.stringify({
      xds_servers: [{ server_uri: cp.xdsAddress, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
      node: { id: `${MESH}.${name}`, cluster: name, locality: {} },
      certificate_providers: { [CERT_PROVIDER_INSTANCE]: { plugin_name: 'file_watcher', config: { ...files, refresh_interval: '1s' } } },
      server_listener_resource_name_template: 'grpc/server?xds.resource.listening_address=%s',
    });
  }

  function app(helper: string, env: Record<string, string>, onLine: (l: Record<string, unknown>) => void): ChildProcess {
    const child = spawn(process.execPath, [fileURLToPath(new URL(`../helpers/${helper}`, import.meta.url))], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    createInterface({ input: child.stdout! }).on('line', (l) => onLine(JSON.parse(l) as Record<string, unknown>));
    children.push(child);
    return child;
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-proxyless-'));
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_DEBOUNCE_MS: '20', WEFT_XDS_TLS_MODE: 'off' });
    const mesh = await http(cp.apiUrl, 'PUT', `/meshes/${MESH}`, { type: 'Mesh', name: MESH, mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin', mode: 'STRICT' }] } });
    assert.equal(mesh.status, 201);
    backendPort = await freePort();
    for (const [name, service, port] of [['backend-1', 'backend', backendPort], ['frontend-1', 'frontend', 1], ['intruder-1', 'intruder', 1]] as const) {
      assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/${MESH}/dataplanes/${name}`, proxyless(name, service, port))).status, 201);
    }
    app('xds-server-app.js', { NAME: 'backend-1', ADDRESS: `127.0.0.1:${backendPort}`, GRPC_XDS_EXPERIMENTAL_RBAC: 'true', GRPC_XDS_BOOTSTRAP_CONFIG: bootstrap('backend-1', await identityFiles('backend-1', 'backend')) }, (l) => serving.push(l));
    for (const who of ['frontend', 'intruder'] as const) {
      const env = { TARGET: 'xds:///backend', XDS_CREDS: '1', RUN_MS: '120000', GRPC_XDS_BOOTSTRAP_CONFIG: bootstrap(`${who}-1`, await identityFiles(`${who}-1`, who)) };
      app('xds-client-app.js', env, (l) => calls[who]!.push({ ...(l as unknown as Call), at: Date.now() }));
    }
  });

  after(async () => {
    for (const c of children) c.kill('SIGTERM');
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Waits until the calls of `who` made after `since` satisfy `cond` (at least 5 of them). */
  async function untilCalls(what: string, who: string, since: number, cond: (recent: Call[]) => boolean, ms = 15_000): Promise<Call[]> {
    let recent: Call[] = [];
    const ok = () => (recent = calls[who]!.filter((c) => c.at > since).slice(-5)).length === 5 && cond(recent);
    await until(what, ok, ms, 50, () => `last calls of ${who}: ${JSON.stringify(calls[who]!.slice(-3))}; server: ${JSON.stringify(serving)}`);
    return recent;
  }
  const allOk = (rs: Call[]) => rs.every((c) => c.ok);
  const allDenied = (rs: Call[]) => rs.every((c) => !c.ok && c.code === grpc.status.PERMISSION_DENIED);

  it('with allow-all-secure, both callers reach the server over mTLS, each seen with its SPIFFE ID', async () => {
    const f = await untilCalls('frontend calls to succeed', 'frontend', 0, allOk, 30_000);
    assert.ok(serving.some((l) => l.bound === backendPort), 'the XdsServer bound the port of its Dataplane inbound');
    assert.match(f[0]!.backend!, /^backend-1\|.*URI:spiffe:\/\/secure\/frontend/);
    const i = await untilCalls('intruder calls to succeed', 'intruder', 0, allOk);
    assert.match(i[0]!.backend!, /URI:spiffe:\/\/secure\/intruder/);
  });

  it('deleting allow-all-secure closes the mesh: every caller gets PERMISSION_DENIED', async () => {
    const t = Date.now();
    assert.equal((await http(cp.apiUrl, 'DELETE', `/meshes/${MESH}/traffic-permissions/allow-all-${MESH}`)).status, 200);
    await untilCalls('frontend to be denied', 'frontend', t, allDenied);
    await untilCalls('intruder to be denied', 'intruder', t, allDenied);
  });

  it('a MeshTrafficPermission lets frontend in; intruder stays denied; flipping it flips the outcome without restarts', async () => {
    const mtp = (action: string) => ({
      type: 'MeshTrafficPermission',
      mesh: MESH,
      name: 'backend-from-frontend',
      spec: { targetRef: { kind: 'MeshService', name: 'backend' }, from: [{ targetRef: { kind: 'MeshService', name: 'frontend' }, default: { action } }] },
    });
    let t = Date.now();
    assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/${MESH}/meshtrafficpermissions/backend-from-frontend`, mtp('Allow'))).status, 201);
    await untilCalls('frontend to be allowed', 'frontend', t, allOk);
    await untilCalls('intruder to stay denied', 'intruder', t, allDenied);
    t = Date.now();
    assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/${MESH}/meshtrafficpermissions/backend-from-frontend`, mtp('Deny'))).status, 200);
    await untilCalls('frontend to be denied again', 'frontend', t, allDenied);
    assert.ok(children.every((c) => c.exitCode === null), 'no process restarted');
  });

  it('a plaintext client from outside the mesh is refused', async () => {
    const client = new grpc.Client(`127.0.0.1:${backendPort}`, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError | null>((resolve) => {
        const id = (b: Buffer) => b;
        client.makeUnaryRequest(Echo, id, id, Buffer.from('hi'), { deadline: Date.now() + 3000 }, (e) => resolve(e));
      });
      assert.ok(err, 'the call failed');
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    } finally {
      client.close();
    }
  });
});
