import assert from 'node:assert/strict';
import { statSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';

const dp = (name: string, port = 8080, service = 'web', mesh = 'default') => ({
  type: 'Dataplane',
  mesh,
  name,
  networking: { address: '10.0.0.1', inbound: [{ port, tags: { 'kuma.io/service': service } }] },
});

describe('HTTP API', () => {
  let cp: TestControlPlane;
  let api: string;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_API_BODY_LIMIT_BYTES: '4096' });
    api = cp.apiUrl;
  });
  after(() => cp.stop());

  it('GET / reports product, version and store type', async () => {
    const r = await http(api, 'GET', '/');
    assert.equal(r.status, 200);
    assert.equal(r.body.product, 'Weft');
    assert.match(String(r.body.version), /^\d+\.\d+\.\d+/);
    assert.deepEqual(r.body.store, { type: 'embedded' });
  });

  it('creates the default mesh at start, as Kuma does', async () => {
    const r = await http(api, 'GET', '/meshes/default');
    assert.equal(r.status, 200);
    assert.equal(r.body.name, 'default');
  });

  it('PUT creates (201), PUT again is unchanged (200, same ETag), GET returns Kuma form with ETag', async () => {
    const a = await http(api, 'PUT', '/meshes/default/dataplanes/web-1', dp('web-1'));
    assert.equal(a.status, 201);
    assert.equal(a.body.outcome, 'created');
    const b = await http(api, 'PUT', '/meshes/default/dataplanes/web-1', dp('web-1'));
    assert.equal(b.status, 200);
    assert.equal(b.body.outcome, 'unchanged');
    assert.equal(b.headers.get('etag'), a.headers.get('etag'));
    const g = await http(api, 'GET', '/meshes/default/dataplanes/web-1');
    assert.equal(g.status, 200);
    assert.equal(g.headers.get('etag'), a.headers.get('etag'));
    assert.equal(g.body.type, 'Dataplane');
    assert.equal(g.body.mesh, 'default');
    assert.ok(g.body.creationTime && g.body.networking);
  });

  it('accepts a YAML body and takes mesh and name from the URL when the body omits them', async () => {
    const yaml = 'networking:\n  address: 10.0.0.9\n  inbound:\n    - port: 9000\n      tags:\n        kuma.io/service: yaml-svc\n';
    const r = await http(api, 'PUT', '/meshes/default/dataplanes/from-yaml', yaml, { 'content-type': 'application/yaml' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  });

  it('If-Match with a stale version gets 409 version_conflict and changes nothing', async () => {
    const a = await http(api, 'PUT', '/meshes/default/dataplanes/occ', dp('occ'));
    const etag = a.headers.get('etag')!;
    const b = await http(api, 'PUT', '/meshes/default/dataplanes/occ', dp('occ', 9001), { 'if-match': etag });
    assert.equal(b.status, 200);
    const c = await http(api, 'PUT', '/meshes/default/dataplanes/occ', dp('occ', 9002), { 'if-match': etag });
    assert.equal(c.status, 409);
    assert.equal(c.body.code, 'version_conflict');
    const d = await http(api, 'DELETE', '/meshes/default/dataplanes/occ', undefined, { 'if-match': etag });
    assert.equal(d.status, 409);
    const g = await http(api, 'GET', '/meshes/default/dataplanes/occ');
    assert.equal((g.body.networking as { inbound: { port: number }[] }).inbound[0]!.port, 9001);
  });

  it('invalid fields get 400 with every violation, and nothing is stored', async () => {
    const bad = { ...dp('bad'), networking: { address: '10.0.0.1', inbound: [{ port: 0, tags: {} }] } };
    const r = await http(api, 'PUT', '/meshes/default/dataplanes/bad', bad);
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'invalid_resource');
    assert.deepEqual(
      (r.body.violations as { field: string }[]).map((v) => v.field).sort(),
      ['networking.inbound[0].port', 'networking.inbound[0].tags["kuma.io/service"]'],
    );
    assert.equal((await http(api, 'GET', '/meshes/default/dataplanes/bad')).status, 404);
  });

  it('a name or mesh that disagrees with the URL is refused', async () => {
    const r = await http(api, 'PUT', '/meshes/default/dataplanes/one', dp('other'));
    assert.equal(r.status, 400);
    assert.deepEqual(r.body.violations, [{ field: 'name', message: 'must match the name in the URL ("one")' }]);
  });

  it('malformed JSON and YAML get 400 malformed_body; YAML errors give the line', async () => {
    const j = await http(api, 'PUT', '/meshes/default/dataplanes/x', '{"type": "Dataplane",', { 'content-type': 'application/json' });
    assert.equal(j.status, 400);
    assert.equal(j.body.code, 'malformed_body');
    const y = await http(api, 'PUT', '/meshes/default/dataplanes/x', 'networking:\n  address: [\n', { 'content-type': 'application/yaml' });
    assert.equal(y.status, 400);
    assert.equal(y.body.code, 'malformed_body');
    assert.match(String(y.body.message), /line \d+, column \d+/);
  });

  it('YAML that the parser only warns about leaves nothing on the process\'s stderr; validation answers it', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      // An unresolved tag and an ambiguous anchor: the yaml library warns, and reads on.
      const r = await http(api, 'PUT', '/meshes/default/dataplanes/x', '!!nonsense networking:\n  &address: 10.0.0.9\n', { 'content-type': 'application/yaml' });
      assert.equal(r.status, 400);
      assert.equal(r.body.code, 'invalid_resource');
      await new Promise((res) => setImmediate(res)); // process warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(warnings, []);
  });

  it('an unsupported media type gets 415 and an oversized body 413', async () => {
    const t = await http(api, 'PUT', '/meshes/default/dataplanes/x', 'hello', { 'content-type': 'text/plain' });
    assert.equal(t.status, 415);
    assert.equal(t.body.code, 'unsupported_media_type');
    const big = { ...dp('big'), labels: { filler: 'x'.repeat(8000) } };
    const r = await http(api, 'PUT', '/meshes/default/dataplanes/big', big);
    assert.equal(r.status, 413);
    assert.equal(r.body.code, 'payload_too_large');
    assert.equal((await http(api, 'GET', '/meshes/default/dataplanes/big')).status, 404);
  });

  it('a resource in a mesh that does not exist gets 404 mesh_not_found', async () => {
    const r = await http(api, 'PUT', '/meshes/nope/dataplanes/x', dp('x', 8080, 'web', 'nope'));
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'mesh_not_found');
  });

  it('unknown types and URLs get clear errors', async () => {
    const u = await http(api, 'POST', '/_apply', { resources: [{ type: 'TrafficRoute9', name: 'x', mesh: 'default' }] });
    assert.equal(u.status, 400);
    assert.equal(u.body.code, 'unknown_type');
    const p = await http(api, 'GET', '/meshes/default/widgets');
    assert.equal(p.status, 404);
    assert.match(String(p.body.message), /no resource type "widgets"/);
    const g = await http(api, 'GET', '/meshes/default/dataplanes/ghost');
    assert.equal(g.status, 404);
    assert.equal(g.body.code, 'not_found');
  });

  it("a write answers with warnings naming the Kuma fields it keeps but does not apply; none when there are none", async () => {
    const mesh = { type: 'Mesh', name: 'kept', logging: { backends: [] }, mtls: { enabledBackend: 'ca-1', skipValidation: true, backends: [{ name: 'ca-1', type: 'builtin', rootChain: { requestTimeout: '10s' } }] } };
    const put = await http(api, 'PUT', '/meshes/kept', mesh);
    assert.deepEqual([put.status, put.body.warnings], [201, ['kept for compatibility with Kuma, but not applied by Weft: logging, mtls.skipValidation, mtls.backends[0].rootChain']]);
    const gw = { type: 'Dataplane', mesh: 'kept', name: 'gw-1', networking: { address: '10.0.0.9', gateway: { type: 'BUILTIN', tags: { 'kuma.io/service': 'gw' } }, transparentProxying: { reachableBackends: {} } } };
    const applied = await http(api, 'POST', '/_apply', { resources: [gw, dp('plain', 8080, 'web', 'kept')] });
    assert.equal(applied.status, 200);
    const results = applied.body.results as { name: string; warnings?: string[] }[];
    assert.deepEqual(
      results.map((r) => [r.name, r.warnings]),
      [
        ['gw-1', ['kept for compatibility with Kuma, but not applied by Weft: networking.transparentProxying.reachableBackends, networking.gateway.type: BUILTIN (a built-in gateway needs MeshGateway, which Weft does not have)']],
        ['plain', undefined],
      ],
    );
    assert.equal((await http(api, 'PUT', '/meshes/default/dataplanes/plain', dp('plain'))).body.warnings, undefined);
  });

  it('a resource with the longest name there is (253 characters) is written, read and deleted at its URL', async () => {
    const name = `dp-${'a'.repeat(249)}z`;
    assert.equal(name.length, 253);
    assert.equal((await http(api, 'PUT', `/meshes/default/dataplanes/${name}`, dp(name))).status, 201);
    const got = await http(api, 'GET', `/meshes/default/dataplanes/${name}`);
    assert.deepEqual([got.status, got.body.name], [200, name]);
    assert.equal((await http(api, 'DELETE', `/meshes/default/dataplanes/${name}`)).status, 200);
    assert.equal((await http(api, 'GET', `/meshes/default/dataplanes/${name}`)).status, 404);
  });

  it('URLs the router refuses (a segment longer than any name, broken percent-encoding) get the API\'s own errors', async () => {
    const long = await http(api, 'GET', `/meshes/default/dataplanes/${'a'.repeat(254)}`);
    assert.deepEqual([long.status, long.body.code, long.body.violations], [400, 'invalid_resource', [{ field: 'url', message: 'names are at most 253 characters' }]]);
    const bad = await http(api, 'DELETE', '/meshes/%zz');
    assert.deepEqual([bad.status, bad.body.code], [400, 'invalid_resource']);
    assert.match(String(bad.body.message), /the URL cannot be decoded/);
  });

  it('lists with paging and the Kuma tag filter', async () => {
    await http(api, 'PUT', '/meshes/pages', { type: 'Mesh', name: 'pages' });
    for (let i = 0; i < 5; i++) {
      const r = await http(api, 'PUT', `/meshes/pages/dataplanes/dp-${i}`, dp(`dp-${i}`, 8080, i < 2 ? 'front' : 'back', 'pages'));
      assert.equal(r.status, 201);
    }
    const first = await http(api, 'GET', '/meshes/pages/dataplanes?size=2');
    assert.equal(first.body.total, 5);
    assert.deepEqual((first.body.items as { name: string }[]).map((i) => i.name), ['dp-0', 'dp-1']);
    const second = await http(api, 'GET', String(first.body.next));
    assert.deepEqual((second.body.items as { name: string }[]).map((i) => i.name), ['dp-2', 'dp-3']);
    const front = await http(api, 'GET', '/meshes/pages/dataplanes?tag=kuma.io/service:front');
    assert.equal(front.body.total, 2);
    const all = await http(api, 'GET', '/dataplanes?tag=kuma.io/service:back');
    assert.equal(all.body.total, 3);
    const badSize = await http(api, 'GET', '/meshes/pages/dataplanes?size=0');
    assert.equal(badSize.status, 400);
    assert.deepEqual(badSize.body.violations, [{ field: 'size', message: 'must be 1-1000' }]);
  });

  it('POST /_apply writes all or nothing and reports violations of every item', async () => {
    const bad = await http(api, 'POST', '/_apply', {
      resources: [{ type: 'Mesh', name: 'batch' }, dp('b-1', 8080, 'web', 'batch'), { ...dp('b-2', 8080, 'web', 'batch'), networking: { address: '10.0.0.1', inbound: [{ port: -1, tags: { 'kuma.io/service': 'x' } }] } }],
    });
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body.violations, [{ field: 'resources[2].networking.inbound[0].port', message: 'must be 1-65535' }]);
    const conflict = await http(api, 'POST', '/_apply', { resources: [{ type: 'Mesh', name: 'batch' }, dp('b-1', 8080, 'web', 'nowhere')] });
    assert.equal(conflict.status, 404);
    assert.equal(conflict.body.code, 'mesh_not_found');
    assert.match(String(conflict.body.message), /^resources\[1\]/);
    assert.equal((await http(api, 'GET', '/meshes/batch')).status, 404, 'the mesh of the failed batch was not written');
    const ok = await http(api, 'POST', '/_apply', { resources: [{ type: 'Mesh', name: 'batch' }, dp('b-1', 8080, 'web', 'batch')] });
    assert.equal(ok.status, 200);
    assert.deepEqual(
      (ok.body.results as { type: string; name: string; outcome: string }[]).map((r) => `${r.type}/${r.name} ${r.outcome}`),
      ['Mesh/batch created', 'TrafficPermission/allow-all-batch created', 'Dataplane/b-1 created'],
      "the new mesh's initial policy is written in the same transaction",
    );
  });

  it("a new mesh gets Kuma's allow-all-<mesh> permission, once; skipCreatingInitialPolicies and the user's own win", async () => {
    assert.equal((await http(api, 'PUT', '/meshes/opened', { type: 'Mesh', name: 'opened' })).status, 201);
    const tp = await http(api, 'GET', '/meshes/opened/traffic-permissions/allow-all-opened');
    assert.equal(tp.status, 200);
    assert.deepEqual(tp.body.sources, [{ match: { 'kuma.io/service': '*' } }]);
    assert.deepEqual(tp.body.destinations, [{ match: { 'kuma.io/service': '*' } }]);
    // Deleting it closes the mesh; updating the mesh does not bring it back.
    assert.equal((await http(api, 'DELETE', '/meshes/opened/traffic-permissions/allow-all-opened')).status, 200);
    assert.equal((await http(api, 'PUT', '/meshes/opened', { type: 'Mesh', name: 'opened', networking: { outbound: { passthrough: false } } })).status, 200);
    assert.equal((await http(api, 'GET', '/meshes/opened/traffic-permissions/allow-all-opened')).status, 404);

    await http(api, 'PUT', '/meshes/closed', { type: 'Mesh', name: 'closed', skipCreatingInitialPolicies: ['*'] });
    assert.equal((await http(api, 'GET', '/meshes/closed/traffic-permissions')).body.total, 0);

    const own = { type: 'TrafficPermission', mesh: 'mine', name: 'allow-all-mine', sources: [{ match: { 'kuma.io/service': 'gateway' } }], destinations: [{ match: { 'kuma.io/service': '*' } }] };
    const r = await http(api, 'POST', '/_apply', { resources: [{ type: 'Mesh', name: 'mine' }, own] });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const stored = await http(api, 'GET', '/meshes/mine/traffic-permissions/allow-all-mine');
    assert.deepEqual(stored.body.sources, own.sources, 'the permission given in the batch is the one stored');
  });

  it('DELETE of a mesh removes everything in it', async () => {
    await http(api, 'PUT', '/meshes/gone', { type: 'Mesh', name: 'gone' });
    await http(api, 'PUT', '/meshes/gone/dataplanes/a', dp('a', 8080, 'web', 'gone'));
    assert.equal((await http(api, 'DELETE', '/meshes/gone')).status, 200);
    assert.equal((await http(api, 'GET', '/meshes/gone/dataplanes')).body.total, 0);
    assert.equal((await http(api, 'DELETE', '/meshes/gone')).status, 404);
  });

  it('diagnostics: /healthy, /ready, and /metrics with process and store metrics', async () => {
    assert.equal((await fetch(`${cp.diagnosticsUrl}/healthy`)).status, 200);
    const ready = await fetch(`${cp.diagnosticsUrl}/ready`);
    assert.equal(ready.status, 200);
    const metrics = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
    assert.match(metrics, /^process_resident_memory_bytes \d+/m);
    assert.match(metrics, /^weft_store_operations_total\{engine="embedded",operation="write",result="ok"\} \d+/m);
    assert.match(metrics, /weft_store_operations_total\{engine="embedded",operation="write",result="version_conflict"\} [1-9]/);
    assert.match(metrics, /^weft_store_operation_duration_seconds_bucket\{/m);
  });

  it('keeps the admin token private (0600) and does not need it on loopback', () => {
    const p = join(cp.dataDir, 'admin-token');
    assert.equal(statSync(p).mode & 0o777, 0o600);
    assert.ok(readFileSync(p, 'utf8').trim().length >= 32);
  });
});

