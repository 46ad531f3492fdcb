import { randomUUID } from 'node:crypto';
import { chmodSync, rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { streamingMethod } from '../ads/index.js';
import type { Logger } from '../core/index.js';
import { IDENTITY_SECRET } from '../xds/index.js';
import type { Issued } from './identity.js';

const SECRET_TYPE = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret';

/**
 * The local SDS server Envoy gets its identity from, on a Unix socket only this user can open
 * (mode 0600): the certificate and the private key made on this node, as the Secret
 * `identity_cert`. A renewed certificate is pushed to Envoy at once; nothing restarts.
 */
export class LocalSds {
  private readonly server = new grpc.Server();
  private readonly streams = new Set<grpc.ServerDuplexStream<Record<string, unknown>, object>>();
  private current?: Issued;
  private version = '';

  constructor(
    private readonly socketPath: string,
    private readonly log: Logger,
  ) {
    this.server.addService(
      { StreamSecrets: streamingMethod('/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets', 'envoy.service.discovery.v3.DiscoveryRequest', 'envoy.service.discovery.v3.DiscoveryResponse') },
      { StreamSecrets: (call: grpc.ServerDuplexStream<Record<string, unknown>, object>) => this.stream(call) },
    );
  }

  private stream(call: grpc.ServerDuplexStream<Record<string, unknown>, object>): void {
    let sentVersion = '';
    call.on('data', (r: Record<string, unknown>) => {
      const detail = r.error_detail as { message?: string } | undefined;
      if (detail?.message) this.log.error({ reason: detail.message }, 'Envoy refused the identity secret');
      const names = (r.resource_names as string[] | undefined) ?? [];
      if (!this.streams.has(call)) {
        this.streams.add(call);
        if (names.length > 0 && !names.includes(IDENTITY_SECRET)) this.log.warn({ names }, 'Envoy asked for secrets this SDS does not serve');
      }
      if (this.current && sentVersion !== this.version) {
        sentVersion = this.version;
        call.write(this.response());
      }
    });
    const drop = () => this.streams.delete(call);
    call.on('end', () => {
      drop();
      call.end();
    });
    call.on('cancelled', drop);
    call.on('error', drop);
  }

  private response(): object {
    const id = this.current!;
    return {
      version_info: this.version,
      type_url: SECRET_TYPE,
      nonce: randomUUID(),
      resources: [
        {
          '@type': SECRET_TYPE,
          name: IDENTITY_SECRET,
          tls_certificate: { certificate_chain: { inline_string: id.certificatePem }, private_key: { inline_string: id.keyPem } },
        },
      ],
    };
  }

  /** A new identity: served to every connected Envoy now. */
  set(id: Issued): void {
    this.current = id;
    this.version = String(id.issuedAt);
    for (const s of this.streams) s.write(this.response());
  }

  async listen(): Promise<void> {
    rmSync(this.socketPath, { force: true });
    await new Promise<number>((resolve, reject) => this.server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    chmodSync(this.socketPath, 0o600);
  }

  close(): void {
    this.server.forceShutdown();
    rmSync(this.socketPath, { force: true });
  }
}
