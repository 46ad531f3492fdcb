import 'reflect-metadata';
import { createPrivateKey, createPublicKey, randomBytes, sign, verify, webcrypto, type KeyObject } from 'node:crypto';
import * as der from './der.js';
import * as x509 from '@peculiar/x509';
import { WeftError } from '../core/index.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export type CaKeyType = 'ECDSA' | 'RSA';

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const rsa = (bits: number) => ({ name: 'RSASSA-PKCS1-v1_5', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }) as const;

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function serial(): string {
  const b = randomBytes(16);
  b[0]! &= 0x7f; // positive
  return b.toString('hex');
}

export interface CaMaterial {
  certPem: string;
  keyPem: string;
}

/** A fresh key pair and a self-signed certificate for it (roots, the control plane's own serving cert). */
async function selfSigned(opts: {
  alg: typeof ECDSA | ReturnType<typeof rsa>;
  name: string;
  notBefore: Date;
  validForMs: number;
  extensions: (keys: webcrypto.CryptoKeyPair) => Promise<x509.Extension[]>;
}): Promise<CaMaterial> {
  const keys = (await webcrypto.subtle.generateKey(opts.alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: opts.name,
    notBefore: opts.notBefore,
    notAfter: new Date(opts.notBefore.getTime() + opts.validForMs),
    signingAlgorithm: opts.alg,
    keys,
    extensions: await opts.extensions(keys),
  });
  return { certPem: cert.toString('pem'), keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)) };
}

