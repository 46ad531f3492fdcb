import type { ServerHttp2Stream } from 'node:http2';

/**
 * Over TLS a stream writes its messages in writes of at most this many bytes, each after the one
 * before it has finished. HTTP/2 writes what is queued on a connection as one write, and over TLS
 * Node keeps, for the whole life of a connection, an encryption buffer the size of the largest
 * write it made at once: a 280 KB LDS response at cold start (500 services) cost 2000 proxies
 * 1.1 GB of RSS, against 280 MB in plaintext, where nothing is kept (`npm run bench:tls-memory`
 * shows it without weft-cp). gRPC does not care how a message's bytes are spread over DATA frames.
 */
export const TURN_BYTES = 16 * 1024;

/**
 * The HTTP/2 stream under a grpc-js server call, so that one message can be written over several
 * turns. grpc-js (1.14) offers no way to do that: its call writes each message in one piece. This
 * reads its internals (`call.call.stream`, the base call with no interceptors); if a later version
 * moves them, it returns undefined and the caller writes through grpc-js as before
 * (test/ads/turn-writer.test.ts fails then, so an upgrade cannot lose this unnoticed).
 */
export function http2StreamOf(call: object): ServerHttp2Stream | undefined {
  const base = (call as { call?: { stream?: unknown; nextCall?: unknown } }).call;
  const stream = base?.stream as ServerHttp2Stream | undefined;
  if (!stream || base?.nextCall !== undefined || typeof stream.write !== 'function' || typeof stream.respond !== 'function') return undefined;
  return stream;
}

/**
 * Write buffers of one size, used again once HTTP/2 has finished with them. Over TLS a change or a
 * cold start writes hundreds of MB in 16 KiB writes; with a fresh buffer for each (made and freed
 * tens of thousands of times among TLS's long-lived allocations), weft-cp's RSS with 2000 proxies
 * was 80-100 MB higher, all of it outside V8's heap (bench/README.md, twenty-sixth session). A
 * buffer goes back only after its write's callback said it was written, so its bytes are never in
 * two writes at once; only the bytes filled for a write are written, never what a buffer held
 * before. What is kept is let go once the pool has not been drawn on for `idleMs`.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private used = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly size: number,
    /** Buffers kept for reuse at most (those given back beyond it are left to the collector). */
    private readonly keep: number,
    private readonly idleMs = 5000,
  ) {}

  take(): Buffer {
    this.used = true;
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  give(buf: Buffer): void {
    if (buf.length !== this.size || this.free.length >= this.keep) return;
    this.free.push(buf);
    if (!this.timer) this.arm();
  }

  /** Buffers kept for reuse now. */
  get kept(): number {
    return this.free.length;
  }

  private arm(): void {
    this.timer = setTimeout(this.check, this.idleMs);
    this.timer.unref();
  }

  private readonly check = (): void => {
    this.timer = undefined;
    if (this.used) {
      this.used = false;
      this.arm();
    } else this.free.length = 0;
  };
}

/**
 * The pools of TurnWriters, by buffer size: enough buffers for one write of every stream of 2000
 * proxies in one turn (32 MB at 16 KiB), which is how many a change over TLS has in flight.
 */
const pools = new Map<number, BufferPool>();
const POOL_BYTES = 32 * 1024 * 1024;
export function poolFor(size: number): BufferPool {
  let p = pools.get(size);
  if (!p) pools.set(size, (p = new BufferPool(size, Math.max(16, Math.floor(POOL_BYTES / size)))));
  return p;
}

/** Bytes the pools keep for reuse now (`weft_xds_write_buffers_kept_bytes`). */
export function pooledBytes(): number {
  let n = 0;
  for (const p of pools.values()) n += p.kept * p.size;
  return n;
}

/** A write smaller than this share of the pool's buffer size is a buffer of its own (small ones come from Node's slab). */
const SMALL_SHARE = 4;

interface Queued {
  /** The gRPC frame in parts: a 5-byte prefix (no compression, length), then the message's. */
  parts: readonly Uint8Array[];
  /** Bytes left to write, and where they start. */
  left: number;
  part: number;
  offset: number;
  done: () => void;
}

/**
 * Writes gRPC messages to an HTTP/2 stream in order, in writes of at most `most` bytes, each in a
 * turn after the one before it has finished (else HTTP/2 joins the waiting ones into one write).
 * A message comes as parts (wire.ts `responseParts`: the per-stream head and the resources'
 * shared chunks), copied straight into each turn's buffer, so no copy of a whole message is made.
 * The response headers must have been sent (grpc-js's `call.sendMetadata`). Before grpc-js ends
 * the stream with a status, `flush` writes what is still queued, so no message is cut short.
 */
