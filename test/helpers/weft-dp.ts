import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const weftDp = fileURLToPath(new URL('../../src/cmd/weft-dp.js', import.meta.url));

/** A `weft-dp run` child process, with its JSON log lines and stderr collected. */
export interface WeftDpProcess {
  child: ChildProcess;
  logs: Record<string, unknown>[];
  stderr: string;
  exited: Promise<number | null>;
  /** The first log line matching, waiting up to `ms`. */
  line(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
}

export function startWeftDp(args: string[], env: Record<string, string> = {}): WeftDpProcess {
  const child = spawn(process.execPath, [weftDp, 'run', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const w: WeftDpProcess = {
    child,
    logs: [],
    stderr: '',
    exited: new Promise((r) => child.once('exit', (code) => r(code))),
    async line(pred, ms = 20_000) {
      const t0 = Date.now();
      for (;;) {
        const l = w.logs.find(pred);
        if (l) return l;
        if (Date.now() - t0 > ms) throw new Error(`no such log line within ${ms} ms; last: ${JSON.stringify(w.logs.slice(-4))} stderr: ${w.stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
  };
  child.stderr!.on('data', (d: Buffer) => (w.stderr += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (t) => {
    try {
      w.logs.push(JSON.parse(t) as Record<string, unknown>);
    } catch {
      // not a log line
    }
  });
  return w;
}
