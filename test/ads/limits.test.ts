import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { XdsTestClient, type Received } from '../../src/ads/test-client.js';
import { TypeUrl } from '../../src/ads/index.js';
import { DELTA_MOST_BYTES, GRPC_DEFAULT_RECEIVE_BYTES } from '../../src/ads/stream.js';
import { collectingLogger } from '../helpers/log-lines.js';
import { cluster, meshSet, startTestAds } from '../helpers/xds-fixtures.js';

const { Cluster: CDS, ClusterLoadAssignment: EDS } = TypeUrl;
const MiB = 1024 * 1024;

/** `n` clusters of about `bytes` each (their metadata padded), with empty endpoint lists. */
function paddedClusters(n: number, bytes: number, tag = 'big') {
  const names = Array.from({ length: n }, (_, i) => `${tag}-${i}`);
  return {
    [CDS]: names.map((name) => cluster(name, { metadata: { filter_metadata: { 'weft.test': { fields: { pad: { stringValue: name.padEnd(bytes, '.') } } } } } })),
    [EDS]: names.map((name) => ({ cluster_name: name, endpoints: [] })),
  };
}

/** An ADS server whose warnings are kept in `warnings`. */
async function serverWithLog(t: TestContext) {
  const { logger, lines: warnings } = collectingLogger('warn');
  const ads = await startTestAds({ logger });
  t.after(() => ads.stop());
  const oversized = async (type: string, variant: string) => Number(new RegExp(`^weft_xds_oversized_responses_total\\{type="${type}",variant="${variant}"\\} (\\S+)`, 'm').exec(await ads.metrics.metrics())?.[1] ?? 0);
  return { ads, warnings, oversized };
}

function client(t: TestContext, address: string, variant: 'sotw' | 'delta', id: string, maxReceiveBytes?: number): XdsTestClient {
  const c = new XdsTestClient(address, variant, { id }, { maxReceiveBytes, ownConnection: true });
  t.after(() => c.close());
  return c;
}

/** How the stream ended, or a failure if it is still open after 10 s. */
async function ending(c: XdsTestClient): Promise<{ code: number; details: string }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('the stream is still open after 10 s')), 10_000)));
  return Promise.race([c.closed, late]).finally(() => clearTimeout(timer));
}

/** The next response, or a failure naming the status if the stream ends first. */
async function nextOrClosed(c: XdsTestClient, typeUrl: string): Promise<Received> {
  return Promise.race([c.next(typeUrl, 10_000), c.closed.then((s) => assert.fail(`stream ended: ${s.code} ${s.details}`))]);
}

describe('ADS message size limits', () => {
  it('rule 24: a request over 4 MiB ends its own stream with RESOURCE_EXHAUSTED; other streams go on', async (t) => {
    const { ads } = await serverWithLog(t);
    ads.cache.set('default.a', meshSet({ web: [['10.0.0.1', 80]] }));
    ads.cache.set('default.b', meshSet({ web: [['10.0.0.1', 80]] }));
    const good = client(t, ads.address, 'sotw', 'default.a');
    good.request(CDS);
    good.ack(await good.next(CDS));
    const bad = client(t, ads.address, 'sotw', 'default.b');
    const names = Array.from({ length: 50_000 }, (_, i) => `svc-${i}`.padEnd(100, '-'));
    bad.request(EDS, names);
    const status = await ending(bad);
    assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED, status.details);
    for (let i = 0; i < 50 && ads.server.streamCount !== 1; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(ads.server.streamCount, 1, 'the refused stream is gone from the server');
    ads.cache.set('default.a', meshSet({ web: [['10.0.0.1', 80]], api: [['10.0.0.2', 80]] }));
    assert.equal((await nextOrClosed(good, CDS)).resources.length, 2);
  });

  it('rule 24: a delta set over 4 MiB comes in pieces of at most 1 MiB, which a gRPC client takes with its default limit', async (t) => {
    const { ads, warnings, oversized } = await serverWithLog(t);
    ads.cache.set('default.big', paddedClusters(50, 100_000));
    const c = client(t, ads.address, 'delta', 'default.big');
    c.delta({ type_url: CDS });
    const got: Received[] = [];
    for (let n = 0; n < 50; ) {
      const r = await nextOrClosed(c, CDS);
      got.push(r);
      n += r.resources.length;
      c.ack(r);
    }
    assert.equal(got.flatMap((r) => r.resources).length, 50);
    // 100 KB each: at most ten to a piece of 1 MiB.
    assert.ok(got.length >= 5 && got.every((r) => r.resources.length <= Math.floor(DELTA_MOST_BYTES / 100_000)), `${got.map((r) => r.resources.length)}`);
    assert.equal(await oversized('CDS', 'delta'), 0);
    assert.deepEqual(warnings, []);
  });

  it('rule 24: a delta resource over 4 MiB cannot be cut: it is counted, shown in the status and logged', async (t) => {
    const { ads, warnings, oversized } = await serverWithLog(t);
    ads.cache.set('default.huge', paddedClusters(1, 5 * MiB));
    const c = client(t, ads.address, 'delta', 'default.huge');
    c.delta({ type_url: CDS });
    assert.equal((await ending(c)).code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(await oversized('CDS', 'delta'), 1);
    assert.ok(ads.server.status.get('default.huge')!.types.CDS!.lastOversized!.bytes > 5 * MiB);
    assert.deepEqual(
      warnings.map((w) => [w.nodeId, w.type, w.variant]),
      [['default.huge', 'CDS', 'delta']],
    );
  });

  it('rule 24: a SotW response over 4 MiB is sent, counted, shown in the status and logged once per stream and type; a gRPC client with its default limit refuses it', async (t) => {
    const { ads, warnings, oversized } = await serverWithLog(t);
    ads.cache.set('default.sotw', paddedClusters(50, 100_000));
    // gRPC's default receive limit, as a proxyless app keeps it.
    const limited = client(t, ads.address, 'sotw', 'default.sotw');
    limited.request(CDS);
    const status = await ending(limited);
    assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED, status.details);
    // Envoy takes any size by default: the response is sent whole, as SotW requires (rule 14).
    const envoyLike = client(t, ads.address, 'sotw', 'default.sotw', 64 * MiB);
    envoyLike.request(CDS);
    const first = await nextOrClosed(envoyLike, CDS);
    assert.equal(first.resources.length, 50);
    envoyLike.ack(first);
    ads.cache.set('default.sotw', paddedClusters(50, 100_000, 'next'));
    assert.equal((await nextOrClosed(envoyLike, CDS)).resources[0]!.name, 'next-0');
    assert.equal(await oversized('CDS', 'sotw'), 3);
    const shown = ads.server.status.get('default.sotw')!.types.CDS!.lastOversized!;
    assert.ok(shown.bytes > GRPC_DEFAULT_RECEIVE_BYTES && shown.bytes < 6 * MiB, `${shown.bytes}`);
    assert.deepEqual(
      warnings.map((w) => [w.nodeId, w.type, w.variant]),
      [
        ['default.sotw', 'CDS', 'sotw'],
        ['default.sotw', 'CDS', 'sotw'],
      ],
      'one warning for each stream, not for each response',
    );
    assert.match(String(warnings[0]!.msg), /4 MiB.*[Dd]elta/);
  });
});
