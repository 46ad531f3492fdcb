/**
 * The walkthrough's three workloads, as proxyless gRPC apps on @grpc/grpc-js-xds (ROLE env):
 * - redis: the counter (an xDS-managed server: mTLS and permissions come from the mesh);
 * - demo-app: an xDS-managed server that increments the counter in redis for each hit;
 * - gateway: the edge, a plain gRPC server for users outside the mesh, calling demo-app.
 * Each answer carries the SPIFFE IDs each hop saw on its TLS peer, so the walkthrough can check
 * the certificates on the wire. Prints `{"listening": port}` when bound.
 */
import * as grpc from '@grpc/grpc-js';
import * as xds from '@grpc/grpc-js-xds';

xds.register();
const json = { serialize: (o: unknown) => Buffer.from(JSON.stringify(o)), deserialize: (b: Buffer) => JSON.parse(b.toString()) as unknown };
const method = (path: string) => ({ path, requestStream: false, responseStream: false, requestSerialize: json.serialize, requestDeserialize: json.deserialize, responseSerialize: json.serialize, responseDeserialize: json.deserialize });
const HIT = '/weft.demo.Demo/Hit';
const INCR = '/weft.demo.Redis/Incr';

const role = process.env.ROLE;
const port = Number(process.env.PORT ?? 0);
const peerIds = (call: grpc.ServerUnaryCall<unknown, unknown>) =>
  (call.getAuthContext().sslPeerCertificate?.subjectaltname ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:spiffe://'))
    .map((s) => s.slice(4));

type Reply = Record<string, unknown>;

function call(client: grpc.Client, path: string): Promise<Reply> {
  return new Promise((resolve, reject) => client.makeUnaryRequest(path, json.serialize, json.deserialize, {}, { deadline: Date.now() + 3000 }, (err, res) => (err ? reject(err) : resolve(res as Reply))));
}

/** An upstream error, passed on with who said it. */
function relay(who: string, err: grpc.ServiceError): grpc.StatusObject {
  return { code: err.code, details: `${who}: ${grpc.status[err.code]}: ${err.details}`, metadata: new grpc.Metadata() };
}

const creds = () => new xds.XdsChannelCredentials(grpc.credentials.createInsecure());
const bind = (server: grpc.Server, credentials: grpc.ServerCredentials) =>
  server.bindAsync(`127.0.0.1:${port}`, credentials, (err, p) => {
    if (err) {
      process.stderr.write(`${role}: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`${JSON.stringify({ listening: p })}\n`);
  });

if (role === 'redis') {
  let count = 0;
  const server = new xds.XdsServer();
  server.addService({ Incr: method(INCR) }, { Incr: (c: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<Reply>) => cb(null, { count: ++count, redisSaw: peerIds(c) }) });
  bind(server, new xds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()));
} else if (role === 'demo-app') {
  const redis = new grpc.Client('xds:///redis', creds());
  const server = new xds.XdsServer();
  server.addService(
    { Hit: method(HIT) },
    {
      Hit: (c: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<Reply>) => {
        call(redis, INCR).then(
          (r) => cb(null, { ...r, demoAppSaw: peerIds(c) }),
          (e: grpc.ServiceError) => cb(relay('redis', e)),
        );
      },
    },
  );
  bind(server, new xds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()));
} else if (role === 'gateway') {
  const demo = new grpc.Client('xds:///demo-app', creds());
  const server = new grpc.Server();
  server.addService({ Hit: method(HIT) }, { Hit: (_c: unknown, cb: grpc.sendUnaryData<Reply>) => void call(demo, HIT).then((r) => cb(null, r), (e: grpc.ServiceError) => cb(relay('demo-app', e))) });
  bind(server, grpc.ServerCredentials.createInsecure());
} else {
  process.stderr.write('ROLE must be redis, demo-app or gateway\n');
  process.exit(2);
}
process.on('SIGTERM', () => process.exit(0));
