import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import protobuf from 'protobufjs';
import { messageType, TypeUrl } from '../../src/ads/index.js';
import { TO_OBJECT } from '../../src/ads/protos.js';
import { requestDeserializer } from '../../src/ads/wire.js';
import { seeded } from '../helpers/seeded.js';

const SOTW = 'envoy.service.discovery.v3.DiscoveryRequest';
const DELTA = 'envoy.service.discovery.v3.DeltaDiscoveryRequest';
const EDS = TypeUrl.ClusterLoadAssignment;

function encode(typeName: string, obj: Record<string, unknown>): Buffer {
  const type = messageType(typeName);
  return Buffer.from(type.encode(type.fromObject(obj)).finish());
}

function plain(typeName: string, buf: Buffer): Record<string, unknown> {
  const type = messageType(typeName);
  return type.toObject(type.decode(buf), TO_OBJECT);
}

const names = Array.from({ length: 500 }, (_, i) => `svc-${i}`);

describe('request deserializer: subscribed names decoded once per distinct list', () => {
  it('decodes every request exactly as protobufjs does', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    const requests = [
      { type_url: EDS, resource_names: names, version_info: 'v1', response_nonce: 'n-1' },
      { type_url: EDS, resource_names: names, node: { id: 'default.web-1', cluster: 'web', metadata: { fields: { a: { string_value: 'b' } } } }, error_detail: { code: 3, message: 'bad' } },
      { type_url: TypeUrl.Cluster },
      { resource_names: ['ünïcødé', 'a,b', '', '*'] },
      {},
    ];
    for (const req of requests) {
      const buf = encode(SOTW, req);
      assert.deepEqual(d(buf), plain(SOTW, buf), JSON.stringify(req).slice(0, 80));
    }
  });

  it('equal lists give the very same frozen array, a different list its own', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    const a = d(encode(SOTW, { type_url: EDS, resource_names: names, response_nonce: 'n-1', version_info: 'v1' }));
    const b = d(encode(SOTW, { type_url: EDS, resource_names: names, response_nonce: 'n-2', version_info: 'v2' }));
    const c = d(encode(SOTW, { type_url: EDS, resource_names: [...names, 'svc-new'] }));
    assert.equal(a.resource_names, b.resource_names, 'one array for the same names');
    assert.ok(Object.isFrozen(a.resource_names), 'shared, so nobody may change it');
    assert.equal(b.response_nonce, 'n-2', 'the rest of each message is its own');
    assert.notEqual(c.resource_names, a.resource_names);
    assert.deepEqual(c.resource_names, [...names, 'svc-new']);
  });

  it('a list read right after one it starts with: longer, split, or shorter, each read as protobufjs reads it', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    const first = d(encode(SOTW, { version_info: 'v1', resource_names: names, type_url: EDS, response_nonce: 'n-1' })).resource_names;
    assert.equal(d(encode(SOTW, { version_info: 'v2', resource_names: names, type_url: EDS, response_nonce: 'n-2' })).resource_names, first, 'the same list again: the same array');
    const longer = encode(SOTW, { version_info: 'v3', resource_names: [...names, 'svc-new'], type_url: EDS });
    assert.deepEqual(d(longer), plain(SOTW, longer));
    // The same names, then another field, then one more name: protobufjs reads all of them.
    const w = protobuf.Writer.create();
    for (const n of names) w.uint32((3 << 3) | 2).string(n);
    w.uint32((4 << 3) | 2).string(EDS);
    w.uint32((3 << 3) | 2).string('svc-late');
    const split = Buffer.from(w.finish());
    assert.equal(d(encode(SOTW, { resource_names: names })).resource_names, first, 'the list known again');
    assert.deepEqual(d(split), plain(SOTW, split));
    const shorter = encode(SOTW, { resource_names: names.slice(0, -1), type_url: EDS });
    assert.deepEqual(d(shorter), plain(SOTW, shorter));
    assert.equal(d(encode(SOTW, { resource_names: names, response_nonce: 'n-9' })).resource_names, first);
  });

  it('remembers a bounded amount: the oldest lists go first, and a list over 1 MiB is decoded each time', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    // About 1 MB each: four fit in what is kept (4 MiB), the fifth lets the first go.
    const big = (tag: string, count = 1000) => Array.from({ length: count }, (_, i) => `${tag}-${i}-`.padEnd(1000, 'x'));
    const read = (list: string[]) => d(encode(SOTW, { type_url: EDS, resource_names: list })).resource_names;
    const lists = ['a', 'b', 'c', 'd', 'e'].map((t) => big(t));
    const first = lists.map(read);
    assert.equal(read(lists[1]!), first[1], 'the second is still kept');
    assert.notEqual(read(lists[0]!), first[0], 'the first was let go');
    assert.equal(read(lists[4]!), first[4], 'the newest is kept');
    const huge = big('h', 1100);
    const [x, y] = [read(huge), read(huge)];
    assert.notEqual(x, y);
    assert.deepEqual(x, huge);
  });

  it('a list split around other fields is decoded whole, as protobufjs does', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    const [a, b] = ['a'.repeat(300), 'b'.repeat(300)]; // long enough for the names to be looked up at all
    const w = protobuf.Writer.create();
    w.uint32((3 << 3) | 2).string(a);
    w.uint32((4 << 3) | 2).string(EDS);
    w.uint32((3 << 3) | 2).string(b);
    const buf = Buffer.from(w.finish());
    assert.deepEqual(d(buf), { resource_names: [a, b], type_url: EDS });
    assert.deepEqual(d(buf), plain(SOTW, buf));
  });

  it('garbage gets what protobufjs makes of it (an error, or its lenient reading of a cut string), and a good request after it is still read right', () => {
    const d = requestDeserializer(SOTW, 'resource_names');
    const good = encode(SOTW, { type_url: EDS, resource_names: ['web'] });
    const outcome = (f: () => unknown) => {
      try {
        return { value: f() };
      } catch (err) {
        return { error: (err as Error).message };
      }
    };
    const garbage = [Buffer.from([0x1a, 0xff, 0xff, 0x01]), Buffer.from([0x1a, 0x05, 0x61]), good.subarray(0, good.length - 2), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Buffer.from([0x1a, 0x01, 0x61, 0x0f])];
    const outcomes = garbage.map((g) => outcome(() => d(g)));
    garbage.forEach((g, i) => assert.deepEqual(outcomes[i], outcome(() => plain(SOTW, g)), g.toString('hex')));
    assert.ok(outcomes.some((o) => 'error' in o), 'some of it is refused');
    assert.deepEqual(d(good), { type_url: EDS, resource_names: ['web'] });
  });

  it('delta: the subscribed names, the unsubscribed ones decoded as usual', () => {
    const d = requestDeserializer(DELTA, 'resource_names_subscribe');
    const req = { type_url: EDS, resource_names_subscribe: names, resource_names_unsubscribe: ['old'], initial_resource_versions: { 'svc-1': 'v1' } };
    const x = d(encode(DELTA, req));
    assert.deepEqual(x, plain(DELTA, encode(DELTA, req)));
    assert.equal(d(encode(DELTA, { ...req, response_nonce: 'n' })).resource_names_subscribe, x.resource_names_subscribe);
  });

  it('refuses a field that is not a repeated string', () => {
    assert.throws(() => requestDeserializer(SOTW, 'type_url'), /no repeated string field type_url/);
    assert.throws(() => requestDeserializer(DELTA, 'resource_names_subscribe', 'type_url'), /no map<string, string> field type_url/);
  });
});

