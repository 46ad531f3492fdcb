import {
  canonicalJson,
  describeKey,
  indexTags,
  isWeftError,
  keyOf,
  MESH_TYPE,
  WeftError,
  type Resource,
  type ResourceInput,
  type ResourceKey,
  type ResourceRegistry,
} from '../core/index.js';
import type { ChangeEvent, ChangeListener, ListOptions, ListResult, Store, WriteOp, WriteOptions, WriteResult } from './types.js';

/** A stored row: the resource plus its tag index. */
export interface Row extends Resource {
  tags: string[];
}

/**
 * What an engine provides inside one transaction, as a plain object of functions (a dry run
 * spreads it to replace `publish`). The engine guarantees isolation: rows read
 * with `get(key, true)` stay unchanged by others until the transaction ends.
 */
export interface Tx {
  get(key: ResourceKey, forUpdate: boolean): Promise<Row | undefined>;
  /** True if the mesh exists; keeps it from being deleted until the transaction ends. */
  meshExists(mesh: string): Promise<boolean>;
  insert(row: Row): Promise<void>;
  update(row: Row): Promise<void>;
  delete(key: ResourceKey): Promise<void>;
  /** Deletes every resource inside `mesh` and returns their keys. */
  deleteMeshContents(mesh: string): Promise<ResourceKey[]>;
  nextRevision(): Promise<string>;
  /** Called once, just before commit, with the changes this transaction made. */
  publish(events: ChangeEvent[]): Promise<void>;
}

/** Thrown inside a transaction to roll it back after a successful dry run. */
export class DryRunRollback extends Error {
  constructor(readonly results: WriteResult[]) {
    super('dry run');
  }
}

function sameContent(a: ResourceInput, b: ResourceInput): boolean {
  return canonicalJson(a.spec) === canonicalJson(b.spec) && canonicalJson(a.labels) === canonicalJson(b.labels);
}

function checkVersion(existing: Row, expected: string | undefined): void {
  if (expected !== undefined && existing.version !== expected) {
    throw new WeftError('version_conflict', `${describeKey(existing)} is at version ${existing.version}, not ${expected}; read it again and retry`);
  }
}

function rowToResource(row: Row): Resource {
  const { tags: _tags, ...res } = row;
  return res;
}

/**
 * The write semantics shared by every engine: existence and version checks, mesh checks,
 * cascade on mesh deletion, skipping writes that change nothing, and the change events.
 */
export async function applyOps(tx: Tx, registry: ResourceRegistry, ops: readonly WriteOp[], now: string): Promise<WriteResult[]> {
  const results: WriteResult[] = [];
  const events: ChangeEvent[] = [];

  const insert = async (input: ResourceInput): Promise<Resource> => {
    if (input.mesh !== '' && !(await tx.meshExists(input.mesh))) {
      throw new WeftError('mesh_not_found', `mesh "${input.mesh}" does not exist; create it before ${describeKey(input)}`);
    }
    const revision = await tx.nextRevision();
    const row: Row = { ...keyOf(input), labels: input.labels, spec: input.spec, version: revision, creationTime: now, modificationTime: now, tags: indexTags(registry.get(input.type), input.spec) };
    await tx.insert(row);
    events.push({ kind: 'create', key: keyOf(input), revision });
    return rowToResource(row);
  };

  const replace = async (existing: Row, input: ResourceInput): Promise<WriteResult> => {
    if (sameContent(existing, input)) return { outcome: 'unchanged', key: keyOf(input), resource: rowToResource(existing) };
    const revision = await tx.nextRevision();
    const row: Row = { ...existing, labels: input.labels, spec: input.spec, version: revision, modificationTime: now, tags: indexTags(registry.get(input.type), input.spec) };
    await tx.update(row);
    events.push({ kind: 'update', key: keyOf(input), revision });
    return { outcome: 'updated', key: keyOf(input), resource: rowToResource(row) };
  };

  for (const [index, op] of ops.entries()) {
    try {
      switch (op.op) {
        case 'create': {
          if (await tx.get(op.resource, true)) throw new WeftError('already_exists', `${describeKey(op.resource)} already exists`);
          results.push({ outcome: 'created', key: keyOf(op.resource), resource: await insert(op.resource) });
          break;
        }
        case 'update':
        case 'upsert': {
          const existing = await tx.get(op.resource, true);
          if (!existing) {
            if (op.op === 'update' || op.expectedVersion !== undefined) throw new WeftError('not_found', `${describeKey(op.resource)} does not exist`);
            results.push({ outcome: 'created', key: keyOf(op.resource), resource: await insert(op.resource) });
            break;
          }
          checkVersion(existing, op.expectedVersion);
          results.push(await replace(existing, op.resource));
          break;
        }
        case 'delete': {
          const existing = await tx.get(op.key, true);
          if (!existing) throw new WeftError('not_found', `${describeKey(op.key)} does not exist`);
          checkVersion(existing, op.expectedVersion);
          if (op.key.type === MESH_TYPE) {
            for (const key of await tx.deleteMeshContents(op.key.name)) events.push({ kind: 'delete', key, revision: await tx.nextRevision() });
          }
          await tx.delete(op.key);
          events.push({ kind: 'delete', key: keyOf(op.key), revision: await tx.nextRevision() });
          results.push({ outcome: 'deleted', key: keyOf(op.key) });
          break;
        }
      }
    } catch (err) {
      if (isWeftError(err) && ops.length > 1) err.index = index;
      throw err;
    }
  }
  if (events.length > 0) await tx.publish(events);
  return results;
}

