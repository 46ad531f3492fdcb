import * as grpc from '@grpc/grpc-js';
import { grpcCodec as codec, messageType, TO_OBJECT } from './protos.js';
import type { DeltaDiscoveryRequest, DiscoveryRequest, Node } from './stream.js';

export interface ReceivedResource {
  name: string;
  version?: string;
  /** The decoded resource (protobufjs object form). */
  body: Record<string, unknown>;
}

export interface Received {
  typeUrl: string;
  nonce: string;
  /** SotW version_info, or delta system_version_info. */
  version: string;
  resources: ReceivedResource[];
  removed: string[];
  raw: Record<string, unknown>;
}

function decodeAny(any: { type_url: string; value: Uint8Array }): Record<string, unknown> {
  const type = messageType(any.type_url);
  return type.toObject(type.decode(any.value), TO_OBJECT);
}

/** A decoded (Delta)DiscoveryResponse with each of its resources decoded too. */
export function toReceived(raw: Record<string, unknown>, sotw: boolean): Received {
  const resources = (raw.resources as Record<string, unknown>[] | undefined) ?? [];
  return {
    typeUrl: String(raw.type_url),
    nonce: String(raw.nonce),
    version: String(sotw ? (raw.version_info ?? '') : (raw.system_version_info ?? '')),
    resources: resources.map((x) => {
      if (sotw) {
        const body = decodeAny(x as { type_url: string; value: Uint8Array });
        return { name: String(body.name ?? body.cluster_name), body };
      }
      const body = decodeAny(x.resource as { type_url: string; value: Uint8Array });
      return { name: String(x.name), version: String(x.version), body };
    }),
    removed: (raw.removed_resources as string[] | undefined) ?? [],
    raw,
  };
}

/**
 * A real ADS client on Envoy's protos, for tests and benchmarks: it opens one stream, sends the
 * requests it is told to, decodes every response and records what it saw. It does not ACK on its
 * own unless `autoAck` is set; tests decide when to ACK or NACK.
 */
export class XdsTestClient {
  readonly received: Received[] = [];
  private readonly waiters: { match: (r: Received) => boolean; resolve: (r: Received) => void }[] = [];
  private readonly call: grpc.ClientDuplexStream<object, Record<string, unknown>>;
  private readonly client: grpc.Client;
  readonly closed: Promise<{ code: number; details: string }>;
  private firstSent = false;
  private readonly retain: boolean;