describe('HTTP API bound beyond loopback', () => {
  let cp: TestControlPlane;
  let api: string;
  let token: string;
  before(async () => {
    // Bound to every address, reached (only) over loopback: the bind address decides, not the caller.
    cp = await startTestControlPlane({ WEFT_API_ADDRESS: '0.0.0.0' });
    api = cp.apiUrl.replace('0.0.0.0', '127.0.0.1');
    token = readFileSync(join(cp.dataDir, 'admin-token'), 'utf8').trim();
  });
  after(() => cp.stop());

  it('refuses writes without the admin token or with a wrong one, and stores nothing', async () => {
    const none = await http(api, 'PUT', '/meshes/locked', { type: 'Mesh', name: 'locked' });
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'unauthorized');
    const wrong = await http(api, 'PUT', '/meshes/locked', { type: 'Mesh', name: 'locked' }, { authorization: 'Bearer nope' });
    assert.equal(wrong.status, 401);
    assert.equal((await http(api, 'GET', '/meshes/locked')).status, 404);
  });

  it('accepts writes with the token; reads need none', async () => {
    const ok = await http(api, 'PUT', '/meshes/locked', { type: 'Mesh', name: 'locked' }, { authorization: `Bearer ${token}` });
    assert.equal(ok.status, 201);
    assert.equal((await http(api, 'GET', '/meshes/locked')).status, 200);
  });
});
