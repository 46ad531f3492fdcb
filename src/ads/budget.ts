import { Gauge, type Registry } from 'prom-client';

/**
 * How many response bytes all streams together may have on their way out (handed to gRPC, not yet
 * written to the connection). A stream with something to send while the budget is spent waits its
 * turn (first come, first served) instead of serializing one more copy: 2000 proxies connecting
 * at once then cost a bounded amount of memory rather than one serialized config per proxy
 * waiting for a slow reader. Like Istio's push throttle, but counted in bytes.
 *
 * Each stream draws on it through its own SendAccount, which also keeps a stream from queueing
 * more while what it sent before is still unwritten (see SendAccount).
 *
 * A proxy that stops reading keeps what was sent to it charged. Alone that costs others nothing;
 * but while streams wait for the budget, a stream of whose bytes nothing has been written for
 * `stallCutMs` (see `SendAccount.progressed`) is holding them up. It is cut (`SendAccount.onStall`:
 * the server cuts its connection, and a live proxy reconnects and is sent what is current),
 * longest stalled first, until what the cut ones give back opens the budget. Without it, enough
 * proxies stalled at once (about 140 with SotW and 500 services reachable, each holding one turn)
 * would hold every other proxy's changes for as long as they stay connected.
 */
export class SendBudget {
  private inFlight = 0;
  private readonly waiting = new Set<() => void>();
  private readonly gauge?: Gauge;
  /** Accounts with bytes not yet written. */
  private readonly writing = new Set<SendAccount>();
  private readonly stallCutMs: number;
  private readonly now: () => number;
  private readonly schedule: (check: () => void, delayMs: number) => void;
  /** A stall check is scheduled. */
  private stallCheck = false;

  constructor(
    readonly limitBytes: number,
    metrics?: Registry,
    opts: {
      stallCutMs?: number;
      now?: () => number;
      /** Runs the stall check `delayMs` from now (by `now`'s clock); tests with a clock of their own pass theirs. */
      schedule?: (check: () => void, delayMs: number) => void;
    } = {},
  ) {
    this.stallCutMs = opts.stallCutMs ?? 0;
    this.now = opts.now ?? Date.now;
    this.schedule = opts.schedule ?? afterPendingIo;
    if (metrics) {
      this.gauge = new Gauge({ name: 'weft_xds_send_bytes_in_flight', help: 'xDS response bytes handed to gRPC and not yet written to the connection.', registers: [metrics] });
      const waiting = this.waiting;
      new Gauge({
        name: 'weft_xds_streams_waiting_to_send',
        help: 'xDS streams waiting for the send budget (xds.sendBudgetBytes).',
        registers: [metrics],
        collect() {
          this.set(waiting.size);
        },
      });
      const writing = () => this.writing.size;
      new Gauge({
        name: 'weft_xds_streams_writing',
        help: "xDS streams with responses not yet written to their connection (a slow or stalled proxy stays here); their next responses wait for these, and changes meanwhile go out together.",
        registers: [metrics],
        collect() {
          this.set(writing());
        },
      });
    }
  }

  /** True while a stream may send now. */
  get open(): boolean {
    return this.inFlight < this.limitBytes;
  }

  /** Bytes handed to gRPC and not yet written (or given back by a stream that ended). */
  get bytesInFlight(): number {
    return this.inFlight;
  }

  get streamsWaiting(): number {
    return this.waiting.size;
  }

  /** Streams with responses not yet written. */
  get streamsWriting(): number {
    return this.writing.size;
  }

  /** A stream's account on this budget. */
  account(now: () => number = this.now): SendAccount {
    return new SendAccount(this, now);
  }

  charge(bytes: number): void {
    this.inFlight += bytes;
    this.gauge?.set(this.inFlight);
  }

  refund(bytes: number): void {
    this.inFlight -= bytes;
    this.gauge?.set(this.inFlight);
    for (const resume of this.waiting) {
      if (!this.open) break;
      this.waiting.delete(resume);
      resume();
    }
  }

  /** Calls `resume` once the budget opens (once per registration; registering again is a no-op). */
  wait(resume: () => void): void {
    this.waiting.add(resume);
    this.watchStalls();
  }

  cancel(resume: () => void): void {
    this.waiting.delete(resume);
  }

  /** @internal An account started (true) or stopped having bytes unwritten. */
  setWriting(account: SendAccount, writing: boolean): void {
    if (writing) this.writing.add(account);
    else this.writing.delete(account);
  }

  /** While streams wait, looks again when the longest stalled account reaches stallCutMs. */
  private watchStalls(): void {
    if (this.stallCutMs <= 0 || this.stallCheck || this.waiting.size === 0) return;
    let oldest = Infinity;
    for (const a of this.writing) if (a.stallable) oldest = Math.min(oldest, a.stalledSince);
    if (oldest === Infinity) return; // nothing that could be cut: the writes in flight will open it
    this.stallCheck = true;
    this.schedule(
      () => {
        this.stallCheck = false;
        this.cutStalled();
      },
      Math.max(0, oldest + this.stallCutMs - this.now()),
    );
  }

