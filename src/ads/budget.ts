import { Gauge, type Registry } from 'prom-client';

/**
 * How many response bytes all streams together may have on their way out (handed to gRPC, not yet
 * written to the connection). A stream with something to send while the budget is spent waits its
 * turn (first come, first served) instead of serializing one more copy: 2000 proxies connecting
 * at once then cost a bounded amount of memory rather than one serialized config per proxy
 * waiting for a slow reader. Like Istio's push throttle, but counted in bytes.
 */
export class SendBudget {
  private inFlight = 0;
  private readonly waiting = new Set<() => void>();
  private readonly gauge?: Gauge;

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
}
