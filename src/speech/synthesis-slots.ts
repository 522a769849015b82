/**
 * How many syntheses this process runs at once, and the order the others wait in.
 *
 * ElevenLabs counts every HTTP request that is running against the plan's
 * concurrency limit and answers `429 too_many_concurrent_requests` past it (Starter:
 * 6 with the Flash and Turbo models, 3 with Multilingual v2). Sending more at once
 * than the plan allows only buys refusals and retries while callers wait, so the
 * work waits here instead: first come first served, a caller's work before the
 * start-up warm-up, and work whose signal aborts while it waits (its deadline)
 * leaves the queue without having been sent.
 *
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/models.mdx ("Concurrency and priority": the limits per plan)
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/developer-guides/error-messages.mdx (429 too_many_concurrent_requests)
 */

/** `live`: someone is waiting for it now; `warm-up`: the start-up's fixed phrases, which can wait. */
export type SynthesisPriority = 'live' | 'warm-up';

/** A place in the queue. Its priority may be raised while it waits (a caller now needs what the warm-up asked for). */
export interface SlotTicket {
  priority: SynthesisPriority;
}

interface Waiting {
  ticket: SlotTicket;
  start(): void;
}

export class SynthesisSlots {
  readonly #max: number;
  readonly #waiting: Waiting[] = [];
  #running = 0;

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`synthesis slots must be a whole number of at least 1, got ${max}`);
    this.#max = max;
  }

  /**
   * Runs `work` once a slot is free and holds the slot until it settles. Rejects
   * with `signal.reason`, without running `work`, if `signal` aborts first.
   */
  async run<T>(ticket: SlotTicket, signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    await this.#acquire(ticket, signal);
    try {
      return await work();
    } finally {
      this.#release();
    }
  }

  #acquire(ticket: SlotTicket, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    // Someone waits only while every slot is taken, so a free slot means nobody is ahead.
    if (this.#running < this.#max) {
      this.#running++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const waiting: Waiting = {
        ticket,
        start: () => {
          signal.removeEventListener('abort', onAbort);
          this.#running++;
          resolve();
        },
      };
      const onAbort = () => {
        this.#waiting.splice(this.#waiting.indexOf(waiting), 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiting);
    });
  }

  #release(): void {
    this.#running--;
    const live = this.#waiting.findIndex((w) => w.ticket.priority === 'live');
    const [next] = this.#waiting.splice(live >= 0 ? live : 0, 1);
    next?.start();
  }
}