  /**
   * Cuts stalled accounts, longest first, while streams wait and the budget stays spent. A cut
   * connection gives its bytes back when its stream ends, which may come later: they count as
   * given back already, so no more is cut than the waiting streams need.
   */
  private cutStalled(): void {
    while (this.waiting.size > 0) {
      let freeing = 0;
      for (const a of this.writing) if (a.cut) freeing += a.unwritten?.bytes ?? 0;
      if (this.inFlight - freeing < this.limitBytes) break;
      const now = this.now();
      let stalled: SendAccount | undefined;
      for (const a of this.writing) if (a.stallable && now - a.stalledSince >= this.stallCutMs && (!stalled || a.stalledSince < stalled.stalledSince)) stalled = a;
      if (!stalled) break;
      stalled.stall(now - stalled.stalledSince);
    }
    this.watchStalls();
  }
}

/**
 * The stall check's default schedule. Timers run before the I/O a busy event loop left waiting,
 * writes that finished meanwhile among it: the check waits for those (setImmediate), so this
 * process's own stall does not read as the proxy's.
 */
function afterPendingIo(check: () => void, delayMs: number): void {
  setTimeout(() => setImmediate(check), delayMs).unref();
}

/**
 * One stream's share of the SendBudget. Besides charging the shared budget, it knows what this
 * stream has handed over and not yet had written: while there is any from an earlier turn, the
 * stream sends nothing new (`behind`; the stream's pump decides what a turn is) and picks up once
 * it is written, with whatever is current then. So a proxy that reads slowly (a slow link, a busy
 * host) holds at most what one turn of its stream sent, not a copy of every version since it fell
 * behind, and gets the changes made meanwhile as one response instead of one after another.
 * Without this, a few dozen slow proxies going through a series of changes held the whole shared
 * budget, and every other proxy's changes waited behind theirs (bench/README.md,
 * WEFT_BENCH_STALLED). Istio merges a connection's pushes while one is in progress the same way.
 */
export class SendAccount {
  private outstanding = 0;
  /** When the bytes not yet written began to be (epoch ms), while there are any. */
  private behindSince = 0;
  private drained?: () => void;
  private closed = false;
  private stalled = false;
  /** When its transport last said some of its bytes were written (see `progressed`). */
  private progressAt = 0;
  /**
   * Called once if this stream held up others (see SendBudget): `bytes` unwritten for `ms`. The
   * stream's transport ends it, which closes this account. Without it the account is never cut.
   */
  onStall?: (bytes: number, ms: number) => void;

  constructor(
    private readonly budget: SendBudget,
    private readonly now: () => number,
  ) {}

  /** The shared budget is open. */
  get open(): boolean {
    return this.budget.open;
  }

  /** This stream has bytes handed over and not yet written. */
  get behind(): boolean {
    return this.outstanding > 0;
  }

  /** Bytes handed over and not yet written, and since when there have been some; undefined when none. */
  get unwritten(): { bytes: number; since: number } | undefined {
    return this.outstanding > 0 ? { bytes: this.outstanding, since: this.behindSince } : undefined;
  }

  /** @internal Since when nothing of this account's unwritten bytes has been written. */
  get stalledSince(): number {
    return Math.max(this.behindSince, this.progressAt);
  }

  /**
   * Part of what this stream sent was written (over TLS, each of TurnWriter's writes): a proxy on
   * a slow link that is taking a big response is not stalled, however long the response takes.
   */
  progressed(): void {
    this.progressAt = this.now();
  }

  /** @internal Whether SendBudget may cut it: it can be, and was not already. */
  get stallable(): boolean {
    return this.onStall !== undefined && !this.stalled && !this.closed;
  }

  /** @internal Cut, and its stream not ended yet (its bytes are on their way back). */
  get cut(): boolean {
    return this.stalled && !this.closed;
  }

  /** @internal SendBudget cuts it. */
  stall(ms: number): void {
    this.stalled = true;
    this.onStall?.(this.outstanding, ms);
  }

  charge(bytes: number): void {
    if (this.closed) return;
    this.budget.charge(bytes);
    if (this.outstanding === 0 && bytes > 0) {
      this.behindSince = this.now();
      this.budget.setWriting(this, true);
    }
    this.outstanding += bytes;
  }

  /**
   * `bytes` were written: the streams waiting for the budget go on, in order, while it stays
   * open. Once all of this stream's bytes are written, it goes on too if it was waiting for that,
   * after them: if the budget is spent by then, it waits its turn behind them.
   */
  written(bytes: number): void {
    if (this.closed) return;
    // A response written is progress too (in plaintext the only kind: see `progressed`).
    if (bytes > 0) this.progressAt = this.now();
    this.outstanding -= bytes;
    // Settled before the refund wakes anyone: a waiting stream woken there may be this one, which
    // then charges anew.
    const done = this.outstanding === 0 && bytes > 0;
    if (done) this.budget.setWriting(this, false);
    const resume = done ? this.drained : undefined;
    if (done) this.drained = undefined;
    this.budget.refund(bytes);
    resume?.();
  }

  /**
   * Calls `resume` once, when this stream may try again: when what it has unwritten is written
   * (`behind`: it had some when it began to send), or else when the shared budget opens.
   */
  wait(resume: () => void, behind: boolean): void {
    if (this.closed) return;
    if (behind && this.outstanding > 0) this.drained = resume;
    else this.budget.wait(resume);
  }

  /** Stops waiting (the stream closed). */
  cancel(resume: () => void): void {
    this.drained = undefined;
    this.budget.cancel(resume);
  }

  /** The stream ended: what it had unwritten goes back to the budget; its writes finishing later count for nothing. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.drained = undefined;
    if (this.outstanding > 0) {
      this.budget.setWriting(this, false);
      const bytes = this.outstanding;
      this.outstanding = 0;
      this.budget.refund(bytes);
    }
  }
}
