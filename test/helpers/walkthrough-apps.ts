#!/usr/bin/env node
/**
 * The plain apps of the Envoy-sidecar walkthrough (test/e2e/envoy-netns-walkthrough.test.ts), one
 * per network namespace. They know nothing of the mesh: they listen on 127.0.0.1 and call each
 * other by `<service>.mesh` names; the sidecars add mTLS and permissions.
 *
 *   redis     a counter over TCP on 127.0.0.1:6379: "INCR\n" or "GET\n", answered with "<n>\n"
 *   demo-app  HTTP on 127.0.0.1:8080: GET / increments the counter in redis.mesh:6379
 *   gateway   HTTP on 127.0.0.1:8080: GET / calls http://demo-app.mesh/
 *   count     (a client) prints the counter, asking 127.0.0.1:6379 directly
 */
import { createServer as createHttp } from 'node:http';
import { connect, createServer as createTcp } from 'node:net';

function ask(host: string, port: number, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, host, () => s.write(`${command}\n`));
    let got = '';
    s.setTimeout(5000, () => s.destroy(new Error('timed out')));
    s.on('data', (d) => {
      got += d.toString();
      if (got.includes('\n')) {
        s.end();
        resolve(got.trim());
      }
    });
    s.on('error', reject);
    s.on('close', () => reject(new Error(`connection closed${got ? ` after "${got}"` : ' without an answer'}`)));
  });
}

const role = process.argv[2];
const ready = () => process.stdout.write('ready\n');

if (role === 'redis') {
  let n = 0;
  createTcp((s) => {
    s.on('data', (d) => {
      const cmd = d.toString().trim();
      if (cmd === 'INCR') n++;
      s.write(`${n}\n`);
    });
    s.on('error', () => {});
  }).listen(6379, '127.0.0.1', ready);
} else if (role === 'demo-app') {
  createHttp((_req, res) => {
    ask('redis.mesh', 6379, 'INCR').then(
      (n) => res.writeHead(200).end(`counter=${n}`),
      (err: Error) => res.writeHead(502).end(`redis: ${err.message}`),
    );
  }).listen(8080, '127.0.0.1', ready);
} else if (role === 'gateway') {
  createHttp((_req, res) => {
    fetch('http://demo-app.mesh/', { signal: AbortSignal.timeout(5000) }).then(
      async (r) => {
        const body = await r.text();
        if (r.ok) res.writeHead(200).end(body);
        else res.writeHead(502).end(`demo-app answered ${r.status}: ${body}`);
      },
      (err: Error) => res.writeHead(502).end(`demo-app: ${err.message}`),
    );
  }).listen(8080, '127.0.0.1', ready);
} else if (role === 'count') {
  ask('127.0.0.1', 6379, 'GET').then(
    (n) => process.stdout.write(`${n}\n`),
    (err: Error) => {
      process.stderr.write(`${err.message}\n`);
      process.exit(1);
    },
  );
} else {
  process.stderr.write(`unknown role ${role}\n`);
  process.exit(2);
}
