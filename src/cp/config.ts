import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { isPlainObject, validate, WeftError, type Violation } from '../core/index.js';

const listenPort = z.number().int().min(0, 'must be 0-65535').max(65535, 'must be 0-65535');

/**
 * The control plane's configuration: one schema with its defaults, read once from a YAML file and
 * WEFT_* environment variables (which win), validated, then frozen. docs/configuration.md lists
 * every setting; a test keeps it complete.
 */
export const configSchema = z
  .strictObject({
    /** Where the embedded store, the admin token and other local state live. */
    dataDir: z.string().min(1).default(join(homedir(), '.weft')),
    store: z
      .strictObject({
        type: z.enum(['embedded', 'postgres']).default('embedded'),
        postgres: z
          .strictObject({
            url: z.string().min(1).optional(),
            poolSize: z.number().int().min(1).max(1000).default(10),
          })
          .default({ poolSize: 10 }),
      })
      .default({ type: 'embedded', postgres: { poolSize: 10 } }),
    api: z
      .strictObject({
        address: z.string().min(1).default('127.0.0.1'),
        port: listenPort.default(5681),
        bodyLimitBytes: z.number().int().min(1024).default(1024 * 1024),
        /** `auto`: writes need the admin token unless the API is bound to loopback only. */
        auth: z.enum(['auto', 'always']).default('auto'),
      })
      .default({ address: '127.0.0.1', port: 5681, bodyLimitBytes: 1024 * 1024, auth: 'auto' }),
    diagnostics: z
      .strictObject({
        address: z.string().min(1).default('127.0.0.1'),
        port: listenPort.default(5680),
      })
      .default({ address: '127.0.0.1', port: 5680 }),
    xds: z
      .strictObject({
        address: z.string().min(1).default('0.0.0.0'),
        port: listenPort.default(5678),
        /** Until dataplane tokens land: serve any node id, to loopback peers only. Off by default. */
        allowUnauthenticatedLoopback: z.boolean().default(false),
        /** Wait after a proxy rejects (NACKs) config before sending that type again. */
        nackBackoffMs: z.number().int().min(0).max(600_000).default(5000),
        /** The longest such wait: it doubles each time a proxy rejects the same config again. */
        nackBackoffMaxMs: z.number().int().min(0).max(3_600_000).default(60_000),
        /** Regenerate config this long after the last change of a burst... */
        debounceMs: z.number().int().min(0).max(60_000).default(100),
        /** ...and at most this long after its first change. */
        debounceMaxMs: z.number().int().min(0).max(600_000).default(1000),
        /** Delete a Dataplane that weft-dp registered this long after its proxy disconnected for good. */
        ephemeralCleanupMs: z.number().int().min(0).max(86_400_000).default(10_000),
        /** Keep a departed proxy's config current this long, to answer it at once if it comes back (0: forget at once). */
        lingerMs: z.number().int().min(0).max(600_000).default(10_000),
        /** Before the xDS port opens, run the change paths on a private mesh this long at most, so the first changes after a start run compiled code (0: off). */
        warmUpMs: z.number().int().min(0).max(60_000).default(2000),
        /** Response bytes all xDS streams may have on their way out at once; more waits its turn. */
        sendBudgetBytes: z.number().int().min(65_536).default(64 * 1024 * 1024),
        /** While streams wait for that budget, cut the connection of a proxy that has taken nothing sent to it for this long (0: never). */
        sendStallCutMs: z.number().int().min(0).max(3_600_000).default(30_000),
        /** Ping each connection this often (0: never); one that sends nothing for this and keepaliveTimeoutMs more is cut. */
        keepaliveTimeMs: z.number().int().min(0).max(86_400_000).default(15_000),
        keepaliveTimeoutMs: z.number().int().min(1).max(600_000).default(15_000),
        /** Ask connections older than this to go, so proxies spread over the replicas (0: never). */
        maxConnectionAgeMs: z.number().int().min(0).max(2_592_000_000).default(0),
        /** How long such a connection's streams have before it is cut. */
        maxConnectionAgeGraceMs: z.number().int().min(0).max(3_600_000).default(10_000),
        /** Streams one xDS connection may have open at once; a proxy uses one. */
        maxStreamsPerConnection: z.number().int().min(1).max(1_000_000).default(100),
        tls: z
          .strictObject({
            /** auto: a self-signed certificate in the data dir; files: certFile + keyFile; off: plaintext. */
            mode: z.enum(['auto', 'files', 'off']).default('auto'),
            certFile: z.string().min(1).optional(),
            keyFile: z.string().min(1).optional(),
            /** auto: more DNS names for the certificate (comma-separated in the variable), e.g. a Kubernetes Service's. */
            dnsNames: z.array(z.string().min(1)).optional(),
          })
          .default({ mode: 'auto' }),
      })
      .default({ address: '0.0.0.0', port: 5678, allowUnauthenticatedLoopback: false, nackBackoffMs: 5000, nackBackoffMaxMs: 60_000, debounceMs: 100, debounceMaxMs: 1000, ephemeralCleanupMs: 10_000, lingerMs: 10_000, warmUpMs: 2000, sendBudgetBytes: 64 * 1024 * 1024, sendStallCutMs: 30_000, keepaliveTimeMs: 15_000, keepaliveTimeoutMs: 15_000, maxConnectionAgeMs: 0, maxConnectionAgeGraceMs: 10_000, maxStreamsPerConnection: 100, tls: { mode: 'auto' } }),
    secrets: z
      .strictObject({
        /**
         * 32-byte base64 key that seals keys kept in the store. Default: `<dataDir>/secret.key`,
         * created at first start. Replicas on one PostgreSQL must share it.
         */
        keyFile: z.string().min(1).optional(),
      })
      .default({}),
    /**
     * On shutdown, how long HTTP requests in flight get to finish, and clients of the ended xDS
     * streams to go, before every connection still open is cut.
     */
    shutdownGraceMs: z.number().int().min(0).max(600_000).default(5000),
    log: z
      .strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info') })
      .default({ level: 'info' }),
    defaults: z
      .strictObject({
        /** Kuma creates a `default` mesh at start; set true to skip that. */
        skipMeshCreation: z.boolean().default(false),
      })
      .default({ skipMeshCreation: false }),
  });

