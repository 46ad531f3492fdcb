import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { connectionOptions, PING_ANSWER_WAIT_MS, TypeUrl } from '../../src/ads/index.js';
import { XdsTestClient } from '../../src/ads/test-client.js';
import { createServingCertificate } from '../../src/certs/index.js';
import { collectingLogger } from '../helpers/log-lines.js';
import { systemRequirement } from '../helpers/require.js';
import { relayTo } from '../helpers/tcp-relay.js';
import { until } from '../helpers/until.js';
import { meshSet, startTestAds, type TestAds } from '../helpers/xds-fixtures.js';

/** A delta proxy behind a TCP relay (helpers/tcp-relay), its first clusters ACKed. */
async function relayedProxy(ads: TestAds, id: string, tlsCa?: string): Promise<{ client: XdsTestClient; relay: Awaited<ReturnType<typeof relayTo>>; close(): void }> {
  const relay = await relayTo(ads.address);
  const client = new XdsTestClient(relay.address, 'delta', { id }, { ownConnection: true, tlsCa });
  ads.cache.set(id, meshSet({ web: [['10.0.0.1', 80]] }));
  client.delta({ type_url: TypeUrl.Cluster });
  client.ack(await client.next(TypeUrl.Cluster));
  return { client, relay, close: () => (client.close(), relay.close()) };
}

/** A metric's value summed over its label sets, or over those with `labels`. */
const metric = async (ads: TestAds, name: string, labels: Record<string, string> = {}) =>
  ((await ads.metrics.getSingleMetric(name)?.get())?.values ?? []).filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((n, v) => n + v.value, 0);

/** Clusters enough to fill a 64 KiB HTTP/2 window many times over. */
function bigSet(): ReturnType<typeof meshSet> {
  return meshSet(Object.fromEntries(Array.from({ length: 3000 }, (_, i) => [`svc-${i}-${'x'.repeat(200)}`, [['10.0.0.1', 80]] as [string, number][]])));
}

