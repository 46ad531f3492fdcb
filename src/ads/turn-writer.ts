import type { ServerHttp2Stream } from 'node:http2';

/**
 * At most this many bytes of a SotW stream's messages are written per turn of the event loop on a
 * TLS port (delta cuts its responses into pieces instead: DELTA_PIECE_BYTES). HTTP/2 writes what one turn queued on a connection as one write, and over TLS Node keeps,
 * for the whole life of a connection, an encryption buffer the size of the largest write it made
 * at once: a 280 KB LDS response at cold start (500 services) cost 2000 proxies 1.1 GB of RSS,
 * against 280 MB in plaintext, where nothing is kept (`npm run bench:tls-memory` shows it
 * without weft-cp). gRPC does not care how a message's bytes are spread over DATA frames.
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
  const base = (call as { call?: { stream?: unknown; sendMetadata?: unknown; nextCall?: unknown } }).call;
  const stream = base?.stream as ServerHttp2Stream | undefined;
  if (!stream || base?.nextCall !== undefined || typeof stream.write !== 'function' || typeof stream.respond !== 'function') return undefined;
  return stream;
}

interface Queued {
  /** The gRPC frame: a 5-byte prefix (no compression, length) and the message. */
  frame: Buffer;
  at: number;
  done: () => void;
}

/**
 * Writes gRPC messages to an HTTP/2 stream, at most `most` bytes per turn, in order. The response
 * headers must have been sent (grpc-js's `call.sendMetadata`). Before grpc-js ends the stream
 * with a status, `flush` writes what is still queued, so no message is cut short.
 */
export class TurnWriter {
  private readonly queue: Queued[] = [];
  /** Bytes this turn may still write (one write per turn, of at most `most` bytes). */
  private room: number;
  private scheduled = false;

  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly most = TURN_BYTES,
  ) {
    this.room = most;
  }

  /** Queues `message`; `done` once its last bytes are written (not called if the stream goes first). */
  write(message: Uint8Array, done: () => void): void {
    const frame = Buffer.allocUnsafe(message.length + 5);
    frame[0] = 0;
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, 5);
    this.queue.push({ frame, at: 0, done });
    this.drain();
  }

  /** Bytes queued and not yet handed to HTTP/2. */
  get pendingBytes(): number {
    let n = 0;
    for (const q of this.queue) n += q.frame.length - q.at;
    return n;
  }

  private gone(): boolean {
    return this.stream.destroyed || this.stream.closed || this.stream.writableEnded;
  }

  /** Writes HTTP/2 has not finished: the next wait for them, or HTTP/2 would join them into one. */
  private inFlight = 0;

  private readonly written = (): void => {
    if (--this.inFlight === 0 && this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      setImmediate(this.turn);
    }
  };

  private drain(): void {
    if (this.gone()) return void (this.queue.length = 0);
    if (this.inFlight > 0 || this.room === 0 || this.queue.length === 0) return;
    // Up to `most` bytes, of one message or several, handed to HTTP/2 as one write.
    this.stream.cork();
    while (this.room > 0 && this.queue.length > 0) {
      const q = this.queue[0]!;
      const end = Math.min(q.frame.length, q.at + this.room);
      const part = q.frame.subarray(q.at, end);
      this.room -= part.length;
      q.at = end;
      if (end === q.frame.length) this.queue.shift();
      this.inFlight++;
      this.stream.write(part, (err) => {
        if (!err && end === q.frame.length) q.done();
        this.written();
      });
    }
    this.stream.uncork();
    // Room comes back next turn.
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.turn);
    }
  }

  private readonly turn = (): void => {
    this.scheduled = false;
    this.room = this.most;
    this.drain();
  };

  /** Writes everything queued now, in one go (before the stream ends with a status). */
  flush(): void {
    if (this.gone()) return void (this.queue.length = 0);
    for (const q of this.queue.splice(0)) {
      const part = q.frame.subarray(q.at);
      this.stream.write(part, (err) => {
        if (!err) q.done();
      });
    }
  }

  /** Drops what is queued (the stream ended). */
  close(): void {
    this.queue.length = 0;
  }
}
