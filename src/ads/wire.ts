import protobuf from 'protobufjs';
import type { EncodedResource } from './cache.js';
import { grpcCodec, messageType } from './protos.js';

/**
 * Responses on the wire without re-encoding what every proxy shares. A resource's bytes are
 * encoded once (cache.ts); here its wrapper in a response (a delta `Resource` with name and
 * version, or a SotW `Any`) is encoded once too, as the length-delimited field 2 both response
 * types use for `resources`. A response is then its few per-stream fields (nonce, versions),
 * written by hand, followed by those chunks: protobuf fields may come in any order, and a
 * repeated field's elements may be split around others, so the result decodes to the same message.
 */

/** The resources a response object carries, already encoded; read by `responseSerializer`. */
export const PRE_ENCODED = Symbol('weft.preEncoded');

export interface PreEncoded {
  readonly [PRE_ENCODED]?: readonly EncodedResource[];
}

const deltaChunks = new WeakMap<EncodedResource, Uint8Array>();
const sotwChunks = new WeakMap<EncodedResource, Uint8Array>();

/** Field 2, wire type 2 (length-delimited), around `body`; in a buffer of its own, as it lives long (see cache.ts). */
function field2(body: Uint8Array): Uint8Array {
  return new Uint8Array(protobuf.Writer.create().uint32((2 << 3) | 2).bytes(body).finish());
}

function chunk(r: EncodedResource, delta: boolean): Uint8Array {
  const cache = delta ? deltaChunks : sotwChunks;
  let c = cache.get(r);
  if (!c) {
    const any = { type_url: r.typeUrl, value: r.bytes };
    const type = messageType(delta ? 'envoy.service.discovery.v3.Resource' : 'google.protobuf.Any');
    const body = type.encode(type.fromObject(delta ? { name: r.name, version: r.version, resource: any } : any)).finish();
    c = field2(body);
    cache.set(r, c);
  }
  return c;
}

/** The bytes a resource takes in a response: its wrapper (delta `Resource` or SotW `Any`) with its tag. */
export function wireBytes(r: EncodedResource, delta: boolean): number {
  return chunk(r, delta).length;
}

/**
 * A response carrying encoded resources. Its `resources` field (plain objects, for tests and logs)
 * is built only if read: the wire never needs it.
 */
class EncodedResponse<R> {
  readonly [PRE_ENCODED]: readonly EncodedResource[];
  #plain: (r: EncodedResource) => R;
  #built?: R[];

  constructor(head: object, encoded: readonly EncodedResource[], plain: (r: EncodedResource) => R) {
    Object.assign(this, head);
    this[PRE_ENCODED] = encoded;
    this.#plain = plain;
  }

