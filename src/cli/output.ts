import { stringify } from 'yaml';
import type { ResourceType, Resource } from '../core/index.js';
import { humanBytes } from '../core/sizes.js';

/** kubectl-style age: 45s, 12m, 5h, 3d. */
export function age(iso: string, now = Date.now()): string {
  return duration(now - Date.parse(iso));
}

/** A span of time in its largest fitting unit: 90s, 5m, 3h, 2d. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
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

/** A dataplane's xDS status as the API serves it (`/meshes/{mesh}/dataplanes+insights`). */
export interface InsightStatus {
  connected: boolean;
  connectedSince?: string;
  disconnectedAt?: string;
  controlPlaneInstance?: string;
  /** Response bytes its connection has not taken yet, and since when (a slow or stalled proxy). */
  unwritten?: { bytes: number; since: string };
  types: Record<string, { lastSentVersion?: string; lastAckedVersion?: string; lastNack?: { message: string; at: string; retryAt?: string }; lastOversized?: { bytes: number; at: string } }>;
}

const XDS_TYPES = ['CDS', 'EDS', 'LDS', 'RDS', 'SDS'];

/** ", behind: 1.1 MB for 12s" for a proxy whose connection has not taken what it was sent for a while; else "". */
function behind(unwritten: InsightStatus['unwritten'], now: number): string {
  if (!unwritten || now - Date.parse(unwritten.since) < BEHIND_AFTER_MS) return '';
  return `, behind: ${humanBytes(unwritten.bytes)} for ${age(unwritten.since, now)}`;
}

/** Below this, bytes not yet taken by a proxy's connection are a write under way, not a proxy behind. */
const BEHIND_AFTER_MS = 1000;

/**
 * One line per dataplane: online or not (and behind, when its connection has left a response
 * untaken for a second or more), since when, per xDS type whether the last response was taken,
 * responses too big for a gRPC client's default limit (XDS-RULES 24), and the last NACK.
 */
export function insightTable(rows: { dataplane: Record<string, unknown>; status: InsightStatus }[], now = Date.now()): string {
  const head = ['MESH', 'NAME', 'STATUS', 'SINCE', 'CP', ...XDS_TYPES, 'OVER 4 MiB', 'LAST NACK'];
  const body = rows.map(({ dataplane, status }) => {
    const since = status.connected ? status.connectedSince : status.disconnectedAt;
    const cell = (t: string) => {
      const s = status.types[t];
      if (!s?.lastSentVersion) return '-';
      return s.lastAckedVersion === s.lastSentVersion ? 'ACK' : s.lastNack ? 'NACK' : 'sent';
    };
    // The last one of each type, with how long ago: a config that has shrunk since shows its age.
    const oversized = XDS_TYPES.flatMap((t) => {
      const o = status.types[t]?.lastOversized;
      return o ? [`${t} ${(o.bytes / 1048576).toFixed(1)} MiB ${age(o.at, now)} ago`] : [];
    });
    const nacks = Object.entries(status.types).filter(([, s]) => s.lastNack);
    const lastNack = nacks.sort((a, b) => (a[1].lastNack!.at < b[1].lastNack!.at ? 1 : -1))[0];
    // While that type is still rejected: when the control plane sends it again (unless it changes first).
    const retryAt = lastNack && cell(lastNack[0]) === 'NACK' && lastNack[1].lastNack!.retryAt ? Date.parse(lastNack[1].lastNack!.retryAt) : NaN;
    const again = retryAt > now ? ` (again in ${duration(Math.ceil((retryAt - now) / 1000) * 1000)})` : '';
    return [
      String(dataplane.mesh),
      String(dataplane.name),
      status.connected ? `Online${behind(status.unwritten, now)}` : 'Offline',
      since ? age(since, now) : '-',
      status.controlPlaneInstance ?? '-',
      ...XDS_TYPES.map(cell),
      oversized.length > 0 ? oversized.join(', ') : '-',
      lastNack ? `${lastNack[0]}: ${lastNack[1].lastNack!.message.slice(0, 80)}${again}` : '-',
    ];
  });
  return table([head, ...body]);
}
