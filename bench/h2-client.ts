/**
 * A simulated proxy's ADS client on node:http2 directly, for the benchmarks (the default;
 * WEFT_BENCH_CLIENT=grpc-js uses XdsTestClient instead). It speaks gRPC's wire format by hand
 * (length-prefixed messages on one POST stream) and decodes every response and its resources
 * exactly as XdsTestClient does; it leaves out grpc-js's client call stack (resolver, load
 * balancer, retries, filters), which costs these simulated proxies more CPU per message than the
 * control plane spends, on the same 2 cores. Envoy's own client is C++ on another machine.
 */
import http2 from 'node:http2';
import { grpcCodec, messageType } from '../src/ads/protos.js';
import type { DeltaDiscoveryRequest, DiscoveryRequest, Node } from '../src/ads/stream.js';
import type { Received } from '../src/ads/test-client.js';
import { decodeMode, decodeResponse } from './decode-modes.js';
import { deframer, frame } from './grpc-framing.js';

const SERVICE = '/envoy.service.discovery.v3.AggregatedDiscoveryService';
const codecs = {
  sotw: { path: `${SERVICE}/StreamAggregatedResources`, request: grpcCodec('envoy.service.discovery.v3.DiscoveryRequest'), response: grpcCodec('envoy.service.discovery.v3.DiscoveryResponse') },
  delta: { path: `${SERVICE}/DeltaAggregatedResources`, request: grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryRequest'), response: grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryResponse') },
};

const sotwRequest = messageType('envoy.service.discovery.v3.DiscoveryRequest');
const responseTypes = { sotw: messageType('envoy.service.discovery.v3.DiscoveryResponse'), delta: messageType('envoy.service.discovery.v3.DeltaDiscoveryResponse') };
/** How far responses are decoded (WEFT_BENCH_DECODE, bench/decode-modes.ts). */
const DECODE = decodeMode();

/** A DiscoveryRequest's `resource_names` (field 3) alone, encoded: the bytes of that field in any request naming them. */
function encodeNames(names: readonly string[]): Buffer {
  return Buffer.from(sotwRequest.encode(sotwRequest.fromObject({ resource_names: names })).finish());
}

/** Whether this process has checked that an ACK written around encoded names is the request protobufjs writes. */
let ackChecked = false;

/** The first few cut streams get a line each on stderr, so a run that fails for them says so. */
export function cutNow(nodeId: string | undefined, count: number): void {
  if (count <= 3) process.stderr.write(`ads-worker ${process.pid}: the stream of ${nodeId} ended after its first response, not closed by the proxy (${count} so far)\n`);
}

export class H2AdsClient {
  private session!: http2.ClientHttp2Session;
  private stream!: http2.ClientHttp2Stream;
  private firstSent = false;
  /** Requests written before the first response: sent again if the connection fails before it. */
  private early: Buffer[] | undefined = [];
  private closed = false;
  /**
   * SotW: the names last subscribed per type, which every ACK repeats (as Envoy's do), and their
   * encoding. An ACK is its other fields encoded around those bytes, in field order, so it is the
   * same bytes protobufjs would write for the whole request: encoding 500 names anew took these
   * simulated proxies 30 µs per ACK (65 ms of the 2 cores per SotW endpoint change, 2000 ACKs),
   * where Envoy's C++ client, on machines of its own, takes a fraction of that.
   */
  private readonly names = new Map<string, { list: readonly string[]; encoded: Buffer }>();
  /** Connections that failed before their first response and were made again, in this process. */
  static reconnects = 0;
  /**
   * Streams that ended after their first response without this process closing or dropping them:
   * the control plane (or the network) cut a proxy. Envoy would reconnect and be sent its config
   * again; these clients stop, and the bench reports them.
   */
  static cut = 0;
  private dropped = false;

  constructor(
    private readonly address: string,
    readonly variant: 'sotw' | 'delta',
    private readonly node: Node,
    private readonly opts: { onResponse: (r: Received) => void; flowControlWindow?: number; /** Connect with TLS, trusting this PEM CA. */ tlsCa?: string },
  ) {
    this.connect();
  }

