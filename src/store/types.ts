import type { Resource, ResourceInput, ResourceKey } from '../core/index.js';

export type WriteOp =
  | { op: 'create'; resource: ResourceInput }
  | { op: 'update'; resource: ResourceInput; expectedVersion?: string }
  | { op: 'upsert'; resource: ResourceInput; expectedVersion?: string }
  | { op: 'delete'; key: ResourceKey; expectedVersion?: string };

export type WriteOutcome = 'created' | 'updated' | 'unchanged' | 'deleted';

export interface WriteResult {
  outcome: WriteOutcome;
  key: ResourceKey;
  /** The resource as stored (absent for deletions). */
  resource?: Resource;
}

/**
 * A committed change. `revision` increases with every write of one store (on PostgreSQL it is a
 * sequence shared by all replicas). `resync` means events may have been missed (a lost database
 * connection): watchers must reload what they care about.
 */
export type ChangeEvent =
  | { kind: 'create' | 'update' | 'delete'; key: ResourceKey; revision: string }
  | { kind: 'resync' };

export type ChangeListener = (event: ChangeEvent) => void;

export interface ListOptions {
  /** Only resources of this mesh; all meshes when absent. */
  mesh?: string;
  /** Every `key: value` must be present in one of the resource's tag sets (Dataplane inbounds). */
  tags?: Record<string, string>;
  /** Substring of the name. */
  nameContains?: string;
  /** Page size; everything when absent. */
  limit?: number;
  /** Opaque cursor from a previous page's `next`. */
  after?: string;
}

export interface ListResult {
  items: Resource[];
  /** Number of resources matching the filters, over all pages. */
  total: number;
  /** Cursor of the next page, when there is one. */
  next?: string;
}

export interface WriteOptions {
  /** Validate everything (existence, versions, meshes) and roll back instead of committing. */
  dryRun?: boolean;
}

/**
 * The resource store. Writes are atomic and durable when their promise resolves. Every method is
 * safe to call concurrently. Errors are WeftErrors: not_found, already_exists, version_conflict,
 * mesh_not_found, store_unavailable.
 */
export interface Store {
  readonly engine: 'embedded' | 'postgres';
  get(key: ResourceKey): Promise<Resource | undefined>;
  list(type: string, options?: ListOptions): Promise<ListResult>;
  create(resource: ResourceInput): Promise<Resource>;
  /** Fails with version_conflict when `expectedVersion` is given and differs from the stored one. */
  update(resource: ResourceInput, expectedVersion?: string): Promise<Resource>;
  upsert(resource: ResourceInput, expectedVersion?: string): Promise<WriteResult>;
  /** Deleting a Mesh deletes every resource in it. */
  delete(key: ResourceKey, expectedVersion?: string): Promise<void>;
  /** Applies every op or none. A failing op's error carries its `index`. */
  write(ops: readonly WriteOp[], options?: WriteOptions): Promise<WriteResult[]>;
  /**
   * Calls `listener` after each committed change, in commit order per store instance. Listeners
   * must not throw; the returned function unsubscribes.
   */
  watch(listener: ChangeListener): () => void;
  /** Resolves when the store can serve requests. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
