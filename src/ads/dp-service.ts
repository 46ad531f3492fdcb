import * as grpc from '@grpc/grpc-js';
import type { DataplaneTokens, MeshCertificates } from '../certs/index.js';
import {
  dataplaneHasTags,
  decodeResource,
  durationToMs,
  enabledMtlsBackend,
  isWeftError,
  MESH_TYPE,
  nodeIdOf,
  type DataplaneSpec,
  type Logger,
  type MeshSpec,
  type Resource,
  type ResourceRegistry,
} from '../core/index.js';
import type { Store } from '../store/index.js';
import { meshServices, PROXYLESS_LABEL, serviceVips } from '../xds/index.js';
import { isLoopbackPeer } from './server.js';

/**
 * The data-plane service on the xDS port (5678), next to ADS: what weft-dp asks before it starts
 * its proxy. JSON over gRPC, authenticated by the dataplane token like ADS:
 * - Bootstrap: registers the rendered Dataplane and answers what the wrapper needs;
 * - SignCertificate: signs a CSR made on the node (the key never leaves it);
 * - Vips: the virtual IPs of the mesh's services, for `.mesh` DNS;
 * - Deregister: the wrapper is shutting down for good.
 * Errors use gRPC codes that tell "not yet" (UNAVAILABLE, NOT_FOUND: retry) from fatal
 * (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED).
 */

export const DP_SERVICE = 'weft.dp.v1.DataplaneService';
/** Label on Dataplanes weft-dp registered: deleted some seconds after their proxy leaves. */
export const EPHEMERAL_LABEL = 'weft.io/ephemeral';

export interface BootstrapRequest {
  /** The Dataplane as weft-dp rendered it (Kuma Universal form). */
  dataplane: unknown;
  proxyless?: boolean;
  version?: string;
}

export interface BootstrapResponse {
  nodeId: string;
  mesh: string;
  name: string;
  /** The mesh's mTLS backend, or null without mTLS. */
  mtls: { backend: string; mode: string; certificateLifetimeSeconds: number } | null;
  vips: Record<string, string>;
}

export const jsonCodec = {
  serialize: (o: unknown) => Buffer.from(JSON.stringify(o)),
  deserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as unknown,
};

export function dpServiceDefinition(): grpc.ServiceDefinition {
  const unary = (method: string) => ({
    path: `/${DP_SERVICE}/${method}`,
    requestStream: false,
    responseStream: false,
    requestSerialize: jsonCodec.serialize,
    requestDeserialize: jsonCodec.deserialize,
    responseSerialize: jsonCodec.serialize,
    responseDeserialize: jsonCodec.deserialize,
  });
  return { Bootstrap: unary('Bootstrap'), SignCertificate: unary('SignCertificate'), Vips: unary('Vips'), Deregister: unary('Deregister') };
}

class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

const CODES: Record<string, grpc.status> = {
  invalid_resource: grpc.status.INVALID_ARGUMENT,
  unauthorized: grpc.status.UNAUTHENTICATED,
  forbidden: grpc.status.PERMISSION_DENIED,
  mesh_not_found: grpc.status.NOT_FOUND,
  not_found: grpc.status.NOT_FOUND,
  mtls_not_enabled: grpc.status.FAILED_PRECONDITION,
  version_conflict: grpc.status.ABORTED,
};

export interface DpServiceOptions {
  store: Store;
  registry: ResourceRegistry;
  tokens: DataplaneTokens;
  certificates: MeshCertificates;
  logger: Logger;
  allowUnauthenticatedLoopback: boolean;
}

type Who = { token?: string; mesh?: string; name?: string; tags?: Record<string, string> };

export class DataplaneService {
  private readonly vipCache = new Map<string, Promise<Record<string, string>>>();

  constructor(private readonly opts: DpServiceOptions) {
    opts.store.watch((e) => {
      if (e.kind === 'resync') this.vipCache.clear();
      else if (e.key.type === 'Dataplane') this.vipCache.delete(e.key.mesh);
    });
  }

  private async who(call: grpc.ServerUnaryCall<unknown, unknown>): Promise<Who> {
    const raw = call.metadata.get('authorization')[0];
    if (typeof raw !== 'string' || raw.trim() === '') {
      if (this.opts.allowUnauthenticatedLoopback && isLoopbackPeer(call.getPeer())) return {};
      throw new RpcError(grpc.status.UNAUTHENTICATED, 'no dataplane token: send it as "authorization: Bearer <token>" (weftctl generate dataplane-token)');
    }
    const token = raw.replace(/^Bearer\s+/i, '').trim();
    const id = await this.opts.tokens.verify(token);
    return { token, mesh: id.mesh, name: id.name, tags: id.tags };
  }

  async vips(mesh: string): Promise<Record<string, string>> {
    let v = this.vipCache.get(mesh);
    if (!v) {
      v = this.opts.store.list('Dataplane', { mesh }).then((page) => Object.fromEntries(serviceVips(meshServices(page.items as Resource<DataplaneSpec>[]).keys())));
      this.vipCache.set(mesh, v);
      v.catch(() => this.vipCache.delete(mesh));
    }
    return v;
  }

  private async mtlsOf(meshName: string): Promise<BootstrapResponse['mtls']> {
    const mesh = (await this.opts.store.get({ type: MESH_TYPE, mesh: '', name: meshName })) as Resource<MeshSpec> | undefined;
    const backend = mesh ? enabledMtlsBackend(mesh.spec) : undefined;
    if (!backend) return null;
    return { backend: backend.name, mode: backend.mode ?? 'STRICT', certificateLifetimeSeconds: Math.round(durationToMs(backend.dpCert?.rotation?.expiration ?? '24h') / 1000) };
  }

