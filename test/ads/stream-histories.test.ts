import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AdsStream, SnapshotCache, TypeUrl, type ResourceSet, type Variant } from '../../src/ads/index.js';
import { SendBudget } from '../../src/ads/budget.js';
import type { EncodedResource } from '../../src/ads/cache.js';
import type { DeltaDiscoveryResponse, DiscoveryResponse } from '../../src/ads/stream.js';
import { PRE_ENCODED, type PreEncoded } from '../../src/ads/wire.js';
import { cla, cluster, listener, route } from '../helpers/xds-fixtures.js';
import { seeded } from '../helpers/seeded.js';

/**
 * One stream, driven by hand through seeded random histories, thousands a second: the config
 * changes, the proxy drops names from its subscriptions and asks for them again, rejects
 * responses, and reads what was sent only when the transport gets to it, while a send budget of
 * a few hundred bytes keeps the stream waiting and NACK backoffs hold types (and, by rule 8,
 * routes and listeners behind clusters). The proxy forgets what it unsubscribes, as Envoy and
 * grpc-js-xds do. At the end it accepts everything, time passes, and it must hold exactly the
 * config: every listener and cluster, and of the endpoints and routes it asks for, each one the
 * config has, at its version (delta: and nothing the config lacks). The model test
 * (model.test.ts) does this over gRPC with the whole control plane; this one reaches the stream's
 * corners (held types, budget waits, subscription churn) far more often.
 * WEFT_STREAM_HISTORY_SEED and WEFT_STREAM_HISTORY_RUNS run others.
 */

const { Cluster: CDS, ClusterLoadAssignment: EDS, Listener: LDS, RouteConfiguration: RDS } = TypeUrl;
const WILDCARD = [CDS, LDS] as const;
const NAMED = [EDS, RDS] as const;
const CLUSTERS = ['a', 'b', 'c', 'd'];
const ROUTES = ['r-1', 'r-2', 'r-3'];
const NODE = 'default.proxy';

function randomConfig(rnd: () => number): ResourceSet {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const clusters = CLUSTERS.filter(() => rnd() < 0.7);
  if (clusters.length === 0) clusters.push(pick(CLUSTERS));
  const routes = ROUTES.filter(() => rnd() < 0.7);
  return {
    [CDS]: clusters.map((c) => cluster(c, { connect_timeout: { seconds: pick([5, 6]) } })),
    [EDS]: clusters.map((c) => cla(c, [[`10.0.0.${1 + Math.floor(rnd() * 3)}`, 80]])),
    [LDS]: routes.map((r, i) => listener(`l-${r}`, 8080 + i, r)),
    [RDS]: routes.map((r) => route(r, pick(clusters))),
  };
}

type Response = (DiscoveryResponse | DeltaDiscoveryResponse) & PreEncoded;

const short = (t: string) => t.split('.').pop()!;

function show(r: Response): string {
  const removed = (r as DeltaDiscoveryResponse).removed_resources ?? [];
  return `${short(r.type_url)} ${r.nonce}: [${(r[PRE_ENCODED] ?? []).map((e) => `${e.name}@${e.version.slice(0, 4)}`).join(' ')}]${removed.length ? ` removed [${removed.join(' ')}]` : ''}`;
}

/** The proxy's side: what it holds and asks for, and the responses on their way to it. */
class Proxy {
  readonly held = new Map<string, Map<string, string>>([...WILDCARD, ...NAMED].map((t) => [t, new Map()]));
  readonly subscribed = new Map<string, Set<string>>();
  /** Sent and not yet written by the transport (each holds its bytes of the budget). */
  readonly wire: { r: Response; bytes: number }[] = [];
  /** Written, not yet read. */
  readonly inbox: Response[] = [];
  private readonly acked = new Map<string, string>();
  private readonly lastNonce = new Map<string, string>();
  readonly stream: AdsStream;
  /** What happened, for a failure's report. */
  readonly trace: string[] = [];

