import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runWalkthrough } from '../../src/demo/walkthrough.js';

/**
 * The zero-trust walkthrough of `npm run demo` (issue: gateway → demo-app → redis, mTLS, then
 * permissions step by step), proxyless, with real processes: weft-cp, three weft-dp and three
 * grpc-js-xds apps. runWalkthrough fails the moment a step does not behave; the outcomes are
 * checked here once more.
 */
describe('zero-trust walkthrough (proxyless)', () => {
  it('every step behaves as the tutorial says, with the SPIFFE IDs on the wire', async () => {
    const steps = await runWalkthrough(undefined, { timeoutMs: 30_000 });
    assert.deepEqual(
      steps.map((s) => s.step),
      [1, 2, 3, 4, 5, 6],
    );
    const seen = Object.fromEntries(steps.map((s) => [s.step, s.observed]));
    assert.match(seen[2]!, /^OK \{"count":\d+/);
    assert.match(seen[3]!, /"redisSaw":\["spiffe:\/\/default\/demo-app"\],"demoAppSaw":\["spiffe:\/\/default\/gateway"\]/);
    assert.match(seen[4]!, /^PERMISSION_DENIED: demo-app: PERMISSION_DENIED/);
    assert.match(seen[5]!, /^PERMISSION_DENIED: demo-app: PERMISSION_DENIED: redis: PERMISSION_DENIED/);
    assert.match(seen[6]!, /plaintext from outside: UNAVAILABLE/);
  });
});
