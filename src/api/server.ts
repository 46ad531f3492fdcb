import { createHash, timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import {
  decodeResource,
  durationSchema,
  durationToMs,
  initialPolicies,
  nameSchema,
  tagsSchema,
  validate,
  isWeftError,
  MESH_TYPE,
  nodeIdOf,
  prefixViolations,
  toWire,
  WeftError,
  type Logger,
  type MeshSpec,
  type ResourceRegistry,
  type Resource,
  type ResourceType,
  type Violation,
} from '../core/index.js';
import { SHORT_NAME, type ProxyStatus, type ResourceSet } from '../ads/index.js';
import type { DataplaneTokens, MeshCertificates } from '../certs/index.js';
import type { Store, WriteOp } from '../store/index.js';

export interface ApiOptions {
  store: Store;
  registry: ResourceRegistry;
  logger: Logger;
  bodyLimitBytes: number;
  /** When set, every request that changes state must carry `Authorization: Bearer <token>`. */
  adminToken?: string;
  info: { version: string; instanceId: string };
  /** Issues dataplane tokens (`POST /tokens/dataplane`). */
  tokens?: DataplaneTokens;
  /** Signs dataplane CSRs (`POST /meshes/{mesh}/dataplanes/{name}/_certificate`). */
  certificates?: MeshCertificates;
  /** The generated xDS config of a Dataplane (`GET .../dataplanes/{name}/_config`), when an ADS server runs. */
  proxyConfig?: (mesh: string, name: string) => Promise<ResourceSet | undefined>;
  /** xDS status of a proxy by node id (`<mesh>.<name>`), when an ADS server runs. */
  xdsStatus?: (nodeId: string) => ProxyStatus | undefined;
}

const MAX_PAGE = 1000;
const CERTIFICATE_ROUTE = '/meshes/:mesh/dataplanes/:name/_certificate';
const DEFAULT_PAGE = 100;

function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function expectedVersion(req: FastifyRequest): string | undefined {
  const h = req.headers['if-match'];
  if (typeof h !== 'string' || h === '*' || h === '') return undefined;
  return h.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function parseTagFilter(raw: unknown): { tags: Record<string, string>; violations: Violation[] } {
  const tags: Record<string, string> = {};
  const violations: Violation[] = [];
  const list = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  for (const t of list as string[]) {
    const i = t.indexOf(':');
    if (i <= 0) violations.push({ field: 'tag', message: `"${t}" must be KEY:VALUE, e.g. kuma.io/service:web` });
    else tags[t.slice(0, i)] = t.slice(i + 1);
  }
  return { tags, violations };
}

/** Maps framework errors to the catalogue so every error body has the same shape. */
function toWeftError(err: unknown): WeftError {
  if (err instanceof WeftError) return err;
  const e = err as { statusCode?: number; code?: string; message?: string };
  if (e.statusCode === 413 || e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new WeftError('payload_too_large', 'the request body is larger than the configured limit (api.bodyLimitBytes)');
  if (e.statusCode === 415 || e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new WeftError('unsupported_media_type', 'send the body as application/json or application/yaml');
  if (e.statusCode === 400) return new WeftError('malformed_body', `the request body cannot be parsed: ${e.message ?? 'unknown error'}`);
  return new WeftError('internal', 'internal error', [], { cause: err });
}

/** The longest resource name there is (NAME in core/validation). */
const NAME_MOST_CHARS = 253;

/**
 * The Kuma-style HTTP API (port 5681). Kuma's paths: `/meshes/{mesh}`, `/meshes/{mesh}/{plural}`,
 * `/meshes/{mesh}/{plural}/{name}` and `/{plural}` across meshes; plus `POST /_apply`, which applies
 * many resources in one atomic write. `If-Match: "<version>"` makes PUT and DELETE conditional; GET
 * and PUT return the version as an ETag.
 */
export function buildApi(opts: ApiOptions): FastifyInstance {
  const { store, registry, logger } = opts;
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: opts.bodyLimitBytes,
    // Any name fits in a path segment (the router's default allows 100 characters, so resources
    // with longer names could be created but not read or deleted).
    routerOptions: { maxParamLength: NAME_MOST_CHARS },
    // The router refuses some URLs before any route runs: answered in the API's own error shape.
    frameworkErrors: (err, _req, reply) => {
      const we =
        err.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new WeftError('invalid_resource', `a name in the URL is longer than ${NAME_MOST_CHARS} characters`, [{ field: 'url', message: `names are at most ${NAME_MOST_CHARS} characters` }])
          : err.code === 'FST_ERR_BAD_URL'
            ? new WeftError('invalid_resource', `the URL cannot be decoded: ${err.message}`, [{ field: 'url', message: 'a "%" must start a percent-encoded UTF-8 character' }])
            : toWeftError(err);
      void (reply as FastifyReply).status(we.status).send(we.toJSON());
    },
  });

  const yamlParser = (_req: FastifyRequest, body: string, done: (err: Error | null, body?: unknown) => void) => {
    try {
      // Warnings (an unresolved tag, an ambiguous anchor) would go to process.emitWarning: stderr
      // lines any client could make weft-cp print, outside its structured log. The value is read
      // as YAML reads it, and validation names what is wrong with it.
      done(null, parseYaml(body, { logLevel: 'error' }));
    } catch (err) {
      const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}, column ${err.linePos[0].col}` : '';
      done(new WeftError('malformed_body', `the YAML body cannot be parsed${where}: ${(err as Error).message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`));
    }
  };
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(['application/yaml', 'application/x-yaml', 'text/yaml'], { parseAs: 'string' }, yamlParser);

  app.setErrorHandler((err, req, reply) => {
    const we = toWeftError(err);
    if (we.status >= 500) req.log.error({ err, url: req.url, method: req.method }, 'request failed');
    void reply.status(we.status).send(we.toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(new WeftError('not_found', `no endpoint ${req.method} ${req.url.split('?')[0]}`).toJSON());
  });
  app.addHook('onResponse', async (req, reply) => {
    req.log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });

  if (opts.adminToken !== undefined) {
    const token = opts.adminToken;
    app.addHook('onRequest', async (req) => {
      if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') return;
      // A dataplane authenticates its certificate request with its own token instead.
      if (req.routeOptions.url === CERTIFICATE_ROUTE) return;
      const h = req.headers.authorization;
      const given = typeof h === 'string' && h.startsWith('Bearer ') ? h.slice(7) : undefined;
      if (given === undefined || !tokenMatches(given, token)) {
        throw new WeftError('unauthorized', given === undefined ? 'this API is not bound to loopback only: send the admin token as "Authorization: Bearer <token>"' : 'the admin token is wrong');
      }
    });
  }

  const meshScoped = (plural: string): ResourceType<unknown> => {
    const def = registry.byPlural(plural);
    if (!def || def.scope !== 'mesh' || def.internal) {
      const known = registry.all().filter((t) => t.scope === 'mesh').map((t) => t.plural).join(', ');
      throw new WeftError('not_found', `no resource type "${plural}"; known: ${known}`);
    }
    return def;
  };

  /**
   * Adds Kuma's initial policies (allow-all-<mesh>) after each Mesh op that creates a mesh, in the
   * same transaction; a policy of the same name in the batch wins. `origin[i]` is the index of
   * op i in the caller's list (-1 for an added op), to report errors against what was sent.
   */
  async function withInitialPolicies(ops: WriteOp[]): Promise<{ ops: WriteOp[]; origin: number[] }> {
    const keyOf = (k: { type: string; mesh: string; name: string }) => `${k.type}/${k.mesh}/${k.name}`;
    const given = new Set(ops.map((o) => keyOf(o.op === 'delete' ? o.key : o.resource)));
    const out: WriteOp[] = [];
    const origin: number[] = [];
    for (const [i, op] of ops.entries()) {
      out.push(op);
      origin.push(i);
      if (op.op === 'delete' || op.resource.type !== MESH_TYPE) continue;
      if (await store.get({ type: MESH_TYPE, mesh: '', name: op.resource.name })) continue;
      for (const p of initialPolicies(op.resource.name, op.resource.spec as MeshSpec)) {
        if (given.has(keyOf(p))) continue;
        out.push({ op: 'create', resource: p });
        origin.push(-1);
      }
    }
    return { ops: out, origin };
  }

  /** A resource as the API shows it: write-only data (a Secret's) is never read back. */
  const show = (r: Resource): Record<string, unknown> => {
    const redact = registry.get(r.type)?.redact;
    return toWire(redact ? { ...r, spec: redact(r.spec) } : r);
  };

  async function listResponse(req: FastifyRequest, type: string, mesh: string | undefined) {
    const q = req.query as Record<string, unknown>;
    const violations: Violation[] = [];
    let limit = DEFAULT_PAGE;
    if (q.size !== undefined) {
      limit = Number(q.size);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) violations.push({ field: 'size', message: `must be 1-${MAX_PAGE}` });
    }
    const { tags, violations: tagViolations } = parseTagFilter(q.tag);
    violations.push(...tagViolations);
    if (violations.length > 0) throw new WeftError('invalid_resource', 'invalid list parameters', violations);
    const page = await store.list(type, {
      mesh,
      tags,
      nameContains: typeof q.name === 'string' ? q.name : undefined,
      limit,
      after: typeof q.offset === 'string' ? q.offset : undefined,
    });
    let next: string | null = null;
    if (page.next) {
      const u = new URL(req.url, 'http://x');
      u.searchParams.set('offset', page.next);
      u.searchParams.set('size', String(limit));
      next = u.pathname + u.search;
    }
    return { total: page.total, items: page.items.map(show), next };
  }

  async function getOne(reply: FastifyReply, type: string, mesh: string, name: string) {
    const r = await store.get({ type, mesh, name });
    if (!r) throw new WeftError('not_found', mesh === '' ? `${type} "${name}" not found` : `${type} "${name}" not found in mesh "${mesh}"`);
    void reply.header('etag', `"${r.version}"`);
    return show(r);
  }

  /** `{warnings}` naming the fields of a written resource that are kept but not applied; nothing when there are none. */
  const notApplied = (r: { type: string; spec: unknown }): { warnings?: string[] } => {
    const fields = registry.get(r.type)?.notApplied?.(r.spec) ?? [];
    return fields.length === 0 ? {} : { warnings: [`kept for compatibility with Kuma, but not applied by Weft: ${fields.join(', ')}`] };
  };

  async function put(req: FastifyRequest, reply: FastifyReply, def: ResourceType<unknown>, mesh: string, name: string) {
    const body = req.body as Record<string, unknown> | undefined;
    // Kuma lets the URL carry mesh and name; a body that omits them takes them from there.
    const withDefaults = body && typeof body === 'object' && !Array.isArray(body) ? { type: def.name, ...(def.scope === 'mesh' ? { mesh } : {}), name, ...body } : body;
    const { resource } = decodeResource(withDefaults, registry, { type: def.name, mesh: def.scope === 'mesh' ? mesh : undefined, name });
    const dryRun = (req.query as Record<string, unknown>).dryRun === 'true';
    const { ops } = await withInitialPolicies([{ op: 'upsert', resource, expectedVersion: expectedVersion(req) }]);
    const [result] = await store.write(ops, { dryRun });
    void reply.status(result!.outcome === 'created' ? 201 : 200).header('etag', `"${result!.resource!.version}"`);
    return { outcome: result!.outcome, ...(dryRun ? { dryRun: true } : {}), resource: show(result!.resource!), ...notApplied(resource) };
  }

  async function del(req: FastifyRequest, type: string, mesh: string, name: string) {
    await store.delete({ type, mesh, name }, expectedVersion(req));
    return {};
  }

  app.get('/', async () => ({
    product: 'Weft',
    tagline: 'Weft',
    version: opts.info.version,
    instanceId: opts.info.instanceId,
    hostname: hostname(),
    store: { type: store.engine },
  }));

  app.get('/_resources', async () => ({
    resources: registry.all().map((t) => ({ name: t.name, path: t.plural, scope: t.scope, aliases: t.aliases })),
  }));

  app.get('/meshes', async (req) => listResponse(req, MESH_TYPE, undefined));
  app.get<{ Params: { mesh: string } }>('/meshes/:mesh', async (req, reply) => getOne(reply, MESH_TYPE, '', req.params.mesh));
  app.put<{ Params: { mesh: string } }>('/meshes/:mesh', async (req, reply) => put(req, reply, registry.get(MESH_TYPE)!, '', req.params.mesh));
  app.delete<{ Params: { mesh: string } }>('/meshes/:mesh', async (req) => del(req, MESH_TYPE, '', req.params.mesh));

  app.get<{ Params: { mesh: string; plural: string } }>('/meshes/:mesh/:plural', async (req) => listResponse(req, meshScoped(req.params.plural).name, req.params.mesh));
  app.get<{ Params: { mesh: string; plural: string; name: string } }>('/meshes/:mesh/:plural/:name', async (req, reply) =>
    getOne(reply, meshScoped(req.params.plural).name, req.params.mesh, req.params.name),
  );
  app.put<{ Params: { mesh: string; plural: string; name: string } }>('/meshes/:mesh/:plural/:name', async (req, reply) =>
    put(req, reply, meshScoped(req.params.plural), req.params.mesh, req.params.name),
  );
  app.delete<{ Params: { mesh: string; plural: string; name: string } }>('/meshes/:mesh/:plural/:name', async (req) =>
    del(req, meshScoped(req.params.plural).name, req.params.mesh, req.params.name),
  );
  /** Kuma's dataplane insight, in short: is the proxy connected, what it took, what it refused. */
  const insight = (mesh: string, name: string) => {
    const st = opts.xdsStatus?.(nodeIdOf(mesh, name));
    return st ? { ...st, online: st.connected } : { online: false, connected: false, nodeId: nodeIdOf(mesh, name), types: {} };
  };
  app.get<{ Params: { mesh: string; name: string } }>('/meshes/:mesh/dataplanes/:name/_status', async (req) => {
    const r = await store.get({ type: 'Dataplane', mesh: req.params.mesh, name: req.params.name });
    if (!r) throw new WeftError('not_found', `Dataplane "${req.params.name}" not found in mesh "${req.params.mesh}"`);
    return insight(req.params.mesh, req.params.name);
  });
  /**
   * What the control plane generates for one proxy, by xDS type (CDS, EDS, LDS, RDS, SDS), as
   * protobuf JSON with proto field names. It holds no private key: identities reach Envoy from
   * weft-dp's local SDS server.
   */
  app.get<{ Params: { mesh: string; name: string } }>('/meshes/:mesh/dataplanes/:name/_config', async (req) => {
    if (!opts.proxyConfig) throw new WeftError('not_found', 'this control plane serves no xDS');
    const set = await opts.proxyConfig(req.params.mesh, req.params.name);
    if (!set) throw new WeftError('not_found', `Dataplane "${req.params.name}" not found in mesh "${req.params.mesh}"`);
    const out: Record<string, unknown> = {};
    for (const [url, list] of Object.entries(set)) if (list && list.length > 0) out[SHORT_NAME[url as keyof typeof SHORT_NAME]] = list;
    return out;
  });
  app.get<{ Params: { mesh: string } }>('/meshes/:mesh/dataplanes+insights', async (req) => {
    const page = await listResponse(req, 'Dataplane', req.params.mesh);
    return { ...page, items: page.items.map((dp) => ({ dataplane: dp, status: insight(String(dp.mesh), String(dp.name)) })) };
  });

  app.get<{ Params: { plural: string } }>('/:plural', async (req) => listResponse(req, meshScoped(req.params.plural).name, undefined));

  const tokenRequest = z
    .strictObject({
      mesh: nameSchema,
      name: nameSchema.optional(),
      /** Bind to tags instead of a name: any Dataplane of the mesh with these tags on every inbound. */
      tags: tagsSchema.optional(),
      validFor: durationSchema.default('24h'),
    })
    .superRefine((t, ctx) => {
      if (t.name === undefined && (t.tags === undefined || Object.keys(t.tags).length === 0)) ctx.addIssue({ code: 'custom', path: ['name'], message: 'required unless tags are given' });
      if (t.name !== undefined && t.tags !== undefined) ctx.addIssue({ code: 'custom', path: ['tags'], message: 'give a name or tags, not both' });
    });
  /** Kuma's `kumactl generate dataplane-token`: a token bound to one Dataplane, or to tags, of one mesh. */
  app.post('/tokens/dataplane', async (req) => {
    if (!opts.tokens) throw new WeftError('not_found', 'this control plane issues no tokens');
    const r = validate(tokenRequest, req.body ?? {});
    if (!r.ok) throw new WeftError('invalid_resource', 'invalid token request', r.violations);
    const issued = await opts.tokens.issue(r.value.mesh, r.value.name, durationToMs(r.value.validFor), r.value.tags);
    req.log.info({ mesh: r.value.mesh, name: r.value.name, tags: r.value.tags, tokenId: issued.id, expiresAt: issued.expiresAt }, 'dataplane token issued');
    return { token: issued.token, id: issued.id, expiresAt: issued.expiresAt.toISOString() };
  });
  /**
   * A dataplane's CSR, authenticated by its dataplane token (`Authorization: Bearer <token>`):
   * answers the signed certificate and the mesh's trust bundle. The key never leaves the node.
   */
  app.post<{ Params: { mesh: string; name: string } }>(CERTIFICATE_ROUTE, async (req) => {
    if (!opts.certificates) throw new WeftError('not_found', 'this control plane issues no certificates');
    const h = req.headers.authorization;
    if (typeof h !== 'string' || !/^Bearer\s+\S+/i.test(h)) throw new WeftError('unauthorized', 'send the dataplane token as "Authorization: Bearer <token>"');
    const r = validate(z.strictObject({ csr: z.string().min(1) }), req.body ?? {});
    if (!r.ok) throw new WeftError('invalid_resource', 'invalid certificate request', r.violations);
    const issued = await opts.certificates.issueForDataplane(h.replace(/^Bearer\s+/i, '').trim(), req.params.mesh, req.params.name, r.value.csr);
    req.log.info({ mesh: req.params.mesh, name: req.params.name, spiffeIds: issued.spiffeIds, expiresAt: issued.expiresAt }, 'workload certificate issued');
    return { certificate: issued.certificate, caBundle: issued.caBundle, expiresAt: issued.expiresAt.toISOString() };
  });

  app.post('/tokens/dataplane/_rotate-signing-key', async (req) => {
    if (!opts.tokens) throw new WeftError('not_found', 'this control plane issues no tokens');
    const r = validate(z.strictObject({ mesh: nameSchema, dropPrevious: z.boolean().default(false) }), req.body ?? {});
    if (!r.ok) throw new WeftError('invalid_resource', 'invalid rotation request', r.violations);
    if (!(await store.get({ type: MESH_TYPE, mesh: '', name: r.value.mesh }))) throw new WeftError('mesh_not_found', `mesh "${r.value.mesh}" does not exist`);
    return { keyId: await opts.tokens.rotate(r.value.mesh, { dropPrevious: r.value.dropPrevious }) };
  });

  /**
   * Applies many resources at once: all are validated first (every violation of every item is
   * reported), then written in one transaction, so a failure leaves nothing half-written.
   */
  app.post('/_apply', async (req) => {
    const body = req.body as { resources?: unknown; dryRun?: unknown } | undefined;
    if (!body || typeof body !== 'object' || !Array.isArray(body.resources)) {
      throw new WeftError('invalid_resource', 'the body must be {"resources": [...]}', [{ field: 'resources', message: 'must be a list' }]);
    }
    const ops: WriteOp[] = [];
    const violations: Violation[] = [];
    let firstCode: WeftError['code'] | undefined;
    const messages: string[] = [];
    body.resources.forEach((item, i) => {
      try {
        ops.push({ op: 'upsert', resource: decodeResource(item, registry).resource });
      } catch (err) {
        if (!isWeftError(err)) throw err;
        firstCode ??= err.code;
        messages.push(`resources[${i}]: ${err.message}`);
        violations.push(...prefixViolations(`resources[${i}]`, err.violations));
      }
    });
    if (firstCode) throw new WeftError(firstCode, messages.join('; '), violations);
    const all = await withInitialPolicies(ops);
    try {
      const results = await store.write(all.ops, { dryRun: body.dryRun === true });
      return {
        dryRun: body.dryRun === true,
        results: results.map((r, i) => {
          const op = all.ops[i]!;
          return { ...r.key, outcome: r.outcome, version: r.resource?.version, ...('resource' in op ? notApplied(op.resource) : {}) };
        }),
      };
    } catch (err) {
      if (isWeftError(err) && err.index !== undefined) {
        const i = all.origin[err.index] ?? -1;
        const where = i >= 0 ? `resources[${i}]` : 'initial policies of a new mesh';
        const e = new WeftError(err.code, `${where}: ${err.message}`, prefixViolations(where, err.violations));
        if (i >= 0) e.index = i;
        throw e;
      }
      throw err;
    }
  });

  return app;
}
