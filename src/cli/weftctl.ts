import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { parseAllDocuments, stringify } from 'yaml';
import { defaultRegistry, isPlainObject, isWeftError, parsePairs, renderTemplate, VERSION, type ResourceType, type Violation } from '../core/index.js';
import { ApiClient, ApiError } from './client.js';
import { resolveConnection } from './config.js';
import { insightTable, resourceTable, yamlDocuments, type InsightStatus } from './output.js';

import { addTransparentProxyCommands } from './transparent-proxy.js';

/** An error weftctl reports before or without talking to the control plane. */
class UsageError extends Error {}

const registry = defaultRegistry();

function resolveType(name: string): ResourceType<unknown> {
  const def = registry.resolve(name);
  if (!def) throw new UsageError(`unknown resource type "${name}"; known: ${registry.all().map((t) => t.plural).join(', ')}`);
  return def;
}

function collect(value: string, prev: string[]): string[] {
  return [...prev, value];
}

function resourcePath(def: ResourceType<unknown>, mesh: string, name?: string): string {
  const base = def.scope === 'global' ? `/${def.plural}` : `/meshes/${encodeURIComponent(mesh)}/${def.plural}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}

function label(type: string, mesh: string | undefined, name: string): string {
  return mesh ? `${type} ${mesh}/${name}` : `${type} ${name}`;
}

interface Document {
  index: number;
  line: number;
  value: Record<string, unknown>;
}

/** Parses multi-document YAML; every problem in every document is reported. */
function parseDocuments(text: string, source: string): Document[] {
  const docs: Document[] = [];
  const problems: string[] = [];
  parseAllDocuments(text).forEach((doc, i) => {
    const line = doc.contents?.range ? text.slice(0, doc.contents.range[0]).split('\n').length : 1;
    for (const e of doc.errors) {
      const pos = e.linePos?.[0];
      problems.push(`${source}: document ${i + 1}${pos ? `, line ${pos.line}, column ${pos.col}` : ''}: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`);
    }
    if (doc.errors.length > 0) return;
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) return;
    if (!isPlainObject(value)) {
      problems.push(`${source}: document ${i + 1} (line ${line}): must be a mapping with type, name and fields, not ${Array.isArray(value) ? 'a list' : typeof value}`);
      return;
    }
    docs.push({ index: i, line, value });
  });
  if (problems.length > 0) throw new UsageError(`the YAML cannot be parsed; nothing was applied\n${problems.map((p) => `  ${p}`).join('\n')}`);
  if (docs.length === 0) throw new UsageError(`${source} holds no resources`);
  return docs;
}

async function apply(client: ApiClient, opts: { filename: string; var: string[]; dryRun?: boolean }, out: (s: string) => void, err: (s: string) => void) {
  const source = opts.filename === '-' ? 'stdin' : opts.filename;
  let text: string;
  try {
    text = readFileSync(opts.filename === '-' ? 0 : opts.filename, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${source}: ${(e as Error).message}`);
  }
  const rendered = renderTemplate(text, parsePairs(opts.var, '--var'));
  if (rendered.missing.length > 0) {
    throw new UsageError(`${source} uses variables with no value; pass --var NAME=VALUE for each:\n${rendered.missing.map((m) => `  ${m.name} (line ${m.line})`).join('\n')}`);
  }
  const docs = parseDocuments(rendered.text, source);
  if (docs.length > 20) err(`applying ${docs.length} resources from ${source}...\n`);
  type Result = { type: string; mesh: string; name: string; outcome: string; warnings?: string[] };
  try {
    const { body } = await client.request<{ results: Result[] }>('POST', '/_apply', { resources: docs.map((d) => d.value), dryRun: opts.dryRun === true });
    for (const r of body.results) {
      out(`${label(r.type, r.mesh, r.name)} ${r.outcome}${opts.dryRun ? ' (dry run)' : ''}\n`);
      for (const w of r.warnings ?? []) err(`warning: ${label(r.type, r.mesh, r.name)}: ${w}\n`);
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    // Point each violation at the document it came from.
    const where = (field: string): [string, string] => {
      const m = /^resources\[(\d+)\]\.?(.*)$/.exec(field);
      if (!m) return ['', field];
      const d = docs[Number(m[1])]!;
      const v = d.value;
      return [`document ${d.index + 1} (${source} line ${d.line}${typeof v.name === 'string' ? `, ${String(v.type)} ${String(v.name)}` : ''})`, m[2] ?? ''];
    };
    const message = e.message.replace(/resources\[(\d+)\]/g, (_s, i: string) => where(`resources[${i}]`)[0]);
    throw new ApiError(e.code, `${message}; nothing was applied`, e.violations.map((v: Violation) => {
      const [doc, field] = where(v.field);
      return { field: doc ? `${doc} ${field}` : field, message: v.message };
    }), e.status);
  }
}

