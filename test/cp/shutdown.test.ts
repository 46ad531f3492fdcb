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
});