/** Encodes the last (mesh, name) of a page as an opaque cursor. */
export function encodeCursor(r: { mesh: string; name: string }): string {
  return Buffer.from(JSON.stringify([r.mesh, r.name])).toString('base64url');
}

export function decodeCursor(cursor: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') return [v[0], v[1]];
  } catch {
    /* fall through */
  }
  throw new WeftError('invalid_resource', 'the page cursor is not one this server issued', [{ field: 'offset', message: 'must be a `next` value from a previous page' }]);
}

export function tagFilters(tags: Record<string, string> | undefined): string[] {
  return Object.entries(tags ?? {}).map(([k, v]) => `${k}=${v}`);
}

/**
 * Everything but the transaction itself: engines extend this and implement `transaction`, `list`
 * and `get`. Listener errors are caught so one bad watcher cannot break writes or other watchers.
 */
export abstract class BaseStore implements Store {
  abstract readonly engine: 'embedded' | 'postgres';
  private readonly listeners = new Set<ChangeListener>();

  constructor(protected readonly registry: ResourceRegistry, private readonly onListenerError: (err: unknown) => void = () => {}) {}

  abstract get(key: ResourceKey): Promise<Resource | undefined>;
  abstract list(type: string, options?: ListOptions): Promise<ListResult>;
  abstract ping(): Promise<void>;
  abstract close(): Promise<void>;
  /** Runs `fn` in one transaction; commits when it resolves, rolls back when it throws. */
  protected abstract transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>;

  async write(ops: readonly WriteOp[], options: WriteOptions = {}): Promise<WriteResult[]> {
    const now = new Date().toISOString();
    try {
      return await this.transaction(async (tx) => {
        const results = await applyOps(options.dryRun ? { ...tx, publish: async () => {} } : tx, this.registry, ops, now);
        if (options.dryRun) throw new DryRunRollback(results);
        return results;
      });
    } catch (err) {
      if (err instanceof DryRunRollback) return err.results;
      throw err;
    }
  }

  async create(resource: ResourceInput): Promise<Resource> {
    return (await this.write([{ op: 'create', resource }]))[0]!.resource!;
  }

  async update(resource: ResourceInput, expectedVersion?: string): Promise<Resource> {
    return (await this.write([{ op: 'update', resource, expectedVersion }]))[0]!.resource!;
  }

  async upsert(resource: ResourceInput, expectedVersion?: string): Promise<WriteResult> {
    return (await this.write([{ op: 'upsert', resource, expectedVersion }]))[0]!;
  }

  async delete(key: ResourceKey, expectedVersion?: string): Promise<void> {
    await this.write([{ op: 'delete', key, expectedVersion }]);
  }

  watch(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  protected emit(events: readonly ChangeEvent[]): void {
    for (const event of events) {
      for (const l of this.listeners) {
        try {
          l(event);
        } catch (err) {
          this.onListenerError(err);
        }
      }
    }
  }
}
