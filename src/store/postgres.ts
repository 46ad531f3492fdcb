import pg from 'pg';
import { WeftError, type Resource, type ResourceKey, type ResourceRegistry } from '../core/index.js';
import { BaseStore, DryRunRollback, decodeCursor, encodeCursor, tagFilters, type Row, type Tx } from './engine.js';
import type { ChangeEvent, ListOptions, ListResult } from './types.js';

const CHANNEL = 'weft_changes';
/** Arbitrary constant that serialises schema migrations across replicas starting together. */
const MIGRATION_LOCK = 0x77656674;

const MIGRATIONS = [
  `CREATE TABLE weft_resources (
     type text NOT NULL, mesh text NOT NULL, name text NOT NULL,
     version text NOT NULL, labels jsonb NOT NULL, spec jsonb NOT NULL, tags jsonb NOT NULL,
     creation_time text NOT NULL, modification_time text NOT NULL,
     PRIMARY KEY (type, mesh, name));
   CREATE INDEX weft_resources_by_mesh ON weft_resources (mesh, type);
   CREATE INDEX weft_resources_by_tags ON weft_resources USING gin (tags);
   CREATE SEQUENCE weft_revision;`,
];

interface PgRow {
  type: string;
  mesh: string;
  name: string;
  version: string;
  labels: Record<string, string>;
  spec: unknown;
  tags: string[];
  creation_time: string;
  modification_time: string;
}

const COLUMNS = 'type, mesh, name, version, labels, spec, tags, creation_time, modification_time';

function fromPg(r: PgRow): Row {
  return { type: r.type, mesh: r.mesh, name: r.name, version: r.version, labels: r.labels, spec: r.spec, tags: r.tags, creationTime: r.creation_time, modificationTime: r.modification_time };
}

function toParams(r: Row): unknown[] {
  return [r.type, r.mesh, r.name, r.version, JSON.stringify(r.labels), JSON.stringify(r.spec), JSON.stringify(r.tags), r.creationTime, r.modificationTime];
}

function strip(row: Row): Resource {
  const { tags: _t, ...res } = row;
  return res;
}

function unavailable(err: unknown): WeftError {
  return new WeftError('store_unavailable', `PostgreSQL: ${(err as Error).message}`, [], { cause: err });
}

export interface PostgresStoreOptions {
  url: string;
  registry: ResourceRegistry;
  poolSize?: number;
  onListenerError?: (err: unknown) => void;
  /** Told when the change feed connection drops or comes back. */
  onFeedState?: (state: 'connected' | 'lost', err?: unknown) => void;
}

/**
 * PostgreSQL engine for several control-plane replicas. Writes take row locks (`FOR UPDATE`, the
 * mesh row `FOR SHARE`) inside one transaction and send `pg_notify` before commit, so PostgreSQL
 * delivers the change to every replica's LISTEN connection once the commit is durable. Watchers of
 * this instance hear about its own writes the same way, in commit order. When the LISTEN
 * connection drops, watchers get `resync` after it is back, since notifications may be lost.
 */
export class PostgresStore extends BaseStore {
  readonly engine = 'postgres' as const;
  private readonly pool: pg.Pool;
  private listener?: pg.Client;
  private closed = false;
  private reconnectTimer?: NodeJS.Timeout;

  private constructor(private readonly opts: PostgresStoreOptions) {
    super(opts.registry, opts.onListenerError);
    this.pool = new pg.Pool({ connectionString: opts.url, max: opts.poolSize ?? 10, connectionTimeoutMillis: 10_000 });
    this.pool.on('error', () => {
      /* idle client errors surface on the next query */
    });
  }

  /** Connects, runs pending migrations and starts the change feed. */
  static async open(opts: PostgresStoreOptions): Promise<PostgresStore> {
    const store = new PostgresStore(opts);
    try {
      await store.migrate();
      await store.listen();
    } catch (err) {
      await store.close();
      throw err instanceof WeftError ? err : unavailable(err);
    }
    return store;
  }

