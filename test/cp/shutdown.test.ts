import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { startTestControlPlane } from '../helpers/cp.js';

/** A TCP connection to `url`'s port; resolves once connected. What the server sends is read and dropped, so its close is seen. */
function open(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), hostname, () => resolve(s));
    s.once('error', reject);
    s.resume();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const closed = (s: Socket) => new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));

describe('control plane shutdown', () => {
  for (const tls of ['auto', 'off']) {
    it(`is not held by clients that connected and sent nothing (HTTP API, diagnostics, ADS with TLS ${tls}), or half a request`, async () => {
      const cp = await startTestControlPlane({ WEFT_SHUTDOWN_GRACE_MS: '300', WEFT_XDS_TLS_MODE: tls });
      // Node counts such HTTP connections as busy, so without the grace deadline close() would wait
      // for its 60 s header timeout (seen in the ADS bench: weft-cp did not stop within 60 s); an ADS
      // connection in its TLS handshake or before the HTTP/2 preface held it for ever.
      const silent = await Promise.all([open(cp.apiUrl), open(cp.diagnosticsUrl), open(`http://127.0.0.1:${cp.xdsAddress.split(':').at(-1)}`)]);
      const partial = await open(cp.apiUrl);
      partial.write('GET /meshes HTTP/1.1\r\nHost: x\r\n');
      // An idle keep-alive connection, after a real request.
      const res = await fetch(`${cp.apiUrl}/meshes`);
      assert.equal(res.status, 200);
      await res.text();
      for (const s of [...silent, partial]) s.on('error', () => {});
      const started = performance.now();
      await cp.stop();
      const ms = performance.now() - started;
      assert.ok(ms >= 250, `the clients got their grace before being cut (closed after ${Math.round(ms)} ms)`);
      assert.ok(ms < 5000, `closed after ${Math.round(ms)} ms, not held until a timeout`);
      await Promise.all([...silent, partial].map(closed));
    });
  }

  it('closes at once the connections with nothing to finish: silent for a second since accept (HTTP and ADS), idle keep-alive, idle once a request in flight finished', async () => {
    // TLS on the ADS port (the default): a connection that never starts its handshake held the ADS
    // server's close for the whole grace (with TLS off the HTTP/2 server drops it itself).
    const cp = await startTestControlPlane({ WEFT_SHUTDOWN_GRACE_MS: '5000', WEFT_XDS_TLS_MODE: 'auto' });
    // Spare connections a client opened and never used (Node's fetch left three to the API in the
    // ADS bench), or a probe that connected and waits: weft-cp took the whole grace to stop.
    const silent = await Promise.all([open(cp.apiUrl), open(cp.diagnosticsUrl), open(`http://127.0.0.1:${cp.xdsAddress.split(':').at(-1)}`)]);
    const res = await fetch(`${cp.apiUrl}/meshes`);
    await res.text();
    // A request in flight when shutdown starts (its body not all sent): it is served, and its
    // keep-alive connection, idle then, is closed without waiting for the grace.
    const inFlight = await open(cp.apiUrl);
    let answer = '';
    inFlight.on('data', (b: Buffer) => (answer += b.toString()));
    const body = JSON.stringify({ type: 'Mesh', name: 'late' });
    inFlight.write(`PUT /meshes/late HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 5)}`);
    await sleep(1100);
    const started = performance.now();
    const stopping = cp.stop();
    await sleep(50);
    inFlight.write(body.slice(5));
    await stopping;
    const ms = performance.now() - started;
    assert.ok(ms < 2000, `closed after ${Math.round(ms)} ms: connections with nothing to finish waited for the 5 s grace`);
    await Promise.all([...silent, inFlight].map(closed));
    assert.match(answer, /^HTTP\/1\.1 201 /, 'the request in flight was served');
  });
});
