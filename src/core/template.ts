/**
 * Kuma's `--var` templating: `{{ name }}` (spaces optional) is replaced by the value given with
 * `--var name=value`. Every placeholder without a value is reported, with its line.
 */
export function renderTemplate(text: string, vars: Record<string, string>): { text: string; missing: { name: string; line: number }[] } {
  const missing: { name: string; line: number }[] = [];
  const out = text.replace(/\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}/g, (match, name: string, offset: number) => {
    const value = vars[name];
    if (value !== undefined) return value;
    missing.push({ name, line: text.slice(0, offset).split('\n').length });
    return match;
  });
  return { text: out, missing };
}

/** Parses `key=value` pairs given to repeatable flags. */
export function parsePairs(pairs: readonly string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new Error(`${flag} ${JSON.stringify(p)} must be KEY=VALUE`);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}