describe("request deserializer: a delta proxy's initial_resource_versions read into a Map", () => {
  const d = requestDeserializer(DELTA, 'resource_names_subscribe', 'initial_resource_versions');
  const held = Object.fromEntries(names.map((n, i) => [n, `v${i}-${'h'.repeat(20)}`]));
  /** protobufjs's reading, with the map as a Map, as the deserializer gives it. */
  const expected = (buf: Buffer) => {
    const o = plain(DELTA, buf);
    return { ...o, initial_resource_versions: new Map(Object.entries((o.initial_resource_versions as Record<string, string>) ?? {})) };
  };

  it('reads every field as protobufjs does, the versions into a Map', () => {
    const requests = [
      { type_url: EDS, initial_resource_versions: held, resource_names_subscribe: names, node: { id: 'default.web-1' } },
      { type_url: TypeUrl.Cluster, initial_resource_versions: held, response_nonce: 'n-1', error_detail: { code: 3, message: 'bad' } },
      { initial_resource_versions: { ...held, 'ünïcødé': 'ü', '': '' } },
    ];
    for (const req of requests) {
      const buf = encode(DELTA, req);
      assert.ok(buf.length >= 1024);
      const x = d(buf);
      assert.ok(x.initial_resource_versions instanceof Map);
      assert.deepEqual(x, expected(buf), JSON.stringify(req).slice(0, 80));
    }
  });

  it('entries between other fields, and an entry named twice (the last counts), as protobufjs reads them', () => {
    const entry = (k: string, v: string) => encode(DELTA, { initial_resource_versions: { [k]: v } });
    const buf = Buffer.concat([
      encode(DELTA, { type_url: EDS }),
      ...names.slice(0, 60).map((n) => entry(n, 'v1-aaaaaaaaaaaaaaaaaaaa')),
      encode(DELTA, { resource_names_subscribe: ['a', 'b'] }),
      entry('svc-0', 'v2'),
      encode(DELTA, { response_nonce: 'n' }),
    ]);
    const x = d(buf);
    assert.deepEqual(x, expected(buf));
    assert.equal((x.initial_resource_versions as Map<string, string>).get('svc-0'), 'v2');
  });

  it('small requests are read as protobufjs reads them; garbage as protobufjs makes of it', () => {
    const small = encode(DELTA, { type_url: EDS, initial_resource_versions: { web: 'v1' } });
    assert.deepEqual(d(small), plain(DELTA, small));
    const good = encode(DELTA, { type_url: EDS, initial_resource_versions: held });
    const outcome = (f: () => unknown) => {
      try {
        return { value: f() };
      } catch (err) {
        return { error: (err as Error).message };
      }
    };
    // Cut inside an entry, and an entry whose length runs past the message.
    for (const g of [good.subarray(0, good.length - 7), Buffer.concat([good, Buffer.from([0x2a, 0x7f, 0x0a, 0x01, 0x61])])]) {
      const mine = outcome(() => d(g));
      const theirs = outcome(() => plain(DELTA, g));
      assert.deepEqual('error' in mine, 'error' in theirs, g.subarray(-8).toString('hex'));
    }
  });
});

