import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/core/index.js';

/** A logger at `level` whose JSON lines are kept, parsed, in `lines` (to assert what was logged). */
export function collectingLogger(level: string): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(line: Buffer, _enc, done) {
      lines.push(JSON.parse(line.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger('weft-cp', level, sink), lines };
}
