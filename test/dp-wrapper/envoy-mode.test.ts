import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { Resolver } from 'node:dns/promises';
import { grpcCodec, messageType } from '../../src/ads/index.js';
import { serviceVips } from '../../src/xds/index.js';
import { checkBootstrap } from '../../src/dp-wrapper/envoy-bootstrap.js';
import { defaultWorkDir } from '../../src/dp-wrapper/main.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { freePort } from '../helpers/postgres.js';
import { startWeftDp, type WeftDpProcess } from '../helpers/weft-dp.js';

/**
 * weft-dp running "Envoy": the process is a supervision double (test/helpers/envoy-supervision-
 * double.ts), so start, readiness, restarts, draining and signals are tested for real; the
 * identity Envoy would get is read from weft-dp's local SDS server by a real gRPC SDS client.
 */
const double = fileURLToPath(new URL('../helpers/envoy-supervision-double.js', import.meta.url));

const records = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);
async function record(file: string, pred: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  for (;;) {
    const r = records(file).find(pred);
    if (r) return r;
    if (Date.now() - t0 > 10_000) throw new Error(`no such record in ${file}: ${JSON.stringify(records(file))}`);
    await new Promise((res) => setTimeout(res, 25));
  }
}
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('weft-dp with Envoy (a supervision double for the process)', () => {
  let cp: TestControlPlane;
  let dir: string;
  let n = 0;
  const running: WeftDpProcess[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'weft-dp-envoy-'));
    chmodSync(double, 0o755);
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1' });
    await http(cp.apiUrl, 'PUT', '/meshes/m', { type: 'Mesh', name: 'm', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin' }] } });
  });
  after(async () => {
    for (const w of running) w.child.kill('SIGKILL');
    await cp?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** weft-dp for Dataplane web-N (or `name`) of mesh m; `work` its --work-dir (null: none given, so the default under `dir`). */
  async function start(mode: string, extra: string[] = [], opts: { name?: string; work?: string | null } = {}): Promise<{ w: WeftDpProcess; work: string; record: string; name: string }> {
    const name = opts.name ?? `web-${++n}`;
    const token = join(dir, `${name.slice(0, 60)}.token`);
    writeFileSync(token, String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'm', name })).body.token));
    const work = opts.work === null ? defaultWorkDir(name, dir) : (opts.work ?? join(dir, name));
    const record = join(dir, `${name.slice(0, 60)}.record`);
    const dataplane = `type: Dataplane\nmesh: m\nname: ${name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      tags: { kuma.io/service: web }\n`;
    const w = startWeftDp(
      [
        ...['--cp-address', `https://${cp.xdsAddress}`, '--ca-cert-file', join(cp.dataDir, 'xds-tls.crt'), '--dataplane-token-file', token, '--dataplane', dataplane],
        ...(opts.work === null ? [] : ['--work-dir', work]),
        ...['--ready-port', '0', '--ready-address', '127.0.0.1', '--admin-port', String(await freePort()), '--binary-path', double, '--drain-time', '1s'],
        ...extra,
      ],
      { DOUBLE_MODE: mode, DOUBLE_RECORD: record, TMPDIR: dir },
    );
    running.push(w);
    return { w, work, record, name };
  }

  it('writes a bootstrap Envoy accepts (0600, it holds the token), starts Envoy with its flags, and is ready when Envoy is', async () => {
    const { w, work, record: recordFile } = await start('serve', ['--concurrency', '2', '--envoy-log-level', 'debug', '--dns-enabled', '--dns-port', '0']);
    const up = await w.line((l) => l.msg === 'weft-dp running');
    // .mesh DNS with the virtual IPs the control plane assigned.
    const resolver = new Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([`127.0.0.1:${String((up.dnsPorts as number[])[0])}`]);
    assert.deepEqual(await resolver.resolve4('web.mesh'), [serviceVips(['web']).get('web')]);
    const path = join(work, 'envoy-bootstrap.json');
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const bootstrap = JSON.parse(readFileSync(path, 'utf8')) as { node: { id: string }; dynamic_resources: { ads_config: { api_type: string; grpc_services: { initial_metadata: { value: string }[] }[] } } };
    assert.deepEqual(checkBootstrap(bootstrap as unknown as Record<string, unknown>), []);
    assert.equal(bootstrap.node.id, 'm.web-1');
    assert.equal(bootstrap.dynamic_resources.ads_config.api_type, 'DELTA_GRPC');
    assert.match(bootstrap.dynamic_resources.ads_config.grpc_services[0]!.initial_metadata[0]!.value, /^Bearer ey/);
    const started = await record(recordFile, (r) => r.event === 'start');
    assert.deepEqual(started.args, ['--config-path', path, '--drain-time-s', '1', '--disable-hot-restart', '--log-level', 'debug', '--concurrency', '2']);
    await w.line((l) => String(l.msg).startsWith('[envoy] [info] double: admin listening') && l.source === 'envoy');
    const t0 = Date.now();
    while ((await fetch(`http://127.0.0.1:${String(up.readyPort)}/ready`)).status !== 200) {
      assert.ok(Date.now() - t0 < 5000, '/ready never became 200');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  it("serves Envoy its identity over the local SDS socket (0600): the key made here, matching the certificate", async () => {
    const work = join(dir, 'web-1');
    const socket = join(work, 'sds.sock');
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    assert.ok(!existsSync(join(work, 'identity.key')), 'with Envoy, the key is not written to disk');
    const req = grpcCodec('envoy.service.discovery.v3.DiscoveryRequest');
    const res = grpcCodec('envoy.service.discovery.v3.DiscoveryResponse');
    const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
    try {
      const call = client.makeBidiStreamRequest('/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets', req.serialize, res.deserialize);
      const first = await new Promise<Record<string, unknown>>((resolve, reject) => {
        call.once('data', resolve);
        call.once('error', reject);
        call.write({ node: { id: 'm.web-1' }, resource_names: ['identity_cert'], type_url: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret' });
      });
      call.cancel();
      const any = (first.resources as { type_url: string; value: Uint8Array }[])[0]!;
      assert.equal(any.type_url, 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret');
      const type = messageType('envoy.extensions.transport_sockets.tls.v3.Secret');
      const secret = type.toObject(type.decode(any.value)) as { name: string; tls_certificate: { certificate_chain: { inline_string: string }; private_key: { inline_string: string } } };
      assert.equal(secret.name, 'identity_cert');
      const cert = new X509Certificate(secret.tls_certificate.certificate_chain.inline_string);
      assert.match(cert.subjectAltName ?? '', /URI:spiffe:\/\/m\/web/);
      assert.ok(cert.checkPrivateKey(createPrivateKey(secret.tls_certificate.private_key.inline_string)));
    } finally {
      client.close();
    }
  });

  it('a Dataplane with the longest name (253 characters) runs without --work-dir: its work directory is cut short enough for the SDS socket', async () => {
    const name = `web-${'n'.repeat(247)}-x`;
    assert.equal(name.length, 253);
    const { w, work } = await start('serve', ['--name', name], { name, work: null });
    await w.line((l) => l.msg === 'weft-dp running');
    assert.ok(work.length < 100 && work.startsWith(join(dir, `weft-dp-web-${'n'.repeat(36)}-`)), work);
    assert.equal(statSync(join(work, 'sds.sock')).mode & 0o777, 0o600);
    w.child.kill('SIGKILL');
  });

  it('a --work-dir too long for a Unix socket is refused before registering, saying so', async () => {
    const work = join(dir, 'w'.repeat(110));
    const { w, name } = await start('serve', [], { work });
    assert.equal(await w.exited, 1);
    assert.match(w.stderr, /the work directory \S+ is too long: Envoy's SDS socket there would be \d+ bytes, over the 107 a Unix socket path may have; give a shorter --work-dir/);
    assert.equal((await http(cp.apiUrl, 'GET', `/meshes/m/dataplanes/${name}`)).status, 404, 'not registered');
  });

  it('SIGTERM: not ready, health checks failed and listeners drained through the admin API, drain time waited, then Envoy stopped; exit 0', async () => {
    const { w, record, name } = running.length ? { w: running[0]!, record: join(dir, 'web-1.record'), name: 'web-1' } : await start('serve');
    await w.line((l) => l.msg === 'weft-dp running');
    const t0 = Date.now();
    w.child.kill('SIGTERM');
    assert.equal(await w.exited, 0);
    const events = records(record).filter((r) => r.event !== 'start' && !(r.event === 'admin' && r.url === '/ready'));
    assert.deepEqual(
      events.map((e) => (e.event === 'admin' ? `${String(e.method)} ${String(e.url)}` : e.event)),
      ['POST /healthcheck/fail', 'POST /drain_listeners?graceful', 'SIGTERM'],
    );
    const drained = Number(events[2]!.at) - Number(events[1]!.at);
    assert.ok(drained >= 900, `waited the drain time before stopping Envoy (${drained} ms)`);
    assert.ok(Date.now() - t0 < 8000);
    assert.equal((await http(cp.apiUrl, 'GET', `/meshes/m/dataplanes/${name}`)).status, 404, 'deregistered');
  });

  it('Envoy dying is restarted with growing backoff, and after repeated rapid failures weft-dp gives up with exit code 2', async () => {
    const { w, record } = await start('crash', ['--max-restarts', '3', '--restart-backoff', '100ms']);
    assert.equal(await w.exited, 2);
    const starts = records(record).filter((r) => r.event === 'start');
    assert.equal(starts.length, 3);
    const gaps = [Number(starts[1]!.at) - Number(starts[0]!.at), Number(starts[2]!.at) - Number(starts[1]!.at)];
    const restarts = w.logs.filter((l) => l.msg === 'Envoy exited unexpectedly; restarting');
    assert.deepEqual(
      restarts.map((l) => l.restartInMs),
      [100, 200],
      'the backoff doubles',
    );
    // Each restart really waited its backoff. (Comparing the two gaps would measure process start
    // times too, which vary by more than 100 ms on a busy machine.)
    assert.ok(gaps[0]! >= 100 && gaps[1]! >= 200, `restarts waited their backoff (${gaps.join(', ')} ms)`);
    assert.ok(w.logs.some((l) => String(l.msg).includes('[envoy] [critical] double: crashing on purpose')));
    assert.ok(w.logs.some((l) => l.msg === 'Envoy failed 3 times in a row right after starting; giving up'));
  });

  it('a second signal stops at once, even an Envoy that ignores SIGTERM', async () => {
    const { w, record: recordFile } = await start('ignore-term', ['--drain-time', '30s']);
    await w.line((l) => l.msg === 'weft-dp running');
    await w.line((l) => String(l.msg).includes('admin listening'));
    const pid = Number((await record(recordFile, (r) => r.event === 'start')).pid);
    w.child.kill('SIGTERM');
    await w.line((l) => l.msg === 'draining Envoy');
    const t0 = Date.now();
    w.child.kill('SIGTERM');
    assert.equal(await w.exited, 130);
    assert.ok(Date.now() - t0 < 5000, 'did not wait out the 30 s drain');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(alive(pid), false, 'Envoy was killed');
  });

  it('/quitquitquit from loopback stops it (exit 0); other methods are refused', async () => {
    const { w } = await start('serve');
    const up = await w.line((l) => l.msg === 'weft-dp running');
    assert.equal((await fetch(`http://127.0.0.1:${String(up.readyPort)}/quitquitquit`)).status, 405);
    assert.equal((await fetch(`http://127.0.0.1:${String(up.readyPort)}/quitquitquit`, { method: 'POST' })).status, 200);
    assert.equal(await w.exited, 0);
  });
});
