import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { createLogger, durationToMs, parsePairs, VERSION } from '../core/index.js';
import { CpError } from './cp-client.js';
import { EXIT, runDataplane, StartError } from './run.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** An option that also reads WEFT_DP_<NAME> (Kuma's kuma-dp flags keep their names). */
const opt = (flags: string, description: string, env: string) => new Option(flags, description).env(`WEFT_DP_${env}`);

/**
 * `$TMPDIR/weft-dp-<name>`; a name of more than 40 characters (they may have 253) is cut, with a
 * hash of the whole name so that two long names keep apart, so the SDS socket in it stays within
 * a Unix socket path's length.
 */
export function defaultWorkDir(name: string | undefined, base = tmpdir()): string {
  if (name === undefined) return join(base, `weft-dp-${process.pid}`);
  const short = name.length <= 40 ? name : `${name.slice(0, 40)}-${createHash('sha256').update(name).digest('hex').slice(0, 8)}`;
  return join(base, `weft-dp-${short}`);
}

export function buildProgram(onExit: (code: number) => void): Command {
  const program = new Command('weft-dp').description('Weft data-plane wrapper: registers a Dataplane and runs its proxy').version(VERSION);
  program
    .command('run')
    .description('register the Dataplane with the control plane and run its proxy (Envoy, or a proxyless gRPC app)')
    .addOption(opt('--cp-address <url>', 'control plane dp-server address', 'CP_ADDRESS').default('https://127.0.0.1:5678'))
    .addOption(opt('--ca-cert-file <file>', "CA of the control plane's certificate (its <dataDir>/xds-tls.crt)", 'CA_CERT_FILE'))
    .addOption(opt('--dataplane-token-file <file>', 'dataplane token (weftctl generate dataplane-token)', 'DATAPLANE_TOKEN_FILE'))
    .addOption(opt('--dataplane-token <token>', 'dataplane token itself', 'DATAPLANE_TOKEN').hideHelp())
    .addOption(opt('--dataplane-file <file>', 'Dataplane resource (YAML), a template with {{ var }}', 'DATAPLANE_FILE'))
    .addOption(opt('--dataplane <yaml>', 'Dataplane resource inline', 'DATAPLANE'))
    .option('--dataplane-var <key=value>', 'template variable (repeatable; WEFT_DP_DATAPLANE_VAR: comma-separated)', collect, [])
    .addOption(opt('--name <name>', 'Dataplane name (also the template variable "name")', 'NAME'))
    .addOption(opt('--mesh <mesh>', 'mesh (also the template variable "mesh")', 'MESH'))
    .addOption(opt('--binary-path <path>', 'Envoy binary', 'BINARY_PATH').default('envoy'))
    .addOption(opt('--admin-port <port>', "Envoy's admin port (loopback only)", 'ADMIN_PORT').default('9901'))
    .addOption(opt('--drain-time <duration>', 'how long to drain on shutdown', 'DRAIN_TIME').default('30s'))
    .addOption(opt('--concurrency <n>', "Envoy's worker threads", 'CONCURRENCY'))
    .addOption(opt('--envoy-log-level <level>', "Envoy's log level", 'ENVOY_LOG_LEVEL').default('info'))
    .addOption(opt('--work-dir <dir>', 'where bootstrap and identity files go (mode 0700)', 'WORK_DIR'))
    .addOption(opt('--dns-enabled', 'answer <service>.mesh names (transparent proxy)', 'DNS_ENABLED'))
    .addOption(opt('--dns-port <port>', 'DNS port', 'DNS_PORT').default('15053'))
    .addOption(opt('--proxyless', 'no Envoy: relay xDS and keep identity files for a gRPC app on @grpc/grpc-js-xds', 'PROXYLESS'))
    .addOption(opt('--ready-port <port>', 'port of /ready (0: any free port)', 'READY_PORT').default('9902'))
    .addOption(opt('--ready-address <address>', 'address of /ready', 'READY_ADDRESS').default('0.0.0.0'))
    .addOption(opt('--start-timeout <duration>', 'give up (exit 1) if the control plane is not reachable for this long at start', 'START_TIMEOUT').default('5m'))
    .addOption(opt('--max-restarts <n>', 'give up (exit 2) after this many Envoy failures in a row, each within 10 s of its start', 'MAX_RESTARTS').default('5'))
    .addOption(opt('--restart-backoff <duration>', 'first delay before restarting Envoy; doubled each time, at most 30s', 'RESTART_BACKOFF').default('1s'))
    .addOption(opt('--refresh-interval <duration>', 'how often to refresh virtual IPs and the mesh mTLS state from the control plane', 'REFRESH_INTERVAL').default('5s'))
    .addOption(opt('--xds-variant <variant>', "Envoy's xDS flavour: delta (incremental) or sotw", 'XDS_VARIANT').choices(['delta', 'sotw']).default('delta'))
    .addOption(opt('--log-level <level>', "weft-dp's log level", 'LOG_LEVEL').default('info'))
    .action(async (o: Record<string, string | boolean | string[] | undefined>) => {
      const log = createLogger('weft-dp', String(o.logLevel));
      let running: Awaited<ReturnType<typeof runDataplane>> | undefined;
      let signals = 0;
      const starting = new AbortController();
      for (const s of ['SIGTERM', 'SIGINT'] as const) {
        process.on(s, () => {
          signals++;
          if (!running) {
            // Still starting: give up starting (exit 1), or at once on a second signal.
            starting.abort();
            if (signals > 1) onExit(130);
            return;
          }
          if (signals > 1) {
            log.warn({ signal: s }, 'second signal: stopping at once');
            void running.stop(s, true);
            return;
          }
          void running.stop(s);
        });
      }
      try {
        const name = o.name as string | undefined;
        running = await runDataplane(
          {
            cpAddress: String(o.cpAddress),
            caCertFile: o.caCertFile as string | undefined,
            dataplaneTokenFile: o.dataplaneTokenFile as string | undefined,
            dataplaneToken: o.dataplaneToken as string | undefined,
            dataplaneFile: o.dataplaneFile as string | undefined,
            dataplane: o.dataplane as string | undefined,
            vars: parsePairs([...(process.env.WEFT_DP_DATAPLANE_VAR ?? '').split(/[,\n]/).filter((p) => p.trim() !== ''), ...(o.dataplaneVar as string[])], '--dataplane-var'),
            name,
            mesh: o.mesh as string | undefined,
            workDir: (o.workDir as string | undefined) ?? defaultWorkDir(name),
            proxyless: o.proxyless === true,
            readyPort: Number(o.readyPort),
            readyAddress: String(o.readyAddress),
            binaryPath: String(o.binaryPath),
            adminPort: Number(o.adminPort),
            drainTimeMs: durationToMs(String(o.drainTime)),
            concurrency: o.concurrency === undefined ? undefined : Number(o.concurrency),
            envoyLogLevel: String(o.envoyLogLevel),
            xdsVariant: o.xdsVariant === 'sotw' ? 'sotw' : 'delta',
            supervision: { maxRapidFailures: Number(o.maxRestarts), backoffMs: durationToMs(String(o.restartBackoff)) },
            dns: o.dnsEnabled ? { port: Number(o.dnsPort) } : undefined,
            refreshMs: durationToMs(String(o.refreshInterval)),
            startTimeoutMs: durationToMs(String(o.startTimeout)),
            signal: starting.signal,
          },
          log,
        );
      } catch (err) {
        const message = err instanceof StartError || err instanceof CpError || err instanceof Error ? err.message : String(err);
        log.fatal({ reason: message }, 'weft-dp could not start');
        process.stderr.write(`weft-dp: ${message}\n`);
        return onExit(EXIT.startFailed);
      }
      log.info({ readyPort: running.readyPort, dnsPorts: running.dnsPorts, nodeId: running.bootstrap.nodeId }, 'weft-dp running');
      const code = await running.stopped;
      onExit(signals > 1 ? 130 : code);
    });
  return program;
}

export async function main(argv: string[]): Promise<number> {
  return new Promise<number>((resolve) => {
    const program = buildProgram(resolve);
    program.exitOverride();
    program.parseAsync(argv, { from: 'user' }).catch((err: { code?: string; exitCode?: number; message: string }) => {
      if (typeof err.code === 'string' && err.code.startsWith('commander.')) return resolve(err.exitCode ?? 1);
      process.stderr.write(`weft-dp: ${err.message}\n`);
      resolve(1);
    });
  });
}
