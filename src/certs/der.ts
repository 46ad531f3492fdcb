/**
 * The small part of DER this control plane writes and reads on its hot path: the fixed shape of a
 * workload certificate and the fields of a CSR. Everything else (CA creation, provided CAs) goes
 * through @peculiar/x509 and node:crypto. docs/adr/0001-x509.md says why.
 */

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), lengthBytes(body.length), body]);
}

export const seq = (...parts: Buffer[]): Buffer => tlv(0x30, Buffer.concat(parts));
export const explicit = (n: number, body: Buffer): Buffer => tlv(0xa0 | n, body);
export const octets = (b: Buffer): Buffer => tlv(0x04, b);
export const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));
export const bitString = (b: Buffer, unusedBits = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), b]));

/** A non-negative INTEGER from big-endian bytes. */
export function uint(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && b[i + 1]! < 0x80) i++;
  const v = b.subarray(i);
  return tlv(0x02, v[0]! >= 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

const oidCache = new Map<string, Buffer>();
export function oid(dotted: string): Buffer {
  let out = oidCache.get(dotted);
  if (out) return out;
  const arcs = dotted.split('.').map(Number);
  const bytes: number[] = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const chunk: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift((v & 0x7f) | 0x80);
    bytes.push(...chunk);
  }
  out = tlv(0x06, Buffer.from(bytes));
  oidCache.set(dotted, out);
  return out;
}

/** UTCTime through 2049, GeneralizedTime after, as RFC 5280 requires. */
export function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z';
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(iso.slice(2), 'ascii')) : tlv(0x18, Buffer.from(iso, 'ascii'));
}

export interface Node {
  tag: number;
  /** The whole element, header included. */
  raw: Buffer;
  /** The content. */
  body: Buffer;
}

/** Reads one element at `offset`. Throws on anything malformed or truncated. */
export function read(buf: Buffer, offset = 0): Node & { end: number } {
  if (offset + 2 > buf.length) throw new Error('truncated DER');
  const tag = buf[offset]!;
  let len = buf[offset + 1]!;
  let start = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > buf.length) throw new Error('bad DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  const end = start + len;
  if (end > buf.length) throw new Error('truncated DER');
  return { tag, raw: buf.subarray(offset, end), body: buf.subarray(start, end), end };
}

/** The children of a constructed element. */
export function children(node: Node): Node[] {
  const out: Node[] = [];
  for (let off = 0; off < node.body.length; ) {
    const n = read(node.body, off);
    out.push(n);
    off = n.end;
  }
  return out;
}

export function readOid(node: Node): string {
  if (node.tag !== 0x06) throw new Error('expected an OBJECT IDENTIFIER');
  const b = node.body;
  const arcs = [Math.floor(b[0]! / 40), b[0]! % 40];
  let v = 0;
  for (const byte of b.subarray(1)) {
    v = v * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      arcs.push(v);
      v = 0;
    }
  }
  return arcs.join('.');
}

export function pemToDer(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`).exec(pem);
  if (!m) throw new Error(`no ${label} PEM block`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

export function derToPem(der: Buffer, label: string): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}
