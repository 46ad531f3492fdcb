import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { SendAccount } from './budget.js';
import { SHORT_NAME, type TypeUrl } from './protos.js';
import type { StreamHooks, Variant } from './stream.js';

export interface TypeStatus {
  lastSentVersion?: string;
  lastSentAt?: string;
  lastAckedVersion?: string;
  lastAckedAt?: string;
  /** `retryAt`: when the rejected config is sent again unless it changes first (the backoff doubles while it is rejected unchanged). */
  lastNack?: { version: string; message: string; at: string; retryAt: string };
  /** The last response over 4 MiB, which gRPC clients refuse by default (XDS-RULES 24). */
  lastOversized?: { bytes: number; at: string };
  responses: number;
  acks: number;
  nacks: number;
}

export interface ProxyStatus {
  nodeId: string;
  connected: boolean;
  connectedSince?: string;
  disconnectedAt?: string;
  /** Why its last stream ended: closed by the proxy, cut for silence, ended by weft-cp with a status. */
  disconnectReason?: string;
  variant?: Variant;
  /**
   * While connected, response bytes handed to its connection and not yet written, and since when
   * some have been: a proxy that reads slowly (a slow link, a busy host) or not at all. Its next
   * responses wait for these, with what changes meanwhile sent together.
   */
  unwritten?: { bytes: number; since: string };
  controlPlaneInstance: string;
  /** Keyed by CDS, EDS, LDS, RDS, SDS. */
  types: Record<string, TypeStatus>;
}

/** A type's status as kept: times as epoch milliseconds (formatting a date per response and ACK is costly). */
type TypeRecord = Omit<TypeStatus, 'lastSentAt' | 'lastAckedAt'> & { lastSentAt?: number; lastAckedAt?: number };
type ProxyRecord = Omit<ProxyStatus, 'types' | 'unwritten'> & { streams: number; types: Record<string, TypeRecord>; sends?: Pick<SendAccount, 'unwritten'> };

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

/**
 * Per-proxy xDS status (Kuma's dataplane insight) and the Prometheus metrics of the ADS server.
 * It is the StreamHooks implementation the server passes to every stream.
 */
export class XdsStatus implements StreamHooks {
  private readonly proxies = new Map<string, ProxyRecord>();
  private readonly connected: Gauge<'variant'>;
  private readonly responses: Counter<'type' | 'variant'>;
  private readonly acks: Counter<'type'>;
  private readonly nacks: Counter<'type'>;
  private readonly ignored: Counter<'reason'>;
  private readonly oversized: Counter<'type' | 'variant'>;
  private readonly delivery: Histogram<'type'>;