  private async migrate(): Promise<void> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS weft_schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      const { rows } = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM weft_schema_migrations');
      for (let v = rows[0]?.v ?? 0; v < MIGRATIONS.length; v++) {
        await c.query(MIGRATIONS[v]!);
        await c.query('INSERT INTO weft_schema_migrations (version) VALUES ($1)', [v + 1]);
      }
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.opts.url });
    client.on('notification', (msg) => {
      if (msg.channel !== CHANNEL || !msg.payload) return;
      this.emit([JSON.parse(msg.payload) as ChangeEvent]);
    });
    const lost = (err?: unknown) => {
      if (this.listener !== client) return;
      this.listener = undefined;
      client.end().catch(() => {});
      if (this.closed) return;
      this.opts.onFeedState?.('lost', err);
      this.scheduleReconnect(250);
    };
    client.on('error', lost);
    client.on('end', () => lost());
    await client.connect();
    await client.query(`LISTEN ${CHANNEL}`);
    this.listener = client;
  }

  private scheduleReconnect(delay: number): void {
    this.reconnectTimer = setTimeout(() => {
      this.listen().then(
        () => {
          this.opts.onFeedState?.('connected');
          this.emit([{ kind: 'resync' }]);
        },
        () => this.scheduleReconnect(Math.min(delay * 2, 5000)),
      );
    }, delay);
    this.reconnectTimer.unref();
  }

  async get(key: ResourceKey): Promise<Resource | undefined> {
    const { rows } = await this.query<PgRow>(`SELECT ${COLUMNS} FROM weft_resources WHERE type = $1 AND mesh = $2 AND name = $3`, [key.type, key.mesh, key.name]);
    return rows[0] ? strip(fromPg(rows[0])) : undefined;
  }

  async list(type: string, options: ListOptions = {}): Promise<ListResult> {
    const where = ['type = $1'];
    const args: unknown[] = [type];
    const add = (sql: (n: number) => string, ...vals: unknown[]) => {
      where.push(sql(args.length + 1));
      args.push(...vals);
    };
    if (options.mesh !== undefined) add((n) => `mesh = $${n}`, options.mesh);
    if (options.nameContains) add((n) => `strpos(name, $${n}) > 0`, options.nameContains);
    const tags = tagFilters(options.tags);
    if (tags.length > 0) add((n) => `tags @> $${n}::jsonb`, JSON.stringify(tags));
    const { rows: count } = await this.query<{ n: string }>(`SELECT count(*) AS n FROM weft_resources WHERE ${where.join(' AND ')}`, args);
    if (options.after !== undefined) {
      const [m, n] = decodeCursor(options.after);
      add((i) => `(mesh, name) > ($${i}, $${i + 1})`, m, n);
    }
    let sql = `SELECT ${COLUMNS} FROM weft_resources WHERE ${where.join(' AND ')} ORDER BY mesh COLLATE "C", name COLLATE "C"`;
    if (options.limit !== undefined) {
      args.push(options.limit + 1);
      sql += ` LIMIT $${args.length}`;
    }
    const rows = (await this.query<PgRow>(sql, args)).rows.map(fromPg);
    const hasMore = options.limit !== undefined && rows.length > options.limit;
    const items = (hasMore ? rows.slice(0, options.limit) : rows).map(strip);
    const total = Number(count[0]!.n);
    return hasMore ? { items, total, next: encodeCursor(items[items.length - 1]!) } : { items, total };
  }

  private async query<R extends pg.QueryResultRow>(sql: string, args: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, args);
    } catch (err) {
      throw err instanceof WeftError ? err : unavailable(err);
    }
  }

  protected async transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    let c: pg.PoolClient;
    try {
      c = await this.pool.connect();
    } catch (err) {
      throw unavailable(err);
    }
    const tx: Tx = {
      get: async (key, forUpdate) => {
        const { rows } = await c.query<PgRow>(`SELECT ${COLUMNS} FROM weft_resources WHERE type = $1 AND mesh = $2 AND name = $3${forUpdate ? ' FOR UPDATE' : ''}`, [key.type, key.mesh, key.name]);
        return rows[0] ? fromPg(rows[0]) : undefined;
      },
      meshExists: async (mesh) => (await c.query(`SELECT 1 FROM weft_resources WHERE type = 'Mesh' AND mesh = '' AND name = $1 FOR SHARE`, [mesh])).rowCount === 1,
      insert: async (row) => {
        const r = await c.query(`INSERT INTO weft_resources (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`, toParams(row));
        if (r.rowCount !== 1) throw new WeftError('already_exists', `${row.type} "${row.name}" was created concurrently; retry`);
      },
      update: async (row) => {
        await c.query(
          'UPDATE weft_resources SET version = $4, labels = $5, spec = $6, tags = $7, modification_time = $8 WHERE type = $1 AND mesh = $2 AND name = $3',
          [row.type, row.mesh, row.name, row.version, JSON.stringify(row.labels), JSON.stringify(row.spec), JSON.stringify(row.tags), row.modificationTime],
        );
      },
      delete: async (key) => {
        await c.query('DELETE FROM weft_resources WHERE type = $1 AND mesh = $2 AND name = $3', [key.type, key.mesh, key.name]);
      },
      deleteMeshContents: async (mesh) => (await c.query<ResourceKey>('DELETE FROM weft_resources WHERE mesh = $1 RETURNING type, mesh, name', [mesh])).rows,
      nextRevision: async () => (await c.query<{ v: string }>(`SELECT nextval('weft_revision')::text AS v`)).rows[0]!.v,
      publish: async (events) => {
        for (const e of events) await c.query('SELECT pg_notify($1, $2)', [CHANNEL, JSON.stringify(e)]);
      },
    };
    let broken: unknown;
    try {
      await c.query('BEGIN');
      const result = await fn(tx);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch((e: unknown) => (broken = e));
      // Our own errors (and the dry-run rollback) pass through; what pg throws means the database
      // or the connection failed.
      if (err instanceof WeftError || err instanceof DryRunRollback || err instanceof TypeError) throw err;
      throw unavailable(err);
    } finally {
      c.release(broken instanceof Error ? broken : undefined);
    }
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    const l = this.listener;
    this.listener = undefined;
    await l?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}
