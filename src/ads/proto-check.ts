import { isIP } from 'node:net';
import protobuf from 'protobufjs';
import { envoyProtos } from './protos.js';

export interface ProtoViolation {
  field: string;
  message: string;
}

type Rules = Record<string, unknown>;

/** Turns protobufjs' flattened options (`(validate.rules).string.min_len: 1`) into a tree. */
function rulesOf(options: Record<string, unknown> | undefined, key = '(validate.rules)'): Rules | undefined {
  if (!options) return undefined;
  let out: Rules | undefined;
  for (const [k, v] of Object.entries(options)) {
    if (k !== key && !k.startsWith(`${key}.`)) continue;
    out ??= {};
    const parts = k === key ? [] : k.slice(key.length + 1).split('.');
    if (parts.length === 0) {
      Object.assign(out, v as Rules);
      continue;
    }
    let cur = out;
    for (const p of parts.slice(0, -1)) cur = (cur[p] ??= {}) as Rules;
    cur[parts[parts.length - 1]!] = v;
  }
  return out;
}

/** The rules of each field, parsed once (every resource sent is checked, so this is a hot path). */
const fieldRules = new WeakMap<protobuf.Field, Rules | null>();
function rulesOfField(field: protobuf.Field): Rules | undefined {
  let r = fieldRules.get(field);
  if (r === undefined) fieldRules.set(field, (r = parsedRules(field) ?? null));
  return r ?? undefined;
}

/**
 * A field's rules from the options as written. protobufjs's flattened `options` lose a rule whose
 * value is an empty message: `duration = {gt {}}` (longer than zero, as Envoy wants of
 * Cluster.connect_timeout and some fifty other durations) left no trace there, so a zero or
 * negative duration passed. `parsedOptions` keeps each option as it was parsed.
 */
function parsedRules(field: protobuf.Field): Rules | undefined {
  const parsed = (field as { parsedOptions?: Record<string, unknown>[] }).parsedOptions;
  if (!parsed) return rulesOf(field.options);
  let out: Rules | undefined;
  for (const entry of parsed) {
    const r = rulesOf(entry);
    if (r) out = merged(out ?? {}, r);
  }
  return out;
}

function merged(a: Rules, b: Rules): Rules {
  const out: Rules = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = isPlain(out[k]) && isPlain(v) ? merged(out[k] as Rules, v) : v;
  return out;
}

