import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { TypeUrl } from '../../src/ads/index.js';
import { generateProxyConfig } from '../../src/xds/index.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { until } from '../helpers/until.js';

/** A real gRPC server that answers Echo with its own name. */
async function echoBackend(name: string): Promise<{ port: number; server: grpc.Server }> {
  const server = new grpc.Server();
  const id = (b: Buffer) => b;
  server.addService(
    { Echo: { path: '/weft.test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
    { Echo: (_call: unknown, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.from(name)) },
  );
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  return { port, server };
}

const backendDp = (name: string, port: number, ready = true) => ({
  type: 'Dataplane',
  mesh: 'default',
  name,
  networking: { address: '127.0.0.1', inbound: [{ port, tags: { 'kuma.io/service': 'echo', 'kuma.io/protocol': 'grpc' }, health: { ready } }] },
});

describe('proxyless gRPC client (@grpc/grpc-js-xds) against weft-cp', () => {
  let cp: TestControlPlane;
  let b1: { port: number; server: grpc.Server };
  let b2: { port: number; server: grpc.Server };
  let app: ChildProcess;
  const calls: { ok: boolean; backend?: string; details?: string; at: number }[] = [];

  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_DEBOUNCE_MS: '20', WEFT_XDS_NACK_BACKOFF_MS: '500', WEFT_XDS_TLS_MODE: 'off' });
    b1 = await echoBackend('b1');
    b2 = await echoBackend('b2');
    for (const dp of [
      backendDp('echo-1', b1.port),
      backendDp('echo-2', b2.port),
      { type: 'Dataplane', mesh: 'default', name: 'client-1', labels: { 'weft.io/proxyless': 'true' }, networking: { address: '127.0.0.1', inbound: [{ port: 1, tags: { 'kuma.io/service': 'client' } }] } },
    ]) {
      const r = await http(cp.apiUrl, 'PUT', `/meshes/default/dataplanes/${dp.name}`, dp);
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }
    const bootstrap = {
      xds_servers: [{ server_uri: cp.xdsAddress, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
      node: { id: 'default.client-1', cluster: 'client', locality: {} },
    };
    app = spawn(process.execPath, [fileURLToPath(new URL('../helpers/xds-client-app.js', import.meta.url))], {
      env: { ...process.env, GRPC_XDS_BOOTSTRAP_CONFIG: JSON.stringify(bootstrap), TARGET: 'xds:///echo', RUN_MS: '60000' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    createInterface({ input: app.stdout! }).on('line', (l) => calls.push({ ...(JSON.parse(l) as { ok: boolean; backend?: string }), at: Date.now() }));
  });
  after(async () => {
    app?.kill('SIGTERM');
    b1?.server.forceShutdown();
    b2?.server.forceShutdown();
    await cp?.stop();
  });

  const untilCalls = (what: string, cond: () => boolean, ms = 10_000) => until(what, cond, ms, 50, () => `last calls: ${JSON.stringify(calls.slice(-5))}`);

  it('resolves xds:///echo through LDS, RDS, CDS and EDS and reaches both real backends', async () => {
    await untilCalls('calls to both backends', () => new Set(calls.filter((c) => c.ok).map((c) => c.backend)).size === 2);
    const st = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/client-1/_status');
    const types = st.body.types as Record<string, { lastAckedVersion?: string; lastSentVersion?: string }>;
    for (const t of ['LDS', 'RDS', 'CDS', 'EDS']) assert.equal(types[t]?.lastAckedVersion, types[t]?.lastSentVersion, `${t} acknowledged by grpc-js-xds`);
  });

  it('follows the store: a backend marked not ready stops getting traffic', async () => {
    await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/echo-2', backendDp('echo-2', b2.port, false));
    const changed = Date.now();
    await untilCalls('traffic only on b1', () => {
      const recent = calls.filter((c) => c.at > changed + 500 && c.ok);
      return recent.length >= 10 && recent.every((c) => c.backend === 'b1');
    });
    await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/echo-2', backendDp('echo-2', b2.port, true));
    const back = Date.now();
    await untilCalls('traffic on b2 again', () => calls.some((c) => c.at > back && c.backend === 'b2'));
  });

  it('records what the client rejects as a NACK with its message', async () => {
    // A cluster Envoy's rules allow but gRPC does not support: the client must NACK it.
    const data = await cp.store.list('Dataplane', { mesh: 'default' });
    const mesh = (await cp.store.get({ type: 'Mesh', mesh: '', name: 'default' }))!;
    const me = data.items.find((d) => d.name === 'client-1')!;
    const set = generateProxyConfig({ mesh, dataplane: me, dataplanes: data.items, trafficPermissions: [], meshTrafficPermissions: [] } as never);
    const clusters = (set[TypeUrl.Cluster] ?? []).map((c) => ({ ...c, lb_policy: 'MAGLEV' }));
    cp.snapshots.set('default.client-1', { ...set, [TypeUrl.Cluster]: clusters });
    let nacked: string | undefined;
    const t0 = Date.now();
    while (Date.now() - t0 < 10_000) {
      const st = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/client-1/_status');
      nacked = (st.body.types as Record<string, { lastNack?: { message: string } }>).CDS?.lastNack?.message;
      if (nacked) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(nacked, 'grpc-js-xds rejected the cluster and the control plane recorded it');
    assert.match(nacked!, /unsupported lb_policy: MAGLEV/);
    const metrics = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
    assert.match(metrics, /weft_xds_nacks_total\{type="CDS"\} [1-9]/);
  });
});
