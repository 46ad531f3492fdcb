import * as grpc from '@grpc/grpc-js';
import { DP_SERVICE, jsonCodec } from '../ads/index.js';
import type { Logger } from '../core/index.js';

/** How weft-dp reaches the control plane's dp-server port (5678): TLS unless the URL says http. */
export interface CpConnection {
  /** `https://host:5678` (TLS), `http://host:5678` (plaintext, development), or `host:port`. */
  address: string;
  /** PEM of the CA that signed the control plane's certificate (its xds-tls.crt by default). */
  caCertPem?: string;
  token?: string;
  /**
   * HTTP/2 pings while calls are open (the relayed xDS streams of proxyless apps): every `timeMs`,
   * answered within `timeoutMs`, or the connection is dropped and the calls fail, so the app
   * reconnects, perhaps to another replica, instead of keeping a dead one's config. Default 15 s
   * and 15 s, as the control plane pings; `timeMs: 0` turns them off.
   */
  keepalive?: { timeMs: number; timeoutMs: number };
}

export class CpError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }

  /** "Not yet" (retry) rather than fatal: the control plane is down or the mesh does not exist yet. */
  get retryable(): boolean {
    return [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.NOT_FOUND, grpc.status.RESOURCE_EXHAUSTED, grpc.status.ABORTED, grpc.status.CANCELLED].includes(this.code);
  }
}

export function parseCpAddress(address: string): { target: string; tls: boolean } {
  const m = /^(https?):\/\/([^/]+)\/?$/.exec(address);
  if (m) return { target: m[2]!, tls: m[1] === 'https' };
  if (/^[^/]+:\d+$/.test(address)) return { target: address, tls: true };
  throw new CpError(grpc.status.INVALID_ARGUMENT, `--cp-address "${address}" must be https://HOST:PORT (or http:// for a plaintext development control plane)`);
}

export class CpClient {
  readonly client: grpc.Client;
  readonly target: string;
  readonly tls: boolean;

  constructor(readonly conn: CpConnection) {
    const { target, tls } = parseCpAddress(conn.address);
    this.target = target;
    this.tls = tls;
    const creds = tls ? grpc.credentials.createSsl(conn.caCertPem ? Buffer.from(conn.caCertPem) : null) : grpc.credentials.createInsecure();
    const keepalive = conn.keepalive ?? { timeMs: 15_000, timeoutMs: 15_000 };
    this.client = new grpc.Client(target, creds, {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      ...(keepalive.timeMs > 0 && { 'grpc.keepalive_time_ms': keepalive.timeMs, 'grpc.keepalive_timeout_ms': keepalive.timeoutMs }),
    });
  }

  metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.conn.token) md.set('authorization', `Bearer ${this.conn.token}`);
    return md;
  }

  call<T>(method: string, request: unknown, timeoutMs = 10_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(`/${DP_SERVICE}/${method}`, jsonCodec.serialize, jsonCodec.deserialize, request, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new CpError(err.code, err.details || err.message));
        else resolve(res as T);
      });
    });
  }

  close(): void {
    this.client.close();
  }
}

/**
 * Retries `fn` while the control plane says "not yet", with capped exponential backoff (0.5 s up
 * to `maxDelayMs`), logging each wait. A fatal answer is thrown at once.
 */
export async function withRetry<T>(what: string, fn: () => Promise<T>, opts: { log: Logger; maxDelayMs?: number; signal?: AbortSignal; deadlineMs?: number }): Promise<T> {
  let delay = 500;
  const t0 = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof CpError) || !err.retryable || opts.signal?.aborted) throw err;
      if (opts.deadlineMs !== undefined && Date.now() - t0 + delay > opts.deadlineMs) {
        throw new CpError(err.code, `the control plane was not ready within ${Math.round(opts.deadlineMs / 1000)} s (${what}): ${err.message}`);
      }
      opts.log.warn({ attempt, code: grpc.status[err.code], reason: err.message, retryInMs: delay }, `${what}: control plane not ready yet; retrying`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, delay);
        opts.signal?.addEventListener('abort', () => (clearTimeout(t), r()), { once: true });
      });
      if (opts.signal?.aborted) throw new CpError(grpc.status.CANCELLED, `stopped while waiting for the control plane (${what})`);
      delay = Math.min(delay * 2, opts.maxDelayMs ?? 30_000);
    }
  }
}