  private async bootstrap(req: BootstrapRequest, who: Who): Promise<BootstrapResponse> {
    const { resource } = decodeResource(req.dataplane, this.opts.registry, { type: 'Dataplane' });
    if (who.tags && (who.mesh !== resource.mesh || !dataplaneHasTags(resource.spec as DataplaneSpec, who.tags))) {
      this.opts.logger.warn({ event: 'security', tokenTags: who.tags, asked: `${resource.mesh}.${resource.name}` }, 'bootstrap refused: the Dataplane lacks the tags the token is bound to');
      throw new RpcError(grpc.status.PERMISSION_DENIED, `the token is bound to tags ${JSON.stringify(who.tags)} in mesh "${who.mesh}": Dataplane "${resource.name}" in "${resource.mesh}" must carry them on every inbound`);
    }
    if (who.name !== undefined && (who.mesh !== resource.mesh || who.name !== resource.name)) {
      this.opts.logger.warn({ event: 'security', tokenFor: `${who.mesh}.${who.name}`, asked: `${resource.mesh}.${resource.name}` }, 'bootstrap refused: token is for another dataplane');
      throw new RpcError(grpc.status.PERMISSION_DENIED, `the token is for dataplane "${who.name}" in mesh "${who.mesh}", not "${resource.name}" in "${resource.mesh}"`);
    }
    const labels = { ...resource.labels, [EPHEMERAL_LABEL]: 'true', ...(req.proxyless ? { [PROXYLESS_LABEL]: 'true' } : {}) };
    await this.opts.store.upsert({ ...resource, labels });
    const mtls = await this.mtlsOf(resource.mesh);
    this.opts.logger.info({ mesh: resource.mesh, name: resource.name, proxyless: req.proxyless === true, version: req.version }, 'dataplane registered by weft-dp');
    return {
      nodeId: nodeIdOf(resource.mesh, resource.name),
      mesh: resource.mesh,
      name: resource.name,
      mtls,
      vips: await this.vips(resource.mesh),
    };
  }

  handlers(): grpc.UntypedServiceImplementation {
    const handle =
      <Req, Res>(fn: (req: Req, who: Who) => Promise<Res>) =>
      (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
        void (async () => {
          try {
            const req = call.request;
            if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'the request must be a JSON object');
            cb(null, await fn(req, await this.who(call as grpc.ServerUnaryCall<unknown, unknown>)));
          } catch (err) {
            if (err instanceof RpcError) return cb({ code: err.code, details: err.message });
            if (isWeftError(err)) {
              const detail = err.violations.length ? `${err.message}: ${err.violations.map((v) => `${v.field}: ${v.message}`).join('; ')}` : err.message;
              return cb({ code: CODES[err.code] ?? grpc.status.INTERNAL, details: detail });
            }
            this.opts.logger.error({ err }, 'data-plane service call failed');
            cb({ code: grpc.status.UNAVAILABLE, details: 'internal error; retry' });
          }
        })();
      };
    return {
      Bootstrap: handle<BootstrapRequest, BootstrapResponse>((req, who) => this.bootstrap(req, who)),
      SignCertificate: handle<{ csr?: unknown; mesh?: string; name?: string }, object>(async (req, who) => {
        if (!who.token || !who.mesh) throw new RpcError(grpc.status.UNAUTHENTICATED, 'certificates are issued to dataplanes with a token only');
        // A tag-bound token names no Dataplane: the request does, and the tags are checked against it.
        const name = who.name ?? req.name;
        if (!name) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'name: required with a token bound to tags');
        if (typeof req.csr !== 'string') throw new RpcError(grpc.status.INVALID_ARGUMENT, 'csr: required (PEM)');
        const issued = await this.opts.certificates.issueForDataplane(who.token, who.mesh, name, req.csr);
        this.opts.logger.info({ mesh: who.mesh, name, spiffeIds: issued.spiffeIds, expiresAt: issued.expiresAt }, 'workload certificate issued');
        return { certificate: issued.certificate, caBundle: issued.caBundle, expiresAt: issued.expiresAt.toISOString() };
      }),
      Vips: handle<{ mesh?: string }, object>(async (req, who) => {
        const mesh = who.mesh ?? req.mesh;
        if (!mesh) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'mesh: required');
        const mtls = await this.mtlsOf(mesh);
        return { vips: await this.vips(mesh), mtls, ...(mtls ? { caBundle: await this.opts.certificates.trustBundle(mesh) } : {}) };
      }),
      Deregister: handle<{ mesh?: string; name?: string }, object>(async (req, who) => {
        const mesh = who.mesh ?? req.mesh;
        const name = who.name ?? req.name;
        if (!mesh || !name) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'mesh and name: required');
        const dp = await this.opts.store.get({ type: 'Dataplane', mesh, name });
        if (dp && who.tags && !dataplaneHasTags(dp.spec as DataplaneSpec, who.tags)) {
          throw new RpcError(grpc.status.PERMISSION_DENIED, `the token is bound to tags ${JSON.stringify(who.tags)}, which Dataplane "${name}" does not carry`);
        }
        if (dp?.labels[EPHEMERAL_LABEL] === 'true') await this.opts.store.delete({ type: 'Dataplane', mesh, name }, dp.version).catch(() => undefined);
        this.opts.logger.info({ mesh, name }, 'dataplane deregistered by weft-dp');
        return {};
      }),
    };
  }
}
