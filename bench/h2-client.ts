/**
 * A simulated proxy's ADS client on node:http2 directly, for the benchmarks (WEFT_BENCH_CLIENT=http2).
 * It speaks gRPC's wire format by hand (length-prefixed messages on one POST stream) and decodes
 * every response and its resources exactly as XdsTestClient does; it leaves out grpc-js's client
 * call stack (resolver, load balancer, retries, filters), which costs these simulated proxies far
 * more CPU per message than the control plane spends, on the same 2 cores. Envoy's own client is
 * C++ on another machine. Delta only.
 */
import http2 from 'node:http2';
import { grpcCodec } from '../src/ads/protos.js';
import type { DeltaDiscoveryRequest, Node } from '../src/ads/stream.js';
import { toReceived, type Received } from '../src/ads/test-client.js';
import { deframer, frame } from './grpc-framing.js';

const PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources';
const request = grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryRequest');
const response = grpcCodec('envoy.service.discovery.v3.DeltaDiscoveryResponse');

export class H2AdsClient {
  readonly variant = 'delta' as const;
  private session!: http2.ClientHttp2Session;
  private stream!: http2.ClientHttp2Stream;
  private firstSent = false;
  /** Requests written before the first response: sent again if the connection fails before it. */
  private early: Buffer[] | undefined = [];
  private closed = false;
  /** Connections that failed before their first response and were made again, in this process. */
  static reconnects = 0;

  constructor(
    private readonly address: string,
    private readonly node: Node,
    private readonly opts: { onResponse: (r: Received) => void; flowControlWindow?: number },
  ) {
    this.connect();
  }

  /** Connects and opens the stream; when thousands connect at once some are refused, and retry as Envoy would. */
  private connect(): void {
    const window = this.opts.flowControlWindow ?? 65_535;
    const session = (this.session = http2.connect(`http://${this.address}`, { settings: { initialWindowSize: window } }));
    session.on('error', () => {});
    session.once('connect', () => {
      if (window > 65_535) session.setLocalWindowSize(window);
    });
    const stream = (this.stream = session.request({ ':method': 'POST', ':path': PATH, 'content-type': 'application/grpc', te: 'trailers' }));
    stream.on('error', () => {});
    stream.on('close', () => {
      if (this.closed || !this.early) return;
      session.destroy();
      H2AdsClient.reconnects++;
      setTimeout(() => this.connect(), 200 + Math.random() * 800);
    });
    for (const b of this.early ?? []) stream.write(b);
    const onMessages = deframer((msg) => this.opts.onResponse(toReceived(response.deserialize(msg), false)));
    stream.on('data', (chunk: Buffer) => {
      this.early = undefined;
      onMessages(chunk);
    });
  }

  delta(req: DeltaDiscoveryRequest): void {
    const msg = request.serialize(this.firstSent ? req : { ...req, node: this.node });
    this.firstSent = true;
    const framed = frame(msg);
    this.early?.push(framed);
    this.stream.write(framed);
  }

  ack(r: Received): void {
    this.delta({ type_url: r.typeUrl, response_nonce: r.nonce });
  }

  subscribe(): never {
    throw new Error('H2AdsClient speaks delta only');
  }

  close(): void {
    this.closed = true;
    this.stream.end();
    this.session.close();
  }
}
