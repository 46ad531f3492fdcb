import * as grpc from '@grpc/grpc-js';
import { lookup } from 'node:dns/promises';
import { createServer, isIP, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { DataplaneTokens } from '../certs/index.js';
import { cutSilent, dataplaneHasTags, humanBytes, isWeftError, SHUTDOWN_SWEEP_MS, splitNodeId, trackSockets, type DataplaneSpec, type Logger } from '../core/index.js';
import type { SnapshotCache } from './cache.js';
import { SHORT_NAME, streamingMethod } from './protos.js';
import { requestDeserializer, responseParts, responseSerializer } from './wire.js';
import { SendBudget } from './budget.js';
import { XdsStatus } from './status.js';
import { http2StreamOf, pooledBytes, TURN_BYTES, TurnWriter } from './turn-writer.js';
import { AdsStream, DELTA_MOST_BYTES, GRPC_DEFAULT_RECEIVE_BYTES, GRPC_PERMISSION_DENIED, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAUTHENTICATED, GRPC_UNAVAILABLE, StreamError, type DeltaDiscoveryRequest, type DiscoveryRequest, type Identity, type StreamHooks, type Variant } from './stream.js';

/** Decides who is on the other end of a new stream, from its metadata and peer address. */
export interface Authenticator {
  /** Returns the identity, or throws (rejects with) StreamError (UNAUTHENTICATED) with the reason. */
  authenticate(ctx: { metadata: grpc.Metadata; peer: string }): Identity | Promise<Identity>;
}

/** True for a gRPC peer string of a loopback address ("127.0.0.1:5", "[::1]:5", "ipv4:127.0.0.1:5"). */
export function isLoopbackPeer(peer: string): boolean {
  const p = peer.replace(/^ipv[46]:/, '');
  return /^127\.\d+\.\d+\.\d+:\d+$/.test(p) || /^\[::1\]:\d+$/.test(p) || /^\[::ffff:127\.\d+\.\d+\.\d+\]:\d+$/.test(p);
}

/**
 * Until dataplane tokens exist: accept any node id, but only from loopback. Off unless the
 * operator turns it on (`xds.allowUnauthenticatedLoopback`).
 */
export const loopbackOnlyAuthenticator: Authenticator = {
  authenticate({ peer }) {
    if (!isLoopbackPeer(peer)) throw new StreamError(GRPC_UNAUTHENTICATED, `unauthenticated xDS is allowed from loopback only, not from ${peer}`);
    return { kind: 'unauthenticated' };
  },
};

/** Refuses everyone: the default until a token authenticator is configured. */
export const refuseAllAuthenticator: Authenticator = {
  authenticate() {
    throw new StreamError(GRPC_UNAUTHENTICATED, 'this control plane accepts no xDS clients: dataplane token authentication is not configured and unauthenticated loopback mode is off');
  },
};

export interface AdsServerOptions {
  cache: SnapshotCache;
  authenticator: Authenticator;
  logger: Logger;
  metrics: Registry;
  instanceId: string;
  /** Wait after a NACK before sending that type again (Kuma: 5 s). */
  nackBackoffMs?: number;
  /** The longest such wait, when a proxy rejects the same config again and again (default 60 s). */
  nackBackoffMaxMs?: number;
  /** The Dataplane behind a node id, to check a tag-bound token against it. */
  dataplaneOf?: (mesh: string, name: string) => Promise<DataplaneSpec | undefined>;
  /** Response bytes all streams may have on their way out at once (default 64 MiB). */
  sendBudgetBytes?: number;
  /**
   * While streams wait for that budget, a proxy that has taken nothing of what was sent to it for
   * this long is holding them up: its connection is cut (SendBudget; default 30 s, 0: never).
   */
  sendStallCutMs?: number;
  /** On close, how long connections get to go away before they are cut (default 5 s). */
  shutdownGraceMs?: number;
  /** Delta responses over this many bytes go out in pieces (default DELTA_MOST_BYTES). */
  deltaPieceBytes?: number;
  /** On a TLS port, the largest write of a stream's messages (default TURN_BYTES; 0: whole messages through grpc-js). */
  turnBytes?: number;
  /** Told when a proxy's first stream opens and its last one closes (the reconciler tracks it). */
  onProxy?: { connected(nodeId: string): void; disconnected(nodeId: string): void };
  /**
   * Every this many ms each connection is pinged (HTTP/2 PING); one from which nothing at all has
   * been read for `keepaliveTimeMs` + `keepaliveTimeoutMs` is cut, so a proxy whose host or network
   * vanished without closing its connection stops counting as connected and gives back what it
   * held (default 15 s and 15 s, as Kuma's; 0: no pings). Whatever the proxy sends counts, not only
   * the ping's answer (as gRPC-Go's server keepalive): see `reapDead`.
   */
  keepaliveTimeMs?: number;
  keepaliveTimeoutMs?: number;
  /**
   * Connections older than this (±10%) are asked to go (GOAWAY) and cut `maxConnectionAgeGraceMs`
   * later, so proxies reconnect and spread over the replicas there are now (Istio's
   * MAX_CONNECTION_AGE). Default 0: never.
   */
  maxConnectionAgeMs?: number;
  maxConnectionAgeGraceMs?: number;
  /**
   * Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; default
   * 100). A proxy uses one ADS stream; clients wait for a free one beyond this, and streams a client
   * opens regardless are refused. Without it one connection could open streams without end (grpc-js
   * sets no limit, and lifts Node's per-session memory limit).
   */
  maxStreamsPerConnection?: number;
}

type ConnectionSettings = Pick<AdsServerOptions, 'keepaliveTimeMs' | 'keepaliveTimeoutMs' | 'maxConnectionAgeMs' | 'maxConnectionAgeGraceMs' | 'maxStreamsPerConnection'>;

/** The ping interval and the silence after it that ends a connection; undefined: no pings. */
function keepaliveOf(opts: ConnectionSettings): { timeMs: number; timeoutMs: number } | undefined {
  const timeMs = opts.keepaliveTimeMs ?? 15_000;
  return timeMs > 0 ? { timeMs, timeoutMs: opts.keepaliveTimeoutMs ?? 15_000 } : undefined;
}

/**
 * How long grpc-js waits for a ping's answer before it ends the connection: in effect never (the
 * longest timer Node has). The ping's answer comes after everything the proxy has yet to read of
 * what was sent before it: a proxy taking in a big config on a busy host or a slow link answers
 * late while it goes on ACKing. grpc-js would cut it, and its config would be sent again, whole, to
 * be cut again. The server's reaper cuts a connection that is silent instead (`reapDead`).
 */
export const PING_ANSWER_WAIT_MS = 2 ** 31 - 1;

/** grpc-js's server options for the connection settings above. */
export function connectionOptions(opts: ConnectionSettings): grpc.ServerOptions {
  const out: grpc.ServerOptions = { 'grpc.max_concurrent_streams': opts.maxStreamsPerConnection ?? 100 };
  const keepalive = keepaliveOf(opts);
  if (keepalive) {
    out['grpc.keepalive_time_ms'] = keepalive.timeMs;
    out['grpc.keepalive_timeout_ms'] = PING_ANSWER_WAIT_MS;
  }
  if ((opts.maxConnectionAgeMs ?? 0) > 0) {
    out['grpc.max_connection_age_ms'] = opts.maxConnectionAgeMs;
    out['grpc.max_connection_age_grace_ms'] = opts.maxConnectionAgeGraceMs ?? 10_000;
  }
  return out;
}

const PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService';

/** Writers of TLS streams (see TurnWriter), by call. */
const writers = new WeakMap<object, TurnWriter>();

/** How long a connection the reaper cut is remembered, for the status of the streams it carried. */
const CUT_REMEMBERED_MS = 10_000;

/** Requests a stream may send before its credentials are checked (see `serve`). */
const EARLY_REQUESTS_KEPT = 32;

/** A connection's peer as grpc-js names it (`call.getPeer()`): `ip:port`. */
function peerOf(socket: Socket): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

/** Ends a stream with the error's gRPC status (grpc-js sends the status on an 'error' event), after what it has queued. */
function endWith(call: { emit(event: 'error', status: object): boolean }, err: StreamError): void {
  writers.get(call)?.flush();
  call.emit('error', { code: err.grpcCode, details: err.message });
}

/**
 * The ADS gRPC server (port 5678): StreamAggregatedResources (state of the world) and
 * DeltaAggregatedResources (incremental). It knows nothing of translation: it serves whatever the
 * snapshot cache holds for a stream's node id.
 */
export class AdsServer {
  readonly status: XdsStatus;
  private readonly server: grpc.Server;
  private readonly streams = new Map<AdsStream, grpc.ServerDuplexStream<unknown, unknown>>();
  private closing?: Promise<void>;
  private readonly hooks: StreamHooks;
  readonly budget: SendBudget;
  /** Serving TLS (see TurnWriter). */
  private secure = false;
  private warnedInternals = false;
  private readonly parts = {
    sotw: responseParts('envoy.service.discovery.v3.DiscoveryResponse'),
    delta: responseParts('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
  };

  constructor(private readonly opts: AdsServerOptions) {
    this.budget = new SendBudget(opts.sendBudgetBytes ?? 64 * 1024 * 1024, opts.metrics, { stallCutMs: opts.sendStallCutMs ?? 30_000 });
    this.stallCuts = new Counter({
      name: 'weft_xds_stalled_streams_cut_total',
      help: 'xDS connections cut because a proxy took nothing sent to it for xds.sendStallCutMs while other streams waited for the send budget.',
      registers: [opts.metrics],
    });
    this.silentCuts = new Counter({
      name: 'weft_xds_connections_cut_total',
      help: 'xDS connections cut because nothing was read from them for keepaliveTimeMs + keepaliveTimeoutMs. streams="open": it carried proxies\' streams (their host or network went away without closing); "none": a connection that never spoke, or the socket of a session that had ended.',
      labelNames: ['streams'],
      registers: [opts.metrics],
    });
    new Gauge({
      name: 'weft_xds_write_buffers_kept_bytes',
      help: 'Bytes of TLS write buffers kept for reuse by the xDS streams (up to 32 MiB, let go after 5 s unused).',
      registers: [opts.metrics],
      collect() {
        this.set(pooledBytes());
      },
    });
    this.status = new XdsStatus(opts.instanceId, opts.metrics);
    const status = this.status;
    this.hooks = {
      onConnect: (id, v, sends) => {
        status.onConnect(id, v, sends);
        opts.onProxy?.connected(id);
      },
      onDisconnect: (id, v, reason) => {
        status.onDisconnect(id, v, reason);
        opts.onProxy?.disconnected(id);
      },
      onResponse: (...a) => status.onResponse(...a),
      onAck: (...a) => status.onAck(...a),
      onNack: (nodeId, typeUrl, version, message, retryInMs) => {
        // Once per run of rejections: the type is retried after each backoff (rule 5).
        if (status.onNack(nodeId, typeUrl, version, message, retryInMs)) {
          opts.logger.warn({ nodeId, type: SHORT_NAME[typeUrl], version, error: message, retryInMs }, 'proxy rejected its config (NACK); it is sent again after a backoff, which doubles while the same config is rejected, until taken or changed');
        }
      },
      onIgnored: (...a) => status.onIgnored(...a),
      onOversized: (nodeId, typeUrl, variant, bytes, first) => {
        status.onOversized(nodeId, typeUrl, variant, bytes);
        if (first) {
          opts.logger.warn(
            { nodeId, type: SHORT_NAME[typeUrl], variant, bytes },
            variant === 'sotw'
              ? 'xDS response over 4 MiB: gRPC clients (proxyless) refuse it unless their receive limit is raised; Envoy takes it. Delta xDS sends big sets in pieces'
              : 'xDS resource over 4 MiB: gRPC clients (proxyless) refuse it unless their receive limit is raised; Envoy takes it',
          );
        }
      },
    };
    // No channelz: its per-connection and per-call records cost memory with thousands of proxies,
    // and nothing here reads them.
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': GRPC_DEFAULT_RECEIVE_BYTES, 'grpc.enable_channelz': 0, ...connectionOptions(opts) });
    const definition: grpc.ServiceDefinition = {
      StreamAggregatedResources: {
        ...streamingMethod(`${PATH}/StreamAggregatedResources`, 'envoy.service.discovery.v3.DiscoveryRequest', 'envoy.service.discovery.v3.DiscoveryResponse'),
        requestDeserialize: requestDeserializer('envoy.service.discovery.v3.DiscoveryRequest', 'resource_names'),
        responseSerialize: responseSerializer('envoy.service.discovery.v3.DiscoveryResponse'),
      },
      DeltaAggregatedResources: {
        ...streamingMethod(`${PATH}/DeltaAggregatedResources`, 'envoy.service.discovery.v3.DeltaDiscoveryRequest', 'envoy.service.discovery.v3.DeltaDiscoveryResponse'),
        requestDeserialize: requestDeserializer('envoy.service.discovery.v3.DeltaDiscoveryRequest', 'resource_names_subscribe', 'initial_resource_versions'),
        responseSerialize: responseSerializer('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
      },
    };
    this.server.addService(definition, {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<DiscoveryRequest, object>) => this.serve('sotw', call),
      DeltaAggregatedResources: (call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, object>) => this.serve('delta', call),
    });
  }

  private serve(variant: Variant, call: grpc.ServerDuplexStream<DiscoveryRequest | DeltaDiscoveryRequest, object>): void {
    const log = this.opts.logger;
    const fail = (err: StreamError) => endWith(call, err);
    if (this.closing) return fail(new StreamError(GRPC_UNAVAILABLE, 'control plane is shutting down; reconnect to another replica'));
    // Requests that arrive while the credentials are being checked wait for the answer; a few
    // (a proxy asks once per type before it hears anything), not whatever a client without
    // credentials sends while the check waits on a slow store.
    const early: (DiscoveryRequest | DeltaDiscoveryRequest)[] = [];
    let gone = false;
    let overrun = false;
    const buffer = (req: DiscoveryRequest | DeltaDiscoveryRequest) => {
      if (gone) return;
      if (early.length < EARLY_REQUESTS_KEPT) return void early.push(req);
      overrun = true;
      log.warn({ peer: call.getPeer() }, 'xDS stream refused: too many requests before its credentials were checked');
      fail(new StreamError(GRPC_RESOURCE_EXHAUSTED, `more than ${EARLY_REQUESTS_KEPT} requests before the stream's credentials were checked; wait for a response`));
    };
    call.on('data', buffer);
    const abandon = () => (gone = true);
    call.on('cancelled', abandon);
    call.on('error', abandon);
    void Promise.resolve()
      .then(() => this.opts.authenticator.authenticate({ metadata: call.metadata, peer: call.getPeer() }))
      .then((identity) => (identity.kind === 'dataplane-tags' ? this.bindTagToken(identity, early, call) : identity))
      .then(
        (identity) => {
          call.off('data', buffer);
          if (gone) return;
          if (this.closing) return fail(new StreamError(GRPC_UNAVAILABLE, 'control plane is shutting down; reconnect to another replica'));
          this.open(variant, call, identity, early);
        },
        (err: unknown) => {
          call.off('data', buffer);
          const e = err instanceof StreamError ? err : new StreamError(GRPC_UNAUTHENTICATED, (err as Error).message);
          if (!(err instanceof StreamError)) log.error({ err }, 'xDS authentication failed');
          log.warn({ peer: call.getPeer(), reason: e.message }, 'xDS stream refused');
          if (!overrun) fail(e); // ended already
        },
      );
  }

  /**
   * A tag-bound token names no Dataplane: wait for the stream's first request, and let it in as
   * that node's Dataplane only if the Dataplane exists and carries the token's tags on every inbound.
   */
  private async bindTagToken(identity: { mesh: string; tags: Record<string, string> }, early: (DiscoveryRequest | DeltaDiscoveryRequest)[], call: grpc.ServerDuplexStream<unknown, unknown>): Promise<Identity> {
    const first = await new Promise<DiscoveryRequest | DeltaDiscoveryRequest>((resolve, reject) => {
      if (early.length > 0) return resolve(early[0]!);
      const onData = () => {
        call.off('data', onData);
        // The buffering listener ran first (it was added first), so early[0] is this request.
        resolve(early[0]!);
      };
      call.on('data', onData);
      call.once('cancelled', () => reject(new StreamError(GRPC_UNAUTHENTICATED, 'stream closed before its first request')));
    });
    const id = first.node?.id ?? '';
    const { mesh, name } = splitNodeId(id) ?? { mesh: '', name: '' };
    if (mesh === '' || mesh !== identity.mesh) throw new StreamError(GRPC_PERMISSION_DENIED, `node.id "${id}" is not a Dataplane of mesh "${identity.mesh}", which the token is for`);
    const dp = await this.opts.dataplaneOf?.(mesh, name);
    if (!dp || !dataplaneHasTags(dp, identity.tags)) {
      throw new StreamError(GRPC_PERMISSION_DENIED, `the token is bound to tags ${JSON.stringify(identity.tags)}, which Dataplane "${name}" ${dp ? 'does not carry on every inbound' : 'cannot show: it does not exist'}`);
    }
    return { kind: 'dataplane', mesh, name };
  }

  private open(variant: Variant, call: grpc.ServerDuplexStream<DiscoveryRequest | DeltaDiscoveryRequest, object>, identity: Identity, early: (DiscoveryRequest | DeltaDiscoveryRequest)[]): void {
    const log = this.opts.logger;
    const fail = (err: StreamError) => endWith(call, err);
    // Over TLS a stream's messages go out in writes of at most TURN_BYTES, each after the last has
    // finished (see TurnWriter), which needs grpc-js's HTTP/2 stream.
    const wantWriter = this.secure && this.opts.turnBytes !== 0;
    const h2 = wantWriter ? http2StreamOf(call) : undefined;
    if (wantWriter && !h2 && !this.warnedInternals) {
      this.warnedInternals = true;
      log.warn('grpc-js no longer shows its HTTP/2 stream: responses over TLS are written whole, which costs memory per connection');
    }
    const account = this.budget.account();
    const writer = h2 ? new TurnWriter(h2, this.opts.turnBytes ?? TURN_BYTES, () => account.progressed()) : undefined;
    if (writer) writers.set(call, writer);
    const partsOf = this.parts[variant];
    let headersSent = false;
    const stream = new AdsStream({
      variant,
      cache: this.opts.cache,
      identity,
      controlPlaneId: this.opts.instanceId,
      nackBackoffMs: this.opts.nackBackoffMs ?? 5000,
      nackBackoffMaxMs: this.opts.nackBackoffMaxMs ?? 60_000,
      hooks: this.hooks,
      budget: account,
      // Delta: only what a gRPC client could not take whole is cut (XDS-RULES 24).
      pieceBytes: variant === 'delta' ? (this.opts.deltaPieceBytes ?? DELTA_MOST_BYTES) : undefined,
      onFailure: (err) => {
        internal(err);
        end();
      },
      send: (r, bytes) => {
        // A call ended during the pump that sends this (its transport failed under a write): nothing
        // to write, and a charge now would never be given back.
        if (ended) return;
        // Charged until it is written; a stream that ends first gives back what it held.
        account.charge(bytes);
        const written = () => account.written(bytes);
        if (!writer) return void call.write(r, written);
        if (!headersSent) call.sendMetadata(new grpc.Metadata());
        headersSent = true;
        writer.write(partsOf(r), written);
      },
    });
    let ended = false;
    /** A bug: logged with its stack; the proxy is told no more than that, and reconnects. */
    const internal = (err: unknown) => {
      log.error({ err, nodeId: stream.nodeId }, 'xDS stream failed');
      call.emit('error', { code: grpc.status.INTERNAL, details: 'internal error' });
    };
    this.streams.set(stream, call as grpc.ServerDuplexStream<unknown, unknown>);
    // Its connection's address as the reaper sees it, taken now: once the connection is gone, grpc-js no longer knows it.
    const peer = call.getPeer();
    // Holding up the streams that wait for the send budget (see SendBudget): its connection is
    // cut, which drops what is queued for it (a status would wait behind those bytes); a live
    // proxy reconnects and is sent what is current. A proxy has one stream; any other stream on
    // the same connection goes with it, and its client reconnects too.
    account.onStall = (bytes, ms) => {
      const reason = `weft-cp cut its connection: it took nothing of the ${humanBytes(bytes)} sent to it for ${(ms / 1000).toFixed(1)} s while other proxies waited for the send budget (xds.sendStallCutMs)`;
      this.stallCuts.inc();
      this.opts.logger.warn({ peer, nodeId: stream.nodeId, unwrittenBytes: bytes, stalledMs: ms }, 'xDS connection cut: the proxy took nothing sent to it while other proxies waited for the send budget');
      if (!this.cutConnection(peer, reason)) {
        fail(new StreamError(GRPC_UNAVAILABLE, 'the stream took nothing sent to it while other proxies waited; reconnect'));
        end(reason);
      }
    };
    /** Ends the stream; `reason` (the first given stands) goes to the proxy's status. */
    const end = (reason?: string) => {
      stream.close(reason);
      this.streams.delete(stream);
      if (!ended) {
        ended = true;
        account.close();
        writer?.close();
      }
    };
    const onData = (req: DiscoveryRequest | DeltaDiscoveryRequest) => {
      try {
        stream.handle(req);
      } catch (err) {
        if (err instanceof StreamError) {
          log.warn({ peer: call.getPeer(), nodeId: stream.nodeId ?? req.node?.id, reason: err.message }, 'xDS stream closed');
          fail(err);
        } else internal(err);
        end();
      }
    };
    for (const req of early) onData(req);
    call.on('data', onData);
    // A connection the reaper cut ends its streams in any of these ways: its reason comes first.
    const gone = (otherwise: string) => end(this.cutReason(peer) ?? otherwise);
    call.on('end', () => {
      writer?.flush();
      gone('the proxy closed its stream');
      call.end();
    });
    call.on('cancelled', () => gone('the proxy reset its stream, or its connection closed'));
    // Emitted by the server itself to end the stream with a status (endWith, internal); anything
    // else emitted as an error (the HTTP/2 stream failing) is said as it is.
    call.on('error', (e: { code?: unknown; details?: string; message?: string }) =>
      end(typeof e.code === 'number' && e.details !== undefined ? `weft-cp ended the stream: ${grpc.status[e.code] ?? e.code}: ${e.details}` : this.cutReason(peer) ?? `the stream failed: ${e.message ?? String(e.code)}`),
    );
    call.on('close', () => gone('the stream closed'));
  }

  /** Connections the reaper cut, by peer address, with why; kept for a while for their streams' status. */
  private readonly cutPeers = new Map<string, { at: number; reason: string }>();

  private cutReason(peer: string): string | undefined {
    const cut = this.cutPeers.get(peer);
    return cut && performance.now() - cut.at < CUT_REMEMBERED_MS ? cut.reason : undefined;
  }

  /** Serves another service on the same port (the data-plane service, see dp-service.ts). */
  addService(definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
    this.server.addService(definition, implementation);
  }

  /**
   * Binds and starts serving; resolves to the bound port. The port is our own listening socket,
   * whose connections are handed to grpc-js (its connection injector), for two reasons:
   * - its accept queue is as long as the kernel allows (`net.core.somaxconn`), where grpc-js's
   *   `bindAsync` leaves Node's 511. When thousands of proxies connect at once (a failover, a
   *   restart), a full queue drops their handshakes, and each waits out TCP's retransmit (1 s,
   *   then 2, 4...): in the ADS bench, 20 000 drops in one run (`ListenOverflows`);
   * - every connection is seen from accept on, so `destroy` can cut the ones grpc-js cannot see
   *   (still in their TLS handshake or before the HTTP/2 preface: grpc-js's `forceShutdown` cuts
   *   only sessions channelz tracks, and channelz is off here; test/cp/shutdown.test.ts), and the
   *   reaper can find dead ones.
   */
  async listen(address: string, port: number, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    this.secure = credentials._isSecure();
    const injector = this.server.createConnectionInjector(credentials);
    // A name (localhost) is bound on each of its addresses, as grpc-js's bindAsync did: the first
    // picks the port when it is 0, the others take the same one.
    const hosts = isIP(address) ? [address] : [...new Set((await lookup(address, { all: true })).map((a) => a.address))];
    let bound = port;
    for (const host of hosts) {
      const listener = createServer((socket) => injector.injectConnection(socket));
      this.sockets.push(trackSockets(listener));
      await new Promise<void>((resolve, reject) => {
        listener.once('error', reject);
        // The kernel caps the backlog at net.core.somaxconn.
        listener.listen({ host, port: bound, backlog: 65_535 }, () => {
          listener.off('error', reject);
          resolve();
        });
      });
      // An 'error' event on the listening socket (an accept libuv reports as failed), unheard,
      // would end the process. Logged at most every 10 s; the port goes on accepting.
      let loggedAt = -Infinity;
      listener.on('error', (err) => {
        if (performance.now() - loggedAt < 10_000) return;
        loggedAt = performance.now();
        this.opts.logger.error({ err }, 'the xDS port could not accept a connection');
      });
      this.listeners.push(listener);
      bound = (listener.address() as AddressInfo).port;
    }
    this.startReaper();
    return bound;
  }

  /** The listening sockets of the port (one per address bound). */
  private readonly listeners: NetServer[] = [];
  /** Every TCP connection of the port, from accept on, so `destroy` can cut them all. */
  private readonly sockets: ReadonlyMap<Socket, number>[] = [];

  private startReaper(): void {
    const keepalive = keepaliveOf(this.opts);
    if (keepalive && !this.reaper) {
      const deadAfter = keepalive.timeMs + keepalive.timeoutMs;
      const every = Math.min(Math.max(keepalive.timeMs / 2, 50), 5000);
      this.reaper = setInterval(() => this.reapDead(deadAfter, every), every);
      this.reaper.unref();
    }
  }

  private reaper?: NodeJS.Timeout;
  private readonly silentCuts: Counter<'streams'>;
  private readonly stallCuts: Counter;
  /** Per connection: bytes read when last looked at, and since when that count has not moved. */
  private readonly lastRead = new WeakMap<Socket, { bytes: number; since: number }>();

  /**
   * With keepalive on, a connection that has read nothing for the ping interval and its timeout
   * together is dead: a live peer answers every ping, and sends what else it has to. Anything read
   * counts, not only the ping's answer, which may wait behind megabytes the proxy has yet to read
   * (see PING_ANSWER_WAIT_MS). Cutting the socket ends its HTTP/2 session and streams.
   *
   * It also cuts what grpc-js leaves: Node does not always close the socket under an HTTP/2 session
   * that was destroyed (it waits for a write in progress to finish, and with pings on some never
   * did: in the ADS bench, about 100 of 2000 connections stayed open after their proxies had
   * exited), and a connection that never sends anything (no TLS handshake, no HTTP/2 preface) has
   * no session for grpc-js to ping.
   */
  private reapDead(deadAfter: number, every: number): void {
    const now = performance.now();
    for (const [peer, cut] of this.cutPeers) if (now - cut.at >= CUT_REMEMBERED_MS) this.cutPeers.delete(peer);
    // Late: the event loop was busy, and what arrived meanwhile is read only after timers run.
    // That silence is this process's, not the peers': it does not count.
    const late = now - this.lastReap > 2 * every;
    this.lastReap = now;
    for (const tracked of this.sockets) {
      for (const socket of tracked.keys()) {
        const seen = this.lastRead.get(socket);
        if (!seen || late || seen.bytes !== socket.bytesRead) this.lastRead.set(socket, { bytes: socket.bytesRead, since: now });
        else if (now - seen.since >= deadAfter) {
          const peer = peerOf(socket);
          const silentMs = Math.round(now - seen.since);

          // Its streams, while grpc-js still knows their peer (`ip:port`, see peerOf).
          const streams = [...this.streams].filter(([, call]) => call.getPeer() === peer).map(([st]) => st);
          const nodeIds = streams.map((st) => st.nodeId);
          // What it was sent and did not take: a proxy that stopped reading, not an idle one that vanished.
          const unwrittenBytes = streams.reduce((n, st) => n + st.unwrittenBytes, 0);
          this.silentCuts.inc({ streams: nodeIds.length > 0 ? 'open' : 'none' });
          this.opts.logger.info({ peer, silentMs, nodeIds, unwrittenBytes }, 'xDS connection cut: nothing read from it for the keepalive time and timeout');
          const untaken = unwrittenBytes > 0 ? `, ${humanBytes(unwrittenBytes)} sent to it not yet taken` : '';
          this.cut(socket, peer, `weft-cp cut its connection: nothing read from it for ${(silentMs / 1000).toFixed(1)} s (keepalive)${untaken}`);
        }
      }
    }
  }

  private lastReap = performance.now();

  /** Cuts a connection, remembering why for the status of the streams it carried (see cutReason). */
  private cut(socket: Socket, peer: string, reason: string): void {
    this.cutPeers.set(peer, { at: performance.now(), reason });
    socket.destroy();
  }

  /** Cuts the connection of `peer` (`ip:port`); false if it is not one of ours. */
  private cutConnection(peer: string, reason: string): boolean {
    for (const tracked of this.sockets) {
      for (const socket of tracked.keys()) {
        if (peerOf(socket) !== peer) continue;
        this.cut(socket, peer, reason);
        return true;
      }
    }
    return false;
  }

  /** Number of open streams. */
  get streamCount(): number {
    return this.streams.size;
  }

  /**
   * Stops accepting streams and ends the open ones with UNAVAILABLE, so proxies reconnect to
   * another replica at once instead of waiting out a timeout. Connections that have sent nothing
   * for a second since accept (a probe, a spare connection) are cut as they are found; the rest
   * get `shutdownGraceMs` to go. Once grpc-js's every session has closed, the connections still
   * open have none to finish (a TLS handshake begun and stalled, or a socket Node kept under a
   * destroyed session, see reapDead) and are cut then. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      for (const [stream, call] of this.streams) {
        endWith(call, new StreamError(GRPC_UNAVAILABLE, 'control plane is shutting down; reconnect to another replica'));
        stream.close();
      }
      this.streams.clear();
      const sweep = () => {
        for (const tracked of this.sockets) cutSilent(tracked);
      };
      const sweeper = setInterval(sweep, SHUTDOWN_SWEEP_MS);
      const timer = setTimeout(() => this.destroy(), this.opts.shutdownGraceMs ?? 5000);
      // Done when grpc-js's sessions have closed and the port's every connection too.
      const closed = this.listeners.map((l) => new Promise<void>((done) => l.close(() => done())));
      closed.push(
        new Promise<void>((done) =>
          this.server.tryShutdown(() => {
            for (const tracked of this.sockets) for (const socket of tracked.keys()) socket.destroy();
            done();
          }),
        ),
      );
      void Promise.all(closed).then(() => {
        clearInterval(this.reaper);
        clearInterval(sweeper);
        clearTimeout(timer);
        resolve();
      });
      sweep();
    });
    return this.closing;
  }

  /** Stops now. */
  destroy(): void {
    for (const s of this.streams.keys()) s.close('weft-cp stopped');
    this.streams.clear();
    for (const l of this.listeners) l.close();
    for (const tracked of this.sockets) for (const socket of tracked.keys()) socket.destroy();
    this.server.forceShutdown();
    clearInterval(this.reaper);
  }
}

/**
 * Authenticates proxies by their dataplane token (`authorization: Bearer <token>` metadata, as
 * kuma-dp sends it). With `allowUnauthenticatedLoopback`, a loopback peer that sends no token is
 * let in unauthenticated; a token that is sent is always checked.
 */
export function tokenAuthenticator(tokens: DataplaneTokens, opts: { allowUnauthenticatedLoopback: boolean }): Authenticator {
  return {
    async authenticate({ metadata, peer }) {
      const raw = metadata.get('authorization')[0];
      if (typeof raw !== 'string' || raw.trim() === '') {
        if (opts.allowUnauthenticatedLoopback) return loopbackOnlyAuthenticator.authenticate({ metadata, peer });
        throw new StreamError(GRPC_UNAUTHENTICATED, 'no dataplane token: send it as "authorization: Bearer <token>" metadata (weftctl generate dataplane-token)');
      }
      try {
        const id = await tokens.verify(raw.replace(/^Bearer\s+/i, '').trim());
        return id.name !== undefined ? { kind: 'dataplane', mesh: id.mesh, name: id.name } : { kind: 'dataplane-tags', mesh: id.mesh, tags: id.tags ?? {} };
      } catch (err) {
        if (isWeftError(err, 'unauthorized')) throw new StreamError(GRPC_UNAUTHENTICATED, err.message);
        throw err;
      }
    },
  };
}
