/** gRPC's message framing by hand, for the benchmark's node:http2 server and client (no grpc-js). */

/** One message with its 5-byte prefix (uncompressed flag, big-endian length). */
export function frame(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 5);
  out[0] = 0;
  out.writeUInt32BE(msg.length, 1);
  out.set(msg, 5);
  return out;
}

/**
 * A `data` handler that calls `onMessage` with each whole message as chunks arrive. A message
 * spread over many chunks (a SotW response of hundreds of KB comes in 16 KB frames) is joined
 * once, when it is all there.
 */
export function deframer(onMessage: (msg: Buffer) => void): (chunk: Buffer) => void {
  let chunks: Buffer[] = [];
  let held = 0;
  /** Bytes the message being received needs, prefix included (0: not known yet). */
  let need = 0;
  return (chunk) => {
    chunks.push(chunk);
    held += chunk.length;
    for (;;) {
      if (need === 0) {
        if (held < 5) return;
        if (chunks[0]!.length < 5) chunks = [Buffer.concat(chunks, held)];
        need = 5 + chunks[0]!.readUInt32BE(1);
      }
      if (held < need) return;
      let pending = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, held);
      const msg = pending.subarray(5, need);
      pending = pending.subarray(need);
      held -= need;
      need = 0;
      chunks = held > 0 ? [pending] : [];
      onMessage(msg);
    }
  };
}
