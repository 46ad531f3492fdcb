import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import protobuf from 'protobufjs';
import { messageType, TypeUrl } from '../../src/ads/index.js';
import { TO_OBJECT } from '../../src/ads/protos.js';
import { requestDeserializer } from '../../src/ads/wire.js';

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