  get resources(): R[] {
    return (this.#built ??= this[PRE_ENCODED].map(this.#plain));
  }
}

/** A response object (`T` without its resources) marked with the encoded resources it carries. */
export function withEncoded<T extends { resources: unknown[] }>(head: Omit<T, 'resources'>, resources: readonly EncodedResource[], plain: (r: EncodedResource) => T['resources'][number]): T & PreEncoded {
  return new EncodedResponse(head, resources, plain) as unknown as T & PreEncoded;
}

interface Head {
  version_info?: string;
  system_version_info?: string;
  type_url?: string;
  removed_resources?: string[];
  nonce?: string;
  control_plane?: { identifier?: string };
}

/** The per-stream fields of a response, by hand (field numbers from discovery.proto). */
function writeHead(obj: Head, delta: boolean): Uint8Array {
  const w = protobuf.Writer.create();
  const version = delta ? obj.system_version_info : obj.version_info;
  if (version) w.uint32((1 << 3) | 2).string(version);
  if (obj.type_url) w.uint32((4 << 3) | 2).string(obj.type_url);
  if (obj.nonce) w.uint32((5 << 3) | 2).string(obj.nonce);
  if (delta) for (const n of obj.removed_resources ?? []) w.uint32((6 << 3) | 2).string(n);
  if (obj.control_plane) {
    w.uint32(((delta ? 7 : 6) << 3) | 2).fork();
    if (obj.control_plane.identifier) w.uint32((1 << 3) | 2).string(obj.control_plane.identifier);
    w.ldelim();
  }
  return w.finish();
}

/**
 * A response's encoding as parts to be joined, for `typeName` (DiscoveryResponse or
 * DeltaDiscoveryResponse): objects marked by `withEncoded` are their head and the shared chunks
 * of their resources; others are encoded by protobufjs.
 */
export function responseParts(typeName: string): (obj: object) => Uint8Array[] {
  const type = messageType(typeName);
  const delta = typeName.endsWith('DeltaDiscoveryResponse');
  return (obj) => {
    const encoded = (obj as PreEncoded)[PRE_ENCODED];
    if (!encoded) return [type.encode(type.fromObject(obj)).finish()];
    const parts: Uint8Array[] = [writeHead(obj as Head, delta)];
    for (const r of encoded) parts.push(chunk(r, delta));
    return parts;
  };
}

/** A response serializer for `typeName`: `responseParts` joined. */
export function responseSerializer(typeName: string): (obj: object) => Buffer {
  const partsOf = responseParts(typeName);
  return (obj) => Buffer.concat(partsOf(obj));
}

/**
 * Bytes of name lists `requestDeserializer` remembers (their keys; the decoded lists take about as
 * much again). Proxies reaching the same services send the same list, so a mesh has few: 500
 * services' EDS names are about 5 KB, and 500 distinct lists of 10 names about 75 KB. The oldest go
 * first when a client sends more.
 */
const NAME_LISTS_KEPT_BYTES = 4 << 20;
/** A longer list is decoded each time. */
const NAME_LIST_MAX_BYTES = 1 << 20;
/** Shorter requests are decoded as they are. */
const NAME_LIST_MIN_BYTES = 256;

/**
 * A request deserializer for `typeName` that decodes its repeated string field `namesField` once per
 * distinct list. SotW clients repeat every name they subscribe in each ACK (Envoy's EDS: one per
 * cluster), and thousands of proxies send the same list: decoding those strings was a third of the
 * control plane's CPU in a SotW endpoint change with 2000 proxies naming 500 clusters' endpoints.
 * The field's bytes are the key instead; equal bytes give the very same frozen array, so a stream
 * can also tell an unchanged list by identity. Anything else in the message is decoded as usual;
 * a message whose field is split around others, or that does not parse, takes the plain path.
 */
export function requestDeserializer(typeName: string, namesField: string, versionsField?: string): (buf: Buffer) => Record<string, unknown> {
  const type = messageType(typeName);
  const field = type.fields[namesField];
  if (!field?.repeated || field.type !== 'string') throw new Error(`${typeName} has no repeated string field ${namesField}`);
  const id = field.id;
  const ok = scannable(type);
  const named = namesDeserializer(typeName, field, id, ok);
  if (versionsField === undefined) return named;
  const versions = type.fields[versionsField];
  if (!(versions instanceof protobuf.MapField) || versions.keyType !== 'string' || versions.type !== 'string') throw new Error(`${typeName} has no map<string, string> field ${versionsField}`);
  return versionsDeserializer(versions, named, ok);
}

/**
 * Whether a tag is read by these deserializers' scans as protobufjs reads it. protobufjs takes a
 * field it knows by number alone (a string field's tag with the varint wire type is still read as
 * a string), where a scan skips by wire type. Every field of the xDS requests is length-delimited,
 * so a known field's tag with another wire type is malformed; the scans then hand the message to
 * protobufjs whole, and garbage is read exactly as protobufjs reads it.
 */
function scannable(type: protobuf.Type): (tag: number) => boolean {
  // Per field number: 0 unknown, 1 length-delimited, 2 anything else (read as its type, not skipped).
  const max = Math.max(0, ...type.fieldsArray.map((f) => f.id));
  const kinds = new Uint8Array(max + 1);
  for (const f of type.fieldsArray) {
    f.resolve();
    kinds[f.id] = f.map || f.resolvedType instanceof protobuf.Type || f.type === 'string' || f.type === 'bytes' ? 1 : 2;
  }
  return (tag) => {
    const n = tag >>> 3;
    return n > max || kinds[n] === 0 || (kinds[n] === 1 && (tag & 7) === 2);
  };
}

/** Entries of a map field over this many bytes are read into a Map directly. */
const VERSION_MAP_MIN_BYTES = 1024;

/**
 * Reads a map<string, string> field (DeltaDiscoveryRequest's `initial_resource_versions`) straight
 * into a Map, and the rest of the message with `next`. A delta proxy back from a reconnect names
 * every resource it holds with its version (XDS-RULES 20): 2000 proxies coming back at once, each
 * naming about 2000, spent seconds of weft-cp's CPU in protobufjs decoding those entries into an
 * object and copying it into another. The stream takes the Map as it is (stream.ts `handleDelta`).
 * A message that does not parse this way takes `next` whole, which reports what is wrong.
 */
function versionsDeserializer(field: protobuf.Field, next: (buf: Buffer) => Record<string, unknown>, scannableTag: (tag: number) => boolean): (buf: Buffer) => Record<string, unknown> {
  const id = field.id;
  return (buf) => {
    if (buf.length < VERSION_MAP_MIN_BYTES) return next(buf);
    const versions = new Map<string, string>();
    const others: Buffer[] = [];
    try {
      const r = protobuf.Reader.create(buf);
      let from = 0;
      while (r.pos < r.len) {
        const at = r.pos;
        const tag = r.uint32();
        if (!scannableTag(tag)) return next(buf);
        if (tag >>> 3 !== id) {
          r.skipType(tag & 7);
          continue;
        }
        if (at > from) others.push(buf.subarray(from, at));
        const end = r.uint32() + r.pos;
        let key = '';
        let value = '';
        while (r.pos < end) {
          const t = r.uint32();
          if (t === 10) key = r.string();
          else if (t === 18) value = r.string();
          else return next(buf); // not an entry as protobuf writes one (see scannable)
        }
        if (r.pos !== end) return next(buf);
        versions.set(key, value);
        from = end;
      }
      if (from < buf.length) others.push(buf.subarray(from));
    } catch {
      return next(buf);
    }
    if (versions.size === 0) return next(buf);
    const rest = next(others.length === 1 ? others[0]! : Buffer.concat(others));
    rest[field.name] = versions;
    return rest;
  };
}

/** Where the last `varint32` ended. */
let varintEnd = 0;

/** A varint of at most 5 bytes (32 bits) at `pos`, its end in `varintEnd`; -1 if longer or cut short. */
function varint32(buf: Uint8Array, pos: number): number {
  const len = buf.length;
  if (pos >= len) return -1;
  let v = buf[pos++]!;
  if (v >= 0x80) {
    // More than one byte: a field over 15, or a length over 127.
    v &= 0x7f;
    for (let i = 1; ; i++) {
      if (i === 5 || pos >= len) return -1;
      const b = buf[pos++]!;
      v += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) break;
    }
    if (v > 0xffffffff) return -1;
  }
  varintEnd = pos;
  return v;
}

