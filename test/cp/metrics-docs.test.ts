import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { startTestControlPlane, type TestControlPlane } from '../helpers/cp.js';
import { systemRequirement } from '../helpers/require.js';

const docs = new URL('../../../docs/', import.meta.url);
/** Prometheus's own checker of rule files (Debian's prometheus package). */
const promtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
const promtoolMissing = promtool.error ? 'promtool not found (apt-get install prometheus)' : undefined;

/** Names a Prometheus histogram's series carry beyond the metric's own. */
const base = (name: string) => name.replace(/_(bucket|sum|count)$/, '');

describe('metrics and their documentation', () => {
  let cp: TestControlPlane;
  let exposed: Set<string>;
  before(async () => {
    cp = await startTestControlPlane();
    const text = await (await fetch(`${cp.diagnosticsUrl}/metrics`)).text();
    exposed = new Set([...text.matchAll(/^# HELP (weft_[a-z0-9_]+) /gm)].map((m) => m[1]!));
  });
  after(() => cp.stop());

  it('every metric weft-cp exposes is named in docs/', () => {
    assert.ok(exposed.size >= 15, `weft-cp exposes ${exposed.size} weft_ metrics`);
    const text = readdirSync(docs)
      .filter((f) => f.endsWith('.md'))
      .map((f) => readFileSync(new URL(f, docs), 'utf8'))
      .join('\n');
    const undocumented = [...exposed].filter((m) => !new RegExp(`\\b${m}\\b`).test(text));
    assert.deepEqual(undocumented, []);
  });

  it('every alert in docs/alerts.yaml names metrics weft-cp exposes, and docs/operations.md explains each alert', () => {
    const rules = (parse(readFileSync(new URL('alerts.yaml', docs), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);
    assert.ok(rules.length > 0);
    const guide = readFileSync(new URL('operations.md', docs), 'utf8');
    for (const r of rules) {
      const names = [...r.expr.matchAll(/\b(weft_[a-z0-9_]+)\b/g)].map((m) => base(m[1]!));
      assert.ok(names.length > 0, `${r.alert} names a weft_ metric`);
      for (const n of names) assert.ok(exposed.has(n), `${r.alert}: ${n} is not a metric weft-cp exposes`);
      assert.match(guide, new RegExp(`\\| \`${r.alert}\` \\|`), `${r.alert} is explained in docs/operations.md`);
    }
  });

  it('docs/alerts.yaml is a rule file Prometheus loads, and each alert fires on its series and not on look-alikes (promtool)', systemRequirement('promtool', promtoolMissing), () => {
    const check = spawnSync('promtool', ['check', 'rules', fileURLToPath(new URL('alerts.yaml', docs))], { encoding: 'utf8' });
    assert.equal(check.status, 0, `${check.stdout}${check.stderr}`);
    assert.match(check.stdout, /SUCCESS: \d+ rules found/);
    // test/fixtures/alerts.test.yaml: synthetic series, and when each alert must and must not fire.
    const cases = fileURLToPath(new URL('../../../test/fixtures/alerts.test.yaml', import.meta.url));
    const run = spawnSync('promtool', ['test', 'rules', cases], { encoding: 'utf8' });
    assert.equal(run.status, 0, `${run.stdout}${run.stderr}`);
    assert.match(run.stdout, /SUCCESS/);
  });

  it('every alert has a case in test/fixtures/alerts.test.yaml', () => {
    const rules = (parse(readFileSync(new URL('alerts.yaml', docs), 'utf8')) as { groups: { rules: { alert: string }[] }[] }).groups.flatMap((g) => g.rules.map((r) => r.alert));
    const cases = parse(readFileSync(new URL('../../../test/fixtures/alerts.test.yaml', import.meta.url), 'utf8')) as { tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const firing = new Set(cases.tests.flatMap((t) => t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    assert.deepEqual(rules.filter((a) => !firing.has(a)), [], 'alerts never shown to fire');
  });
});
