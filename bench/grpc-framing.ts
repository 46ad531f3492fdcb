/** gRPC's message framing by hand, for the benchmark's node:http2 server and client (no grpc-js). */

/** One message with its 5-byte prefix (uncompressed flag, big-endian length). */
export function frame(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 5);
  out[0] = 0;
  out.writeUInt32BE(msg.length, 1);
  out.set(msg, 5);
  return out;
}

/** A `data` handler that calls `onMessage` with each whole message as chunks arrive. */
export function deframer(onMessage: (msg: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 5) {
      const length = pending.readUInt32BE(1);
      if (pending.length < 5 + length) break;
      const msg = pending.subarray(5, 5 + length);
      pending = pending.subarray(5 + length);
      onMessage(msg);
    }
  };
}
