import { createPrivateKey, X509Certificate } from 'node:crypto';
import type { Violation } from '../errors.js';

/** Checks a CA the user provides: parses, is a CA, the key matches, valid now. Every problem is reported. */
export function validateProvidedCa(certPem: string, keyPem: string, now = new Date()): Violation[] {
  const out: Violation[] = [];
  let cert: X509Certificate | undefined;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    out.push({ field: 'conf.cert', message: `is not a PEM certificate: ${(err as Error).message}` });
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    out.push({ field: 'conf.key', message: `is not a PEM private key: ${(err as Error).message}` });
  }
  if (cert) {
    if (!cert.ca) out.push({ field: 'conf.cert', message: 'is not a CA certificate (basicConstraints CA:TRUE is missing)' });
    if (new Date(cert.validTo) <= now) out.push({ field: 'conf.cert', message: `expired on ${new Date(cert.validTo).toISOString()}` });
    if (new Date(cert.validFrom) > now) out.push({ field: 'conf.cert', message: `is not valid before ${new Date(cert.validFrom).toISOString()}` });
    if (key && !cert.checkPrivateKey(key)) out.push({ field: 'conf.key', message: 'does not match the certificate' });
  }
  return out;
}