export type Config = z.infer<typeof configSchema>;

type EnvKind = 'string' | 'number' | 'boolean' | 'list';

/** Every environment variable the control plane reads, and the setting it sets. */
export const ENV_VARS: Readonly<Record<string, { path: readonly string[]; kind: EnvKind }>> = {
  WEFT_DATA_DIR: { path: ['dataDir'], kind: 'string' },
  WEFT_STORE_TYPE: { path: ['store', 'type'], kind: 'string' },
  WEFT_STORE_POSTGRES_URL: { path: ['store', 'postgres', 'url'], kind: 'string' },
  WEFT_STORE_POSTGRES_POOL_SIZE: { path: ['store', 'postgres', 'poolSize'], kind: 'number' },
  WEFT_API_ADDRESS: { path: ['api', 'address'], kind: 'string' },
  WEFT_API_PORT: { path: ['api', 'port'], kind: 'number' },
  WEFT_API_BODY_LIMIT_BYTES: { path: ['api', 'bodyLimitBytes'], kind: 'number' },
  WEFT_API_AUTH: { path: ['api', 'auth'], kind: 'string' },
  WEFT_DIAGNOSTICS_ADDRESS: { path: ['diagnostics', 'address'], kind: 'string' },
  WEFT_DIAGNOSTICS_PORT: { path: ['diagnostics', 'port'], kind: 'number' },
  WEFT_XDS_ADDRESS: { path: ['xds', 'address'], kind: 'string' },
  WEFT_XDS_PORT: { path: ['xds', 'port'], kind: 'number' },
  WEFT_XDS_ALLOW_UNAUTHENTICATED_LOOPBACK: { path: ['xds', 'allowUnauthenticatedLoopback'], kind: 'boolean' },
  WEFT_XDS_NACK_BACKOFF_MS: { path: ['xds', 'nackBackoffMs'], kind: 'number' },
  WEFT_XDS_NACK_BACKOFF_MAX_MS: { path: ['xds', 'nackBackoffMaxMs'], kind: 'number' },
  WEFT_XDS_EPHEMERAL_CLEANUP_MS: { path: ['xds', 'ephemeralCleanupMs'], kind: 'number' },
  WEFT_XDS_LINGER_MS: { path: ['xds', 'lingerMs'], kind: 'number' },
  WEFT_XDS_DEBOUNCE_MS: { path: ['xds', 'debounceMs'], kind: 'number' },
  WEFT_XDS_DEBOUNCE_MAX_MS: { path: ['xds', 'debounceMaxMs'], kind: 'number' },
  WEFT_XDS_WARM_UP_MS: { path: ['xds', 'warmUpMs'], kind: 'number' },
  WEFT_XDS_SEND_BUDGET_BYTES: { path: ['xds', 'sendBudgetBytes'], kind: 'number' },
  WEFT_XDS_SEND_STALL_CUT_MS: { path: ['xds', 'sendStallCutMs'], kind: 'number' },
  WEFT_XDS_KEEPALIVE_TIME_MS: { path: ['xds', 'keepaliveTimeMs'], kind: 'number' },
  WEFT_XDS_KEEPALIVE_TIMEOUT_MS: { path: ['xds', 'keepaliveTimeoutMs'], kind: 'number' },
  WEFT_XDS_MAX_CONNECTION_AGE_MS: { path: ['xds', 'maxConnectionAgeMs'], kind: 'number' },
  WEFT_XDS_MAX_STREAMS_PER_CONNECTION: { path: ['xds', 'maxStreamsPerConnection'], kind: 'number' },
  WEFT_XDS_MAX_CONNECTION_AGE_GRACE_MS: { path: ['xds', 'maxConnectionAgeGraceMs'], kind: 'number' },
  WEFT_XDS_TLS_MODE: { path: ['xds', 'tls', 'mode'], kind: 'string' },
  WEFT_XDS_TLS_CERT_FILE: { path: ['xds', 'tls', 'certFile'], kind: 'string' },
  WEFT_XDS_TLS_KEY_FILE: { path: ['xds', 'tls', 'keyFile'], kind: 'string' },
  WEFT_XDS_TLS_DNS_NAMES: { path: ['xds', 'tls', 'dnsNames'], kind: 'list' },
  WEFT_SECRETS_KEY_FILE: { path: ['secrets', 'keyFile'], kind: 'string' },
  WEFT_SHUTDOWN_GRACE_MS: { path: ['shutdownGraceMs'], kind: 'number' },
  WEFT_LOG_LEVEL: { path: ['log', 'level'], kind: 'string' },
  WEFT_DEFAULTS_SKIP_MESH_CREATION: { path: ['defaults', 'skipMeshCreation'], kind: 'boolean' },
};

