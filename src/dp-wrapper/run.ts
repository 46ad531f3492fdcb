import { mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { BootstrapResponse } from '../ads/index.js';
import { decodeResource, defaultRegistry, renderTemplate, resolvConfNameservers, VERSION, WeftError, type DataplaneSpec, type Logger, type ResourceInput } from '../core/index.js';
import { CpClient, withRetry } from './cp-client.js';
import { grpcXdsBootstrap, type IdentityFiles } from './grpc-bootstrap.js';
import { writeAtomic } from './files.js';
import { identityUris, WorkloadIdentity, type Clock, type Issued } from './identity.js';
import { XdsRelay } from './relay.js';
import { checkBootstrap, envoyBootstrap } from './envoy-bootstrap.js';
import { LocalSds } from './sds.js';
import { MeshDns } from './dns.js';
import { EnvoySupervisor, type SupervisorOptions } from './supervisor.js';
import { parseCpAddress } from './cp-client.js';

/** weft-dp's settings (flags, or WEFT_DP_* variables; see main.ts). */
export interface DpOptions {
  cpAddress: string;
  caCertFile?: string;
  dataplaneTokenFile?: string;
  dataplaneToken?: string;
  dataplaneFile?: string;
  dataplane?: string;
  vars: Record<string, string>;
  name?: string;
  mesh?: string;
  workDir: string;
  proxyless: boolean;
  readyPort: number;
  readyAddress: string;
  binaryPath?: string;
  adminPort?: number;
  drainTimeMs?: number;
  concurrency?: number;
  envoyLogLevel?: string;
  /** Incremental xDS (default) or state of the world, for Envoy. */
  xdsVariant?: 'delta' | 'sotw';
  /** Supervision limits (tests make them short). */
  supervision?: Pick<SupervisorOptions, 'maxRapidFailures' | 'rapidMs' | 'backoffMs' | 'maxBackoffMs' | 'killAfterMs'>;
  clock?: Clock;
  /** Answer `<service>.mesh` on this port (UDP and TCP), forwarding other names. */
  dns?: { port: number; addresses?: string[]; resolvConf?: string };
  /** How often to refresh virtual IPs and the mesh's mTLS state (default 5 s). */
  refreshMs?: number;
  /** Give up starting (exit 1) if the control plane is not ready within this long. */
  startTimeoutMs?: number;
  /** Aborts start-up (a signal before the proxy runs). */
  signal?: AbortSignal;
}

/** Exit codes: what happened. */
export const EXIT = { stopped: 0, startFailed: 1, proxyFailed: 2 } as const;

/** A start-up problem the user can fix: printed without a stack trace. */
export class StartError extends Error {}

/** The longest path a Unix socket may have (Linux's sun_path holds 108 bytes, the last a NUL). */
const UNIX_SOCKET_PATH_MOST_BYTES = 107;

function read(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new StartError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Renders the Dataplane template and validates it as the control plane will. */
export function loadDataplane(opts: Pick<DpOptions, 'dataplane' | 'dataplaneFile' | 'vars' | 'name' | 'mesh'>): ResourceInput<DataplaneSpec> {
  const source = opts.dataplane ?? (opts.dataplaneFile ? read(opts.dataplaneFile, 'the dataplane file') : undefined);
  if (source === undefined) throw new StartError('no Dataplane: give --dataplane-file FILE or --dataplane YAML');
  const vars = { ...(opts.name ? { name: opts.name } : {}), ...(opts.mesh ? { mesh: opts.mesh } : {}), ...opts.vars };
  const { text, missing } = renderTemplate(source, vars);
  if (missing.length > 0) {
    throw new StartError(`the Dataplane template needs ${missing.map((m) => `"${m.name}" (line ${m.line})`).join(', ')}: give --dataplane-var ${missing[0]!.name}=VALUE`);
  }
  const docs = parseAllDocuments(text);
  const first = docs[0];
  if (!first || first.errors.length > 0) throw new StartError(`the Dataplane is not valid YAML: ${first?.errors[0]?.message ?? 'empty'}`);
  const doc = { ...(first.toJS() as Record<string, unknown>) };
  doc.name ??= opts.name;
  doc.mesh ??= opts.mesh ?? 'default';
  try {
    return decodeResource(doc, defaultRegistry(), { type: 'Dataplane' }).resource as ResourceInput<DataplaneSpec>;
  } catch (err) {
    if (err instanceof WeftError) throw new StartError(`${err.message}${err.violations.map((v) => `\n  ${v.field}: ${v.message}`).join('')}`);
    throw err;
  }
}

export interface RunningDataplane {
  bootstrap: BootstrapResponse;
  /** Port of /ready (and /quitquitquit on loopback). */
  readyPort: number;
  /** Where DNS listens (UDP and TCP), when enabled. */
  dnsPorts: number[];
  /** Proxyless: the gRPC xDS bootstrap file for the app (GRPC_XDS_BOOTSTRAP). */
  grpcBootstrapFile?: string;
  identity?: WorkloadIdentity;
  ready(): Promise<boolean>;
  /** Graceful stop: not ready, drain, deregister, close (`now`: skip draining). Resolves to the exit code. */
  stop(reason?: string, now?: boolean): Promise<number>;
  /** Resolves when stopped (by stop() or /quitquitquit). */
  stopped: Promise<number>;
}

/**
 * Starts weft-dp for one Dataplane: renders and checks it, registers with the control plane
 * (retrying while it is not reachable), gets the workload certificate, then serves the proxy.
 * In proxyless mode: the xDS relay, the gRPC bootstrap file and the identity files of the app.
 */
export async function runDataplane(opts: DpOptions, log: Logger): Promise<RunningDataplane> {
  const resource = loadDataplane(opts);
  const token = opts.dataplaneToken ?? (opts.dataplaneTokenFile ? read(opts.dataplaneTokenFile, 'the dataplane token file').trim() : undefined);
  // Never echo the token: a malformed one is described, not printed.
  if (token !== undefined && !/^[A-Za-z0-9._~+/=-]+$/.test(token)) {
    throw new StartError(`the dataplane token${opts.dataplaneTokenFile ? ` in ${opts.dataplaneTokenFile}` : ''} is malformed: it must be one token (weftctl generate dataplane-token), without spaces or extra lines`);
  }
  const caCertPem = opts.caCertFile ? read(opts.caCertFile, 'the CA certificate file') : undefined;
  const sdsSocket = join(opts.workDir, 'sds.sock');
  if (!opts.proxyless && Buffer.byteLength(sdsSocket) > UNIX_SOCKET_PATH_MOST_BYTES) {
    // Past it the kernel refuses the socket with a misleading "address already in use".
    throw new StartError(`the work directory ${opts.workDir} is too long: Envoy's SDS socket there would be ${Buffer.byteLength(sdsSocket)} bytes, over the ${UNIX_SOCKET_PATH_MOST_BYTES} a Unix socket path may have; give a shorter --work-dir`);
  }
  mkdirSync(opts.workDir, { recursive: true, mode: 0o700 });
  const cp = new CpClient({ address: opts.cpAddress, caCertPem, token });
  const abort = new AbortController();
  opts.signal?.addEventListener('abort', () => abort.abort(), { once: true });
  const cleanup: (() => void | Promise<void>)[] = [() => cp.close()];
  let readyNow = false;
  let resolveStopped!: (code: number) => void;
  const stopped = new Promise<number>((r) => (resolveStopped = r));
  let stopping: Promise<number> | undefined;
  /** Drains and stops the proxy (Envoy), when there is one. */
  let stopProxy: ((now: boolean) => Promise<void>) | undefined;
  let exitCode: number = EXIT.stopped;

  const stop = (reason = 'stop requested', now = false): Promise<number> => {
    if (stopping && now) void stopProxy?.(true);
    stopping ??= (async () => {
      readyNow = false;
      abort.abort();
      log.info({ reason }, 'stopping');
      await stopProxy?.(now);
      await cp.call('Deregister', { mesh: resource.mesh, name: resource.name }, 2000).catch((err: Error) => log.warn({ reason: err.message }, 'could not deregister; the control plane removes the Dataplane once the proxy is gone'));
      for (const c of cleanup.reverse()) await c();
      resolveStopped(exitCode);
      return exitCode;
    })();
    return stopping;
  };

  let registered = false;
  try {
    const bootstrap = await withRetry('bootstrap', () => cp.call<BootstrapResponse>('Bootstrap', { dataplane: toWireDataplane(resource), proxyless: opts.proxyless, version: VERSION }), { log, signal: abort.signal, deadlineMs: opts.startTimeoutMs });
    registered = true;
    log.info({ nodeId: bootstrap.nodeId, mtls: bootstrap.mtls }, 'registered with the control plane');

    let identity: WorkloadIdentity | undefined;

    let sds: LocalSds | undefined;
    if (!opts.proxyless) {
      sds = new LocalSds(sdsSocket, log.child({ component: 'sds' }));
      await sds.listen();
      const s = sds;
      cleanup.push(() => s.close());
    }
    // Identity files of a proxyless app: named in its gRPC bootstrap from the start, written
    // once the mesh has mTLS (now or when it is turned on later).
    const f: IdentityFiles = { certificate_file: join(opts.workDir, 'identity.crt'), private_key_file: join(opts.workDir, 'identity.key'), ca_certificate_file: join(opts.workDir, 'ca.crt') };
    const startIdentity = async (): Promise<void> => {
      const id = new WorkloadIdentity({
        cp,
        uris: identityUris(resource.mesh, resource.spec),
        name: resource.name,
        log: log.child({ component: 'identity' }),
        clock: opts.clock,
        onIssued: (issued: Issued) => {
          if (sds) return sds.set(issued); // Envoy: over the local SDS only, never on disk
          // Proxyless: key first (0600), then the certificate and the roots, each replaced atomically.
          writeAtomic(f.private_key_file, issued.keyPem, 0o600);
          writeAtomic(f.certificate_file, issued.certificatePem, 0o644);
          writeAtomic(f.ca_certificate_file, issued.caBundle.join(''), 0o644);
        },
      });
      identity = id;
      cleanup.push(() => id.stop());
      await id.start(abort.signal);
    };
    if (bootstrap.mtls) await startIdentity();

    let dns: MeshDns | undefined;
    if (opts.dns) {
      const upstreams = resolvConfNameservers(opts.dns.resolvConf);
      dns = new MeshDns({ port: opts.dns.port, addresses: opts.dns.addresses, upstreams, log: log.child({ component: 'dns' }) });
      dns.setVips(bootstrap.vips);
      await dns.listen();
      const d = dns;
      cleanup.push(() => d.close());
    }
    // The mesh changes under the proxy: services come and go (virtual IPs for DNS), and mTLS may
    // be turned on (then the certificate is needed at once).
    let refreshing = false;
    let backend = bootstrap.mtls?.backend;
    const refresh = setInterval(() => {
      if (refreshing) return;
      refreshing = true;
      cp.call<{ vips: Record<string, string>; mtls: BootstrapResponse['mtls']; caBundle?: string[] }>('Vips', { mesh: resource.mesh }, 5000)
        .then(async (r) => {
          dns?.setVips(r.vips);
          if (r.mtls && !identity) {
            log.info({ backend: r.mtls.backend }, 'mTLS was turned on: getting a certificate');
            await startIdentity();
          } else if (r.mtls && identity && backend !== undefined && r.mtls.backend !== backend) {
            // A CA rotation: move to the new CA soon rather than at the next renewal; first give
            // every peer time to trust the new root (their refresh, then gRPC's file watcher).
            const id = identity;
            const delay = 2 * (opts.refreshMs ?? 5000) + 5000;
            log.info({ from: backend, to: r.mtls.backend, renewInMs: delay }, 'the mesh switched CA: renewing the certificate once peers trust the new root');
            const t = setTimeout(() => id.renewNow(), delay);
            t.unref();
            cleanup.push(() => clearTimeout(t));
          }
          backend = r.mtls?.backend;
          // Proxyless apps read the roots from a file: keep it as the control plane has them.
          const bundle = r.caBundle?.join('');
          if (opts.proxyless && identity?.current && bundle && bundle !== readFileSync(f.ca_certificate_file, 'utf8')) {
            writeAtomic(f.ca_certificate_file, bundle, 0o644);
            log.info({ roots: r.caBundle!.length }, 'the mesh trust bundle changed: roots file updated');
          }
        })
        .catch((err: Error) => log.warn({ reason: err.message }, 'could not refresh the mesh state; keeping the last'))
        .finally(() => (refreshing = false));
    }, opts.refreshMs ?? 5000);
    refresh.unref();
    cleanup.push(() => clearInterval(refresh));

    let grpcBootstrapFile: string | undefined;
    let isReady: () => boolean | Promise<boolean> = () => readyNow;
    if (opts.proxyless) {
      const relay = new XdsRelay(cp, log.child({ component: 'xds-relay' }));
      const port = await relay.listen();
      cleanup.push(() => relay.close());
      grpcBootstrapFile = join(opts.workDir, 'grpc-xds-bootstrap.json');
      const service = resource.spec.networking.inbound?.[0]?.tags['kuma.io/service'] ?? resource.name;
      writeAtomic(grpcBootstrapFile, `${JSON.stringify(grpcXdsBootstrap({ relayPort: port, nodeId: bootstrap.nodeId, cluster: service, files: f }), null, 2)}\n`, 0o644);
      log.info({ GRPC_XDS_BOOTSTRAP: grpcBootstrapFile, relayPort: port }, 'proxyless: start the gRPC app with GRPC_XDS_BOOTSTRAP set to this file');
      readyNow = true;
    } else {
      const cpAddr = parseCpAddress(opts.cpAddress);
      const [host, port] = [cpAddr.target.slice(0, cpAddr.target.lastIndexOf(':')).replace(/^\[|\]$/g, ''), Number(cpAddr.target.slice(cpAddr.target.lastIndexOf(':') + 1))];
      const adminPort = opts.adminPort ?? 9901;
      const service = resource.spec.networking.inbound?.[0]?.tags['kuma.io/service'] ?? resource.spec.networking.gateway?.tags['kuma.io/service'] ?? resource.name;
      const config = envoyBootstrap({ nodeId: bootstrap.nodeId, cluster: service, cp: { host, port, tls: cpAddr.tls, caCertPem }, token, adminPort, sdsSocket, variant: opts.xdsVariant ?? 'delta' });
      const problems = checkBootstrap(config);
      if (problems.length > 0) throw new StartError(`BUG: the Envoy bootstrap breaks Envoy's rules, please report: ${problems.join('; ')}`);
      const configPath = join(opts.workDir, 'envoy-bootstrap.json');
      // It holds the dataplane token: readable by this user only.
      writeAtomic(configPath, `${JSON.stringify(config, null, 2)}\n`, 0o600);
      const envoy = new EnvoySupervisor({
        binaryPath: opts.binaryPath ?? 'envoy',
        configPath,
        adminPort,
        drainTimeMs: opts.drainTimeMs ?? 30_000,
        logLevel: opts.envoyLogLevel ?? 'info',
        concurrency: opts.concurrency,
        log: log.child({ component: 'envoy' }),
        ...opts.supervision,
      });
      envoy.start();
      cleanup.push(() => envoy.stop({ now: true }));
      readyNow = true;
      isReady = async () => readyNow && (await envoy.ready());
      stopProxy = (now) => envoy.stop({ now });
      void envoy.exited.then((e) => {
        if (e.kind !== 'gave-up') return;
        readyNow = false;
        exitCode = EXIT.proxyFailed;
        void stop('Envoy keeps failing');
      });
    }

    const readiness = await serveReadiness(opts, isReady, () => void stop('/quitquitquit'));
    cleanup.unshift(() => new Promise<void>((r) => readiness.close(() => r())));
    return { bootstrap, readyPort: (readiness.address() as AddressInfo).port, dnsPorts: dns?.ports ?? [], grpcBootstrapFile, identity, ready: async () => Boolean(await isReady()), stop, stopped };
  } catch (err) {
    // Registered but never started: take the Dataplane back (no proxy will ever connect for it).
    if (registered) await cp.call('Deregister', { mesh: resource.mesh, name: resource.name }, 2000).catch(() => undefined);
    for (const c of cleanup.reverse()) await c();
    throw err;
  }
}

/** The Dataplane as the control plane's API reads it (Kuma Universal form). */
function toWireDataplane(r: ResourceInput<DataplaneSpec>): Record<string, unknown> {
  return { type: 'Dataplane', mesh: r.mesh, name: r.name, ...(Object.keys(r.labels).length ? { labels: r.labels } : {}), ...r.spec };
}

/**
 * `/ready`: 200 only when the proxy can take traffic, so apps and orchestrators can wait for it.
 * `/quitquitquit` (POST, from loopback only): stop, for batch jobs whose app has finished.
 */
function serveReadiness(opts: DpOptions, ready: () => boolean | Promise<boolean>, quit: () => void): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url === '/ready') {
      void Promise.resolve(ready()).then((ok) => res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ready\n' : 'not ready\n'));
      return;
    }
    if (req.url === '/quitquitquit') {
      const from = req.socket.remoteAddress ?? '';
      if (req.method !== 'POST') return void res.writeHead(405).end('POST only\n');
      if (!/^(127\.|::1$|::ffff:127\.)/.test(from)) return void res.writeHead(403).end('from loopback only\n');
      res.writeHead(200).end('stopping\n');
      return quit();
    }
    res.writeHead(404).end('not found\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.readyPort, opts.readyAddress, () => resolve(server));
  });
}