  /** Connects and opens the stream; when thousands connect at once some are refused, and retry as Envoy would. */
  private connect(): void {
    const window = this.opts.flowControlWindow ?? 65_535;
    const { tlsCa } = this.opts;
    const session = (this.session = http2.connect(`${tlsCa ? 'https' : 'http'}://${this.address}`, { settings: { initialWindowSize: window }, ...(tlsCa ? { ca: tlsCa } : {}) }));
    session.on('error', () => {});
    session.once('connect', () => {
      if (window > 65_535) session.setLocalWindowSize(window);
    });
    const { path, response } = codecs[this.variant];
    const stream = (this.stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' }));
    stream.on('error', () => {});
    stream.on('close', () => {
      if (this.closed || this.dropped || this.stream !== stream) return;
      if (!this.early) return void cutNow(this.node.id, ++H2AdsClient.cut);
      session.destroy();
      H2AdsClient.reconnects++;
      setTimeout(() => this.connect(), 200 + Math.random() * 800);
    });
    for (const b of this.early ?? []) stream.write(b);
    const sotw = this.variant === 'sotw';
    const onMessages = deframer((msg) => this.opts.onResponse(decodeResponse(DECODE, responseTypes[this.variant], response.deserialize, msg, sotw)));
    stream.on('data', (chunk: Buffer) => {
      this.early = undefined;
      onMessages(chunk);
    });
  }

  private write(req: DiscoveryRequest | DeltaDiscoveryRequest): void {
    this.writeEncoded(codecs[this.variant].request.serialize(this.firstSent ? req : { ...req, node: this.node }));
  }

  /** SotW: an ACK or NACK of `req`'s type, naming what the client subscribed to (encoded once, see `names`). */
  private writeSotw(req: Omit<DiscoveryRequest, 'resource_names'>): void {
    const names = this.names.get(req.type_url ?? '');
    if (!names) return this.write({ ...req, resource_names: [] });
    const { version_info, type_url, response_nonce, error_detail } = req;
    const codec = codecs.sotw.request;
    // Fields 1 and 2 (version, node), then 3 (the names), then 4-6: the order protobufjs writes.
    const node = this.firstSent ? {} : { node: this.node };
    const msg = Buffer.concat([codec.serialize({ version_info, ...node }), names.encoded, codec.serialize({ type_url, response_nonce, error_detail })]);
    if (!ackChecked && names.list.length > 0) {
      // Once per process, on an ACK naming something: the bench must send what a client encoding
      // the whole request sends.
      const whole = codec.serialize({ ...req, ...node, resource_names: names.list });
      if (!whole.equals(msg)) throw new Error(`a SotW ACK written around its encoded names differs from protobufjs's encoding of it (${type_url})`);
      ackChecked = true;
    }
    this.writeEncoded(msg);
  }

  private writeEncoded(msg: Buffer): void {
    this.firstSent = true;
    const framed = frame(msg);
    this.early?.push(framed);
    this.stream.write(framed);
  }

  delta(req: DeltaDiscoveryRequest): void {
    if (this.variant !== 'delta') throw new Error('delta() on a SotW client');
    this.write(req);
  }

  /** SotW: subscribes `names` of a type (none: wildcard), remembered for the ACKs. */
  subscribe(typeUrl: string, names: string[]): void {
    if (this.variant !== 'sotw') throw new Error('subscribe() on a delta client');
    this.names.set(typeUrl, { list: names, encoded: encodeNames(names) });
    this.write({ type_url: typeUrl, resource_names: names });
  }

  ack(r: Received): void {
    if (this.variant === 'delta') return this.write({ type_url: r.typeUrl, response_nonce: r.nonce });
    this.writeSotw({ type_url: r.typeUrl, version_info: r.version, response_nonce: r.nonce });
  }

  /** Rejects a response, as Envoy does: error_detail set; SotW keeps `keptVersion`, the last version it took. */
  nack(r: Received, message: string, keptVersion = ''): void {
    const error_detail = { code: 3, message };
    if (this.variant === 'delta') return this.write({ type_url: r.typeUrl, response_nonce: r.nonce, error_detail });
    this.writeSotw({ type_url: r.typeUrl, version_info: keptVersion, response_nonce: r.nonce, error_detail });
  }

  /**
   * Stops reading its stream, its connection kept (HTTP/2 pings are still answered): a proxy that
   * takes nothing more, as on a congested link. With a small window (gRPC's default 64 KiB) the
   * control plane can then write little more to it.
   */
  stall(): void {
    this.stream.pause();
  }

  /** Drops the connection at once, as when the control plane replica it used dies. */
  drop(): void {
    this.early = undefined;
    this.dropped = true;
    this.session.destroy();
  }

  /** Connects again after `drop`: the requests that follow open the new stream (the first carries the node). */
  resume(): void {
    this.dropped = false;
    this.firstSent = false;
    this.early = [];
    this.connect();
  }

  close(): void {
    this.closed = true;
    this.stream.end();
    this.session.close();
  }
}
