import { existsSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { isWeftError, type Violation } from '../core/index.js';
import { resolveConfig, type TransparentProxySettings } from './config.js';
import { checkTransparentProxy, installTransparentProxy, uninstallTransparentProxy } from './transparent-proxy.js';

/**
 * weft-cni, a CNI 1.0.0 plugin that applies the transparent-proxy rules inside a container's
 * network namespace. It runs chained after the plugin that creates the interface (bridge,
 * calico...): it passes `prevResult` through unchanged, and only adds iptables rules.
 */

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

/** CNI's error codes (spec section "Error"). */
export const CniCode = { incompatibleVersion: 1, unsupportedField: 2, unknownContainer: 3, invalidEnv: 4, ioFailure: 5, decodeFailure: 6, invalidConfig: 7, tryAgainLater: 11, plugin: 100 } as const;

export class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details?: string,
  ) {
    super(message);
  }
}

interface KubernetesConf {
  /** API server URL, e.g. https://10.96.0.1:443. */
  apiServer: string;
  tokenFile?: string;
  caFile?: string;
  timeoutMs?: number;
}

interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  prevResult?: Record<string, unknown>;
  /** Transparent-proxy settings, as for `weftctl install transparent-proxy` (camelCase). */
  weft?: TransparentProxySettings & { verify?: boolean };
  kubernetes?: KubernetesConf;
}

export interface CniEnv {
  command: string;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args: Record<string, string>;
}

export function cniEnv(env: NodeJS.ProcessEnv): CniEnv {
  const args: Record<string, string> = {};
  for (const pair of (env.CNI_ARGS ?? '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0) args[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return { command: env.CNI_COMMAND ?? '', containerId: env.CNI_CONTAINERID, netns: env.CNI_NETNS || undefined, ifname: env.CNI_IFNAME, args };
}

function parseConf(stdin: string): NetConf {
  let conf: unknown;
  try {
    conf = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CniCode.decodeFailure, 'the network configuration on stdin is not JSON', (err as Error).message);
  }
  if (!conf || typeof conf !== 'object' || Array.isArray(conf)) throw new CniError(CniCode.decodeFailure, 'the network configuration must be a JSON object');
  const c = conf as Partial<NetConf>;
  if (typeof c.cniVersion !== 'string') throw new CniError(CniCode.invalidConfig, 'cniVersion: required');
  if (!SUPPORTED_VERSIONS.includes(c.cniVersion)) throw new CniError(CniCode.incompatibleVersion, `cniVersion ${c.cniVersion} is not supported`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  if (c.weft !== undefined && (typeof c.weft !== 'object' || c.weft === null || Array.isArray(c.weft))) throw new CniError(CniCode.invalidConfig, 'weft: must be an object of transparent-proxy settings');
  if (c.kubernetes !== undefined && typeof c.kubernetes?.apiServer !== 'string') throw new CniError(CniCode.invalidConfig, 'kubernetes.apiServer: required when kubernetes is set');
  return c as NetConf;
}

const INJECTED = ['weft.io/sidecar-injected', 'kuma.io/sidecar-injected'];

/** Settings for one pod from its annotations (Kuma's names accepted); undefined: not in the mesh. */
export function podSettings(base: TransparentProxySettings, annotations: Record<string, string>): TransparentProxySettings | undefined {
  if (!INJECTED.some((a) => annotations[a] === 'true' || annotations[a] === 'enabled')) return undefined;
  const pick = (...names: string[]) => names.map((n) => annotations[n]).find((v) => v !== undefined);
  const ports = (v: string | undefined) => (v === undefined ? undefined : v.split(',').map((p) => Number(p.trim())).filter((p) => p > 0));
  const s: TransparentProxySettings = { ...base };
  const inbound = ports(pick('traffic.weft.io/exclude-inbound-ports', 'traffic.kuma.io/exclude-inbound-ports'));
  const outbound = ports(pick('traffic.weft.io/exclude-outbound-ports', 'traffic.kuma.io/exclude-outbound-ports'));
  const uid = pick('weft.io/sidecar-uid', 'kuma.io/sidecar-uid');
  if (inbound) s.excludeInboundPorts = [...(base.excludeInboundPorts ?? []), ...inbound];
  if (outbound) s.excludeOutboundPorts = [...(base.excludeOutboundPorts ?? []), ...outbound];
  if (uid !== undefined) s.dpUser = uid;
  return s;
}

/** The pod's annotations from the Kubernetes API, within a timeout. */
async function podAnnotations(k: KubernetesConf, namespace: string, name: string): Promise<Record<string, string>> {
  const url = new URL(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, k.apiServer);
  const token = k.tokenFile ? readFileSync(k.tokenFile, 'utf8').trim() : undefined;
  const ca = k.caFile ? readFileSync(k.caFile) : undefined;
  const timeoutMs = k.timeoutMs ?? 5000;
  const body = await new Promise<string>((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, ca, timeout: timeoutMs }, (res) => {
      let data = '';
      res.on('data', (d: Buffer) => (data += d.toString()));
      res.on('end', () => (res.statusCode === 200 ? resolve(data) : reject(new CniError(CniCode.tryAgainLater, `the Kubernetes API answered ${res.statusCode} for pod ${namespace}/${name}`, data.slice(0, 300)))));
    });
    req.on('timeout', () => req.destroy(new CniError(CniCode.tryAgainLater, `the Kubernetes API did not answer within ${timeoutMs} ms for pod ${namespace}/${name}`)));
    req.on('error', (err) => reject(err instanceof CniError ? err : new CniError(CniCode.tryAgainLater, `cannot reach the Kubernetes API at ${k.apiServer}: ${err.message}`)));
    req.end();
  });
  const pod = JSON.parse(body) as { metadata?: { annotations?: Record<string, string> } };
  return pod.metadata?.annotations ?? {};
}

