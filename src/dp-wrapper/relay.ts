import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../core/index.js';
import type { CpClient } from './cp-client.js';

const ADS = '/envoy.service.discovery.v3.AggregatedDiscoveryService';
const raw = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };

/**
 * For proxyless apps: grpc-js-xds cannot present a dataplane token, so it talks plaintext xDS to
 * this relay on loopback, which forwards each ADS stream (SotW and delta, bytes untouched) to the
 * control plane over TLS with the token. The control plane still checks that the app's node id is
 * the Dataplane the token names.
 */
export class XdsRelay {
  private readonly server = new grpc.Server();
  private readonly open = new Set<grpc.ClientDuplexStream<Buffer, Buffer>>();
  port = 0;

  constructor(
    private readonly cp: CpClient,
    private readonly log: Logger,
  ) {
    const method = (name: string) => ({ path: `${ADS}/${name}`, requestStream: true, responseStream: true, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize });
    this.server.addService(
      { StreamAggregatedResources: method('StreamAggregatedResources'), DeltaAggregatedResources: method('DeltaAggregatedResources') },
      {
        StreamAggregatedResources: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => this.relay('StreamAggregatedResources', call),
        DeltaAggregatedResources: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => this.relay('DeltaAggregatedResources', call),
      },
    );
  }

  private relay(method: string, app: grpc.ServerDuplexStream<Buffer, Buffer>): void {
    const upstream = this.cp.client.makeBidiStreamRequest(`${ADS}/${method}`, raw.serialize, raw.deserialize, this.cp.metadata());
    this.open.add(upstream);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      this.open.delete(upstream);
    };
    app.on('data', (b: Buffer) => upstream.write(b));
    app.on('end', () => upstream.end());
    app.on('cancelled', () => {
      finish();
      upstream.cancel();
    });
    app.on('error', () => {
      finish();
      upstream.cancel();
    });
    upstream.on('data', (b: Buffer) => app.write(b));
    upstream.on('error', (err: grpc.ServiceError) => {
      finish();
      if (err.code !== grpc.status.CANCELLED) this.log.warn({ code: grpc.status[err.code], reason: err.details }, 'xDS stream to the control plane ended; the app will reconnect');
      app.emit('error', { code: err.code, details: err.details });
    });
    upstream.on('end', () => {
      finish();
      app.end();
    });
  }

  /** Listens on loopback (port 0: any free port); resolves to the port. */
  async listen(port = 0): Promise<number> {
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    return this.port;
  }

  close(): void {
    for (const s of this.open) s.cancel();
    this.open.clear();
    this.server.forceShutdown();
  }
}
