import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';

export interface DiagnosticsOptions {
  metrics: Registry;
  /** Resolves to undefined when ready, or to the reason it is not. */
  readiness: () => Promise<string | undefined>;
}

/**
 * The diagnostics server (port 5680): `/healthy` (the process serves requests), `/ready` (it can
 * do its job: the store answers and every server is up) and `/metrics` (Prometheus).
 */
export function createDiagnosticsServer(opts: DiagnosticsOptions): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const send = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    if (path === '/healthy') return send(200, 'healthy\n');
    if (path === '/ready') {
      opts.readiness().then(
        (reason) => (reason === undefined ? send(200, 'ready\n') : send(503, `not ready: ${reason}\n`)),
        (err: unknown) => send(503, `not ready: ${(err as Error).message}\n`),
      );
      return;
    }
    if (path === '/metrics') {
      opts.metrics.metrics().then(
        (text) => send(200, text, opts.metrics.contentType),
        (err: unknown) => send(500, `metrics failed: ${(err as Error).message}\n`),
      );
      return;
    }
    send(404, 'not found: try /ready, /healthy or /metrics\n');
  });
}