function configError(err: unknown): never {
  if (isWeftError(err)) {
    const violations: readonly Violation[] = err.violations;
    throw new CniError(CniCode.invalidConfig, `weft: ${err.message}`, violations.map((v) => `weft.${v.field}: ${v.message}`).join('; ') || undefined);
  }
  throw err;
}

/** The settings that apply to this container, or undefined when it is not part of the mesh. */
async function settingsFor(conf: NetConf, env: CniEnv): Promise<TransparentProxySettings | undefined> {
  const base: TransparentProxySettings = { ...(conf.weft ?? {}) };
  delete (base as { verify?: boolean }).verify;
  // Inside a container the resolvers of the host are not the container's: redirect all DNS.
  if (base.redirectDns) base.redirectAllDnsTraffic = true;
  const pod = env.args.K8S_POD_NAME;
  const ns = env.args.K8S_POD_NAMESPACE;
  if (!conf.kubernetes || !pod || !ns) return base;
  return podSettings(base, await podAnnotations(conf.kubernetes, ns, pod));
}

function requireNetns(env: CniEnv): string {
  if (!env.netns) throw new CniError(CniCode.invalidEnv, 'CNI_NETNS: required');
  if (!existsSync(env.netns)) throw new CniError(CniCode.unknownContainer, `network namespace ${env.netns} does not exist`);
  return env.netns;
}

/** Runs one CNI command; resolves to what goes to stdout (or nothing). Throws CniError. */
export async function runCni(env: CniEnv, stdin: string, log: (msg: string, fields?: Record<string, unknown>) => void): Promise<string | undefined> {
  if (env.command === 'VERSION') return JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS });
  if (!['ADD', 'DEL', 'CHECK'].includes(env.command)) throw new CniError(CniCode.invalidEnv, `CNI_COMMAND "${env.command}" is not one of ADD, DEL, CHECK, VERSION`);
  const conf = parseConf(stdin);
  const result = JSON.stringify({ ...(conf.prevResult ?? {}), cniVersion: conf.cniVersion });
  if (env.command === 'DEL') {
    // Idempotent: nothing to do when the namespace is already gone.
    if (!env.netns || !existsSync(env.netns)) return undefined;
    await uninstallTransparentProxy({ netns: env.netns });
    log('rules removed', { containerId: env.containerId });
    return undefined;
  }
  const netns = requireNetns(env);
  const settings = await settingsFor(conf, env);
  if (!settings) {
    log('pod has no sidecar: skipped', { containerId: env.containerId, pod: env.args.K8S_POD_NAME });
    return env.command === 'ADD' ? result : undefined;
  }
  let config;
  let notes: string[] = [];
  try {
    ({ config, notes } = resolveConfig(settings));
  } catch (err) {
    configError(err);
  }
  if (env.command === 'CHECK') {
    const problems = await checkTransparentProxy(config, { netns });
    if (problems.length > 0) throw new CniError(CniCode.plugin, 'the transparent-proxy rules are not in place', problems.join('; '));
    return undefined;
  }
  const r = await installTransparentProxy(config, { netns, verify: conf.weft?.verify !== false });
  log('rules installed', { containerId: env.containerId, backend: r.backend, notes: [...notes, ...r.notes] });
  return result;
}

export function errorJson(err: unknown, cniVersion = '1.0.0'): string {
  if (err instanceof CniError) return JSON.stringify({ cniVersion, code: err.code, msg: err.message, ...(err.details ? { details: err.details } : {}) });
  return JSON.stringify({ cniVersion, code: CniCode.plugin, msg: (err as Error).message });
}