  constructor(
    readonly variant: Variant,
    cache: SnapshotCache,
    readonly budget: SendBudget,
    clock: () => number,
  ) {
    const hooks = { onConnect() {}, onDisconnect() {}, onResponse() {}, onAck() {}, onNack() {}, onIgnored() {}, onOversized() {} };
    this.stream = new AdsStream({
      variant,
      cache,
      identity: { kind: 'unauthenticated' },
      controlPlaneId: 'test',
      nackBackoffMs: 1000,
      nackBackoffMaxMs: 4000,
      hooks,
      budget,
      now: clock,
      send: (r, bytes) => {
        budget.charge(bytes);
        this.wire.push({ r: r as Response, bytes });
        this.trace.push(`  sent ${show(r as Response)}`);
      },
    });
  }

  private names(t: string): string[] {
    return [...(this.subscribed.get(t) ?? [])];
  }

  /** A SotW request of type `t` as the proxy sends it: what it asks for, what it accepted, the last nonce it saw. */
  private sotw(t: string, extra: Record<string, unknown> = {}): void {
    const named = (NAMED as readonly string[]).includes(t);
    this.stream.handle({ type_url: t, resource_names: named ? this.names(t) : [], version_info: this.acked.get(t) ?? '', response_nonce: this.lastNonce.get(t) ?? '', ...extra });
  }

  start(rnd: () => number): void {
    for (const t of NAMED) this.subscribed.set(t, new Set((t === EDS ? CLUSTERS : ROUTES).filter((n, i) => i === 0 || rnd() < 0.6)));
    for (const t of [...WILDCARD, ...NAMED]) {
      const node = t === CDS ? { node: { id: NODE } } : {};
      if (this.variant === 'sotw') this.stream.handle({ ...node, type_url: t, resource_names: this.names(t) });
      else this.stream.handle({ ...node, type_url: t, ...(this.subscribed.has(t) ? { resource_names_subscribe: this.names(t) } : {}) });
    }
  }

  /** Drops a name from a subscription (and forgets the resource at once), or asks for one again. */
  toggle(t: string, name: string): void {
    const sub = this.subscribed.get(t)!;
    const drop = sub.has(name);
    if (drop) {
      sub.delete(name);
      this.held.get(t)!.delete(name);
    } else sub.add(name);
    if (this.variant === 'sotw') this.sotw(t);
    else this.stream.handle({ type_url: t, ...(drop ? { resource_names_unsubscribe: [name] } : { resource_names_subscribe: [name] }) });
  }

  /** The transport writes the oldest response out: its budget comes back, and it reaches the proxy. */
  write(): void {
    const w = this.wire.shift();
    if (!w) return;
    this.inbox.push(w.r);
    this.budget.refund(w.bytes);
  }

  /** Reads the oldest response: takes it and ACKs, or rejects it whole. */
  read(reject: boolean): void {
    const r = this.inbox.shift();
    if (!r) return;
    this.trace.push(`${reject ? 'reject' : 'accept'} ${r.nonce}`);
    const t = r.type_url;
    this.lastNonce.set(t, r.nonce);
    if (reject) {
      if (this.variant === 'sotw') this.sotw(t, { error_detail: { code: 3, message: 'rejected' } });
      else this.stream.handle({ type_url: t, response_nonce: r.nonce, error_detail: { code: 3, message: 'rejected' } });
      return;
    }
    const held = this.held.get(t)!;
    const got: readonly EncodedResource[] = r[PRE_ENCODED] ?? [];
    const wildcard = (WILDCARD as readonly string[]).includes(t);
    if (this.variant === 'sotw') {
      // LDS and CDS carry the whole set; EDS and RDS what changed (rule 14).
      if (wildcard) held.clear();
      for (const e of got) if (wildcard || this.subscribed.get(t)!.has(e.name)) held.set(e.name, e.version);
      this.acked.set(t, (r as DiscoveryResponse).version_info);
      this.sotw(t);
    } else {
      for (const e of got) if (wildcard || this.subscribed.get(t)!.has(e.name)) held.set(e.name, e.version);
      for (const n of (r as DeltaDiscoveryResponse).removed_resources ?? []) held.delete(n);
      this.stream.handle({ type_url: t, response_nonce: r.nonce });
    }
  }

