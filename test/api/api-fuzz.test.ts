import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { defaultRegistry, ERROR_CATALOGUE } from '../../src/core/index.js';
import { startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { seeded } from '../helpers/seeded.js';

/**
 * Damaged requests against a real control plane's HTTP API: well-formed requests of every kind
 * (Kuma YAML and JSON, one resource or a batch, tokens, paging, deletes), with bytes changed,
 * cut off or inserted (YAML anchors, tags, document breaks, NULs, huge numbers), words swapped
 * for wrong ones that still parse (a mesh that does not exist, a bad port, a misspelt type),
 * paths changed, and now and then the wrong media type or a stale If-Match. Whatever comes in:
 * - no 5xx, and every error is JSON with a message and a code of the catalogue (docs/errors.md)
 *   that goes with its HTTP status, each violation naming a field;
 * - a refused request leaves every stored resource as it was (nothing half-written);
 * - a resource the API says it stored (PUT 200/201) can be read back at that path.
 * Seeded: WEFT_API_FUZZ_SEED and WEFT_API_FUZZ_CASES run others (600 by default).
 */

const dataplaneJson = JSON.stringify({ type: 'Dataplane', mesh: 'default', name: 'dp-1', networking: { address: '10.0.0.1', inbound: [{ port: 8080, tags: { 'kuma.io/service': 'web' } }] } });
const dataplaneYaml = 'type: Dataplane\nmesh: default\nname: dp-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: web\n      version: "2"\n  outbound:\n  - port: 10001\n    tags:\n      kuma.io/service: api\n';
const batchYaml =
  'type: Mesh\nname: m2\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n---\ntype: Dataplane\nmesh: m2\nname: x\nnetworking:\n  address: 10.0.0.2\n  inbound:\n  - port: 1\n    tags:\n      kuma.io/service: a\n---\ntype: TrafficPermission\nmesh: m2\nname: tp\nsources:\n- match:\n    kuma.io/service: "*"\ndestinations:\n- match:\n    kuma.io/service: a\n';
const mtpYaml =
  'type: MeshTrafficPermission\nmesh: default\nname: allow-web\nspec:\n  targetRef:\n    kind: MeshService\n    name: web\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n';

/** [method, path, media type, body] */
const GOOD: readonly (readonly [string, string, string, string])[] = [
  ['PUT', '/meshes/default/dataplanes/dp-1', 'application/json', dataplaneJson],
  ['PUT', '/meshes/default/dataplanes/dp-1', 'application/yaml', dataplaneYaml],
  ['POST', '/_apply', 'application/yaml', batchYaml],
  ['POST', '/_apply', 'application/json', JSON.stringify({ resources: [{ type: 'Mesh', name: 'm3' }, { type: 'Dataplane', mesh: 'm3', name: 'y', networking: { address: '10.0.0.3', inbound: [{ port: 2, tags: { 'kuma.io/service': 'b' } }] } }] })],
  ['PUT', '/meshes/default/meshtrafficpermissions/allow-web', 'application/yaml', mtpYaml],
  ['PUT', '/meshes/m4', 'application/json', JSON.stringify({ type: 'Mesh', name: 'm4', networking: { outbound: { passthrough: false } } })],
  ['POST', '/tokens/dataplane', 'application/json', JSON.stringify({ mesh: 'default', name: 'dp-1', validFor: '1h' })],
  ['GET', '/meshes/default/dataplanes?limit=2&tag=kuma.io/service:web', '', ''],
  ['DELETE', '/meshes/default/dataplanes/dp-1', '', ''],
  ['DELETE', '/meshes/m2', '', ''],
  ['DELETE', '/meshes/m3', '', ''],
];
const BYTES = [0x00, 0x22, 0x27, 0x3a, 0x2d, 0x7b, 0x7d, 0x5b, 0x5d, 0x0a, 0x20, 0x26, 0x2a, 0x21, 0xff, 0x61, 0x31, 0x39];
const INSERTS = ['&a', '*a', '!!binary ', '!!js/function ', '<<: *a', '\t', '{}', '[]', 'null', '"', '\\u0000', '1e999', '-1', '99999999999', '-', ': ', '\n---\n', '~', '? ', '\ufeff', 'é'];
/** Well-formed but wrong: a word of the requests swapped for another (a mesh that does not exist, a bad port, a type misspelt). */
const WORDS: readonly (readonly [string, readonly string[]])[] = [
  ['m2', ['m9', 'default', 'M2', '']],
  ['m3', ['m9', 'm2']],
  ['default', ['m9', 'm2', 'default ']],
  ['8080', ['0', '70000', '-1', '8080.5', '"8080"']],
  ['Dataplane', ['Dataplan', 'Mesh', 'TrafficPermission']],
  ['Mesh', ['MeshService', 'mesh']],
  ['kuma.io/service', ['kuma.io/zone', 'kuma.io/service ', '']],
  ['10.0.0.', ['999.0.0.', '::', 'example.']],
  ['Allow', ['Deny', 'Perhaps']],
  ['builtin', ['provided', 'vault']],
  ['1h', ['0s', '-1h', '100y', 'soon']],
  ['false', ['true', 'maybe', '0']],
];
const PATH_ENDS = ['', '%00', '..', 'A', 'x'.repeat(300), '%2F', 'dp-1?x=1', '_status', 'dp-2', 'a.b'];
const MEDIA = ['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', 'application/yaml; charset=utf-16', ''];

describe('HTTP API under damaged requests', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await startTestControlPlane({ WEFT_XDS_TLS_MODE: 'off' });
  });
  after(() => cp.stop());

  /** Every resource of every type the API serves, with its version. */
  async function stored(): Promise<string[]> {
    const out: string[] = [];
    for (const t of defaultRegistry().all()) for (const r of (await cp.store.list(t.name)).items) out.push(`${r.type} ${r.mesh}/${r.name} ${r.version}`);
    return out.sort();
  }

  it('no 5xx; every error JSON with a catalogued code and a message; a refused request changes nothing; a stored resource reads back', async () => {
    const seed = Number(process.env.WEFT_API_FUZZ_SEED ?? 1);
    const cases = Number(process.env.WEFT_API_FUZZ_CASES ?? 600);
    const rnd = seeded(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const statuses = new Map<number, number>();
    for (let i = 0; i < cases; i++) {
      const [method, path0, media0, body0] = pick(GOOD);
      let [path, media, body] = [path0, media0, Buffer.from(body0)];
      for (let k = Math.floor(rnd() * 4); k > 0; k--) {
        const at = Math.floor(rnd() * (body.length + 1));
        const op = rnd();
        if (op < 0.2 && body.length > 0) body[Math.min(at, body.length - 1)] = pick(BYTES);
        else if (op < 0.3) body = body.subarray(0, at);
        else if (op < 0.5) body = Buffer.concat([body.subarray(0, at), Buffer.from(pick(INSERTS)), body.subarray(at)]);
        else if (op < 0.85) {
          const text = body.toString('latin1');
          const present = WORDS.filter(([w]) => text.includes(w) || path.includes(w));
          if (present.length === 0) continue;
          const [word, others] = pick(present);
          const found: number[] = [];
          for (let from = text.indexOf(word); from >= 0; from = text.indexOf(word, from + 1)) found.push(from);
          if (found.length > 0) {
            const where = pick(found);
            body = Buffer.from(text.slice(0, where) + pick(others) + text.slice(where + word.length), 'latin1');
          } else if (path.includes(word)) path = path.replace(word, pick(others));
        } else path = path.replace(/[a-z0-9-]+$/, pick(PATH_ENDS));
      }
      if (rnd() < 0.08) media = pick(MEDIA);
      const headers: Record<string, string> = media ? { 'content-type': media } : {};
      if (rnd() < 0.05) headers['if-match'] = pick(['"1"', '*', 'garbage', '""']);
      const what = `case ${i} (replay with WEFT_API_FUZZ_SEED=${seed}): ${method} ${path} [${media}] ${JSON.stringify(body.toString('latin1').slice(0, 300))}`;
      const writes = method !== 'GET';
      const before = writes ? await stored() : [];
      const res = await fetch(new URL(path, cp.apiUrl), { method, headers, body: method === 'GET' || method === 'DELETE' ? undefined : body });
      const text = await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      assert.ok(res.status < 500, `${what}\n→ ${res.status} ${text.slice(0, 500)}`);
      if (res.status >= 400) {
        let err: { code?: unknown; message?: unknown; violations?: unknown };
        try {
          err = JSON.parse(text) as typeof err;
        } catch {
          assert.fail(`${what}\n→ ${res.status}, not JSON: ${text.slice(0, 300)}`);
        }
        assert.ok(typeof err.message === 'string' && err.message !== '', `${what}\n→ ${res.status} without a message: ${text.slice(0, 300)}`);
        // A code of the catalogue (docs/errors.md), with its status; each violation names its field.
        const known = Object.entries(ERROR_CATALOGUE).find(([code]) => code === err.code)?.[1];
        assert.equal(known?.status, res.status, `${what}\n→ ${res.status} with code ${JSON.stringify(err.code)}: ${text.slice(0, 300)}`);
        const violations = err.violations as { field?: unknown; message?: unknown }[];
        assert.ok(Array.isArray(violations) && violations.every((v) => typeof v.field === 'string' && typeof v.message === 'string' && v.message !== ''), `${what}\n→ violations: ${text.slice(0, 300)}`);
        if (writes) assert.deepEqual(await stored(), before, `${what}\n→ refused (${res.status} ${text.slice(0, 200)}), yet the store changed`);
      } else if (method === 'PUT') {
        const back = await fetch(new URL(path, cp.apiUrl));
        assert.equal(back.status, 200, `${what}\n→ ${res.status}, yet reading it back gave ${back.status}`);
      }
    }
    // The damage must leave both kinds of answer common, or the checks above check little.
    const ok = [...statuses].filter(([s]) => s < 300).reduce((n, [, c]) => n + c, 0);
    const refused = [...statuses].filter(([s]) => s >= 400).reduce((n, [, c]) => n + c, 0);
    assert.ok(ok > cases / 10 && refused > cases / 10, `answers by status: ${JSON.stringify(Object.fromEntries(statuses))}`);
  });
});