/** A self-signed root for one mesh backend: ECDSA P-256 by default, RSA for compatibility. */
export function createRootCa(opts: { mesh: string; backend: string; keyType?: CaKeyType; rsaBits?: number; validForMs: number; now?: Date }): Promise<CaMaterial> {
  return selfSigned({
    alg: opts.keyType === 'RSA' ? rsa(opts.rsaBits ?? 2048) : ECDSA,
    name: `O=weft, OU=${opts.mesh}, CN=weft mesh ${opts.mesh} CA ${opts.backend}`,
    notBefore: new Date((opts.now ?? new Date()).getTime() - 60_000),
    validForMs: opts.validForMs,
    extensions: async (keys) => [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
}

export interface CsrContents {
  /** DER SubjectPublicKeyInfo of the requester's key. */
  publicKey: Buffer;
  uris: string[];
  dnsNames: string[];
}

const OID = {
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  rsaSha256: '1.2.840.113549.1.1.11',
  extensionRequest: '1.2.840.113549.1.9.14',
  san: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  authorityKeyId: '2.5.29.35',
  subjectKeyId: '2.5.29.14',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

const SIG_HASH: Record<string, string> = { [OID.ecdsaSha256]: 'sha256', [OID.ecdsaSha384]: 'sha384', [OID.rsaSha256]: 'sha256' };

function csrError(message: string): WeftError {
  return new WeftError('invalid_resource', 'the CSR cannot be used', [{ field: 'csr', message }]);
}

/** Parses a PEM CSR (PKCS#10) and checks its self-signature: proof the requester holds the key. */
export async function readCsr(csrPem: string): Promise<CsrContents> {
  let cri: der.Node, spki: der.Node, sigAlg: string, signature: Buffer, attributes: der.Node | undefined;
  try {
    const top = der.children(der.read(der.pemToDer(csrPem, 'CERTIFICATE REQUEST')));
    const info = der.children(top[0]!);
    cri = top[0]!;
    spki = info[2]!;
    attributes = info.find((n) => n.tag === 0xa0);
    sigAlg = der.readOid(der.children(top[1]!)[0]!);
    signature = top[2]!.body.subarray(1);
  } catch (err) {
    throw csrError(`is not a PEM certificate request: ${(err as Error).message}`);
  }
  const hash = SIG_HASH[sigAlg];
  if (!hash) throw csrError(`is signed with an algorithm this control plane does not accept (${sigAlg})`);
  let ok = false;
  try {
    ok = verify(hash, cri.raw, createPublicKey({ key: spki.raw, format: 'der', type: 'spki' }), signature);
  } catch (err) {
    throw csrError(`its public key cannot be read: ${(err as Error).message}`);
  }
  if (!ok) throw csrError('its signature does not match its public key');
  const uris: string[] = [];
  const dnsNames: string[] = [];
  try {
    for (const attr of attributes ? der.children(attributes) : []) {
      const [type, values] = der.children(attr);
      if (der.readOid(type!) !== OID.extensionRequest) continue;
      for (const ext of der.children(der.children(values!)[0]!)) {
        const parts = der.children(ext);
        if (der.readOid(parts[0]!) !== OID.san) continue;
        for (const name of der.children(der.read(parts[parts.length - 1]!.body))) {
          if (name.tag === 0x86) uris.push(name.body.toString('ascii'));
          else if (name.tag === 0x82) dnsNames.push(name.body.toString('ascii'));
        }
      }
    }
  } catch (err) {
    throw csrError(`its extensions cannot be read: ${(err as Error).message}`);
  }
  return { publicKey: Buffer.from(spki.raw), uris, dnsNames };
}

interface Signer {
  key: KeyObject;
  sigAlg: Buffer;
  issuer: Buffer;
  authorityKeyId?: Buffer;
}

/** Parsed CA and its key, once per CA material object. */
const signers = new WeakMap<CaMaterial, Signer>();

function signer(ca: CaMaterial): Signer {
  let s = signers.get(ca);
  if (!s) {
    const key = createPrivateKey(ca.keyPem);
    const tbs = der.children(der.children(der.read(der.pemToDer(ca.certPem, 'CERTIFICATE')))[0]!);
    const fields = tbs[0]!.tag === 0xa0 ? tbs.slice(1) : tbs;
    // fields: serial, signature, issuer, validity, subject, spki, [extensions]
    const subject = fields[4]!.raw;
    let authorityKeyId: Buffer | undefined;
    const exts = tbs.find((n) => n.tag === 0xa3);
    for (const ext of exts ? der.children(der.children(exts)[0]!) : []) {
      const parts = der.children(ext);
      if (der.readOid(parts[0]!) === OID.subjectKeyId) authorityKeyId = der.read(parts[parts.length - 1]!.body).body;
    }
    const ec = key.asymmetricKeyType === 'ec';
    s = { key, sigAlg: ec ? der.seq(der.oid(OID.ecdsaSha256)) : der.seq(der.oid(OID.rsaSha256), Buffer.from([0x05, 0x00])), issuer: Buffer.from(subject), authorityKeyId };
    signers.set(ca, s);
  }
  return s;
}

const STATIC_EXTENSIONS = Buffer.concat([
  der.seq(der.oid(OID.basicConstraints), der.bool(true), der.octets(der.seq())),
  // digitalSignature, keyEncipherment, keyAgreement
  der.seq(der.oid(OID.keyUsage), der.bool(true), der.octets(der.bitString(Buffer.from([0xa8]), 3))),
  der.seq(der.oid(OID.extKeyUsage), der.octets(der.seq(der.oid(OID.serverAuth), der.oid(OID.clientAuth)))),
]);

/**
 * Signs a workload certificate for the CSR's key with exactly the given URI SANs (SPIFFE ID first)
 * and an empty subject, as SPIFFE X.509-SVIDs are. The caller checks entitlement first. Pass the
 * same CaMaterial object for every signature of a CA: its parsed form is kept with it.
 */
export async function signWorkloadCertificate(opts: { ca: CaMaterial; publicKey: Buffer; uris: string[]; notBefore: Date; notAfter: Date }): Promise<string> {
  const s = signer(opts.ca);
  const san = der.seq(der.oid(OID.san), der.bool(true), der.octets(der.seq(...opts.uris.map((u) => der.tlv(0x86, Buffer.from(u, 'ascii'))))));
  const aki = s.authorityKeyId ? der.seq(der.oid(OID.authorityKeyId), der.octets(der.seq(der.tlv(0x80, s.authorityKeyId)))) : Buffer.alloc(0);
  const tbs = der.seq(
    der.explicit(0, der.uint(Buffer.from([2]))),
    der.uint(Buffer.from(serial(), 'hex')),
    s.sigAlg,
    s.issuer,
    der.seq(der.time(opts.notBefore), der.time(opts.notAfter)),
    der.seq(),
    opts.publicKey,
    der.explicit(3, der.seq(STATIC_EXTENSIONS, san, aki)),
  );
  const signature = sign('sha256', tbs, s.key);
  return der.derToPem(der.seq(tbs, s.sigAlg, der.bitString(signature)), 'CERTIFICATE');
}

/**
 * A self-signed serving certificate (ECDSA P-256) for the control plane's own endpoints, for
 * names and addresses given. Used when the operator provides none.
 */
export function createServingCertificate(opts: { dnsNames: string[]; ips: string[]; validForMs: number }): Promise<CaMaterial> {
  return selfSigned({
    alg: ECDSA,
    name: `O=weft, CN=${opts.dnsNames[0] ?? 'weft-cp'}`,
    notBefore: new Date(Date.now() - 60_000),
    validForMs: opts.validForMs,
    extensions: async () => [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([...opts.dnsNames.map((d) => ({ type: 'dns' as const, value: d })), ...opts.ips.map((ip) => ({ type: 'ip' as const, value: ip }))]),
    ],
  });
}

/**
 * What the data-plane wrapper does on its node: a fresh ECDSA P-256 key that never leaves it, and
 * a CSR naming the identities (URI SANs) it asks for.
 */
export async function createKeyAndCsr(uris: readonly string[]): Promise<{ keyPem: string; csrPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: ECDSA,
    extensions: [new x509.SubjectAlternativeNameExtension(uris.map((u) => ({ type: 'url' as const, value: u })))],
  });
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  return { keyPem: `-----BEGIN PRIVATE KEY-----\n${der.replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`, csrPem: csr.toString('pem') };
}