describe('ADS connections: keepalive and age', () => {
  it("maps the settings to grpc-js's: keepalive on by default, no age limit, 100 streams a connection", () => {
    // grpc-js pings; the server's reaper, not grpc-js's ping timeout, ends a silent connection.
    assert.deepEqual(connectionOptions({}), { 'grpc.max_concurrent_streams': 100, 'grpc.keepalive_time_ms': 15_000, 'grpc.keepalive_timeout_ms': PING_ANSWER_WAIT_MS });
    assert.deepEqual(connectionOptions({ keepaliveTimeMs: 0, maxConnectionAgeMs: 1_800_000, maxStreamsPerConnection: 7 }), { 'grpc.max_concurrent_streams': 7, 'grpc.max_connection_age_ms': 1_800_000, 'grpc.max_connection_age_grace_ms': 10_000 });
  });

  it('one connection has at most maxStreamsPerConnection streams open; a client waits for one to close', async (t) => {
    const ads = await startTestAds({ connections: { maxStreamsPerConnection: 3 } });
    t.after(() => ads.stop());
    // Clients in one process share one connection (grpc-js's subchannel pool).
    const clients = Array.from({ length: 5 }, (_, i) => new XdsTestClient(ads.address, 'delta', { id: `default.many-${i}` }));
    t.after(() => clients.forEach((c) => c.close()));
    for (const [i, c] of clients.entries()) {
      ads.cache.set(`default.many-${i}`, meshSet({ web: [['10.0.0.1', 80]] }));
      c.delta({ type_url: TypeUrl.Cluster });
    }
    const answered = new Set<number>();
    clients.forEach((c, i) => void c.next(TypeUrl.Cluster, 10_000).then(() => answered.add(i), () => {}));
    await until('three answered', () => answered.size === 3);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(answered.size, 3, 'the other two wait');
    assert.equal(ads.server.streamCount, 3);
    clients[[...answered][0]!]!.close();
    await until('a fourth answered once one closed', () => answered.size === 4);
  });

  it('a proxy that stops answering is cut by keepalive: disconnected, its send budget back; one that answers stays', async (t) => {
    // The answering proxy shares this process's event loop with the server. After a stall, Node
    // runs due timers before it reads sockets, so a ping timeout shorter than the stalls a loaded
    // machine gives (200 ms cut an answering proxy once, 4 busy processes on 2 cores) would fire
    // with the ping's answer unread.
    const { logger, lines } = collectingLogger('info');
    const ads = await startTestAds({ logger, connections: { keepaliveTimeMs: 100, keepaliveTimeoutMs: 1000 } });
    const relay = await relayTo(ads.address);
    const gone = new XdsTestClient(relay.address, 'delta', { id: 'default.gone' }, { ownConnection: true });
    const alive = new XdsTestClient(ads.address, 'delta', { id: 'default.alive' }, { ownConnection: true });
    t.after(async () => {
      gone.close();
      alive.close();
      relay.close();
      await ads.stop();
    });
    ads.cache.set('default.gone', meshSet({ web: [['10.0.0.1', 80]] }));
    ads.cache.set('default.alive', meshSet({ web: [['10.0.0.1', 80]] }));
    for (const c of [gone, alive]) {
      c.delta({ type_url: TypeUrl.Cluster });
      c.ack(await c.next(TypeUrl.Cluster));
    }
    await until('both connected', () => ads.server.status.get('default.gone')?.connected === true && ads.server.status.get('default.alive')?.connected === true);
    // Pings come and are answered every 100 ms: nobody is cut for that.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(ads.server.status.get('default.gone')?.connected, true);

    relay.freeze();
    // A big config for the silent proxy: most of it cannot leave (the proxy opens no window), so it
    // holds part of the send budget that every stream shares.
    ads.cache.set('default.gone', bigSet());
    await until('the stuck response holds budget', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) > 500_000);
    const frozeAt = Date.now();
    await until('the silent proxy is cut', () => ads.server.status.get('default.gone')?.connected === false, 5000);
    const tookMs = Date.now() - frozeAt;
    assert.ok(tookMs < 3000, `cut after ${tookMs} ms; keepalive is 100 + 1000 ms`);
    assert.equal(await metric(ads, 'weft_xds_connections_cut_total', { streams: 'open' }), 1, 'counted as cut for silence, with a stream on it');
    // It had stopped reading in the middle of its big config: the reason says how much it left.
    assert.match(ads.server.status.get('default.gone')?.disconnectReason ?? '', /^weft-cp cut its connection: nothing read from it for \d+\.\d s \(keepalive\), (\d+ KB|\d+\.\d MB) sent to it not yet taken$/);
    const logged = lines.filter((l) => l.msg === 'xDS connection cut: nothing read from it for the keepalive time and timeout');
    assert.deepEqual(logged.map((l) => l.nodeIds), [['default.gone']], 'logged once, naming the proxy on it');
    assert.ok((logged[0]?.unwrittenBytes as number) > 500_000, `and what it had not taken: ${String(logged[0]?.unwrittenBytes)} bytes`);
    assert.equal(await metric(ads, 'weft_xds_send_bytes_in_flight'), 0, 'the stuck bytes went back to the budget');
    assert.equal(await metric(ads, 'weft_xds_connected_proxies'), 1);

    // The other proxy answered every ping: still connected, still served.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(ads.server.status.get('default.alive')?.connected, true);
    ads.cache.set('default.alive', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    assert.deepEqual((await alive.next(TypeUrl.Cluster)).resources.map((r) => r.name), ['api']);
  });

  it("a proxy that goes on sending is not cut while a ping's answer waits behind what it has yet to read; once silent, it is", async (t) => {
    // A proxy taking in a big config on a busy host or a slow link reads the ping only after what
    // came before it, and answers late while it ACKs along. grpc-js's own ping timeout cut such
    // proxies: 2000 in the ADS bench, 30 s into their cold start, to be sent it all again.
    // Over TLS, as weft-cp serves by default: the cut below then ends a TLS socket's HTTP/2 session.
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const credentials = grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false);
    const ads = await startTestAds({ credentials, connections: { keepaliveTimeMs: 100, keepaliveTimeoutMs: 500 } });
    const { client: busy, relay, close } = await relayedProxy(ads, 'default.busy', m.certPem);
    t.after(async () => {
      close();
      await ads.stop();
    });
    await until('connected', () => ads.server.status.get('default.busy')?.connected === true);

    relay.holdToClient();
    // Six times the timeout: nothing reaches the proxy, pings included, and it goes on asking.
    for (let i = 0, end = Date.now() + 3000; Date.now() < end; i++) {
      busy.delta({ type_url: TypeUrl.ClusterLoadAssignment, resource_names_subscribe: [`web-${i}`] });
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(ads.server.status.get('default.busy')?.connected, true, `cut ${i * 100} ms into the hold, while it was sending`);
    }
    relay.releaseToClient();
    assert.equal(await metric(ads, 'weft_xds_connections_cut_total'), 0);
    ads.cache.set('default.busy', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    assert.deepEqual((await busy.next(TypeUrl.Cluster)).resources.map((r) => r.name), ['api']);

    // Held up and silent: that is a dead proxy, cut after the interval and the timeout, and what
    // it could not take goes back to the send budget.
    relay.freeze();
    const frozeAt = Date.now();
    ads.cache.set('default.busy', bigSet());
    await until('the stuck response holds budget', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) > 500_000);
    await until('the silent proxy is cut', () => ads.server.status.get('default.busy')?.connected === false, 5000);
    const tookMs = Date.now() - frozeAt;
    // Its silence began with the last bytes it sent (a ping's answer), a little before the freeze.
    assert.ok(tookMs >= 300 && tookMs < 2500, `cut after ${tookMs} ms; keepalive is 100 + 500 ms of silence`);
    assert.match(ads.server.status.get('default.busy')?.disconnectReason ?? '', /^weft-cp cut its connection: nothing read from it for \d+\.\d s \(keepalive\), (\d+ KB|\d+\.\d MB) sent to it not yet taken$/, 'over TLS too');
    assert.equal(await metric(ads, 'weft_xds_send_bytes_in_flight'), 0, 'the stuck bytes went back to the budget');
  });

  it('an idle proxy that vanished is cut with a reason that says only that: nothing was left untaken', async (t) => {
    const ads = await startTestAds({ connections: { keepaliveTimeMs: 100, keepaliveTimeoutMs: 500 } });
    const { relay, close } = await relayedProxy(ads, 'default.idle');
    t.after(async () => {
      close();
      await ads.stop();
    });
    await until('nothing in flight', async () => (await metric(ads, 'weft_xds_send_bytes_in_flight')) === 0);
    relay.freeze();
    await until('the vanished proxy is cut', () => ads.server.status.get('default.idle')?.connected === false, 5000);
    assert.match(ads.server.status.get('default.idle')?.disconnectReason ?? '', /^weft-cp cut its connection: nothing read from it for \d+\.\d s \(keepalive\)$/);
  });

  it('with keepalive on, a connection that reads nothing for the ping interval and timeout is cut, even with no HTTP/2 session to ping', async (t) => {
    // Node can leave a socket open under an HTTP/2 session grpc-js destroyed (a write in progress
    // that never ends). A connection that never began its TLS handshake has no session at all, so
    // grpc-js has nothing to ping: Node would keep it for its 120 s handshake timeout. Both read nothing.
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const credentials = () => grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false);
    const mute = async (ads: TestAds, waitMs: number): Promise<number | undefined> => {
      const [host, port] = ads.address.split(':');
      const socket = connect(Number(port), host);
      socket.resume();
      t.after(() => socket.destroy());
      const start = Date.now();
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(undefined), waitMs);
        socket.once('close', () => (clearTimeout(timer), resolve(Date.now() - start)));
      });
    };
    const ads = await startTestAds({ credentials: credentials(), connections: { keepaliveTimeMs: 100, keepaliveTimeoutMs: 200 } });
    t.after(() => ads.stop());
    const tookMs = await mute(ads, 3000);
    assert.ok(tookMs !== undefined && tookMs >= 250 && tookMs < 2000, `cut after ${tookMs} ms; nothing read for 300 ms is dead`);
    assert.equal(await metric(ads, 'weft_xds_connections_cut_total', { streams: 'none' }), 1, 'counted as a cut with no stream on it');
    // Without keepalive it stays.
    const quiet = await startTestAds({ credentials: credentials(), connections: { keepaliveTimeMs: 0 } });
    t.after(() => quiet.stop());
    assert.equal(await mute(quiet, 800), undefined);
  });

  it("a silence that is weft-cp's own (its event loop busy) does not count against a connection", async (t) => {
    // While the event loop is blocked nothing is read, from live peers either: what they sent
    // waits in the kernel. The reaper's first look after such a stall starts every count afresh.
    // A connection that never begins its TLS handshake has no HTTP/2 session, so grpc-js's pings
    // play no part: only the reaper can cut it. A proxy's connection has one; its ping's answer, if a
    // ping was out, is read only after the timers due once the stall ends. The reaper alone ends
    // sessions (PING_ANSWER_WAIT_MS), so the proxy must not be cut for the stall either.
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const credentials = grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false);
    const ads = await startTestAds({ credentials, connections: { keepaliveTimeMs: 100, keepaliveTimeoutMs: 200 } });
    const proxy = new XdsTestClient(ads.address, 'delta', { id: 'default.live' }, { ownConnection: true, tlsCa: m.certPem });
    t.after(async () => {
      proxy.close();
      await ads.stop();
    });
    ads.cache.set('default.live', meshSet({ web: [['10.0.0.1', 80]] }));
    proxy.delta({ type_url: TypeUrl.Cluster });
    proxy.ack(await proxy.next(TypeUrl.Cluster));
    const [host, port] = ads.address.split(':');
    const socket = connect(Number(port), host);
    socket.resume();
    t.after(() => socket.destroy());
    let closedAt: number | undefined;
    socket.once('close', () => (closedAt = performance.now()));
    await new Promise((r) => socket.once('connect', r));
    // Accepted, and seen by the reaper (it looks every 50 ms).
    await new Promise((r) => setTimeout(r, 120));
    const busyUntil = performance.now() + 1000;
    while (performance.now() < busyUntil) {
      // The stall: three times the 300 ms after which a connection that read nothing is dead.
    }
    const stallEnd = performance.now();
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(ads.server.status.get('default.live')?.connected, true, 'the proxy, silent only while weft-cp was, is still connected');
    await until('the silent connection is cut', () => closedAt !== undefined, 3000);
    const afterMs = closedAt! - stallEnd;
    // Counted afresh from the first look after the stall: cut 300 ms (ping interval and timeout)
    // after it at the earliest. Counting the stall, it would go at the first look after it.
    assert.ok(afterMs >= 250, `cut ${Math.round(afterMs)} ms after the stall; the stall must not count as its silence`);
  });

  it('shutdown cuts what is left once every session has closed: a TLS handshake begun and stalled does not hold it for the grace', async (t) => {
    const m = await createServingCertificate({ dnsNames: ['localhost'], ips: ['127.0.0.1'], validForMs: 3600_000 });
    const ads = await startTestAds({ credentials: grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(m.keyPem), cert_chain: Buffer.from(m.certPem) }], false), shutdownGraceMs: 5000 });
    t.after(() => ads.server.destroy());
    ads.cache.set('default.web-1', meshSet({ web: [['10.0.0.1', 80]] }));
    const proxy = new XdsTestClient(ads.address, 'delta', { id: 'default.web-1' }, { ownConnection: true, tlsCa: m.certPem });
    t.after(() => proxy.close());
    proxy.delta({ type_url: TypeUrl.Cluster });
    proxy.ack(await proxy.next(TypeUrl.Cluster));
    // The start of a ClientHello: a handshake record of 512 bytes, of which only the header comes.
    const [host, port] = ads.address.split(':');
    const stalled = connect(Number(port), host);
    stalled.on('error', () => {});
    t.after(() => stalled.destroy());
    await new Promise((r) => stalled.once('connect', r));
    stalled.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
    const cut = new Promise<void>((r) => stalled.once('close', () => r()));
    await new Promise((r) => setTimeout(r, 100));
    const started = performance.now();
    await ads.server.close();
    const ms = performance.now() - started;
    assert.ok(ms < 2000, `closed after ${Math.round(ms)} ms, not after the 5 s grace`);
    assert.equal((await proxy.closed).code, grpc.status.UNAVAILABLE, 'the proxy was told to go elsewhere');
    await cut;
  });

  it('without keepalive the silent proxy would count as connected for as long as TCP lets it', async (t) => {
    const ads = await startTestAds({ connections: { keepaliveTimeMs: 0 } });
    const { relay, close } = await relayedProxy(ads, 'default.gone');
    t.after(async () => {
      close();
      await ads.stop();
    });
    relay.freeze();
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(ads.server.status.get('default.gone')?.connected, true);
  });

  it('an old connection is asked to go and cut after its grace; the proxy comes back holding its config and is served', async (t) => {
    const ads = await startTestAds({ connections: { keepaliveTimeMs: 0, maxConnectionAgeMs: 400, maxConnectionAgeGraceMs: 200 } });
    const clients: XdsTestClient[] = [];
    t.after(async () => {
      clients.forEach((c) => c.close());
      await ads.stop();
    });
    ads.cache.set('default.web-1', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    const connectedAt = Date.now();
    const first = new XdsTestClient(ads.address, 'delta', { id: 'default.web-1' }, { ownConnection: true });
    clients.push(first);
    first.delta({ type_url: TypeUrl.Cluster });
    const got = await first.next(TypeUrl.Cluster);
    first.ack(got);
    const status = await first.closed;
    const livedMs = Date.now() - connectedAt;
    // 400 ms ± 10%, then 200 ms of grace for the stream, which never ends by itself.
    assert.ok(livedMs >= 350 && livedMs < 2000, `the connection lived ${livedMs} ms`);
    assert.equal(status.code, grpc.status.UNAVAILABLE, status.details);
    await until('the proxy counts as disconnected', () => ads.server.status.get('default.web-1')?.connected === false);

    // Back as Envoy comes back: announcing what it holds (rule 20), so nothing is sent again...
    const again = new XdsTestClient(ads.address, 'delta', { id: 'default.web-1' }, { ownConnection: true });
    clients.push(again);
    again.delta({ type_url: TypeUrl.Cluster, initial_resource_versions: Object.fromEntries(got.resources.map((r) => [r.name, r.version!])) });
    assert.equal(await again.quiet(300, TypeUrl.Cluster), true, 'nothing it holds is sent again');
    assert.equal(ads.server.status.get('default.web-1')?.connected, true);
    // ...and what changes next reaches it.
    ads.cache.set('default.web-1', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]], db: [['10.0.0.3', 80]] }));
    assert.deepEqual((await again.next(TypeUrl.Cluster)).resources.map((r) => r.name), ['db']);
  });
});