  /** Any request makes the stream look at what it has to send (after time passed, a backoff's end). */
  poke(): void {
    this.stream.handle({ type_url: CDS, response_nonce: 'stale' });
  }
}

function runHistory(variant: Variant, seed: number): void {
  const rnd = seeded(seed);
  let now = 1_000_000;
  const cache = new SnapshotCache();
  const config = () => {
    const s = cache.set(NODE, randomConfig(rnd)).snapshot;
    trace.push(`config: ${[...WILDCARD, ...NAMED].map((t) => `${short(t)} [${[...(s.resources.get(t)?.values() ?? [])].map((e) => `${e.name}@${e.version.slice(0, 4)}`).join(' ')}]`).join(', ')}`);
  };
  // A few hundred bytes: most responses leave the budget spent, so the stream often waits.
  const proxy = new Proxy(variant, cache, new SendBudget(300), () => now);
  const trace = proxy.trace;
  config();
  try {
    proxy.start(rnd);
    for (let step = 0; step < 80; step++) {
      const r = rnd();
      if (r < 0.12) config();
      else if (r < 0.32) {
        const t = NAMED[Math.floor(rnd() * NAMED.length)]!;
        const name = (t === EDS ? CLUSTERS : ROUTES)[Math.floor(rnd() * (t === EDS ? CLUSTERS : ROUTES).length)]!;
        trace.push(`toggle ${short(t)} ${name}`);
        proxy.toggle(t, name);
      } else if (r < 0.55) {
        trace.push('write');
        proxy.write();
      } else if (r < 0.85) {
        proxy.read(rnd() < 0.2);
      } else {
        const ms = Math.floor(rnd() * 3000);
        now += ms;
        trace.push(`${ms} ms pass`);
        proxy.poke();
      }
    }
    // The end: everything written and accepted, every backoff over.
    trace.push('the end');
    for (let i = 0; i < 200 && (proxy.wire.length > 0 || proxy.inbox.length > 0 || i < 3); i++) {
      now += 10_000;
      proxy.poke();
      while (proxy.wire.length > 0) proxy.write();
      while (proxy.inbox.length > 0) proxy.read(false);
    }
    assert.equal(proxy.wire.length + proxy.inbox.length, 0, 'the stream went quiet');
    const snapshot = cache.get(NODE)!;
    for (const t of [...WILDCARD, ...NAMED]) {
      const config = snapshot.resources.get(t) ?? new Map<string, EncodedResource>();
      const held = proxy.held.get(t)!;
      const sub = proxy.subscribed.get(t);
      const want = [...config.values()].filter((e) => !sub || sub.has(e.name)).map((e) => `${e.name}@${e.version}`).sort();
      // SotW cannot say that a named resource is gone (rule 14): a proxy may keep one the config lost.
      const has = [...held].filter(([n]) => variant === 'delta' || !sub || config.has(n)).map(([n, v]) => `${n}@${v}`).sort();
      assert.deepEqual(has, want, `${t.split('.').pop()}: what the proxy holds`);
    }
  } catch (err) {
    (err as Error).message = `${variant} seed ${seed} (replay with WEFT_STREAM_HISTORY_SEED=${seed}): ${(err as Error).message}\nhistory:\n  ${trace.join('\n  ')}`;
    throw err;
  } finally {
    proxy.stream.close();
  }
}

describe('one stream through random histories of config, subscriptions, rejections, a tight budget and time', () => {
  const one = process.env.WEFT_STREAM_HISTORY_SEED;
  const runs = Number(process.env.WEFT_STREAM_HISTORY_RUNS ?? 500);
  const seeds = one ? [Number(one)] : Array.from({ length: runs }, (_, i) => i + 1);
  for (const variant of ['sotw', 'delta'] as const) {
    it(`${variant}: the proxy ends holding exactly its config (rules 5, 8, 11, 12, 14, 18, 19, 21; ${seeds.length} histories)`, () => {
      for (const seed of seeds) runHistory(variant, seed);
    });
  }
});
