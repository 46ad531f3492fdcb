import { stringify } from 'yaml';
import type { ResourceType, Resource } from '../core/index.js';

/** kubectl-style age: 45s, 12m, 5h, 3d. */
export function age(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd()).join('\n') + '\n';
}

/** Turns a resource from the API (Kuma's wire form) into the typed shape the columns read. */
function fromWire(def: ResourceType<unknown>, w: Record<string, unknown>): Resource {
  const { type, mesh, name, labels, creationTime, modificationTime, ...spec } = w;
  return {
    type: String(type),
    mesh: typeof mesh === 'string' ? mesh : '',
    name: String(name),
    labels: (labels ?? {}) as Record<string, string>,
    spec: (() => {
      const parsed = def.schema.safeParse(spec);
      return parsed.success ? parsed.data : spec;
    })(),
    version: '',
    creationTime: String(creationTime),
    modificationTime: String(modificationTime),
  };
}

/** A column that cannot read a field (a newer server's resource) shows '-'. */
function cell(f: () => string): string {
  try {
    return f();
  } catch {
    return '-';
  }
}

export function resourceTable(def: ResourceType<unknown>, items: Record<string, unknown>[]): string {
  const head = [...(def.scope === 'mesh' ? ['MESH'] : []), 'NAME', ...(def.columns ?? []).map((c) => c.header), 'AGE'];
  const rows = items.map((w) => {
    const r = fromWire(def, w);
    return [...(def.scope === 'mesh' ? [r.mesh] : []), r.name, ...(def.columns ?? []).map((c) => cell(() => c.value(r))), age(r.creationTime)];
  });
  return table([head, ...rows]);
}

/** Several resources as multi-document YAML, so `weftctl get ... -o yaml | weftctl apply -f -` works. */
export function yamlDocuments(items: unknown[]): string {
  return items.map((i) => stringify(i)).join('---\n');
}
