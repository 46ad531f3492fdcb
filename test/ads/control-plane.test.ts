import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { weftctl } from '../helpers/bin.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { postgresMissing, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { systemRequirement } from '../helpers/require.js';


const dp = { type: 'Dataplane', mesh: 'default', name: 'dp-1', networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } };

/** Until `ok` holds, or fails naming `what` after `ms`. */
async function waitFor(what: string, ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  for (let t0 = Date.now(); !(await ok()); await new Promise((r) => setTimeout(r, 25))) if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
}

/** A metric's value on the control plane's /metrics (`name` may carry escaped labels); 0 when absent. */
async function metricOf(cp: TestControlPlane, name: string): Promise<number> {
  return Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text())?.[1] ?? 0);
}

describe('weft-cp serves ADS and reports each proxy', () => {
  let cp: TestControlPlane;
  let client: XdsTestClient;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_NACK_BACKOFF_MS: '200', WEFT_XDS_TLS_MODE: 'off', WEFT_XDS_EPHEMERAL_CLEANUP_MS: '300' });
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
    assert.match(head!, /^MESH\s+NAME\s+STATUS\s+SINCE\s+CP\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+OVER 4 MiB\s+LAST NACK$/);
    assert.match(line!, /^default\s+dp-1\s+Online\s+\d+s\s+\S+\s+ACK\s+-\s+NACK\s+-\s+-\s+-\s+LDS: Error adding\/updating listener\(s\) http: bad port$/);

    const metrics = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
    assert.match(metrics, /weft_xds_connected_proxies\{variant="sotw"\} 1/);
  });

  it('answers 404 for the status of a dataplane that does not exist', async () => {
    const r = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/ghost/_status');
    assert.equal(r.status, 404);
  });

  it('weftctl inspect dataplane --config prints the generated config, with no private key in it', async () => {
    const env = { WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' };
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/shop', { type: 'Mesh', name: 'shop', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } })).status, 201);
    const web = { ...dp, mesh: 'shop', name: 'web-1', networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web', 'kuma.io/protocol': 'http' } }] } };
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/shop/dataplanes/web-1', web)).status, 201);
    const r = await weftctl(['inspect', 'dataplane', 'web-1', '--mesh', 'shop', '--config'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /PRIVATE KEY/);
    const config = parseYaml(r.stdout) as Record<string, { name?: string; cluster_name?: string }[]>;
    assert.deepEqual(Object.keys(config), ['CDS', 'LDS', 'SDS'], 'no outbounds: no EDS');
    assert.deepEqual(config.CDS!.map((c) => c.name), ['localhost:8080']);
    assert.deepEqual(config.LDS!.map((l) => l.name), ['inbound:10.0.0.1:8080']);
    assert.match(r.stdout, /TrafficPermission\/allow-all-shop\/sources\[0\]/, "the new mesh's allow-all permission is in the inbound's RBAC");
    const bundle = (await http(cp.apiUrl, 'GET', '/meshes/shop/dataplanes/web-1/_config')).body.SDS as { validation_context: { trusted_ca: { inline_string: string } } }[];
    assert.match(bundle[0]!.validation_context.trusted_ca.inline_string, /^-----BEGIN CERTIFICATE-----/);
    const ghost = await weftctl(['inspect', 'dataplane', 'ghost', '--mesh', 'shop', '--config'], { env });
    assert.equal(ghost.code, 1);
    assert.match(ghost.stderr, /Dataplane "ghost" not found in mesh "shop"/);
  });

  it('answers a proxy back within xds.lingerMs from the config kept for it, with what changed while it was away', async () => {
    const dp2 = (ports: number[]) => ({ ...dp, name: 'dp-2', networking: { address: '10.0.0.2', inbound: ports.map((port) => ({ port, tags: { 'kuma.io/service': 'web' } })) } });
    const metric = (name: string) => metricOf(cp, name);
    const full = 'weft_xds_proxy_regenerations_total\\{kind="full"\\}';
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/dp-2', dp2([8080]))).status, 201);
    const first = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-2' });
    first.subscribe(TypeUrl.Cluster, []);
    first.ack(await first.next(TypeUrl.Cluster));
    first.close();
    await waitFor('the proxy to linger', async () => (await metric('weft_xds_lingering_proxies')) === 1);
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/dp-2', dp2([8080, 9090]))).status, 200);
    await waitFor('its kept config to follow the change', async () => cp.snapshots.get('default.dp-2')?.resources.get(TypeUrl.Cluster)?.has('localhost:9090') === true);
    const regenerated = await metric(full);
    const back = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-2' });
    try {
      back.subscribe(TypeUrl.Cluster, []);
      const cds = await back.next(TypeUrl.Cluster);
      assert.deepEqual(cds.resources.map((c) => (c as { name: string }).name).sort(), ['localhost:8080', 'localhost:9090']);
      assert.equal(await metric(full), regenerated, 'no new translation for its return');
      assert.equal(await metric('weft_xds_proxies_returned_total'), 1);
      assert.equal(await metric('weft_xds_lingering_proxies'), 0);
    } finally {
      back.close();
    }
  });

  it('keeps a departed proxy\'s status while its Dataplane exists, and drops it with the Dataplane, so names that come and go do not pile up', async () => {
    const records = () => metricOf(cp, 'weft_xds_proxy_status_records');
    const visit = async (id: string) => {
      const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id });
      c.subscribe(TypeUrl.Cluster, []);
      c.ack(await c.next(TypeUrl.Cluster));
      c.close();
      await waitFor(`${id} to leave`, () => cp.ads.status.get(id)?.connected === false);
    };
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/dp-3', { ...dp, name: 'dp-3' })).status, 201);
    const before = await records();
    await visit('default.dp-3');
    assert.equal(await records(), before + 1);
    await new Promise((r) => setTimeout(r, 500)); // past the departed-proxy cleanup: its Dataplane still exists
    const st = await http(cp.apiUrl, 'GET', '/meshes/default/dataplanes/dp-3/_status');
    assert.equal(st.body.connected, false, 'shown offline while its Dataplane exists');
    assert.ok(st.body.disconnectedAt);
    assert.equal((await http(cp.apiUrl, 'DELETE', '/meshes/default/dataplanes/dp-3')).status, 200);
    await waitFor('its status to go with its Dataplane', () => cp.ads.status.get('default.dp-3') === undefined);
    assert.equal(await records(), before);
    // A proxy still connected when its Dataplane is deleted: shown until it leaves.
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/dp-4', { ...dp, name: 'dp-4' })).status, 201);
    const staying = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-4' });
    try {
      staying.subscribe(TypeUrl.Cluster, []);
      staying.ack(await staying.next(TypeUrl.Cluster));
      assert.equal((await http(cp.apiUrl, 'DELETE', '/meshes/default/dataplanes/dp-4')).status, 200);
      assert.equal((await staying.next(TypeUrl.Cluster)).resources.length, 0, 'it is sent an empty config');
      assert.equal(cp.ads.status.get('default.dp-4')?.connected, true, 'kept while connected');
    } finally {
      staying.close();
    }
    await waitFor('the status of the proxy whose Dataplane went to go once it left', () => cp.ads.status.get('default.dp-4') === undefined);
    // A proxy whose Dataplane never existed (it was sent an empty config): dropped once it has left.
    await visit('default.never-registered');
    await waitFor('the status of a proxy without a Dataplane to go', () => cp.ads.status.get('default.never-registered') === undefined);
    assert.equal(await records(), before);
  });
});

