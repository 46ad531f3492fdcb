export { AdsServer, connectionOptions, PING_ANSWER_WAIT_MS, loopbackOnlyAuthenticator, refuseAllAuthenticator, tokenAuthenticator, isLoopbackPeer, type Authenticator, type AdsServerOptions } from './server.js';
export { SnapshotCache, ResourceEncoder, buildSnapshot, InconsistentSnapshotError, referencesOf, type ResourceSet, type Snapshot, type EncodedResource } from './cache.js';
export { TypeUrl, RESPONSE_ORDER, SHORT_NAME, envoyProtos, messageType, grpcCodec, streamingMethod } from './protos.js';
export { checkResource, fromProto3Json, type ProtoViolation } from './proto-check.js';
export { XdsStatus, type ProxyStatus, type TypeStatus } from './status.js';
export { AdsStream, StreamError, type Identity, type Variant, type StreamHooks } from './stream.js';
export { Reconciler, type ReconcilerOptions } from './reconciler.js';
export { DataplaneService, dpServiceDefinition, jsonCodec, DP_SERVICE, EPHEMERAL_LABEL, type BootstrapRequest, type BootstrapResponse } from './dp-service.js';
export { warmUp, DEFAULT_ROUNDS as WARM_UP_ROUNDS, type WarmUpOptions, type WarmUpResult } from './warmup.js';
