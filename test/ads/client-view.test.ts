import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { EncodedResource } from '../../src/ads/index.js';
import { ClientView } from '../../src/ads/stream.js';

const res = (name: string, version: string) => ({ name, version }) as EncodedResource;

it('a delta client view overlays its few differences on a shared map', () => {
  const base = new Map([['a', res('a', '1')], ['b', res('b', '1')]]);
  const v = new ClientView();
  v.set('x', '9');
  v.resetTo(base);
  assert.equal(v.extra.size, 0, 'reset drops the overlay');
  assert.deepEqual([...v.keys()].sort(), ['a', 'b']);
  v.set('a', '1');
  assert.equal(v.extra.size, 0, 'setting what the base already says stores nothing');
  v.set('a', '2');
  v.delete('b');
  v.set('c', '1');
  v.delete('never-had');
  assert.equal(v.get('a'), '2');
  assert.equal(v.has('b'), false);
  assert.deepEqual([...v.keys()].sort(), ['a', 'c']);
  assert.equal(base.get('a')!.version, '1', 'the shared map is never written');
});