describe('weft-cp authenticates proxies with dataplane tokens, over TLS', () => {
  let cp: TestControlPlane;
  let tlsCa: string;
  const env = () => ({ WEFTCTL_CP_ADDRESS: cp.apiUrl, WEFTCTL_CONFIG: '/nonexistent' });
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1' });
    tlsCa = readFileSync(join(cp.dataDir, 'xds-tls.crt'), 'utf8');
    for (const name of ['dp-1', 'dp-2']) await http(cp.apiUrl, 'PUT', `/meshes/default/dataplanes/${name}`, { ...dp, name });
  });
  after(() => cp.stop());

  const connect = (t: { after(fn: () => void): void }, nodeId: string, token?: string) => {
    const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id: nodeId }, { metadata: token ? { authorization: `Bearer ${token}` } : {}, tlsCa });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Cluster, []);
    return c;
  };

  it('serves TLS only: a plaintext client gets nothing', async (t) => {
    const plain = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-1' });
    t.after(() => plain.close());
    plain.subscribe(TypeUrl.Cluster, []);
    assert.ok(await plain.quiet(500));
    assert.equal(plain.received.length, 0);
    const mode = statSync(join(cp.dataDir, 'xds-tls.key')).mode & 0o777;
    assert.equal(mode, 0o600);
  });

  it('refuses a proxy without a token, saying how to get one', async (t) => {
    const s = await connect(t, 'default.dp-1').closed;
    assert.equal(s.code, grpc.status.UNAUTHENTICATED);
    assert.match(s.details, /no dataplane token.*weftctl generate dataplane-token/);
  });

  it('serves a proxy with a token from weftctl generate dataplane-token, and only as that dataplane', async (t) => {
    const g = await weftctl(['generate', 'dataplane-token', '--mesh', 'default', '--name', 'dp-1', '--valid-for', '1h'], { env: env() });
    assert.equal(g.code, 0, g.stderr);
    const token = g.stdout.trim();
    assert.match(g.stderr, /^token id \S+, valid until \S+/);
    const ok = connect(t, 'default.dp-1', token);
    assert.ok((await ok.next(TypeUrl.Cluster)).resources.length > 0);
    const other = await connect(t, 'default.dp-2', token).closed;
    assert.equal(other.code, grpc.status.PERMISSION_DENIED);
    assert.match(other.details, /does not match the token, which is for dataplane "dp-1"/);
  });

  it('refuses a revoked token and a forged one', async (t) => {
    const g = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'default', name: 'dp-2' });
    assert.equal(g.status, 200);
    const token = String(g.body.token);
    const forged = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    const f = await connect(t, 'default.dp-2', forged).closed;
    assert.equal(f.code, grpc.status.UNAUTHENTICATED);
    assert.match(f.details, /signature is not valid/);
    await http(cp.apiUrl, 'PUT', '/meshes/default/dataplane-token-revocations/leak', { type: 'DataplaneTokenRevocation', mesh: 'default', name: 'leak', ids: [g.body.id] });
    const r = await connect(t, 'default.dp-2', token).closed;
    assert.equal(r.code, grpc.status.UNAUTHENTICATED);
    assert.match(r.details, /revoked by DataplaneTokenRevocation "leak"/);
  });

  it('validates token requests and never serves signing keys', async () => {
    const bad = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'nowhere', name: 'x', validFor: 'forever' });
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body.violations, [{ field: 'validFor', message: 'must be a duration such as 30s, 24h, 1d or 10y' }]);
    const noMesh = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'nowhere', name: 'x' });
    assert.equal(noMesh.status, 404);
    assert.equal((await http(cp.apiUrl, 'GET', '/meshes/default/dataplane-token-signing-keys')).status, 404);
    const apply = await http(cp.apiUrl, 'POST', '/_apply', { resources: [{ type: 'DataplaneTokenSigningKey', mesh: 'default', name: 'mine', keyId: 'k', algorithm: 'ES256', publicKeyPem: 'x', sealedPrivateKey: 'y' }] });
    assert.equal(apply.body.code, 'unknown_type');
    const both = await weftctl(['generate', 'dataplane-token', '--mesh', 'default', '--name', 'dp-1', '--tag', 'kuma.io/service=web'], { env: env() });
    assert.equal(both.code, 1);
    assert.match(both.stderr, /give --name or --tag, not both/);
    const none = await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'default' });
    assert.deepEqual(none.body.violations, [{ field: 'name', message: 'required unless tags are given' }]);
  });

  it('a token bound to tags serves any Dataplane with those tags on every inbound, and no other', async (t) => {
    await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/api-1', { ...dp, name: 'api-1', networking: { address: '10.0.0.2', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'api' } }] } });
    await http(cp.apiUrl, 'PUT', '/meshes/default/dataplanes/mixed-1', {
      ...dp,
      name: 'mixed-1',
      networking: { address: '10.0.0.3', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }, { port: 9090, tags: { 'kuma.io/service': 'admin' } }] },
    });
    const g = await weftctl(['generate', 'dataplane-token', '--mesh', 'default', '--tag', 'kuma.io/service=web'], { env: env() });
    assert.equal(g.code, 0, g.stderr);
    const token = g.stdout.trim();
    for (const name of ['dp-1', 'dp-2']) assert.ok((await connect(t, `default.${name}`, token).next(TypeUrl.Cluster)).resources.length > 0, `${name} serves web`);
    const api = await connect(t, 'default.api-1', token).closed;
    assert.equal(api.code, grpc.status.PERMISSION_DENIED);
    assert.match(api.details, /bound to tags \{"kuma.io\/service":"web"\}, which Dataplane "api-1" does not carry on every inbound/);
    const mixed = await connect(t, 'default.mixed-1', token).closed;
    assert.equal(mixed.code, grpc.status.PERMISSION_DENIED, 'a Dataplane that also serves another service is refused');
    const ghost = await connect(t, 'default.ghost-1', token).closed;
    assert.equal(ghost.code, grpc.status.PERMISSION_DENIED);
    assert.match(ghost.details, /does not exist/);
  });
});

