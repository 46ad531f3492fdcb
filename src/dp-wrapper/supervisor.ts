import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Logger } from '../core/index.js';

export interface SupervisorOptions {
  binaryPath: string;
  configPath: string;
  adminPort: number;
  drainTimeMs: number;
  logLevel: string;
  concurrency?: number;
  log: Logger;
  /** Give up after this many failures in a row that each came within `rapidMs` of a start. */
  maxRapidFailures?: number;
  rapidMs?: number;
  /** Restart backoff: first delay, doubled each time, capped. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** After asking Envoy to stop, wait this long before killing it. */
  killAfterMs?: number;
}

export type SupervisorExit = { kind: 'stopped' } | { kind: 'gave-up'; failures: number; lastCode: number | null; lastSignal: string | null };

/**
 * Runs Envoy (`--config-path`, `--drain-time-s`, `--disable-hot-restart`, log level, concurrency)
 * as the current user, prefixes its output into the wrapper's structured log, restarts it with
 * capped exponential backoff when it dies, gives up after repeated rapid failures, and drains it
 * through its admin API on shutdown.
 */
export class EnvoySupervisor {
  private child?: ChildProcess;
  private startedAt = 0;
  private rapidFailures = 0;
  private stopping = false;
  private restartTimer?: NodeJS.Timeout;
  private resolveExit!: (e: SupervisorExit) => void;
  readonly exited: Promise<SupervisorExit>;
  restarts = 0;

  constructor(private readonly o: SupervisorOptions) {
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  args(): string[] {
    return [
      '--config-path',
      this.o.configPath,
      '--drain-time-s',
      String(Math.ceil(this.o.drainTimeMs / 1000)),
      '--disable-hot-restart',
      '--log-level',
      this.o.logLevel,
      ...(this.o.concurrency ? ['--concurrency', String(this.o.concurrency)] : []),
    ];
  }

  start(): void {
    const log = this.o.log;
    this.startedAt = Date.now();
    const child = spawn(this.o.binaryPath, this.args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    for (const [stream, name] of [
      [child.stdout!, 'stdout'],
      [child.stderr!, 'stderr'],
    ] as const) {
      createInterface({ input: stream }).on('line', (line) => log.info({ source: 'envoy', stream: name }, `[envoy] ${line}`));
    }
    let ended = false;
    const end = (code: number | null, signal: NodeJS.Signals | null) => {
      if (ended) return;
      ended = true;
      this.onExit(child, code, signal);
    };
    child.once('error', (err) => {
      log.error({ err: err.message, binary: this.o.binaryPath }, 'cannot start Envoy');
      end(null, null);
    });
    child.once('spawn', () => log.info({ pid: child.pid, args: this.args() }, 'Envoy started'));
    child.once('close', end);
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child) return;
    const log = this.o.log;
    if (this.stopping) {
      log.info({ code, signal }, 'Envoy stopped');
      return this.resolveExit({ kind: 'stopped' });
    }
    const rapid = Date.now() - this.startedAt < (this.o.rapidMs ?? 10_000);
    this.rapidFailures = rapid ? this.rapidFailures + 1 : 1;
    const max = this.o.maxRapidFailures ?? 5;
    if (this.rapidFailures >= max) {
      log.error({ code, signal, failures: this.rapidFailures }, `Envoy failed ${this.rapidFailures} times in a row right after starting; giving up`);
      return this.resolveExit({ kind: 'gave-up', failures: this.rapidFailures, lastCode: code, lastSignal: signal });
    }
    const delay = Math.min((this.o.backoffMs ?? 1000) * 2 ** (this.rapidFailures - 1), this.o.maxBackoffMs ?? 30_000);
    log.warn({ code, signal, restartInMs: delay, failuresInARow: this.rapidFailures }, 'Envoy exited unexpectedly; restarting');
    this.restartTimer = setTimeout(() => {
      this.restarts++;
      this.start();
    }, delay);
  }

  private async admin(method: string, path: string): Promise<number | undefined> {
    try {
      const r = await fetch(`http://127.0.0.1:${this.o.adminPort}${path}`, { method, signal: AbortSignal.timeout(2000) });
      await r.text();
      return r.status;
    } catch {
      return undefined;
    }
  }

  /** Envoy is live and has taken its first full configuration (its admin /ready says LIVE). */
  async ready(): Promise<boolean> {
    return this.running && (await this.admin('GET', '/ready')) === 200;
  }

  /**
   * Graceful stop: fail Envoy's health checks and drain its listeners (so load balancers and
   * peers move away while in-flight requests finish), wait up to the drain time (less if Envoy
   * exits), then SIGTERM, then SIGKILL if it ignores that. `now` skips the draining.
   */
  async stop(opts: { now?: boolean } = {}): Promise<void> {
    const log = this.o.log;
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || !this.running) {
      this.resolveExit({ kind: 'stopped' });
      return;
    }
    if (!opts.now) {
      await this.admin('POST', '/healthcheck/fail');
      await this.admin('POST', '/drain_listeners?graceful');
      log.info({ drainTimeMs: this.o.drainTimeMs }, 'draining Envoy');
      await Promise.race([new Promise((r) => setTimeout(r, this.o.drainTimeMs)), this.exited]);
    }
    if (this.running) child.kill('SIGTERM');
    const killer = setTimeout(() => {
      if (this.running) {
        log.warn('Envoy did not stop after SIGTERM; killing it');
        child.kill('SIGKILL');
      }
    }, opts.now ? 0 : (this.o.killAfterMs ?? 5000));
    await this.exited;
    clearTimeout(killer);
  }
}
