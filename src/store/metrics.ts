import { Counter, Histogram, type Registry } from 'prom-client';
import { isWeftError, type Resource, type ResourceInput, type ResourceKey } from '../core/index.js';
import type { ChangeListener, ListOptions, ListResult, Store, WriteOp, WriteOptions, WriteResult } from './types.js';

/**
 * Wraps a store so every call is counted and timed:
 * `weft_store_operations_total{engine,operation,result}` and
 * `weft_store_operation_duration_seconds{engine,operation}`.
 */
export function instrumentStore(store: Store, registry: Registry): Store {
  const ops = new Counter({
    name: 'weft_store_operations_total',
    help: 'Store operations by engine, operation and result (ok or an error code).',
    labelNames: ['engine', 'operation', 'result'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'weft_store_operation_duration_seconds',
    help: 'Time taken by store operations.',
    labelNames: ['engine', 'operation'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const engine = store.engine;
  async function timed<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    const end = duration.startTimer({ engine, operation });
    try {
      const r = await fn();
      ops.inc({ engine, operation, result: 'ok' });
      return r;
    } catch (err) {
      ops.inc({ engine, operation, result: isWeftError(err) ? err.code : 'internal' });
      throw err;
    } finally {
      end();
    }
  }
  return {
    engine,
    get: (key: ResourceKey) => timed('get', () => store.get(key)),
    list: (type: string, o?: ListOptions): Promise<ListResult> => timed('list', () => store.list(type, o)),
    create: (r: ResourceInput): Promise<Resource> => timed('create', () => store.create(r)),
    update: (r: ResourceInput, v?: string) => timed('update', () => store.update(r, v)),
    upsert: (r: ResourceInput, v?: string): Promise<WriteResult> => timed('upsert', () => store.upsert(r, v)),
    delete: (k: ResourceKey, v?: string) => timed('delete', () => store.delete(k, v)),
    write: (w: readonly WriteOp[], o?: WriteOptions) => timed('write', () => store.write(w, o)),
    watch: (l: ChangeListener) => store.watch(l),
    ping: () => timed('ping', () => store.ping()),
    close: () => store.close(),
  };
}
