import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import * as tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../../src/core/index.js';
import { CpClient } from '../../src/dp-wrapper/cp-client.js';
import { identityUris, WorkloadIdentity, type Clock, type Issued } from '../../src/dp-wrapper/identity.js';
import { http, startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';

/** A clock the test moves by hand: timers fire only when it is advanced past them. */
class ManualClock implements Clock {
  private t = Date.now();
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private next = 0;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  pending(): number[] {
    return this.timers.map((x) => x.at - this.t);
  }
  advance(ms: number): void {
    this.t += ms;
    const due = this.timers.filter((x) => x.at <= this.t);
    this.timers = this.timers.filter((x) => x.at > this.t);
    for (const d of due) d.fn();
  }
}

describe('workload certificate renewal (controllable clock, real control plane)', () => {
  let cp: TestControlPlane;
  const clients: CpClient[] = [];
  /** A Dataplane of mesh m with one inbound, and weft-dp's client to the control plane with its token. */
  async function registered(name: string, tags: Record<string, string>): Promise<CpClient> {
    await http(cp.apiUrl, 'PUT', `/meshes/m/dataplanes/${name}`, { type: 'Dataplane', mesh: 'm', name, networking: { address: '10.0.0.1', inbound: [{ port: 80, tags }] } });
    const token = String((await http(cp.apiUrl, 'POST', '/tokens/dataplane', { mesh: 'm', name })).body.token);
    const c = new CpClient({ address: `http://${cp.xdsAddress}`, token });
    clients.push(c);
    return c;
  }
  let client: CpClient;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_ADDRESS: '127.0.0.1', WEFT_XDS_TLS_MODE: 'off' });
    await http(cp.apiUrl, 'PUT', '/meshes/m', { type: 'Mesh', name: 'm', mtls: { enabledBackend: 'ca-1', backends: [{ name: 'ca-1', type: 'builtin', dpCert: { rotation: { expiration: '1h' } } }] } });
    client = await registered('web-1', { 'kuma.io/service': 'web', version: 'v1' });
  });
  after(async () => {
    for (const c of clients) c.close();
    await cp?.stop();
  });

  it('renews at 4/5 of the lifetime with a new key, without restarting anything', async () => {
    const clock = new ManualClock();
    const issued: Issued[] = [];
    let resolveSecond!: () => void;
    const second = new Promise<void>((r) => (resolveSecond = r));
    const identity = new WorkloadIdentity({
      cp: client,
      uris: identityUris('m', { networking: { address: '10.0.0.1', inbound: [{ port: 80, tags: { 'kuma.io/service': 'web', version: 'v1' } }] } }),
      log: createLogger('test', 'silent'),
      clock,
      onIssued: (id) => {
        issued.push(id);
        if (issued.length === 2) resolveSecond();
      },
    });
    const first = await identity.start();
    const cert = new X509Certificate(first.certificatePem);
    assert.match(cert.subjectAltName ?? '', /URI:spiffe:\/\/m\/web/);
    assert.match(cert.subjectAltName ?? '', /URI:kuma:\/\/version\/v1/);
    const lifetime = first.expiresAt - first.issuedAt;
    assert.ok(Math.abs(lifetime - 3600_000) < 120_000, `lifetime from dpCert.rotation.expiration (got ${lifetime} ms)`);
    const [wait] = clock.pending();
    assert.ok(Math.abs(wait! - 0.8 * lifetime) < 1000, `renewal scheduled at 4/5 of the lifetime (in ${wait} ms)`);

    clock.advance(wait! - 60_000);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(issued.length, 1, 'nothing before 4/5');
    clock.advance(60_000);
    await second;
    const renewed = issued[1]!;
    assert.notEqual(renewed.keyPem, first.keyPem, 'a new key');
    assert.notEqual(new X509Certificate(renewed.certificatePem).serialNumber, cert.serialNumber, 'a new certificate');
    assert.ok(new X509Certificate(renewed.certificatePem).checkPrivateKey((await import('node:crypto')).createPrivateKey(renewed.keyPem)));
    assert.equal(identity.current, renewed);
    assert.equal(clock.pending().length, 1, 'the next renewal is scheduled');
    identity.stop();
    assert.equal(clock.pending().length, 0);
  });

  it('an open mTLS connection keeps working when the certificate is renewed; new connections get the new one', async () => {
    const srv = await registered('srv-1', { 'kuma.io/service': 'srv' });
    const clock = new ManualClock();
    let server: tls.Server | undefined;
    const renewed = new Promise<Issued>((resolve) => {
      let n = 0;
      const identity = new WorkloadIdentity({
        cp: srv,
        uris: ['spiffe://m/srv'],
        log: createLogger('test', 'silent'),
        clock,
        onIssued: (id) => {
          const ctx = { key: id.keyPem, cert: id.certificatePem, ca: id.caBundle };
          if (!server) {
            server = tls.createServer({ ...ctx, requestCert: true, rejectUnauthorized: true }, (s) => s.pipe(s)); // echo
          } else server.setSecureContext(ctx); // what Envoy does on an SDS push
          if (++n === 2) {
            identity.stop();
            resolve(id);
          }
        },
      });
      void identity.start();
    });
    // The peer: a certificate of the same mesh CA, for another identity.
    const cli = await registered('cli-1', { 'kuma.io/service': 'cli' });
    const peer = await new WorkloadIdentity({ cp: cli, uris: ['spiffe://m/cli'], log: createLogger('test', 'silent'), onIssued: () => undefined }).issue();
    // Wait for the first certificate, then open a connection before the renewal.
    while (!server) await new Promise((r) => setTimeout(r, 10));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const port = (server!.address() as { port: number }).port;
    const connect = () =>
      new Promise<tls.TLSSocket>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port, key: peer.keyPem, cert: peer.certificatePem, ca: peer.caBundle, checkServerIdentity: () => undefined }, () => resolve(s));
        s.once('error', reject);
      });
    const echo = (s: tls.TLSSocket, text: string) =>
      new Promise<string>((resolve) => {
        s.once('data', (d: Buffer) => resolve(d.toString()));
        s.write(text);
      });
    const before = await connect();
    const firstSerial = before.getPeerCertificate().serialNumber;
    assert.equal(await echo(before, 'one'), 'one');
    clock.advance(clock.pending()[0]!); // to 4/5 of the lifetime: renewed with a new key
    const id2 = await renewed;
    assert.equal(await echo(before, 'two'), 'two', 'the connection opened before the renewal still works');
    const after = await connect();
    assert.notEqual(after.getPeerCertificate().serialNumber, firstSerial, 'a new connection gets the renewed certificate');
    assert.equal(after.getPeerCertificate().serialNumber.toLowerCase(), new X509Certificate(id2.certificatePem).serialNumber.toLowerCase());
    before.end();
    after.end();
    server!.close();
  });
});