const INT_TYPES = new Set(['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32', 'int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const WRAPPERS: Record<string, string> = {
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
};
const HEADER_NAME = /^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$/;
const HEADER_VALUE_STRICT = /^[^\u0000-\u0008\u000A-\u001F\u007F]*$/;
const HEADER_LOOSE = /^[^\u0000\u000A\u000D]*$/;
const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

function isPlain(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !(v instanceof Uint8Array);
}

function durationNanos(v: unknown): bigint | undefined {
  if (!isPlain(v)) return undefined;
  return BigInt(String(v.seconds ?? 0)) * 1_000_000_000n + BigInt(String(v.nanos ?? 0));
}

/** protobufjs computes `fullName` on each read by walking the parents: remembered per type. */
const fullNames = new WeakMap<protobuf.ReflectionObject, string>();
function fullNameOf(t: protobuf.ReflectionObject): string {
  let n = fullNames.get(t);
  if (n === undefined) fullNames.set(t, (n = t.fullName));
  return n;
}

/** Types named by `@type` URLs, looked up once per URL (null: unknown). */
const anyTypes = new Map<string, protobuf.Type | null>();

class Checker {
  readonly out: ProtoViolation[] = [];
  constructor(private readonly root: protobuf.Root) {}

  private add(field: string, message: string): void {
    this.out.push({ field: field || '(root)', message });
  }

  message(type: protobuf.Type, obj: unknown, path: string): void {
    if (!isPlain(obj)) return this.add(path, `must be a ${type.name} message`);
    const name = fullNameOf(type);
    if (name === '.google.protobuf.Any') return this.any(obj, path);
    if (type.options?.['(validate.disabled)'] === true) return;
    for (const key of Object.keys(obj)) if (!type.fields[key]) this.add(join(path, key), `unknown field of ${type.name}`);
    for (const field of type.fieldsArray) this.field(field, obj[field.name], join(path, field.name));
    for (const oneof of type.oneofsArray) {
      const set = oneof.fieldsArray.filter((f) => obj[f.name] !== undefined && obj[f.name] !== null);
      if (set.length > 1) this.add(join(path, oneof.name), `only one of ${set.map((f) => f.name).join(', ')} may be set`);
      if (set.length === 0 && oneof.options?.['(validate.required)'] === true) {
        this.add(join(path, oneof.name), `one of ${oneof.fieldsArray.map((f) => f.name).join(', ')} is required`);
      }
    }
  }

  private any(obj: Record<string, unknown>, path: string): void {
    const url = obj['@type'];
    if (typeof url !== 'string') return this.add(join(path, '@type'), 'required on a typed_config');
    let inner = anyTypes.get(url);
    if (inner === undefined) {
      try {
        inner = this.root.lookupType(url.slice(url.lastIndexOf('/') + 1));
      } catch {
        inner = null;
      }
      if (anyTypes.size < 10_000) anyTypes.set(url, inner);
    }
    if (!inner) return this.add(join(path, '@type'), `unknown type ${url}`);
    const { '@type': _t, ...rest } = obj;
    this.message(inner, rest, path);
  }

  private field(field: protobuf.Field, value: unknown, path: string): void {
    const unset = value === undefined || value === null;
    // Fields of a oneof, and proto3 optional fields, are checked only when set.
    if (unset && field.partOf && !field.map && !field.repeated) return;
    const rules = rulesOfField(field);
    if (field.map) {
      if (unset) value = {};
      if (!isPlain(value)) return this.add(path, 'must be a map');
      const n = Object.keys(value).length;
      const m = rules?.map as Rules | undefined;
      if (m?.min_pairs !== undefined && n < Number(m.min_pairs)) this.add(path, `must have at least ${m.min_pairs} entries`);
      if (m?.max_pairs !== undefined && n > Number(m.max_pairs)) this.add(path, `must have at most ${m.max_pairs} entries`);
      for (const [k, v] of Object.entries(value)) this.single(field, v, `${path}[${JSON.stringify(k)}]`, (m?.values as Rules) ?? undefined, false);
      return;
    }
    if (field.repeated) {
      if (unset) value = [];
      if (!Array.isArray(value)) return this.add(path, 'must be a list');
      const r = rules?.repeated as Rules | undefined;
      if (r?.min_items !== undefined && value.length < Number(r.min_items)) this.add(path, `must have at least ${r.min_items} item(s)`);
      if (r?.max_items !== undefined && value.length > Number(r.max_items)) this.add(path, `must have at most ${r.max_items} item(s)`);
      if (r?.unique === true && new Set(value.map((v) => JSON.stringify(v))).size !== value.length) this.add(path, 'items must be unique');
      value.forEach((v, i) => this.single(field, v, `${path}[${i}]`, r?.items as Rules | undefined, false));
      return;
    }
    this.single(field, value, path, rules, unset);
  }

  private single(field: protobuf.Field, value: unknown, path: string, rules: Rules | undefined, unset: boolean): void {
    const rt = field.resolvedType;
    if (rt instanceof protobuf.Type) {
      if (unset) {
        if ((rules?.message as Rules | undefined)?.required === true || (rules?.duration as Rules | undefined)?.required === true || (rules?.any as Rules | undefined)?.required === true) {
          this.add(path, 'required');
        }
        return;
      }
      const rtName = fullNameOf(rt);
      const wrapped = WRAPPERS[rtName];
      if (wrapped) {
        if (!isPlain(value)) return this.add(path, `must be {value: ...}`);
        const extra = Object.keys(value).filter((k) => k !== 'value');
        if (extra.length > 0) this.add(path, `unknown field ${extra[0]} of ${rt.name}`);
        return this.scalar(wrapped, value.value ?? (wrapped === 'string' ? '' : wrapped === 'bool' ? false : 0), `${path}.value`, rules);
      }
      if (rtName === '.google.protobuf.Duration') {
        const n = durationNanos(value);
        // A string here is a proto3 JSON duration `fromProto3Json` could not read.
        if (n === undefined) return this.add(path, typeof value === 'string' ? 'must be a duration such as "1.5s"' : 'must be {seconds, nanos}');
        const d = rules?.duration as Record<string, unknown> | undefined;
        const cmp = (k: string) => (d?.[k] !== undefined ? durationNanos(d[k]) ?? 0n : undefined);
        const gt = cmp('gt');
        const gte = cmp('gte');
        const lt = cmp('lt');
        const lte = cmp('lte');
        if (gt !== undefined && !(n > gt)) this.add(path, `must be longer than ${gt}ns`);
        if (gte !== undefined && !(n >= gte)) this.add(path, `must be at least ${gte}ns`);
        if (lt !== undefined && !(n < lt)) this.add(path, `must be shorter than ${lt}ns`);
        if (lte !== undefined && !(n <= lte)) this.add(path, `must be at most ${lte}ns`);
      }
      return this.message(rt, value, path);
    }
    if (rt instanceof protobuf.Enum) {
      if (unset) value = 0;
      const known = typeof value === 'string' ? rt.values[value] !== undefined : typeof value === 'number' && Object.values(rt.values).includes(value);
      if (typeof value === 'string' && !known) return this.add(path, `must be one of ${Object.keys(rt.values).join(', ')}`);
      if ((rules?.enum as Rules | undefined)?.defined_only === true && !known) this.add(path, `must be a defined ${rt.name} value`);
      return;
    }
    this.scalar(field.type, unset ? defaultOf(field.type) : value, path, rules);
  }

  private scalar(kind: string, value: unknown, path: string, rules: Rules | undefined): void {
    if (kind === 'string') {
      if (typeof value !== 'string') return this.add(path, 'must be a string');
      return this.string(value, path, rules?.string as Rules | undefined);
    }
    if (kind === 'bool') {
      if (typeof value !== 'boolean') this.add(path, 'must be a boolean');
      return;
    }
    if (kind === 'bytes') {
      if (typeof value !== 'string' && !(value instanceof Uint8Array)) this.add(path, 'must be bytes (base64 string or Buffer)');
      return;
    }
    const isInt = INT_TYPES.has(kind);
    const n = typeof value === 'number' ? value : typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
    if (Number.isNaN(n)) return this.add(path, `must be a number (${kind})`);
    if (isInt && !Number.isInteger(n)) return this.add(path, `must be an integer (${kind})`);
    if (kind.startsWith('uint') || kind.startsWith('fixed')) {
      if (n < 0) return this.add(path, `must not be negative (${kind})`);
    }
    if ((kind === 'uint32' || kind === 'fixed32') && n > 0xffffffff) return this.add(path, `does not fit ${kind}`);
    if ((kind === 'int32' || kind === 'sint32' || kind === 'sfixed32') && (n > 0x7fffffff || n < -0x80000000)) return this.add(path, `does not fit ${kind}`);
    const r = rules?.[kind] as Rules | undefined;
    if (!r) return;
    const num = (k: string) => (r[k] !== undefined ? Number(r[k]) : undefined);
    const [lt, lte, gt, gte, c] = [num('lt'), num('lte'), num('gt'), num('gte'), num('const')];
    if (c !== undefined && n !== c) this.add(path, `must be ${c}`);
    if (lt !== undefined && !(n < lt)) this.add(path, `must be less than ${lt}`);
    if (lte !== undefined && !(n <= lte)) this.add(path, `must be at most ${lte}`);
    if (gt !== undefined && !(n > gt)) this.add(path, `must be greater than ${gt}`);
    if (gte !== undefined && !(n >= gte)) this.add(path, `must be at least ${gte}`);
    if (Array.isArray(r.in) && !r.in.map(Number).includes(n)) this.add(path, `must be one of ${r.in.join(', ')}`);
    if (Array.isArray(r.not_in) && r.not_in.map(Number).includes(n)) this.add(path, `must not be one of ${r.not_in.join(', ')}`);
  }

  private string(s: string, path: string, r: Rules | undefined): void {
    if (!r) return;
    const chars = [...s].length;
    const bytes = Buffer.byteLength(s);
    if (r.min_len !== undefined && chars < Number(r.min_len)) this.add(path, Number(r.min_len) === 1 ? 'must not be empty' : `must be at least ${r.min_len} characters`);
    if (r.max_len !== undefined && chars > Number(r.max_len)) this.add(path, `must be at most ${r.max_len} characters`);
    if (r.min_bytes !== undefined && bytes < Number(r.min_bytes)) this.add(path, `must be at least ${r.min_bytes} bytes`);
    if (r.max_bytes !== undefined && bytes > Number(r.max_bytes)) this.add(path, `must be at most ${r.max_bytes} bytes`);
    if (typeof r.prefix === 'string' && !s.startsWith(r.prefix)) this.add(path, `must start with "${r.prefix}"`);
    if (typeof r.suffix === 'string' && !s.endsWith(r.suffix)) this.add(path, `must end with "${r.suffix}"`);
    if (typeof r.contains === 'string' && !s.includes(r.contains)) this.add(path, `must contain "${r.contains}"`);
    if (typeof r.const === 'string' && s !== r.const) this.add(path, `must be "${r.const}"`);
    if (Array.isArray(r.in) && !r.in.includes(s)) this.add(path, `must be one of ${r.in.join(', ')}`);
    if (Array.isArray(r.not_in) && r.not_in.includes(s)) this.add(path, `must not be one of ${r.not_in.join(', ')}`);
    if (typeof r.pattern === 'string') {
      try {
        if (!new RegExp(r.pattern, 'u').test(s)) this.add(path, `must match ${r.pattern}`);
      } catch {
        /* an RE2 pattern JavaScript cannot compile: not checked */
      }
    }
    const strict = r.strict !== false;
    if (r.well_known_regex === 'HTTP_HEADER_NAME' && !(strict ? HEADER_NAME : HEADER_LOOSE).test(s)) this.add(path, 'must be a valid HTTP header name');
    if (r.well_known_regex === 'HTTP_HEADER_VALUE' && !(strict ? HEADER_VALUE_STRICT : HEADER_LOOSE).test(s)) this.add(path, 'must be a valid HTTP header value');
    if (r.ip === true && isIP(s) === 0) this.add(path, 'must be an IP address');
    if (r.ipv4 === true && isIP(s) !== 4) this.add(path, 'must be an IPv4 address');
    if (r.ipv6 === true && isIP(s) !== 6) this.add(path, 'must be an IPv6 address');
    if (r.hostname === true && !HOSTNAME.test(s)) this.add(path, 'must be a hostname');
    if (r.address === true && isIP(s) === 0 && !HOSTNAME.test(s)) this.add(path, 'must be an IP address or hostname');
  }
}

function defaultOf(kind: string): unknown {
  if (kind === 'string') return '';
  if (kind === 'bool') return false;
  if (kind === 'bytes') return '';
  return 0;
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

/**
 * Checks a resource, in protobufjs object form (proto field names, `@type` on Any), against the
 * Envoy message type: unknown fields, wrong value types, and Envoy's own `(validate.rules)`
 * (protoc-gen-validate) on every field, as Envoy would check them on receipt. protobufjs alone
 * drops unknown fields silently, which would hide typos. A Struct must be in the form protobufjs
 * encodes ({fields: {k: {stringValue: ...}}}): it silently drops any other. For an object Envoy
 * reads as proto3 JSON (the bootstrap), see `fromProto3Json`.
 */
export function checkResource(typeName: string, obj: unknown): ProtoViolation[] {
  const root = envoyProtos();
  let type = anyTypes.get(typeName);
  if (!type) anyTypes.set(typeName, (type = root.lookupType(typeName.slice(typeName.lastIndexOf('/') + 1))));
  const c = new Checker(root);
  c.message(type, obj, '');
  return c.out;
}

const DURATION_JSON = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/;

/**
 * An object in proto3 JSON form, as Envoy reads a bootstrap file (wrappers as bare values,
 * Durations as "1.5s", Structs as plain JSON), turned into protobufjs object form, so it can be
 * checked and encoded as resources are. Proto field names only. Shapes that are not valid proto3
 * JSON are left as they are, for `checkResource` to report by their path (a Duration already in
 * message form, {seconds, nanos}, is let through).
 */
export function fromProto3Json(typeName: string, obj: unknown): unknown {
  return jsonMessage(envoyProtos().lookupType(typeName.slice(typeName.lastIndexOf('/') + 1)), obj);
}

function jsonMessage(type: protobuf.Type, obj: unknown): unknown {
  if (!isPlain(obj)) return obj;
  const name = fullNameOf(type);
  if (name === '.google.protobuf.Any') {
    const url = obj['@type'];
    if (typeof url !== 'string') return obj;
    let inner: protobuf.Type;
    try {
      inner = envoyProtos().lookupType(url.slice(url.lastIndexOf('/') + 1));
    } catch {
      return obj;
    }
    const { '@type': _t, ...rest } = obj;
    return { '@type': url, ...(jsonMessage(inner, rest) as Record<string, unknown>) };
  }
  if (name === '.google.protobuf.Struct') return jsonStruct(obj);
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(obj)) {
    const field = type.fields[key];
    if (!field || value === null || value === undefined) out[key] = value;
    else if (field.map && isPlain(value)) out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonSingle(field, v)]));
    else if (field.repeated && Array.isArray(value)) out[key] = value.map((v) => jsonSingle(field, v));
    else out[key] = jsonSingle(field, value);
  }
  return out;
}

function jsonSingle(field: protobuf.Field, value: unknown): unknown {
  const rt = field.resolvedType;
  if (!(rt instanceof protobuf.Type)) return value;
  const name = fullNameOf(rt);
  // A wrapper is a bare value in proto3 JSON: anything else fails the check as the wrapped type.
  if (WRAPPERS[name]) return { value };
  if (name === '.google.protobuf.Duration' && typeof value === 'string') {
    const m = DURATION_JSON.exec(value);
    if (!m) return value;
    const sign = m[1] ? -1 : 1;
    const nanos = Number((m[3] ?? '').padEnd(9, '0'));
    return { seconds: sign * Number(m[2]), ...(nanos !== 0 && { nanos: sign * nanos }) };
  }
  if (name === '.google.protobuf.Value') return jsonValue(value);
  return jsonMessage(rt, value);
}

function jsonStruct(obj: Record<string, unknown>): { fields: Record<string, unknown> } {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, jsonValue(v)])) };
}

/** protobufjs's own google.protobuf.Value, whose fields are in camelCase whatever the root's options. */
function jsonValue(v: unknown): Record<string, unknown> {
  if (v === null) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(jsonValue) } };
  return { structValue: jsonStruct(v as Record<string, unknown>) };
}
