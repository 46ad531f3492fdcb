import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Writable } from 'node:stream';
import { WARM_UP_ROUNDS, warmUp, type WarmUpResult } from '../../src/ads/index.js';
import { createLogger } from '../../src/core/index.js';
import { run } from '../helpers/bin.js';
import { spawnControlPlane } from '../helpers/cp-process.js';

const warmupModule = new URL('../../src/ads/warmup.js', import.meta.url).href;
const STEPS = ['connect', 'mtls', 'endpoints', 'service', 'mesh', 'policy'] as const;

/** A logger whose JSON lines land in `lines`. */
function capture(lines: Record<string, unknown>[]) {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return createLogger('test', 'info', sink);
}

/** The warm-up in a process of its own (it runs once per process): its result (JSON on stdout) and its log (stderr). */
async function inFreshProcess(opts: { dir: string; maxMs: number }): Promise<{ result: WarmUpResult; log: string }> {
  const script = `import { warmUp } from ${JSON.stringify(warmupModule)};
import { createLogger } from ${JSON.stringify(new URL('../../src/core/index.js', import.meta.url).href)};
const result = await warmUp({ dir: ${JSON.stringify(opts.dir)}, maxMs: ${opts.maxMs}, secure: true, logger: createLogger('test', 'info', process.stderr) });
process.stdout.write(JSON.stringify(result));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script]);
  assert.equal(r.code, 0, r.stderr);
  return { result: JSON.parse(r.stdout) as WarmUpResult, log: r.stderr };
}

describe('warm-up: the change paths run before the xDS port opens', () => {
  const base = mkdtempSync(join(tmpdir(), 'weft-warm-up-test-'));
  after(() => rmSync(base, { recursive: true, force: true }));

  it('does nothing when xds.warmUpMs is 0', async () => {
    const dir = join(base, 'off');
    const r = await warmUp({ dir, maxMs: 0, secure: false });
    assert.match(r.skipped ?? '', /off/);
    assert.equal(r.rounds, 0);
    assert.equal(existsSync(dir), false, 'no directory made');
  });

  it('takes simulated proxies of both variants through every kind of change, with no failed snapshot, and leaves no directory', async () => {
    const dir = join(base, 'warm-up');
    // What a warm-up killed midway left behind.
    mkdirSync(dir);
    writeFileSync(join(dir, 'weft.db'), 'not a database');
    const lines: Record<string, unknown>[] = [];
    const r = await warmUp({ dir, maxMs: 60_000, rounds: 2, secure: false, logger: capture(lines) });
    assert.equal(r.skipped, undefined, r.skipped);
    assert.equal(r.rounds, 2, 'one round without mTLS, one with');
    for (const step of STEPS) assert.ok(r.responses[step] > 0, `${step}: ${r.responses[step]} responses (the change reached no proxy)`);
    // Every kind of proxy is translated and served, and every type is asked for as Envoy asks:
    // EDS, RDS and SDS by the names its clusters and listeners give.
    for (const [kind, n] of Object.entries(r.byKind)) assert.ok(n > 0, `${kind} proxies: ${n} responses`);
    for (const type of ['CDS', 'EDS', 'LDS', 'RDS', 'SDS']) assert.ok(r.byType[type]! > 0, `${type}: ${r.byType[type]} responses`);
    // Every type is asked for by name too: a proxyless app names its listeners, routes, clusters
    // and endpoints, as grpc-js-xds does (Envoy takes CDS and LDS whole).
    for (const type of ['CDS', 'EDS', 'LDS', 'RDS', 'SDS']) assert.ok(r.named[type]! > 0, `${type}: ${r.named[type]} requests naming resources`);
    assert.equal(r.failures, 0);
    assert.equal(existsSync(dir), false, 'its store is removed after');
    const said = lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith('warmed up'));
    assert.deepEqual(said?.responses, r.responses, 'logged with what it did');
    // The reconciler's round-by-round debug lines stay out of the control plane's log.
    assert.equal(lines.filter((l) => l.level === 20).length, 0);
  });

  it('runs once per process: the compiled code serves every control plane it starts', async () => {
    const r = await warmUp({ dir: join(base, 'again'), maxMs: 60_000, secure: true });
    assert.match(r.skipped ?? '', /warm already/);
    assert.equal(existsSync(join(base, 'again')), false);
  });

  it('stops at xds.warmUpMs, and says so', async () => {
    const { result } = await inFreshProcess({ dir: join(base, 'short'), maxMs: 1 });
    assert.equal(result.rounds, 0, 'opening its store alone takes longer than 1 ms');
    assert.equal(result.skipped, `stopped after 0 of ${WARM_UP_ROUNDS} rounds: xds.warmUpMs (1) reached`);
    assert.ok(result.responses.connect > 0, 'the proxies still connected and were answered');
  });

  it('fails alone: the error is logged and the caller goes on', async () => {
    const file = join(base, 'a-file');
    writeFileSync(file, '');
    const { result, log } = await inFreshProcess({ dir: join(file, 'warm-up'), maxMs: 60_000 });
    assert.match(result.skipped ?? '', /^failed: .*ENOTDIR/);
    assert.match(log, /warm-up failed; starting all the same/);
  });

  it('weft-cp warms up before its xDS port opens, keeps nothing of it, and skips it when told', async () => {
    const dataDir = join(base, 'cp');
    const env = { WEFT_DATA_DIR: dataDir, WEFT_API_PORT: '0', WEFT_DIAGNOSTICS_PORT: '0' };
    const cp = await spawnControlPlane(env);
    try {
      const at = (msg: RegExp) => cp.logs.findIndex((l) => msg.test(l));
      const warm = at(/"msg":"warmed up/);
      assert.ok(warm >= 0, `no warm-up line in:\n${cp.logs.join('\n')}`);
      assert.ok(warm < at(/"msg":"ADS serves (TLS|plaintext)/), 'warmed up before the xDS port opened');
      const line = JSON.parse(cp.logs[warm]!) as WarmUpResult;
      assert.equal(line.failures, 0);
      for (const step of STEPS) assert.ok(line.responses[step] > 0, step);
      const meshes = (await (await fetch(`${cp.apiUrl}/meshes`)).json()) as { items: { name: string }[] };
      assert.deepEqual(
        meshes.items.map((m) => m.name),
        ['default'],
        "the warm-up's mesh is not in the control plane's store",
      );
      assert.ok(!readdirSync(dataDir).includes('warm-up'), 'its directory is gone');
    } finally {
      cp.child.kill('SIGTERM');
      await cp.exited;
    }
    const off = await spawnControlPlane({ ...env, WEFT_XDS_WARM_UP_MS: '0' });
    try {
      assert.equal(off.logs.filter((l) => /"component":"warm-up"/.test(l)).length, 0, off.logs.join('\n'));
    } finally {
      off.child.kill('SIGTERM');
      await off.exited;
    }
  });
});
