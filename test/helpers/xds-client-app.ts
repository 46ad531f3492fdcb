/**
 * A proxyless gRPC client app for end-to-end tests: @grpc/grpc-js-xds resolves `xds:///<service>`
 * through the control plane named in GRPC_XDS_BOOTSTRAP_CONFIG, and this calls the Echo method
 * every 50 ms, printing one JSON line per call: {"ok":true,"backend":"b1"} or the error.
 * XDS_CREDS=1 uses XdsChannelCredentials, so the mesh's mTLS (from CDS) applies.
 */
import * as grpc from '@grpc/grpc-js';
import * as xds from '@grpc/grpc-js-xds';

xds.register();
const target = process.env.TARGET ?? 'xds:///echo';
const creds = process.env.XDS_CREDS === '1' ? new xds.XdsChannelCredentials(grpc.credentials.createInsecure()) : grpc.credentials.createInsecure();
const client = new grpc.Client(target, creds);
const id = (b: Buffer) => b;
let stopped = false;
process.on('SIGTERM', () => {
  stopped = true;
  client.close();
  process.exit(0);
});
const deadlineMs = Number(process.env.RUN_MS ?? 30_000);
const started = Date.now();
function tick(): void {
  if (stopped || Date.now() - started > deadlineMs) {
    client.close();
    return;
  }
  client.makeUnaryRequest('/weft.test.Echo/Echo', id, id, Buffer.from('hi'), { deadline: Date.now() + 1000 }, (err, res) => {
    process.stdout.write(`${JSON.stringify(err ? { ok: false, code: err.code, details: err.details } : { ok: true, backend: res!.toString() })}\n`);
    setTimeout(tick, 50);
  });
}
tick();
