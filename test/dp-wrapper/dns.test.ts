import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import dnsPacket from 'dns-packet';
import { createLogger } from '../../src/core/index.js';
import { MeshDns } from '../../src/dp-wrapper/dns.js';

/**
 * weft-dp's DNS, asked by a real resolver client (Node's c-ares): `.mesh` names from the virtual
 * IPs, everything else forwarded to an upstream (here a stand-in resolver on loopback).
 */
describe('weft-dp DNS', () => {
  const upstream = createSocket('udp4');
  let upstreamPort = 0;
  let dns: MeshDns;
  let resolver: Resolver;

  before(async () => {
    upstream.on('message', (m, r) => {
      const q = dnsPacket.decode(m);
      const name = q.questions![0]!.name;
      const answers = name === 'example.org' ? [{ type: 'A' as const, name, ttl: 60, class: 'IN' as const, data: '192.0.2.10' }] : [];
      upstream.send(dnsPacket.encode({ id: q.id, type: 'response', flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (answers.length ? 0 : 3 /* NXDOMAIN */), questions: q.questions, answers } as dnsPacket.Packet), r.port, r.address);
    });
    await new Promise<void>((r) => upstream.bind(0, '127.0.0.1', r));
    upstreamPort = upstream.address().port;
    dns = new MeshDns({ port: 0, upstreams: [`127.0.0.1:${upstreamPort}`], log: createLogger('test', 'silent') });
    dns.setVips({ backend: '240.1.2.3', 'demo-app': '241.0.0.7' });
    await dns.listen();
    resolver = new Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([`127.0.0.1:${dns.ports[0]}`]);
  });
  after(() => {
    dns?.close();
    upstream.close();
  });

  it('answers <service>.mesh with the virtual IP (any case), and NXDOMAIN for unknown services', async () => {
    assert.deepEqual(await resolver.resolve4('backend.mesh'), ['240.1.2.3']);
    assert.deepEqual(await resolver.resolve4('Demo-App.MESH'), ['241.0.0.7']);
    await assert.rejects(resolver.resolve4('nobody.mesh'), (e: NodeJS.ErrnoException) => e.code === 'ENOTFOUND');
  });

  it('follows new virtual IPs', async () => {
    dns.setVips({ backend: '240.9.9.9' });
    assert.deepEqual(await resolver.resolve4('backend.mesh'), ['240.9.9.9']);
    dns.setVips({ backend: '240.1.2.3', 'demo-app': '241.0.0.7' });
  });

  it('forwards other names to the upstream resolver', async () => {
    assert.deepEqual(await resolver.resolve4('example.org'), ['192.0.2.10']);
    await assert.rejects(resolver.resolve4('missing.example.org'), (e: NodeJS.ErrnoException) => e.code === 'ENOTFOUND');
  });

  it('answers over TCP too', async () => {
    const q = dnsPacket.streamEncode({ id: 7, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'backend.mesh', class: 'IN' }] });
    const answer = await new Promise<dnsPacket.Packet>((resolve, reject) => {
      const sock = connect(dns.ports[0]!, '127.0.0.1', () => sock.write(q));
      let buf = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          sock.end();
          resolve(dnsPacket.streamDecode(buf));
        }
      });
      sock.on('error', reject);
    });
    assert.equal(answer.id, 7);
    assert.deepEqual(
      answer.answers!.map((a) => (a as { data: string }).data),
      ['240.1.2.3'],
    );
  });

  it('SERVFAIL when no upstream answers', async () => {
    const lonely = new MeshDns({ port: 0, upstreams: ['127.0.0.1:9'], log: createLogger('test', 'silent') });
    await lonely.listen();
    try {
      const r = new Resolver({ timeout: 4000, tries: 1 });
      r.setServers([`127.0.0.1:${lonely.ports[0]}`]);
      await assert.rejects(r.resolve4('example.org'), (e: NodeJS.ErrnoException) => e.code === 'ESERVFAIL');
    } finally {
      lonely.close();
    }
  });

  it('garbage on the socket is dropped, and the server keeps answering', async () => {
    const s = createSocket('udp4');
    s.send(Buffer.from('not dns at all'), dns.ports[0]!, '127.0.0.1');
    await new Promise((r) => setTimeout(r, 100));
    s.close();
    assert.deepEqual(await resolver.resolve4('backend.mesh'), ['240.1.2.3']);
  });
});