  constructor(
    address: string,
    readonly variant: 'sotw' | 'delta',
    readonly node: Node,
    opts: {
      metadata?: Record<string, string>;
      autoAck?: boolean;
      /** Keep every response in `received` (default); benchmarks turn it off. */
      retain?: boolean;
      /** Connect with TLS, trusting this PEM CA (the control plane's xds-tls.crt). */
      tlsCa?: string;
      /** A connection of its own, as each Envoy has (grpc-js otherwise shares one per target). */
      ownConnection?: boolean;
      /** Called with every response instead of recording it (benchmarks: no promise or timer per response). */
      onResponse?: (r: Received) => void;
      /** HTTP/2 flow-control window in bytes (grpc-js: 64 KiB; Envoy's default for its xDS cluster: 256 MiB). */
      flowControlWindow?: number;
      /** The largest response accepted (gRPC's default: 4 MiB; Envoy's: no limit). */
      maxReceiveBytes?: number;
    } = {},
  ) {
    this.retain = opts.retain !== false;
    const sotw = variant === 'sotw';
    const req = codec(sotw ? 'envoy.service.discovery.v3.DiscoveryRequest' : 'envoy.service.discovery.v3.DeltaDiscoveryRequest');
    const res = codec(sotw ? 'envoy.service.discovery.v3.DiscoveryResponse' : 'envoy.service.discovery.v3.DeltaDiscoveryResponse');
    const path = `/envoy.service.discovery.v3.AggregatedDiscoveryService/${sotw ? 'StreamAggregatedResources' : 'DeltaAggregatedResources'}`;
    // No channelz: nothing reads it, and it costs each call and connection (a real Envoy has no such cost).
    const channelOptions = {
      'grpc.enable_channelz': 0,
      ...(opts.ownConnection ? { 'grpc.use_local_subchannel_pool': 1 } : {}),
      ...(opts.flowControlWindow ? { 'grpc-node.flow_control_window': opts.flowControlWindow } : {}),
      ...(opts.maxReceiveBytes ? { 'grpc.max_receive_message_length': opts.maxReceiveBytes } : {}),
    };
    this.client = new grpc.Client(address, opts.tlsCa ? grpc.credentials.createSsl(Buffer.from(opts.tlsCa)) : grpc.credentials.createInsecure(), channelOptions);
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(opts.metadata ?? {})) md.set(k, v);
    this.call = this.client.makeBidiStreamRequest(path, req.serialize, res.deserialize, md);
    this.closed = new Promise((resolve) => {
      this.call.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
      this.call.on('error', () => {});
    });
    this.call.on('data', (raw: Record<string, unknown>) => {
      const r = toReceived(raw, sotw);
      if (opts.autoAck) this.ack(r);
      if (opts.onResponse) return opts.onResponse(r);
      const i = this.waiters.findIndex((w) => w.match(r));
      if (opts.retain !== false || i < 0) this.received.push(r);
      if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(r);
    });
  }

  private withNode<T extends object>(req: T): T {
    if (this.firstSent) return req;
    this.firstSent = true;
    return { ...req, node: this.node };
  }

  /** SotW request. */
  request(typeUrl: string, names: string[] = [], extra: Partial<DiscoveryRequest> = {}): void {
    this.call.write(this.withNode({ type_url: typeUrl, resource_names: names, ...extra }));
  }

  /** Delta request. */
  delta(req: DeltaDiscoveryRequest): void {
    this.call.write(this.withNode(req));
  }

  /** ACKs a response (SotW: with its version; delta: its nonce). */
  ack(r: Received, names?: string[]): void {
    if (this.variant === 'sotw') this.request(r.typeUrl, names ?? this.lastNames(r.typeUrl), { version_info: r.version, response_nonce: r.nonce });
    else this.delta({ type_url: r.typeUrl, response_nonce: r.nonce });
  }

  /** NACKs a response with an error message, keeping `keptVersion` as the last good one. */
  nack(r: Received, message: string, keptVersion = '', names?: string[]): void {
    const error_detail = { code: 3, message };
    if (this.variant === 'sotw') this.request(r.typeUrl, names ?? this.lastNames(r.typeUrl), { version_info: keptVersion, response_nonce: r.nonce, error_detail });
    else this.delta({ type_url: r.typeUrl, response_nonce: r.nonce, error_detail });
  }

  private names = new Map<string, string[]>();
  private lastNames(typeUrl: string): string[] {
    return this.names.get(typeUrl) ?? [];
  }

  /** SotW: remembers the names so ACKs repeat them, as Envoy does. */
  subscribe(typeUrl: string, names: string[], extra: Partial<DiscoveryRequest> = {}): void {
    this.names.set(typeUrl, names);
    this.request(typeUrl, names, extra);
  }

  /** The next response (of a type, if given) not yet taken, waiting up to `timeoutMs`. */
  next(typeUrl?: string, timeoutMs = 3000): Promise<Received> {
    const taken = this.taken;
    const match = (r: Received) => (typeUrl === undefined || r.typeUrl === typeUrl) && !taken.has(r);
    const found = this.received.find(match);
    if (found) {
      taken.add(found);
      return Promise.resolve(found);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.findIndex((w) => w.resolve === done);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`no ${typeUrl ?? 'response'} within ${timeoutMs} ms (got ${this.received.map((r) => r.typeUrl.split('.').pop()).join(', ')})`));
      }, timeoutMs);
      const done = (r: Received) => {
        clearTimeout(timer);
        if (this.retain) taken.add(r);
        resolve(r);
      };
      this.waiters.push({ match, resolve: done });
    });
  }

  private readonly taken = new Set<Received>();

  /** Resolves true if no response (of a type) arrives within `ms`. */
  async quiet(ms: number, typeUrl?: string): Promise<boolean> {
    try {
      await this.next(typeUrl, ms);
      return false;
    } catch {
      return true;
    }
  }

  close(): void {
    this.call.end();
    this.client.close();
  }
}
