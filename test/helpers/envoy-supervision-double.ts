#!/usr/bin/env node
/**
 * A process-supervision double: stands in for the Envoy *process* (never for Envoy's data path)
 * so weft-dp's supervision can be tested where no Envoy binary exists. It takes Envoy's command
 * line, serves the admin endpoints weft-dp uses on the admin port of the bootstrap it is given,
 * and records what happened to $DOUBLE_RECORD (one JSON line per event). $DOUBLE_MODE:
 * - serve: run until SIGTERM (then exit 0);
 * - crash: exit 1 after 100 ms;
 * - ignore-term: like serve, but ignore SIGTERM (only SIGKILL ends it).
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';

const record = (event: Record<string, unknown>) => {
  if (process.env.DOUBLE_RECORD) appendFileSync(process.env.DOUBLE_RECORD, `${JSON.stringify({ at: Date.now(), pid: process.pid, ...event })}\n`);
};
const args = process.argv.slice(2);
record({ event: 'start', args });
const mode = process.env.DOUBLE_MODE ?? 'serve';
if (mode === 'crash') {
  process.stderr.write('[critical] double: crashing on purpose\n');
  setTimeout(() => process.exit(1), 100);
} else {
  const config = JSON.parse(readFileSync(args[args.indexOf('--config-path') + 1]!, 'utf8')) as { admin: { address: { socket_address: { port_value: number } } } };
  let live = true;
  const admin = createServer((req, res) => {
    record({ event: 'admin', method: req.method, url: req.url });
    if (req.url === '/ready') return void res.writeHead(live ? 200 : 503).end(live ? 'LIVE\n' : 'DRAINING\n');
    if (req.url === '/healthcheck/fail') live = false;
    res.writeHead(200).end('OK\n');
  });
  admin.listen(config.admin.address.socket_address.port_value, '127.0.0.1', () => process.stdout.write('[info] double: admin listening\n'));
  process.on('SIGTERM', () => {
    record({ event: 'SIGTERM' });
    if (mode !== 'ignore-term') process.exit(0);
  });
}