export class TurnWriter {
  private readonly queue: Queued[] = [];
  /** A drain is due: at the end of the code that queued (see `write`), or a turn after the last write. */
  private scheduled = false;
  /** A write HTTP/2 has not finished. */
  private inFlight = false;

  private readonly pool: BufferPool;

  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly most = TURN_BYTES,
    /** Each write finished: the proxy is taking what it is sent (SendAccount.progressed). */
    private readonly onProgress?: () => void,
  ) {
    this.pool = poolFor(most);
  }

  /**
   * Queues a message, given as its parts; `done` once its last bytes are written (not called if the
   * stream goes first). When nothing is being written, the first write waits for the code that
   * queued this to finish (a microtask), so that the messages one pump sends (CDS, then LDS) go
   * out in one write while they fit in `most` bytes. Written at once, the clusters took the write
   * and the listeners waited for its callback and a turn: with 2000 proxies, behind every other
   * proxy's clusters and the ACKs that came meanwhile (bench/README.md, twenty-seventh session).
   * HTTP/2 sends nothing before the event loop turns anyway, so the first message goes no later.
   */
  write(parts: readonly Uint8Array[], done: () => void): void {
    let length = 0;
    for (const p of parts) length += p.length;
    const prefix = Buffer.allocUnsafe(5);
    prefix[0] = 0;
    prefix.writeUInt32BE(length, 1);
    this.queue.push({ parts: [prefix, ...parts], left: length + 5, part: 0, offset: 0, done });
    if (this.inFlight || this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(this.turn);
  }

  /** Bytes queued and not yet handed to HTTP/2. */
  get pendingBytes(): number {
    let n = 0;
    for (const q of this.queue) n += q.left;
    return n;
  }

  private gone(): boolean {
    return this.stream.destroyed || this.stream.closed || this.stream.writableEnded;
  }

  /**
   * Takes up to `most` bytes off the queue into one buffer (the part of a pool's buffer it fills,
   * when it fills a good part of one); the messages it finishes.
   */
  private take(most: number): { buf: Buffer; pooled?: Buffer; finished: Queued[] } {
    let size = 0;
    for (const q of this.queue) if ((size += q.left) >= most) break;
    size = Math.min(size, most);
    const pooled = size <= this.pool.size && size * SMALL_SHARE >= this.pool.size ? this.pool.take() : undefined;
    const buf = pooled ? pooled.subarray(0, size) : Buffer.allocUnsafe(size);
    const finished: Queued[] = [];
    let pos = 0;
    while (pos < buf.length) {
      const q = this.queue[0]!;
      while (q.left > 0 && pos < buf.length) {
        const p = q.parts[q.part]!;
        const n = Math.min(p.length - q.offset, buf.length - pos);
        buf.set(n === p.length ? p : p.subarray(q.offset, q.offset + n), pos);
        pos += n;
        q.left -= n;
        q.offset += n;
        if (q.offset === p.length) {
          q.part++;
          q.offset = 0;
        }
      }
      if (q.left === 0) finished.push(this.queue.shift()!);
    }
    return { buf, pooled, finished };
  }

  private send(most: number): void {
    const { buf, pooled, finished } = this.take(most);
    this.inFlight = true;
    this.stream.write(buf, (err) => {
      this.inFlight = false;
      // A failed write's buffer is left to the collector: it is not known to be let go of.
      if (err) return;
      if (pooled) this.pool.give(pooled);
      this.onProgress?.();
      for (const q of finished) q.done();
      if (this.queue.length > 0 && !this.scheduled) this.schedule();
    });
  }

  private schedule(): void {
    this.scheduled = true;
    setImmediate(this.turn);
  }

  private drain(): void {
    if (this.gone()) return void (this.queue.length = 0);
    if (this.inFlight || this.queue.length === 0) return;
    this.send(this.most);
  }

  /** The next write: a turn after the last one finished, or the first once its pump has queued all. */
  private readonly turn = (): void => {
    this.scheduled = false;
    this.drain();
  };

  /** Writes everything queued now, in one go (before the stream ends with a status). */
  flush(): void {
    if (this.gone()) return void (this.queue.length = 0);
    if (this.queue.length > 0) this.send(Infinity);
  }

  /** Drops what is queued (the stream ended). */
  close(): void {
    this.queue.length = 0;
  }
}
