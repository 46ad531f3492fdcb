import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Path of a compiled command (dist/src/cmd/NAME.js). */
export function binPath(name: 'weftctl' | 'weft-cp' | 'weft-dp' | 'weft-cni'): string {
  return fileURLToPath(new URL(`../../src/cmd/${name}.js`, import.meta.url));
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion as its own process, optionally feeding stdin. */
export function run(cmd: string, args: string[], opts: { env?: Record<string, string>; stdin?: string; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, opts.timeoutMs ?? 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.stdin ?? '');
  });
}

export function weftctl(args: string[], opts: { env?: Record<string, string>; stdin?: string; cwd?: string } = {}): Promise<RunResult> {
  return run(process.execPath, [binPath('weftctl'), ...args], opts);
}