async function fetchAll(client: ApiClient, path: string): Promise<Record<string, unknown>[]> {
  const items: Record<string, unknown>[] = [];
  let next: string | null = path;
  while (next) {
    const page: { body: { items: Record<string, unknown>[]; next: string | null } } = await client.request('GET', next);
    items.push(...page.body.items);
    next = page.body.next;
  }
  return items;
}

export function buildProgram(out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Command {
  const program = new Command('weftctl')
    .description('Manage a Weft service mesh')
    .version(VERSION)
    .option('--cp-address <url>', 'control plane HTTP API (env WEFTCTL_CP_ADDRESS; default http://127.0.0.1:5681)')
    .option('--auth-token-file <file>', 'admin token file (env WEFTCTL_AUTH_TOKEN holds the token itself)')
    .showHelpAfterError()
    .configureOutput({ writeOut: out, writeErr: err });

  const client = () => {
    const g = program.opts<{ cpAddress?: string; authTokenFile?: string }>();
    const c = resolveConnection(g);
    return new ApiClient({ baseUrl: c.cpAddress, authToken: c.authToken });
  };

  program
    .command('apply')
    .description('create or update resources from YAML (several documents, separated by ---)')
    .requiredOption('-f, --filename <file>', 'YAML file, or - for stdin')
    .option('-v, --var <key=value>', 'replace {{ key }} in the file (repeatable)', collect, [])
    .option('--dry-run', 'validate everything on the control plane, store nothing')
    .action(async (opts: { filename: string; var: string[]; dryRun?: boolean }) => apply(client(), opts, out, err));

  program
    .command('get')
    .description('list resources of a type, or show one (types: meshes, dataplanes, traffic-permissions, meshtrafficpermissions)')
    .argument('<type>', 'resource type, e.g. dataplanes')
    .argument('[name]', 'show only this resource')
    .option('-m, --mesh <mesh>', 'mesh of the resources', 'default')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'yaml', 'json']).default('table'))
    .option('--tag <key=value>', 'only resources with this tag (repeatable)', collect, [])
    .action(async (typeName: string, name: string | undefined, opts: { mesh: string; output: string; tag: string[] }) => {
      const def = resolveType(typeName);
      const c = client();
      if (name !== undefined) {
        const { body } = await c.request<Record<string, unknown>>('GET', resourcePath(def, opts.mesh, name));
        if (opts.output === 'json') out(`${JSON.stringify(body, null, 2)}\n`);
        else if (opts.output === 'yaml') out(stringify(body));
        else out(resourceTable(def, [body]));
        return;
      }
      const q = new URLSearchParams({ size: '1000' });
      for (const [k, v] of Object.entries(parsePairs(opts.tag, '--tag'))) q.append('tag', `${k}:${v}`);
      const items = await fetchAll(c, `${resourcePath(def, opts.mesh)}?${q.toString()}`);
      if (opts.output === 'json') out(`${JSON.stringify({ total: items.length, items }, null, 2)}\n`);
      else if (opts.output === 'yaml') out(yamlDocuments(items));
      else if (items.length === 0) err(def.scope === 'mesh' ? `no ${def.plural} in mesh "${opts.mesh}"\n` : `no ${def.plural}\n`);
      else out(resourceTable(def, items));
    });

  program
    .command('delete')
    .description('delete a resource (deleting a mesh deletes everything in it)')
    .argument('<type>', 'resource type, e.g. dataplane')
    .argument('<name>', 'resource name')
    .option('-m, --mesh <mesh>', 'mesh of the resource', 'default')
    .action(async (typeName: string, name: string, opts: { mesh: string }) => {
      const def = resolveType(typeName);
      await client().request('DELETE', resourcePath(def, opts.mesh, name));
      out(`${label(def.name, def.scope === 'mesh' ? opts.mesh : undefined, name)} deleted\n`);
    });

  const generate = program.command('generate').description('generate tokens');
  generate
    .command('dataplane-token')
    .description('a token that lets a Dataplane connect to the control plane (printed on stdout)')
    .requiredOption('--mesh <mesh>', 'mesh of the Dataplane')
    .option('--name <name>', 'name of the Dataplane the token is bound to')
    .option('--valid-for <duration>', 'lifetime, e.g. 24h, 30d', '24h')
    .option('--tag <key=value>', 'bind to tags instead of a name: any Dataplane with them on every inbound (repeatable)', collect, [])
    .action(async (opts: { mesh: string; name?: string; validFor: string; tag: string[] }) => {
      if (opts.name === undefined && opts.tag.length === 0) throw new UsageError('give --name NAME (one Dataplane) or --tag KEY=VALUE (any Dataplane with those tags)');
      if (opts.name !== undefined && opts.tag.length > 0) throw new UsageError('give --name or --tag, not both');
      const tags = opts.tag.length > 0 ? parsePairs(opts.tag, '--tag') : undefined;
      const { body } = await client().request<{ token: string; id: string; expiresAt: string }>('POST', '/tokens/dataplane', { mesh: opts.mesh, name: opts.name, tags, validFor: opts.validFor });
      out(`${body.token}\n`);
      err(`token id ${body.id}, valid until ${body.expiresAt} (revoke it by listing the id in a DataplaneTokenRevocation)\n`);
    });

  const inspect = program.command('inspect').description('show the live state of resources');
  inspect
    .command('dataplanes')
    .description('dataplanes with their xDS status: connected, what each took and refused')
    .option('-m, --mesh <mesh>', 'mesh of the dataplanes', 'default')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'yaml', 'json']).default('table'))
    .action(async (opts: { mesh: string; output: string }) => {
      const c = client();
      type Row = { dataplane: Record<string, unknown>; status: InsightStatus };
      const rows: Row[] = [];
      let next: string | null = `/meshes/${encodeURIComponent(opts.mesh)}/dataplanes+insights?size=1000`;
      while (next) {
        const page: { body: { items: Row[]; next: string | null } } = await c.request('GET', next);
        rows.push(...page.body.items);
        next = page.body.next;
      }
      if (opts.output === 'json') return out(`${JSON.stringify({ total: rows.length, items: rows }, null, 2)}\n`);
      if (opts.output === 'yaml') return out(stringify({ total: rows.length, items: rows }));
      if (rows.length === 0) return err(`no dataplanes in mesh "${opts.mesh}"\n`);
      out(insightTable(rows));
    });

  inspect
    .command('dataplane')
    .description('one dataplane: its xDS status, or with --config the config the control plane generates for it')
    .argument('<name>', 'name of the dataplane')
    .option('-m, --mesh <mesh>', 'mesh of the dataplane', 'default')
    .option('--config', 'print the generated Envoy config (clusters, endpoints, listeners, routes, secrets)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['yaml', 'json']).default('yaml'))
    .action(async (name: string, opts: { mesh: string; config?: boolean; output: string }) => {
      const path = `/meshes/${encodeURIComponent(opts.mesh)}/dataplanes/${encodeURIComponent(name)}/${opts.config ? '_config' : '_status'}`;
      const { body } = await client().request('GET', path);
      out(opts.output === 'json' ? `${JSON.stringify(body, null, 2)}\n` : stringify(body, { lineWidth: 0, aliasDuplicateObjects: false }));
    });

  addTransparentProxyCommands(program, out, err);
  return program;
}

/** Runs weftctl; resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    const c = e as { code?: string; exitCode?: number };
    if (typeof c.code === 'string' && c.code.startsWith('commander.')) return c.exitCode ?? 1;
    if (e instanceof ApiError || isWeftError(e)) {
      process.stderr.write(`Error: ${e.message} [${e.code}]\n${(e.violations ?? []).map((v) => `  ${v.field ? `${v.field}: ` : ''}${v.message}\n`).join('')}`);
    } else if (e instanceof UsageError || e instanceof Error) {
      process.stderr.write(`Error: ${e.message}\n`);
    }
    return 1;
  }
}
