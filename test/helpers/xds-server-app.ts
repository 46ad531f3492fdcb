/**
 * A proxyless gRPC server app for end-to-end tests: an XdsServer (@grpc/grpc-js-xds) that takes its
 * listener, mTLS and RBAC from the control plane named in GRPC_XDS_BOOTSTRAP_CONFIG (gRFC A36, A29,
 * A41). Echo answers `<NAME>|<peer URI SANs>`, so tests see the identity the server saw on the wire.
 * Prints `{"serving":true}` once bound, and serving-state changes.
 */
import * as grpc from '@grpc/grpc-js';
import * as xds from '@grpc/grpc-js-xds';

xds.register(); // the xDS resolver and HTTP filters (router, RBAC) must be registered, for servers too
const name = process.env.NAME ?? 'server';
const address = process.env.ADDRESS ?? '127.0.0.1:0';
const server = new xds.XdsServer({ drainGraceTimeMs: 100 });
const id = (b: Buffer) => b;
server.addService(
  { Echo: { path: '/weft.test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
  {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const sans = call.getAuthContext().sslPeerCertificate?.subjectaltname ?? '';
      cb(null, Buffer.from(`${name}|${sans}`));
    },
  },
);
server.addServingStateListener(address, (st) => process.stdout.write(`${JSON.stringify({ servingStatus: st.code, details: st.details })}\n`));
server.bindAsync(address, new xds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()), (err, port) => {
  if (err) {
    process.stdout.write(`${JSON.stringify({ error: err.message })}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ bound: port })}\n`);
});
process.on('SIGTERM', () => {
  server.forceShutdown();
  process.exit(0);
});
