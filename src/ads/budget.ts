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
 */
export class SendBudget {
  private inFlight = 0;
  private readonly waiting = new Set<() => void>();
  private readonly gauge?: Gauge;
  /** Accounts with bytes not yet written. */
  private writing = 0;

  constructor(
    readonly limitBytes: number,
    metrics?: Registry,
  ) {
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
      const writing = () => this.writing;
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
    return this.writing;
  }

  /** A stream's account on this budget. */
  account(now: () => number = Date.now): SendAccount {
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
  }

  cancel(resume: () => void): void {
    this.waiting.delete(resume);
  }

  /** @internal An account started or stopped having bytes unwritten. */
  countWriting(delta: 1 | -1): void {
    this.writing += delta;
  }
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

  charge(bytes: number): void {
    if (this.closed) return;
    this.budget.charge(bytes);
    if (this.outstanding === 0 && bytes > 0) {
      this.behindSince = this.now();
      this.budget.countWriting(1);
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
    this.outstanding -= bytes;
    // Settled before the refund wakes anyone: a waiting stream woken there may be this one, which
    // then charges anew.
    const done = this.outstanding === 0 && bytes > 0;
    if (done) this.budget.countWriting(-1);
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
      this.budget.countWriting(-1);
      const bytes = this.outstanding;
      this.outstanding = 0;
      this.budget.refund(bytes);
    }
  }
}