describe('request deserializers: mutated requests read exactly as protobufjs reads them', () => {
  // A seeded history of damage done to good requests: bytes changed, cut, inserted, dropped or
  // spliced in from elsewhere, and fields of any number (the request's own, or unknown) with any
  // wire type put between two halves of one. Whatever protobufjs makes of each, value or error,
  // the deserializers must make the same: they read most requests without protobufjs, and a
  // scan that skips a field by its wire type, where protobufjs reads it by number, would read the
  // rest of the message differently. WEFT_WIRE_FUZZ_SEED and WEFT_WIRE_FUZZ_CASES run others.
  const cases = Number(process.env.WEFT_WIRE_FUZZ_CASES ?? 6000);
  const seed = Number(process.env.WEFT_WIRE_FUZZ_SEED ?? 1);
  const few = names.slice(0, 60);
  const held = Object.fromEntries(few.map((n, i) => [n, `v${i}-${'h'.repeat(20)}`]));
  const requests: [string, Record<string, unknown>][] = [
    [SOTW, { type_url: EDS, resource_names: few, version_info: 'v1', response_nonce: 'n-1', node: { id: 'default.web-1' } }],
    [DELTA, { type_url: EDS, resource_names_subscribe: few, initial_resource_versions: held, response_nonce: 'n', node: { id: 'x' } }],
    [DELTA, { type_url: TypeUrl.Cluster, resource_names_unsubscribe: few, resource_names_subscribe: few.slice(3), initial_resource_versions: held }],
  ];
  const deserializers: Record<string, (b: Buffer) => Record<string, unknown>> = {
    [SOTW]: requestDeserializer(SOTW, 'resource_names'),
    [DELTA]: requestDeserializer(DELTA, 'resource_names_subscribe', 'initial_resource_versions'),
  };
  /** A value as JSON (the versions Map as an object, as protobufjs gives them), or that it failed. */
  const outcome = (f: () => Record<string, unknown>) => {
    try {
      const v = { ...f() };
      if (v.initial_resource_versions instanceof Map) v.initial_resource_versions = Object.fromEntries(v.initial_resource_versions);
      return { value: JSON.parse(JSON.stringify(v)) as unknown };
    } catch {
      return { error: true };
    }
  };
  const varint = (v: number): number[] => {
    const out: number[] = [];
    for (; v > 127; v >>>= 7) out.push((v & 127) | 128);
    out.push(v);
    return out;
  };

  it(`${cases} cases, seed ${seed}`, () => {
    const rnd = seeded(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    let refused = 0;
    for (let i = 0; i < cases; i++) {
      const [typeName, req] = pick(requests);
      let buf = encode(typeName, req);
      if (rnd() < 0.5) {
        const field: number[] = varint((pick([1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 99]) << 3) | pick([0, 1, 2, 3, 5]));
        const wireType = field[field.length - 1]! & 7;
        if (wireType === 0) field.push(...varint(Math.floor(rnd() * 300)));
        if (wireType === 1 || wireType === 5) for (let j = wireType === 1 ? 8 : 4; j > 0; j--) field.push(Math.floor(rnd() * 256));
        if (wireType === 2) {
          const len = Math.floor(rnd() * 12);
          field.push(...varint(len));
          for (let j = 0; j < len; j++) field.push(rnd() < 0.5 ? 0x0a : Math.floor(rnd() * 256));
        }
        if (wireType === 3) field.push(0x0c); // a group, ended at once
        const keys = Object.keys(req);
        const cut = Math.floor(rnd() * (keys.length + 1));
        buf = Buffer.concat([encode(typeName, Object.fromEntries(keys.slice(0, cut).map((k) => [k, req[k]]))), Buffer.from(field), encode(typeName, Object.fromEntries(keys.slice(cut).map((k) => [k, req[k]])))]);
      }
      for (let k = rnd() < 0.5 ? 0 : 1 + Math.floor(rnd() * 4); k > 0; k--) {
        const op = rnd();
        const at = Math.floor(rnd() * buf.length);
        if (op < 0.4) buf[at] = Math.floor(rnd() * 256);
        else if (op < 0.55) buf = buf.subarray(0, at);
        else if (op < 0.7) buf = Buffer.concat([buf.subarray(0, at), Buffer.from([Math.floor(rnd() * 256)]), buf.subarray(at)]);
        else if (op < 0.85) buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + Math.floor(rnd() * 5))]);
        else {
          const other = encode(typeName, req);
          const from = Math.floor(rnd() * other.length);
          buf = Buffer.concat([buf.subarray(0, at), other.subarray(from, from + Math.floor(rnd() * 50)), buf.subarray(at)]);
        }
      }
      buf = Buffer.from(buf); // the deserializers get a buffer of their own, as from gRPC
      const expected = outcome(() => plain(typeName, buf));
      if ('error' in expected) refused++;
      assert.deepEqual(outcome(() => deserializers[typeName]!(buf)), expected, `case ${i}: ${buf.toString('hex')}`);
    }
    // The damage is both kinds: some still reads as a request, some is refused.
    assert.ok(refused > cases / 10 && refused < cases * 0.9, `${refused} of ${cases} refused`);
  });
});
