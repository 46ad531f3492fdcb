import { connect, createServer, type TLSSocket } from 'node:tls';
import { createKeyAndCsr } from '../../src/certs/index.js';

/** What the data-plane wrapper does on its node: a fresh key, and a CSR naming the identities. */
export const keyAndCsr = (uris: string[]): Promise<{ keyPem: string; csrPem: string }> => createKeyAndCsr(uris);

export interface Identity {
  keyPem: string;
  certPem: string;
  caBundle: string[];
}

function uriSans(peer: { subjectaltname?: string }): string[] {
  return (peer.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
}

/**
 * One real mutual-TLS handshake on loopback, both sides checking the peer's SPIFFE ID the way
 * the mesh does. Resolves 'ok' or the reason the handshake or the identity check failed.
 */
export async function mtlsHandshake(server: Identity & { allowClient: string }, client: Identity & { expectServer: string }): Promise<string> {
  const srv = createServer({ key: server.keyPem, cert: server.certPem, ca: server.caBundle, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (sock: TLSSocket) => {
    const uris = uriSans(sock.getPeerCertificate());
    if (!uris.includes(server.allowClient)) sock.destroy(new Error(`client ${uris.join(',')} not allowed`));
    else sock.end('hello');
  });
  srv.on('tlsClientError', () => {});
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  try {
    return await new Promise<string>((resolve) => {
      const sock = connect({
        host: '127.0.0.1',
        port,
        key: client.keyPem,
        cert: client.certPem,
        ca: client.caBundle,
        minVersion: 'TLSv1.3',
        checkServerIdentity: (_host, cert) => {
          const uris = uriSans(cert as { subjectaltname?: string });
          return uris.includes(client.expectServer) ? undefined : new Error(`server is ${uris.join(',')}, expected ${client.expectServer}`);
        },
      });
      let data = '';
      sock.on('data', (d: Buffer) => (data += d.toString()));
      sock.on('error', (e: Error) => resolve(e.message));
      sock.on('close', () => resolve(data === 'hello' ? 'ok' : `closed without data${data ? `: ${data}` : ''}`));
      setTimeout(() => {
        sock.destroy();
        resolve('timeout');
      }, 3000).unref();
    });
  } finally {
    srv.close();
  }
}
