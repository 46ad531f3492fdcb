import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { ERROR_CATALOGUE, WeftError } from '../../src/core/index.js';

const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');
const documented = new Map([...doc.matchAll(/^\| `([a-z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1]!, Number(m[2])]));

it('every error code is documented in docs/errors.md with its status, and nothing else is', () => {
  const codes = Object.keys(ERROR_CATALOGUE);
  assert.deepEqual([...documented.keys()].sort(), [...codes].sort());
  for (const [code, { status }] of Object.entries(ERROR_CATALOGUE)) assert.equal(documented.get(code), status, code);
});

it('error bodies carry code, message and violations', () => {
  const e = new WeftError('invalid_resource', 'bad', [{ field: 'a.b', message: 'required' }]);
  assert.equal(e.status, 400);
  assert.deepEqual(JSON.parse(JSON.stringify(e)), { code: 'invalid_resource', message: 'bad', violations: [{ field: 'a.b', message: 'required' }] });
});
