import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nodeIdOf, splitNodeId } from '../../src/core/index.js';

describe('node ids', () => {
  it('a node.id is "<mesh>.<name>": the mesh ends at the first dot, the Dataplane name may hold more', () => {
    assert.deepEqual(splitNodeId('default.web-1'), { mesh: 'default', name: 'web-1' });
    assert.deepEqual(splitNodeId('default.web.eu-1'), { mesh: 'default', name: 'web.eu-1' });
    assert.equal(nodeIdOf('default', 'web.eu-1'), 'default.web.eu-1');
    assert.deepEqual(splitNodeId(nodeIdOf('m', 'a.b')), { mesh: 'm', name: 'a.b' });
  });

  it('an id without a mesh or without a name is none', () => {
    for (const id of ['', 'web-1', '.web-1', 'default.']) assert.equal(splitNodeId(id), undefined, JSON.stringify(id));
  });
});