  constructor(
    private readonly instanceId: string,
    registry: Registry,
  ) {
    this.connected = new Gauge({ name: 'weft_xds_connected_proxies', help: 'Proxies with an open ADS stream.', labelNames: ['variant'], registers: [registry] });
    const proxies = this.proxies;
    new Gauge({
      name: 'weft_xds_proxy_status_records',
      help: 'Proxies whose status is kept: connected ones, and departed ones while their Dataplane exists.',
      registers: [registry],
      collect() {
        this.set(proxies.size);
      },
    });
    this.responses = new Counter({ name: 'weft_xds_responses_total', help: 'xDS responses sent.', labelNames: ['type', 'variant'], registers: [registry] });
    this.acks = new Counter({ name: 'weft_xds_acks_total', help: 'xDS responses acknowledged.', labelNames: ['type'], registers: [registry] });
    this.nacks = new Counter({ name: 'weft_xds_nacks_total', help: 'xDS responses rejected by a proxy.', labelNames: ['type'], registers: [registry] });
    this.ignored = new Counter({ name: 'weft_xds_ignored_requests_total', help: 'xDS requests ignored (stale nonce, unknown type).', labelNames: ['reason'], registers: [registry] });
    this.oversized = new Counter({
      name: 'weft_xds_oversized_responses_total',
      help: 'xDS responses over 4 MiB, the most a gRPC client receives unless configured otherwise (Envoy has no such limit by default).',
      labelNames: ['type', 'variant'],
      registers: [registry],
    });
    this.delivery = new Histogram({
      name: 'weft_xds_delivery_seconds',
      help: 'Time from the committed change a snapshot answers to the proxy ACK of it.',
      labelNames: ['type'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
  }

  private entry(nodeId: string): ProxyRecord {
    let p = this.proxies.get(nodeId);
    if (!p) this.proxies.set(nodeId, (p = { nodeId, connected: false, controlPlaneInstance: this.instanceId, types: {}, streams: 0 }));
    return p;
  }

  private type(nodeId: string, typeUrl: TypeUrl): TypeRecord {
    const p = this.entry(nodeId);
    const k = SHORT_NAME[typeUrl];
    return (p.types[k] ??= { responses: 0, acks: 0, nacks: 0 });
  }

  onConnect(nodeId: string, variant: Variant, sends?: Pick<SendAccount, 'unwritten'>): void {
    const p = this.entry(nodeId);
    p.streams++;
    p.sends = sends;
    p.connected = true;
    p.variant = variant;
    p.connectedSince = new Date().toISOString();
    p.disconnectedAt = undefined;
    p.disconnectReason = undefined;
    this.connected.inc({ variant });
  }

  onDisconnect(nodeId: string, variant: Variant, reason?: string): void {
    const p = this.entry(nodeId);
    p.streams = Math.max(0, p.streams - 1);
    if (p.streams === 0) {
      p.sends = undefined;
      p.connected = false;
      p.disconnectedAt = new Date().toISOString();
      p.disconnectReason = reason ?? 'unknown';
    }
    this.connected.dec({ variant });
  }

  /**
   * Drops the record of a proxy with no stream open (its Dataplane is gone), so that names which
   * come and go (ephemeral Dataplanes of short-lived workloads) do not pile up. False if it is
   * connected or unknown.
   */
  forget(nodeId: string): boolean {
    const p = this.proxies.get(nodeId);
    if (!p || p.streams > 0) return false;
    return this.proxies.delete(nodeId);
  }

  /** Node ids of the proxies known but not connected. */
  offline(): string[] {
    return [...this.proxies.values()].filter((p) => p.streams === 0).map((p) => p.nodeId);
  }

  // Metric children per label set, so the hot path does not hash labels on every response.
  private readonly responseCounters = new Map<string, { inc(): void }>();
  private readonly ackCounters = new Map<TypeUrl, { inc(): void }>();
  private readonly deliveryHistograms = new Map<TypeUrl, { observe(v: number): void }>();

  onResponse(nodeId: string, typeUrl: TypeUrl, version: string, variant: Variant, _resources?: number): void {
    const t = this.type(nodeId, typeUrl);
    t.lastSentVersion = version;
    t.lastSentAt = Date.now();
    t.responses++;
    const key = `${typeUrl} ${variant}`;
    let c = this.responseCounters.get(key);
    if (!c) this.responseCounters.set(key, (c = this.responses.labels(SHORT_NAME[typeUrl], variant)));
    c.inc();
  }

  onAck(nodeId: string, typeUrl: TypeUrl, version: string, changeTime: number): void {
    const t = this.type(nodeId, typeUrl);
    t.lastAckedVersion = version;
    t.lastAckedAt = Date.now();
    t.acks++;
    let c = this.ackCounters.get(typeUrl);
    if (!c) this.ackCounters.set(typeUrl, (c = this.acks.labels(SHORT_NAME[typeUrl])));
    c.inc();
    if (changeTime > 0) {
      let h = this.deliveryHistograms.get(typeUrl);
      if (!h) this.deliveryHistograms.set(typeUrl, (h = this.delivery.labels(SHORT_NAME[typeUrl])));
      h.observe(Math.max(0, Date.now() - changeTime) / 1000);
    }
  }

  /** Records a NACK; true when it starts a run (the type was ACKed since the last one, or the error is new), worth a log line. */
  onNack(nodeId: string, typeUrl: TypeUrl, version: string, message: string, retryInMs: number): boolean {
    const t = this.type(nodeId, typeUrl);
    const last = t.lastNack;
    const fresh = !last || last.message !== message || (t.lastAckedAt !== undefined && t.lastAckedAt >= Date.parse(last.at));
    const now = Date.now();
    t.lastNack = { version, message, at: iso(now)!, retryAt: iso(now + retryInMs)! };
    t.nacks++;
    this.nacks.inc({ type: SHORT_NAME[typeUrl] });
    return fresh;
  }

  onIgnored(_nodeId: string | undefined, reason: 'stale_nonce' | 'unknown_type'): void {
    this.ignored.inc({ reason });
  }

  onOversized(nodeId: string, typeUrl: TypeUrl, variant: Variant, bytes: number): void {
    this.type(nodeId, typeUrl).lastOversized = { bytes, at: new Date().toISOString() };
    this.oversized.inc({ type: SHORT_NAME[typeUrl], variant });
  }

  get(nodeId: string): ProxyStatus | undefined {
    const p = this.proxies.get(nodeId);
    if (!p) return undefined;
    const { streams: _s, sends, types, ...rest } = p;
    const out: Record<string, TypeStatus> = {};
    for (const [k, { lastSentAt, lastAckedAt, ...t }] of Object.entries(types)) out[k] = { ...t, lastSentAt: iso(lastSentAt), lastAckedAt: iso(lastAckedAt) };
    const u = sends?.unwritten;
    return structuredClone({ ...rest, ...(u && { unwritten: { bytes: u.bytes, since: iso(u.since)! } }), types: out });
  }

  all(): ProxyStatus[] {
    return [...this.proxies.keys()].map((k) => this.get(k)!);
  }
}
