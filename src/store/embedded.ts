import Database from 'better-sqlite3';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { WeftError, type Resource, type ResourceKey, type ResourceRegistry } from '../core/index.js';
import { BaseStore, decodeCursor, encodeCursor, tagFilters, type Row, type Tx } from './engine.js';
import type { ChangeEvent, ListOptions, ListResult } from './types.js';

/** Schema versions, applied in order; `PRAGMA user_version` records how many ran. */
const MIGRATIONS = [
  `CREATE TABLE resources (
     type TEXT NOT NULL, mesh TEXT NOT NULL, name TEXT NOT NULL,
     version TEXT NOT NULL, labels TEXT NOT NULL, spec TEXT NOT NULL, tags TEXT NOT NULL,
     creation_time TEXT NOT NULL, modification_time TEXT NOT NULL,
     PRIMARY KEY (type, mesh, name)) WITHOUT ROWID;
   CREATE INDEX resources_by_mesh ON resources (mesh, type);
   CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
   INSERT INTO revision VALUES (1, 0);`,
];

interface SqlRow {
  type: string;
  mesh: string;
  name: string;
  version: string;
  labels: string;
  spec: string;
  tags: string;
  creation_time: string;
  modification_time: string;
}

const COLUMNS = 'type, mesh, name, version, labels, spec, tags, creation_time, modification_time';

function fromSql(r: SqlRow): Row {
  return {
    type: r.type,
    mesh: r.mesh,
    name: r.name,
    version: r.version,
    labels: JSON.parse(r.labels) as Record<string, string>,
    spec: JSON.parse(r.spec) as unknown,
    tags: JSON.parse(r.tags) as string[],
    creationTime: r.creation_time,
    modificationTime: r.modification_time,
  };
}

function toSql(r: Row): SqlRow {
  return {
    type: r.type,
    mesh: r.mesh,
    name: r.name,
    version: r.version,
    labels: JSON.stringify(r.labels),
    spec: JSON.stringify(r.spec),
    tags: JSON.stringify(r.tags),
    creation_time: r.creationTime,
    modification_time: r.modificationTime,
  };
}

function strip(row: Row): Resource {
  const { tags: _t, ...res } = row;
  return res;
}

export interface EmbeddedStoreOptions {
  /** Directory holding `weft.db`; created with mode 0700 if missing. */
  dataDir: string;
  registry: ResourceRegistry;
  onListenerError?: (err: unknown) => void;
}

/**
 * The default store: SQLite in WAL mode with `synchronous=FULL`, so a write is on disk before its
 * promise resolves and survives `kill -9` (and power loss). One process owns the file
 * (`locking_mode=EXCLUSIVE`): a second control plane on the same data dir fails at start.
 * All statements run one after another on one connection; better-sqlite3 is synchronous, so
 * each critical section is short.
 */
