import { createKeyAndCsr } from '../certs/index.js';
import { dataplaneTagSets, kumaTagUri, SERVICE_TAG, spiffeId, type DataplaneSpec, type Logger } from '../core/index.js';
import { CpError, withRetry, type CpClient } from './cp-client.js';

export interface Issued {
  keyPem: string;
  certificatePem: string;
  caBundle: string[];
  issuedAt: number;
  expiresAt: number;
}

/** Time, injectable so renewal can be tested without waiting a day. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, Math.min(ms, 2 ** 31 - 1));
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The identities a Dataplane may hold: a SPIFFE ID per inbound service, kuma:// URIs for its tags. */
export function identityUris(mesh: string, spec: DataplaneSpec): string[] {
  const uris = new Set<string>();
  for (const tags of dataplaneTagSets(spec)) {
    for (const [k, v] of Object.entries(tags)) uris.add(k === SERVICE_TAG ? spiffeId(mesh, v) : kumaTagUri(k, v));
  }
  return [...uris].sort();
}

/**
 * The workload certificate: a key made here (it never leaves this process and the files weft-dp
 * writes with mode 0600), signed by the control plane on a CSR, and renewed with a new key at 4/5
 * of its lifetime, without restarting anything: `onIssued` hands each new one to whoever serves it.
 */
export class WorkloadIdentity {
  private timer: unknown;
  private stopped = false;
  current?: Issued;

  constructor(
    private readonly opts: {
      cp: CpClient;
      uris: readonly string[];
      /** The Dataplane's name (a token bound to tags does not name it). */
      name?: string;
      log: Logger;
      clock?: Clock;
      onIssued: (id: Issued) => void | Promise<void>;
      /** Retry a failed renewal after this long (default 30 s). */
      retryMs?: number;
    },
  ) {}

  private get clock(): Clock {
    return this.opts.clock ?? systemClock;
  }

  async issue(): Promise<Issued> {
    const { keyPem, csrPem } = await createKeyAndCsr(this.opts.uris);
    const r = await this.opts.cp.call<{ certificate: string; caBundle: string[]; expiresAt: string }>('SignCertificate', { csr: csrPem, name: this.opts.name });
    return { keyPem, certificatePem: r.certificate, caBundle: r.caBundle, issuedAt: this.clock.now(), expiresAt: Date.parse(r.expiresAt) };
  }

  /** First certificate (retrying while the control plane is not ready), then renewals. */
  async start(signal?: AbortSignal): Promise<Issued> {
    const first = await withRetry('certificate', () => this.issue(), { log: this.opts.log, signal });
    await this.install(first);
    return first;
  }

  private async install(id: Issued): Promise<void> {
    this.current = id;
    await this.opts.onIssued(id);
    const renewAt = id.issuedAt + 0.8 * (id.expiresAt - id.issuedAt);
    this.opts.log.info({ expiresAt: new Date(id.expiresAt).toISOString(), renewAt: new Date(renewAt).toISOString() }, 'workload certificate in place');
    this.schedule(Math.max(0, renewAt - this.clock.now()));
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => void this.renew(), ms);
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.install(await this.issue());
    } catch (err) {
      const retry = this.opts.retryMs ?? 30_000;
      this.opts.log.error({ err: err instanceof CpError ? err.message : err, retryInMs: retry }, 'certificate renewal failed; the current one stays in use');
      this.schedule(retry);
    }
  }

  /** Renews now (the mesh switched to another CA). */
  renewNow(): void {
    this.clock.clearTimeout(this.timer);
    void this.renew();
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }
}