describe('weft-cp forgets a deleted mesh', () => {
  it("drops what its CA kept of the mesh (the CA's key opened in memory) when the Mesh is deleted", async (t) => {
    const cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_TLS_MODE: 'off' });
    t.after(() => cp.stop());
    const mtls = { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] };
    assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/brief', { type: 'Mesh', name: 'brief', mtls })).status, 201);
    assert.equal((await cp.certificates.trustBundle('brief')).length, 1);
    assert.ok(cp.certificates.meshesKept().includes('brief'));
    assert.equal((await http(cp.apiUrl, 'DELETE', '/meshes/brief')).status, 200);
    await waitFor('the mesh to be forgotten', () => !cp.certificates.meshesKept().includes('brief'));
  });
});

describe('weft-cp by default', () => {
  it('refuses xDS clients that bring no token', async (t) => {
    const cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1' });
    t.after(() => cp.stop());
    const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id: 'default.dp-1' }, { tlsCa: readFileSync(join(cp.dataDir, 'xds-tls.crt'), 'utf8') });
    t.after(() => c.close());
    c.subscribe(TypeUrl.Cluster, []);
    assert.equal((await c.closed).code, grpc.status.UNAUTHENTICATED);
  });
});

describe('weft-cp on PostgreSQL', systemRequirement('PostgreSQL server', postgresMissing()), () => {
  let server: TestPostgres;
  before(async () => {
    server = await startPostgres();
  });
  after(() => server?.stop());

  it('drops the status of a departed proxy whose Dataplane went while the change feed was down, and a mesh deleted meanwhile (resync)', async () => {
    const url = await server.createDatabase(`weft_status_${process.pid}`);
    const cp = await startTestControlPlane({ WEFT_STORE_TYPE: 'postgres', WEFT_STORE_POSTGRES_URL: url, WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: 'true', WEFT_XDS_TLS_MODE: 'off', WEFT_XDS_EPHEMERAL_CLEANUP_MS: '600000' });
    const admin = new pg.Client({ connectionString: url });
    try {
      for (const name of ['dp-1', 'dp-2']) {
        assert.equal((await http(cp.apiUrl, 'PUT', `/meshes/default/dataplanes/${name}`, { ...dp, name })).status, 201);
        const c = new XdsTestClient(cp.xdsAddress, 'sotw', { id: `default.${name}` });
        c.subscribe(TypeUrl.Cluster, []);
        c.ack(await c.next(TypeUrl.Cluster));
        c.close();
        await waitFor('the proxy to leave', () => cp.ads.status.get(`default.${name}`)?.connected === false, 10_000);
      }
      const mtls = { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] };
      assert.equal((await http(cp.apiUrl, 'PUT', '/meshes/brief', { type: 'Mesh', name: 'brief', mtls })).status, 201);
      await cp.certificates.trustBundle('brief');
      // Deleted behind weft-cp's back: no change event reaches it, only the resync after its feed is
      // cut (the departed-proxy check, WEFT_XDS_EPHEMERAL_CLEANUP_MS, comes too late to count here).
      await admin.connect();
      await admin.query(`DELETE FROM weft_resources WHERE type = 'Dataplane' AND mesh = 'default' AND name = 'dp-1'`);
      await admin.query(`DELETE FROM weft_resources WHERE mesh = 'brief' OR (type = 'Mesh' AND name = 'brief')`);
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(cp.ads.status.get('default.dp-1'), 'no event yet: still shown');
      assert.ok(cp.certificates.meshesKept().includes('brief'), 'no event yet: the mesh is still kept');
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`);
      await waitFor('its status to go after the resync', () => cp.ads.status.get('default.dp-1') === undefined, 10_000);
      assert.ok(cp.ads.status.get('default.dp-2'), 'a departed proxy whose Dataplane is still there keeps its status');
      await waitFor('the deleted mesh to be forgotten after the resync', () => !cp.certificates.meshesKept().includes('brief'), 10_000);
    } finally {
      await admin.end().catch(() => {});
      await cp.stop();
    }
  });
});
