import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createServingCertificate } from '../certs/index.js';
import type { Config } from './config.js';

export const XDS_TLS_CERT = 'xds-tls.crt';
export const XDS_TLS_KEY = 'xds-tls.key';

/**
 * The certificate and key the ADS port serves, per `xds.tls.mode`; undefined for plaintext.
 * `auto` creates a self-signed one in the data dir on first start (key mode 0600) and reuses it.
 */
export async function xdsServingMaterial(config: Readonly<Config>): Promise<{ certPem: string; keyPem: string; certPath: string } | undefined> {
  const tls = config.xds.tls;
  if (tls.mode === 'off') return undefined;
  if (tls.mode === 'files') return { certPem: readFileSync(tls.certFile!, 'utf8'), keyPem: readFileSync(tls.keyFile!, 'utf8'), certPath: tls.certFile! };
  const certPath = join(config.dataDir, XDS_TLS_CERT);
  const keyPath = join(config.dataDir, XDS_TLS_KEY);
  if (!existsSync(certPath) || !existsSync(keyPath)) {
    const m = await createServingCertificate({ dnsNames: [...new Set(['localhost', hostname(), ...(tls.dnsNames ?? [])])], ips: ['127.0.0.1', '::1'], validForMs: 10 * 365 * 86400_000 });
    writeFileSync(keyPath, m.keyPem, { mode: 0o600 });
    writeFileSync(certPath, m.certPem, { mode: 0o644 });
  }
  return { certPem: readFileSync(certPath, 'utf8'), keyPem: readFileSync(keyPath, 'utf8'), certPath };
}