/**
 * Where the repeated field `id` lies in `buf`, as one run of entries `[start, end)`; undefined
 * when it is absent or split around other fields, or when the message is not one this scan reads
 * as protobufjs would (see `scannable`; a tag or length over 5 bytes, a group, a wire type that
 * does not exist, bytes cut short). The caller then decodes the message whole, which reads it, or
 * reports what is wrong with it, exactly as protobufjs does. A plain loop over the bytes: with
 * protobufjs's reader, this scan was most of the cost of reading an ACK naming 500 clusters.
 *
 * `known`: whole entries of the field seen before (the last list read). Where the run starts
 * with exactly those bytes, they are stepped over at once: bytes equal from an entry's start
 * parse the same. `same` says the run is exactly `known`.
 */
function fieldRun(buf: Buffer, id: number, scannableTag: (tag: number) => boolean, known?: Buffer): { start: number; end: number; same: boolean } | undefined {
  const len = buf.length;
  let pos = 0;
  let start = -1;
  let end = -1;
  let lastTag = -1;
  let same = false;
  while (pos < len) {
    const at = pos;
    if (start < 0 && known && buf[at] === known[0] && len - at >= known.length && buf.compare(known, 0, known.length, at, at + known.length) === 0) {
      start = at;
      pos = end = at + known.length;
      same = true;
      continue;
    }
    const tag = varint32(buf, pos);
    if (tag < 0) return undefined;
    pos = varintEnd;
    // Entries of one field repeat one tag: checked once per run.
    if (tag !== lastTag && !scannableTag(tag)) return undefined;
    lastTag = tag;
    const wire = tag & 7;
    if (wire === 2) {
      const n = varint32(buf, pos);
      if (n < 0) return undefined;
      pos = varintEnd + n;
    } else if (wire === 0) {
      // A varint of any length, as protobufjs skips it.
      do if (pos >= len) return undefined;
      while (buf[pos++]! & 0x80);
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else return undefined;
    if (pos > len) return undefined;
    if (tag >>> 3 !== id) continue;
    if (start >= 0 && at !== end) return undefined; // split around other fields
    if (start < 0) start = at;
    else same = false; // the run goes on past what is known
    end = pos;
  }
  return start < 0 ? undefined : { start, end, same };
}

function namesDeserializer(typeName: string, field: protobuf.Field, id: number, scannableTag: (tag: number) => boolean): (buf: Buffer) => Record<string, unknown> {
  const plain = grpcCodec(typeName).deserialize;
  const lists = new Map<string, readonly string[]>();
  let keptBytes = 0;
  /**
   * The list read last, by its bytes (a copy). Thousands of proxies ACK one after another naming
   * the same list: comparing bytes finds it without making a string of them to look up.
   */
  let last: { bytes: Buffer; names: readonly string[] } | undefined;
  return (buf) => {
    // An ACK without names, or with a few, decodes faster than it is parsed twice.
    if (buf.length < NAME_LIST_MIN_BYTES) return plain(buf);
    const run = fieldRun(buf, id, scannableTag, last?.bytes);
    if (!run || run.end - run.start > NAME_LIST_MAX_BYTES) return plain(buf);
    const { start, end } = run;
    let names: readonly string[] | undefined;
    if (run.same) names = last!.names;
    else {
      const key = buf.toString('latin1', start, end);
      names = lists.get(key);
      if (!names) {
        names = Object.freeze(plain(buf.subarray(start, end))[field.name] as string[]);
        for (const old of lists.keys()) {
          if (keptBytes + key.length <= NAME_LISTS_KEPT_BYTES) break;
          lists.delete(old);
          keptBytes -= old.length;
        }
        lists.set(key, names);
        keptBytes += key.length;
      }
      last = { bytes: Buffer.from(buf.subarray(start, end)), names };
    }
    const rest = start === 0 && end === buf.length ? {} : plain(Buffer.concat([buf.subarray(0, start), buf.subarray(end)]));
    rest[field.name] = names;
    return rest;
  };
}
