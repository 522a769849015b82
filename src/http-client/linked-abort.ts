/**
 * An abort signal that follows other signals and has deadlines of its own, and lets
 * go of everything when disposed.
 *
 * Hand-written instead of `AbortSignal.any([parent, AbortSignal.timeout(ms)])`
 * because, on Node 24, a composite signal that contains a timeout signal is kept in
 * its sources' `gcPersistentSignals` set and, having no listener, is never removed:
 * ≈480 B leaked per agent turn when composites were nested (docs/hardening.md, P3).
 * Here the timer and the parent listeners are removed by `dispose()`, so nothing
 * outlives the request.
 *
 * A deadline aborts with a `TimeoutError` DOMException, as `AbortSignal.timeout`
 * does, so whoever sees the abort can tell a timeout from a cancellation by
 * `signal.reason.name`, however many layers down.
 */
export class LinkedAbort implements Disposable {
  readonly #controller = new AbortController();
  readonly #parents: AbortSignal[];
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #onParentAbort = (event: Event): void => {
    this.abort((event.target as AbortSignal).reason);
  };

  constructor(parents: Array<AbortSignal | undefined> = []) {
    this.#parents = parents.filter((p): p is AbortSignal => p !== undefined);
    for (const parent of this.#parents) {
      if (parent.aborted) {
        this.abort(parent.reason);
        break;
      }
      parent.addEventListener('abort', this.#onParentAbort, { once: true });
    }
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Aborts with a `TimeoutError` after `ms`, unless cancelled first; returns a cancel. */
  deadline(ms: number, message = `timed out after ${ms} ms`): () => void {
    const timer = setTimeout(() => this.abort(new DOMException(message, 'TimeoutError')), ms);
    this.#timers.push(timer);
    return () => clearTimeout(timer);
  }

  abort(reason?: unknown): void {
    if (this.#controller.signal.aborted) return;
    this.#controller.abort(reason);
    this.dispose();
  }

  dispose(): void {
    for (const timer of this.#timers.splice(0)) clearTimeout(timer);
    for (const parent of this.#parents) parent.removeEventListener('abort', this.#onParentAbort);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Whether an abort reason says time ran out (rather than someone cancelling). */
export function isTimeout(reason: unknown): reason is { name: 'TimeoutError'; message: string } {
  return typeof reason === 'object' && reason !== null && (reason as { name?: unknown }).name === 'TimeoutError';
}
