import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { binPath } from './bin.js';

export interface CpProcess {
  child: ChildProcess;
  apiUrl: string;
  diagnosticsUrl: string;
  /** Every log line so far (JSON strings). */
  logs: string[];
  /** Resolves with the exit code or signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts weft-cp as its own process (or any command that runs it, like `npm start`) and waits for
 * it to log where its servers listen. Pass ports 0 in env to get free ones.
 */
export function spawnControlPlane(env: Record<string, string>, command: string[] = [process.execPath, binPath('weft-cp'), 'run'], opts: { cwd?: string; detached?: boolean } = {}): Promise<CpProcess> {
  const child = spawn(command[0]!, command.slice(1), { env: { ...process.env, WEFT_XDS_PORT: '0', ...env }, cwd: opts.cwd, detached: opts.detached, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    let apiUrl: string | undefined;
    let diagnosticsUrl: string | undefined;
    const timer = setTimeout(() => reject(new Error(`weft-cp did not start in time\nlogs:\n${logs.join('\n')}\nstderr:\n${stderr}`)), 60_000);
    void exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`weft-cp exited with ${code} before it was ready\nlogs:\n${logs.join('\n')}\nstderr:\n${stderr}`));
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      logs.push(line);
      if (!line.startsWith('{')) return;
      const entry = JSON.parse(line) as { msg?: string; url?: string };
      if (entry.msg === 'HTTP API listening') apiUrl = entry.url;
      if (entry.msg === 'diagnostics listening') diagnosticsUrl = entry.url;
      if (apiUrl && diagnosticsUrl) {
        clearTimeout(timer);
        resolve({ child, apiUrl, diagnosticsUrl, logs, exited });
      }
    });
  });
}