export class EmbeddedStore extends BaseStore {
  readonly engine = 'embedded' as const;
  private readonly db: Database.Database;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(opts: EmbeddedStoreOptions) {
    super(opts.registry, opts.onListenerError);
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    const file = join(opts.dataDir, 'weft.db');
    closeSync(openSync(file, 'a', 0o600));
    try {
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('busy_timeout = 0');
      this.migrate();
    } catch (err) {
      const locked = (err as { code?: string }).code === 'SQLITE_BUSY';
      throw new WeftError(
        'store_unavailable',
        locked ? `${file} is in use by another control plane` : `cannot open ${file}: ${(err as Error).message}`,
        [],
        { cause: err },
      );
    }
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      }).immediate();
    }
  }

  private readonly statements = new Map<string, Database.Statement>();

  /** Compiles each SQL text once (better-sqlite3 statements are reusable). */
  private stmt(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  /** Runs `fn` after every earlier call has finished. */
  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new WeftError('store_unavailable', 'the store is closed');
      return fn();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  async get(key: ResourceKey): Promise<Resource | undefined> {
    return this.serial(() => {
      const r = this.stmt(`SELECT ${COLUMNS} FROM resources WHERE type = ? AND mesh = ? AND name = ?`).get(key.type, key.mesh, key.name) as SqlRow | undefined;
      return r ? strip(fromSql(r)) : undefined;
    });
  }

  async list(type: string, options: ListOptions = {}): Promise<ListResult> {
    return this.serial(() => {
      const where = ['type = ?'];
      const args: unknown[] = [type];
      if (options.mesh !== undefined) {
        where.push('mesh = ?');
        args.push(options.mesh);
      }
      if (options.nameContains) {
        where.push('instr(name, ?) > 0');
        args.push(options.nameContains);
      }
      for (const t of tagFilters(options.tags)) {
        where.push('EXISTS (SELECT 1 FROM json_each(resources.tags) WHERE value = ?)');
        args.push(t);
      }
      const total = (this.stmt(`SELECT count(*) AS n FROM resources WHERE ${where.join(' AND ')}`).get(...args) as { n: number }).n;
      if (options.after !== undefined) {
        where.push('(mesh, name) > (?, ?)');
        args.push(...decodeCursor(options.after));
      }
      let sql = `SELECT ${COLUMNS} FROM resources WHERE ${where.join(' AND ')} ORDER BY mesh, name`;
      if (options.limit !== undefined) {
        sql += ' LIMIT ?';
        args.push(options.limit + 1);
      }
      const rows = (this.stmt(sql).all(...args) as SqlRow[]).map(fromSql);
      const hasMore = options.limit !== undefined && rows.length > options.limit;
      const items = (hasMore ? rows.slice(0, options.limit) : rows).map(strip);
      return hasMore ? { items, total, next: encodeCursor(items[items.length - 1]!) } : { items, total };
    });
  }

  protected transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.serial(async () => {
      const db = this.db;
      let pending: ChangeEvent[] = [];
      const tx: Tx = {
        get: async (key) => {
          const r = this.stmt(`SELECT ${COLUMNS} FROM resources WHERE type = ? AND mesh = ? AND name = ?`).get(key.type, key.mesh, key.name) as SqlRow | undefined;
          return r ? fromSql(r) : undefined;
        },
        meshExists: async (mesh) => this.stmt(`SELECT 1 FROM resources WHERE type = 'Mesh' AND mesh = '' AND name = ?`).get(mesh) !== undefined,
        insert: async (row) => {
          this.stmt(`INSERT INTO resources (${COLUMNS}) VALUES (@type, @mesh, @name, @version, @labels, @spec, @tags, @creation_time, @modification_time)`).run(toSql(row));
        },
        update: async (row) => {
          this.stmt(`UPDATE resources SET version = @version, labels = @labels, spec = @spec, tags = @tags, modification_time = @modification_time WHERE type = @type AND mesh = @mesh AND name = @name`).run(toSql(row));
        },
        delete: async (key) => {
          this.stmt('DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?').run(key.type, key.mesh, key.name);
        },
        deleteMeshContents: async (mesh) => {
          const keys = this.stmt('SELECT type, mesh, name FROM resources WHERE mesh = ? ORDER BY type, name').all(mesh) as ResourceKey[];
          this.stmt('DELETE FROM resources WHERE mesh = ?').run(mesh);
          return keys;
        },
        nextRevision: async () => String((this.stmt('UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value').get() as { value: number }).value),
        publish: async (events) => {
          pending = events;
        },
      };
      db.exec('BEGIN IMMEDIATE');
      let result: T;
      try {
        result = await fn(tx);
        db.exec('COMMIT');
      } catch (err) {
        if (db.inTransaction) db.exec('ROLLBACK');
        throw err;
      }
      this.emit(pending);
      return result;
    });
  }

  async ping(): Promise<void> {
    await this.serial(() => this.stmt('SELECT 1').get());
  }

  private closing?: Promise<void>;

  /** Waits for queued work, then closes the database. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.serial(() => {
      this.closed = true;
      this.db.close();
    });
    return this.closing;
  }
}
