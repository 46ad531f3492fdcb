/**
 * How much of each response the bench's simulated proxies decode (`WEFT_BENCH_DECODE`), to tell
 * the control plane's share of a change's time from the clients' on the same 2 cores:
 *
 * - `objects` (the default, every figure in bench/README.md): the response and each resource
 *   decoded, then converted to plain objects, as `XdsTestClient` does.
 * - `messages`: the response and each resource decoded into protobufjs messages and no further,
 *   as Envoy decodes each resource into its C++ message.
 * - `names`: a floor, not a proxy. The response is decoded, but of each resource only its top-level
 *   fields are read, and only its name (and a Cluster's discovery type) kept; ClusterLoadAssignments
 *   and the listener `WEFT_BENCH_DECODE_LISTENER` names (the one a Mesh change is watched on) are
 *   decoded as `messages`, since the bench reads their bodies. What no client can do with less.
 */
import protobuf from 'protobufjs';
import { TypeUrl } from '../src/ads/index.js';
import { messageType } from '../src/ads/protos.js';
import { toReceived, type Received } from '../src/ads/test-client.js';

export type DecodeMode = 'objects' | 'messages' | 'names';

export function decodeMode(): DecodeMode {
  const m = process.env.WEFT_BENCH_DECODE ?? 'objects';
  if (m !== 'objects' && m !== 'messages' && m !== 'names') throw new Error(`WEFT_BENCH_DECODE must be objects, messages or names, not ${m}`);
  return m;
}

/** Cluster.DiscoveryType by number, as `objects` gives it. */
const CLUSTER_TYPES = ['STATIC', 'STRICT_DNS', 'LOGICAL_DNS', 'EDS', 'ORIGINAL_DST'];
const WATCHED_LISTENER = process.env.WEFT_BENCH_DECODE_LISTENER ?? 'outbound:passthrough:ipv4';

/** A resource's name (field 1 of Listener, Cluster and ClusterLoadAssignment) and, for a Cluster, `type` (field 2). */
function shallow(typeUrl: string, bytes: Uint8Array): { name: string; body: Record<string, unknown> } {
  const r = protobuf.Reader.create(bytes);
  let name = '';
  const body: Record<string, unknown> = {};
  while (r.pos < r.len) {
    const tag = r.uint32();
    const field = tag >>> 3;
    if (field === 1 && (tag & 7) === 2) name = r.string();
    else if (field === 2 && (tag & 7) === 0 && typeUrl === TypeUrl.Cluster) body.type = CLUSTER_TYPES[r.int32()] ?? 'unknown';
    else r.skipType(tag & 7);
  }
  body.name = name;
  return { name, body };
}

type AnyMsg = { type_url: string; value: Uint8Array };

function resourceOf(mode: DecodeMode, any: AnyMsg, knownName?: string): { name: string; body: Record<string, unknown> } {
  if (mode === 'names' && any.type_url !== TypeUrl.ClusterLoadAssignment) {
    const s = shallow(any.type_url, any.value);
    if (!(any.type_url === TypeUrl.Listener && s.name === WATCHED_LISTENER)) return s;
  }
  const body = messageType(any.type_url).decode(any.value) as unknown as Record<string, unknown>;
  if (any.type_url === TypeUrl.Cluster && typeof body.type === 'number') body.type = CLUSTER_TYPES[body.type] ?? 'unknown';
  return { name: knownName ?? String(body.name ?? body.cluster_name), body };
}

/** A (Delta)DiscoveryResponse's bytes as a `Received`, decoded as far as `mode` says. */
export function decodeResponse(mode: DecodeMode, type: protobuf.Type, toObject: (buf: Buffer) => Record<string, unknown>, msg: Buffer, sotw: boolean): Received {
  if (mode === 'objects') return toReceived(toObject(msg), sotw);
  const raw = type.decode(msg) as unknown as Record<string, unknown>;
  const list = (raw.resources as Record<string, unknown>[] | undefined) ?? [];
  return {
    typeUrl: String(raw.type_url),
    nonce: String(raw.nonce),
    version: String(sotw ? raw.version_info : raw.system_version_info),
    resources: list.map((x) => (sotw ? resourceOf(mode, x as unknown as AnyMsg) : { ...resourceOf(mode, x.resource as AnyMsg, String(x.name)), version: String(x.version) })),
    removed: (raw.removed_resources as string[] | undefined) ?? [],
    raw,
  };
}
