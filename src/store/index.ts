import type { ResourceRegistry } from '../core/index.js';
import { EmbeddedStore } from './embedded.js';
import { PostgresStore } from './postgres.js';
import type { Store } from './types.js';

export type { Store, WriteOp, WriteResult, WriteOutcome, ChangeEvent, ChangeListener, ListOptions, ListResult, WriteOptions } from './types.js';
export { instrumentStore } from './metrics.js';

export type StoreConfig =
  | { type: 'embedded'; dataDir: string }
  | { type: 'postgres'; url: string; poolSize?: number };

export interface OpenStoreOptions {
  registry: ResourceRegistry;
  onListenerError?: (err: unknown) => void;
  onFeedState?: (state: 'connected' | 'lost', err?: unknown) => void;
}

/** Opens the configured engine; resolves once it is ready to serve (migrations done). */
export async function openStore(config: StoreConfig, opts: OpenStoreOptions): Promise<Store> {
  if (config.type === 'embedded') return new EmbeddedStore({ dataDir: config.dataDir, ...opts });
  return PostgresStore.open({ url: config.url, poolSize: config.poolSize, ...opts });
}
