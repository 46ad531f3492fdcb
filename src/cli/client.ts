import type { Violation } from '../core/index.js';

/** An error from the control plane (its code, message and violations) or from reaching it. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly violations: Violation[] = [],
    readonly status?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface ClientOptions {
  /** e.g. http://127.0.0.1:5681 */
  baseUrl: string;
  authToken?: string;
  timeoutMs?: number;
}

/** A small client of the control plane's HTTP API, used by weftctl. */
export class ApiClient {
  constructor(private readonly opts: ClientOptions) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const url = new URL(path, this.opts.baseUrl);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.opts.authToken) headers.authorization = `Bearer ${this.opts.authToken}`;
    let res: Response;
    try {
      res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(this.opts.timeoutMs ?? 30_000) });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
      throw new ApiError('unreachable', `cannot reach the control plane at ${this.opts.baseUrl} (${cause}); is weft-cp running? set --cp-address or WEFTCTL_CP_ADDRESS`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new ApiError('bad_response', `${method} ${url.pathname}: the control plane answered ${res.status} with a body that is not JSON`, [], res.status);
    }
    if (!res.ok) {
      const e = (parsed ?? {}) as { code?: string; message?: string; violations?: Violation[] };
      throw new ApiError(e.code ?? `http_${res.status}`, e.message ?? `${method} ${url.pathname} failed with ${res.status}`, e.violations ?? [], res.status);
    }
    return { status: res.status, body: parsed as T };
  }
}