/** The variable naming the config file. */
export const CONFIG_FILE_ENV = 'WEFT_CONFIG_FILE';

function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let cur = target;
  for (const key of path.slice(0, -1)) {
    if (!isPlainObject(cur[key])) cur[key] = {};
    cur = cur[key] as Record<string, unknown>;
  }
  cur[path[path.length - 1]!] = value;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Reads the file (if any) and the environment, validates, and returns a frozen config. */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): Readonly<Config> {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env[CONFIG_FILE_ENV];
  let raw: Record<string, unknown> = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new WeftError('invalid_config', `cannot read config file ${file}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text) ?? {};
    } catch (err) {
      throw new WeftError('invalid_config', `config file ${file} is not valid YAML: ${(err as Error).message}`);
    }
    if (!isPlainObject(parsed)) throw new WeftError('invalid_config', `config file ${file} must hold a mapping`);
    raw = parsed;
  }
  const violations: Violation[] = [];
  for (const [name, { path, kind }] of Object.entries(ENV_VARS)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    if (kind === 'number') {
      const n = Number(value);
      if (!Number.isFinite(n)) violations.push({ field: name, message: `must be a number (got "${value}")` });
      else setPath(raw, path, n);
    } else if (kind === 'boolean') {
      if (value !== 'true' && value !== 'false') violations.push({ field: name, message: `must be true or false (got "${value}")` });
      else setPath(raw, path, value === 'true');
    } else if (kind === 'list') setPath(raw, path, value.split(',').map((v) => v.trim()).filter(Boolean));
    else setPath(raw, path, value);
  }
  const res = validate(configSchema, raw);
  if (!res.ok) violations.push(...res.violations);
  // Checked on the raw input so they are reported together with any other problem.
  const xds = isPlainObject(raw.xds) ? raw.xds : {};
  const tls = isPlainObject(xds.tls) ? xds.tls : {};
  if (tls.mode === 'files') {
    if (!tls.certFile) violations.push({ field: 'xds.tls.certFile', message: 'required when xds.tls.mode is files' });
    if (!tls.keyFile) violations.push({ field: 'xds.tls.keyFile', message: 'required when xds.tls.mode is files' });
  }
  const store = isPlainObject(raw.store) ? raw.store : {};
  if (store.type === 'postgres' && !(isPlainObject(store.postgres) && store.postgres.url)) {
    violations.push({ field: 'store.postgres.url', message: 'required when store.type is postgres' });
  }
  if (violations.length > 0 || !res.ok) {
    throw new WeftError('invalid_config', `invalid configuration${file ? ` (file ${file} and WEFT_* environment)` : ' (WEFT_* environment)'}`, violations);
  }
  return deepFreeze(res.value);
}