const MANY = 900;
const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));

describe('ADS connections: many at once', systemRequirement(`net.core.somaxconn of ${MANY} or more`, somaxconn < MANY ? `it is ${somaxconn}` : undefined), () => {
  it('the port queues as many new connections as the kernel allows (net.core.somaxconn), not Node\'s 511, while weft-cp is busy', async (t) => {
    const n = MANY;
    const ads = await startTestAds();
    t.after(() => ads.server.destroy());
    const port = Number(ads.address.split(':')[1]);
    // Another process opens n connections while this one's event loop is busy (as weft-cp's is in a
    // big round), so none is accepted until it is free: the kernel queues them, or drops their SYNs.
    const child = spawn(process.execPath, ['-e', `
      const net = require('node:net');
      let connected = 0;
      const sockets = [];
      for (let i = 0; i < ${n}; i++) {
        const s = net.connect(${port}, '127.0.0.1', () => connected++);
        s.on('error', () => {});
        sockets.push(s);
      }
      setTimeout(() => { process.stdout.write(connected + ' ' + Date.now()); sockets.forEach((s) => s.destroy()); }, 700);
    `]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise((resolve) => child.on('exit', resolve));
    const busyUntil = Date.now() + 2500;
    while (Date.now() < busyUntil); // busy: nothing is accepted
    await exited;
    const [connected, at] = out.split(' ').map(Number);
    assert.ok(at! < busyUntil, 'the child counted while this process was still busy (else the count proves nothing)');
    // A SYN dropped on a full queue is sent again only after 1 s: within the child's 700 ms those
    // connections are not made.
    assert.equal(connected, n, `connections made while weft-cp was busy: ${connected} of ${n}`);
  });
});

describe('ADS connections: binding a name', () => {
  it('binds a name (localhost) on each address it resolves to, on one port, as grpc-js did', async (t) => {
    const ads = await startTestAds();
    t.after(() => ads.server.destroy());
    const port = await ads.server.listen('localhost', 0);
    const addresses = (await lookup('localhost', { all: true })).map((a) => (a.family === 6 ? `[${a.address}]` : a.address));
    assert.ok(addresses.length > 0);
    for (const address of addresses) {
      ads.cache.set('default.web-1', meshSet({ web: [['10.0.0.1', 80]] }));
      const c = new XdsTestClient(`${address}:${port}`, 'delta', { id: 'default.web-1' }, { ownConnection: true });
      t.after(() => c.close());
      c.delta({ type_url: TypeUrl.Cluster });
      assert.equal((await c.next(TypeUrl.Cluster)).resources.length, 1, `served on ${address}`);
      c.close();
    }
  });
});
