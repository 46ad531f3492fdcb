import protobuf from 'protobufjs';
import type { EncodedResource } from './cache.js';
import { messageType } from './protos.js';

/**
 * Responses on the wire without re-encoding what every proxy shares. A resource's bytes are
 * encoded once (cache.ts); here its wrapper in a response (a delta `Resource` with name and
 * version, or a SotW `Any`) is encoded once too, as the length-delimited field 2 both response
 * types use for `resources`. A response is then its few per-stream fields (nonce, versions),
 * encoded by protobufjs, followed by those chunks: protobuf fields may come in any order, and a
 * repeated field's elements may be split around others, so the result decodes to the same message.
 */

/** The resources a response object carries, already encoded; read by `serializeResponse`. */
export const PRE_ENCODED = Symbol('weft.preEncoded');

export interface PreEncoded {
  readonly [PRE_ENCODED]?: readonly EncodedResource[];
}

const deltaChunks = new WeakMap<EncodedResource, Uint8Array>();
const sotwChunks = new WeakMap<EncodedResource, Uint8Array>();

/** Field 2, wire type 2 (length-delimited), around `body`. */
function field2(body: Uint8Array): Uint8Array {
  return protobuf.Writer.create().uint32((2 << 3) | 2).bytes(body).finish();
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

/** Marks a response object with the encoded resources it carries (its `resources` field, in order). */
export function withEncoded<T extends object>(response: T, resources: readonly EncodedResource[]): T & PreEncoded {
  Object.defineProperty(response, PRE_ENCODED, { value: resources, enumerable: false });
  return response as T & PreEncoded;
}

/**
 * A response serializer for `typeName` (DiscoveryResponse or DeltaDiscoveryResponse): objects
 * marked by `withEncoded` are spliced from shared chunks; others are encoded by protobufjs.
 */
export function responseSerializer(typeName: string): (obj: object) => Buffer {
  const type = messageType(typeName);
  const delta = typeName.endsWith('DeltaDiscoveryResponse');
  return (obj) => {
    const encoded = (obj as PreEncoded)[PRE_ENCODED];
    if (!encoded) return Buffer.from(type.encode(type.fromObject(obj)).finish());
    const head = type.encode(type.fromObject({ ...obj, resources: [] })).finish();
    const parts: Uint8Array[] = [head];
    let length = head.length;
    for (const r of encoded) {
      const c = chunk(r, delta);
      parts.push(c);
      length += c.length;
    }
    return Buffer.concat(parts, length);
  };
}
