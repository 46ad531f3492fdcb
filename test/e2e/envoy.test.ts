import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { envoyBinary } from '../helpers/envoy.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { freePort } from '../helpers/postgres.js';

/**
 * The Envoy flavour, end to end, when an Envoy binary exists (ENVOY_BINARY, or envoy on PATH):
 * two weft-dp wrappers running real Envoy sidecars, a plain HTTP app behind one, a client calling
 * through the other's outbound; mTLS between the Envoys and permissions as HTTP RBAC; a drain that
 * lets an in-flight request finish. Without Envoy: skipped, with one line saying so.
 */
const envoy = envoyBinary();
if (!envoy) console.log('# Envoy end-to-end tests skipped: no Envoy binary (set ENVOY_BINARY or put envoy on PATH)');
const weftDp = fileURLToPath(new URL('../../src/cmd/weft-dp.js', import.meta.url));

describe('Envoy sidecars through weft-dp', { skip: envoy ? false : 'no Envoy binary (ENVOY_BINARY)' }, () => {
  let cp: TestControlPlane;
  let dir: string;
  let app: Server;
  let outboundPort: number;
  const wrappers: Record<string, ChildProcess> = {};

  async function startDp(name: string, dataplane: string): Promise<void> {
    const token = join(dir, `${name}.token`);
    writeFileSync(token, String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'e2e', name })).body.token));
    const child = spawn(
      process.execPath,
      [
        weftDp,
        'run',
        ...['--cp-address', `https://${cp.xdsAddress}`, '--ca-cert-file', join(cp.dataDir, 'xds-tls.crt'), '--dataplane-token-file', token, '--dataplane', dataplane],
        ...['--binary-path', envoy!, '--admin-port', String(await freePort()), '--ready-port', '0', '--ready-address', '127.0.0.1', '--work-dir', join(dir, name), '--drain-time', '5s'],
      ],
      { stdio: ['ignore', 'inherit', 'inherit'] },
    );
    wrappers[name] = child;
  }

  async function get(path: string, ms = 20_000, want?: number): Promise<{ status: number; body: string }> {
    const t0 = Date.now();
    for (;;) {
      try {
        const r = await fetch(`http://127.0.0.1:${outboundPort}${path}`);
        const out = { status: r.status, body: await r.text() };
        if (want === undefined || out.status === want) return out;
      } catch {
        // not up yet
      }
      if (Date.now() - t0 > ms) assert.fail(`no ${want ?? 'answer'} from ${path} within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-envoy-'));
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_DEBOUNCE_MS: '20' });
    await http(cp.apiUrl, 'PUT', '/meshes/e2e', { type: 'Mesh', name: 'e2e', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin', mode: 'STRICT' }] } });
    app = createServer((req, res) => {
      const delay = req.url === '/slow' ? 2000 : 0;
      setTimeout(() => res.end(`hello from backend ${req.url}`), delay);
    });
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    const appPort = (app.address() as { port: number }).port;
    const [inboundPort, clientInbound] = [await freePort(), await freePort()];
    outboundPort = await freePort();
    await startDp(
      'backend-1',
      `type: Dataplane\nmesh: e2e\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: ${inboundPort}\n      servicePort: ${appPort}\n      tags: { kuma.io/service: backend, kuma.io/protocol: http }\n`,
    );
    await startDp(
      'client-1',
      `type: Dataplane\nmesh: e2e\nname: client-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: ${clientInbound}\n      tags: { kuma.io/service: client, kuma.io/protocol: http }\n  outbound:\n    - port: ${outboundPort}\n      tags: { kuma.io/service: backend }\n`,
    );
  });

  after(async () => {
    for (const w of Object.values(wrappers)) w.kill('SIGKILL');
    app?.close();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a request goes client app → Envoy → mTLS → Envoy → backend app', async () => {
    const r = await get('/hello', 60_000, 200);
    assert.equal(r.body, 'hello from backend /hello');
  });

  it('without a permission the backend Envoy answers 403; adding one lets the client in again', async () => {
    await http(cp.apiUrl, 'DELETE', '/meshes/e2e/traffic-permissions/allow-all-e2e');
    assert.equal((await get('/hello', 20_000, 403)).status, 403);
    await http(cp.apiUrl, 'PUT', '/meshes/e2e/traffic-permissions/client-to-backend', {
      type: 'TrafficPermission',
      sources: [{ match: { 'kuma.io/service': 'client' } }],
      destinations: [{ match: { 'kuma.io/service': 'backend' } }],
    });
    assert.equal((await get('/hello', 20_000, 200)).status, 200);
  });

  it('draining lets an in-flight request finish', async () => {
    const inFlight = fetch(`http://127.0.0.1:${outboundPort}/slow`).then(async (r) => ({ status: r.status, body: await r.text() }));
    await new Promise((r) => setTimeout(r, 300));
    wrappers['backend-1']!.kill('SIGTERM');
    const r = await inFlight;
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello from backend /slow');
  });
});
