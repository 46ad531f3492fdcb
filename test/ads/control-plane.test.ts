import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { weftctl } from '../helpers/bin.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';


const dp = { type: 'Dataplane', mesh: 'default', name: 'dp-1', networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } };

describe('weft-cp serves ADS and reports each proxy', () => {
  let cp: TestControlPlane;
  let client: XdsTestClient;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_NACK_BACKOFF_MS: '200' });
  });
  after(async () => {
    client?.close();
    await cp.stop();
  });

  it('shows ACKs and NACKs in /_status and in weftctl inspect dataplanes', async () => {
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/dp-1', dp)).status, 201);
    client = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-1' });
    client.subscribe(TypeUrl.Cluster, []);
    const cds = await client.next(TypeUrl.Cluster);
    client.ack(cds);
    client.subscribe(TypeUrl.Listener, []);
    client.nack(await client.next(TypeUrl.Listener), 'Error adding/updating listener(s) http: bad port');
    await new Promise((r) => setTimeout(r, 150));

    const st = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/dp-1/_status');
    assert.equal(st.status, 200);
    assert.equal(st.body.connected, true);
    const types = st.body.types as Record<string, { lastAckedVersion?: string; lastNack?: { message: string } }>;
    assert.equal(types.CDS!.lastAckedVersion, cds.version);
    assert.equal(types.LDS!.lastNack!.message, 'Error adding/updating listener(s) http: bad port');

    const r = await weftctl(['inspect', 'dataplanes'], { env: { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' } });
    assert.equal(r.code, 0, r.stderr);
    const [head, line] = r.stdout.trim().split('\n');
    assert.match(head!, /^MESH\s+NAME\s+STATUS\s+SINCE\s+CP\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+LAST NACK$/);
    assert.match(line!, /^default\s+dp-1\s+Online\s+\d+s\s+\S+\s+ACK\s+-\s+NACK\s+-\s+-\s+LDS: Error adding\/updating listener\(s\) http: bad port$/);

    const metrics = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
    assert.match(metrics, /weft_xds_connected_proxies\{variant="sotw"\} 1/);
  });

  it('answers 404 for the status of a dataplane that does not exist', async () => {
    const r = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/ghost/_status');
    assert.equal(r.status, 404);
  });
});

describe('weft-cp by default', () => {
  it('refuses xDS clients until token authentication exists', async (t) => {
    const cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1' });
    t.after(() => cp.stop());
    const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-1' });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Cluster, []);
    assert.equal((await c.closed).code, grpc.status.UNAUTHENTICATED);
  });
});
