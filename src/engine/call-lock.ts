/**
 * One step at a time per call within this process: the webhooks and socket
 * messages of one call, and the engine's own commits for it (lease renewals,
 * background results), run in the order they arrive. Across instances the store's
 * compare-and-set is what keeps them apart (see call-engine.ts); this lock only
 * saves an instance from racing itself.
 */
export class CallLocks {
  readonly #tails = new Map<string, Promise<unknown>>();

  run<T>(callSid: string, work: () => Promise<T>): Promise<T> {
    // A tail never rejects (it is the previous step, failures swallowed): `work` runs after it either way.
    const previous = this.#tails.get(callSid) ?? Promise.resolve();
    const run = previous.then(work);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#tails.set(callSid, tail);
    void tail.then(() => {
      if (this.#tails.get(callSid) === tail) this.#tails.delete(callSid);
    });
    return run;
  }

  /** Calls with a step queued or running. */
  get size(): number {
    return this.#tails.size;
  }
}
