import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/core/index.js';
import { loadConfig, startControlPlane, type ControlPlane } from '../../src/cp/index.js';

export interface TestControlPlane extends ControlPlane {
  dataDir: string;
  /** Closes the control plane and removes its data dir. */
  stop(): Promise<void>;
}

/** A real control plane in this process: real sockets on port 0, a temp data dir. */
export async function startTestControlPlane(env: Record<string, string> = {}): Promise<TestControlPlane> {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-cp-'));
  const config = loadConfig({ env: { WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0', WEFT_XDS_PORT: '0', ...env } });
  const cp = await startControlPlane(config, createLogger('weft-cp', process.env.WEFT_TEST_LOG_LEVEL ?? 'silent'));
  return Object.assign(Object.create(cp) as ControlPlane, cp, {
    dataDir,
    async stop() {
      await cp.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  });
}

export interface HttpResult {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** One HTTP request with a JSON (or raw string) body; parses the JSON answer. */
export async function http(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpResult> {
  const h: Record<string, string> = { ...headers };
  let payload: string | undefined;
  if (typeof body === 'string') payload = body;
  else if (body !== undefined) {
    payload = JSON.stringify(body);
    h['content-type'] ??= 'application/json';
  }
  const res = await fetch(new URL(path, base), { method, headers: h, body: payload });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}
