/**
 * Shared by the hardening tests: a call store with injected faults, Twilio-signed
 * raw requests, and the one line each test prints its figures with.
 */
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';
import type {
  CallRecord, CallSummary,
  CallStore,
  CommitRequest,
  CommitResult,
  RecordQuery,
  StoredCall,
} from '../../src/store/call-store.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL } from '../support/service.ts';

export type StoreOperation = 'load' | 'commit';

/**
 * A real store behind a delegating one that is slow or throws when told to: a
 * fake of a dependency at its port. Reads made by the test itself
 * (`getRecord`, `listSummaries`) are never faulted.
 */
export class FaultyCallStore implements CallStore {
  readonly kind: string;
  readonly inner: CallStore;
  /** Added to every load and commit. */
  delayMs = 0;
  /** What `healthy()` answers; `throw` makes it throw. */
  health: boolean | 'throw' = true;
  readonly injected = { delays: 0, throws: 0 };
  readonly #plan: Record<StoreOperation, { skip: number; fail: number }> = { load: { skip: 0, fail: 0 }, commit: { skip: 0, fail: 0 } };
  readonly #slow: Record<StoreOperation, { ms: number; times: number }> = { load: { ms: 0, times: 0 }, commit: { ms: 0, times: 0 } };

  constructor(inner: CallStore) {
    this.inner = inner;
    this.kind = inner.kind;
  }

  /**
   * After `skip` more calls of `operation` succeed, the next `times` throw, as a
   * store that lost its connection would (`Infinity`: it stays down).
   */
  failNext(operation: StoreOperation, times = 1, skip = 0): void {
    this.#plan[operation] = { skip, fail: times };
  }

  /** The next `times` calls of `operation` take `ms` longer (on top of `delayMs`), failing or not. */
  slowNext(operation: StoreOperation, ms: number, times = 1): void {
    this.#slow[operation] = { ms, times };
  }

  async load(callSid: string): Promise<StoredCall | null> {
    await this.#fault('load');
    return this.inner.load(callSid);
  }

  async commit(request: CommitRequest): Promise<CommitResult> {
    await this.#fault('commit');
    return this.inner.commit(request);
  }

  getRecord(callSid: string): Promise<CallRecord | null> {
    return this.inner.getRecord(callSid);
  }

  listSummaries(query: RecordQuery): Promise<CallSummary[]> {
    return this.inner.listSummaries(query);
  }

  expireSnapshots(before: number): Promise<number> {
    return this.inner.expireSnapshots(before);
  }

  async healthy(): Promise<boolean> {
    if (this.health === 'throw') throw new Error('store health check failed: connection reset');
    return this.health && (await this.inner.healthy());
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  async #fault(operation: StoreOperation) {
    if (this.delayMs > 0) {
      this.injected.delays += 1;
      await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    }
    const slow = this.#slow[operation];
    if (slow.times > 0) {
      slow.times -= 1;
      this.injected.delays += 1;
      await new Promise((resolve) => setTimeout(resolve, slow.ms));
    }
    const plan = this.#plan[operation];
    if (plan.skip > 0) {
      plan.skip -= 1;
    } else if (plan.fail > 0) {
      plan.fail -= 1;
      this.injected.throws += 1;
      throw new Error(`injected store failure: ${operation} lost its connection`);
    }
  }
}

/** Form parameters the way a parser hands them over: repeated names become arrays. */
export function paramsOf(pairs: Array<[string, string]>): Record<string, string | string[]> {
  const params: Record<string, string | string[]> = {};
  for (const [key, value] of pairs) {
    const existing = Object.hasOwn(params, key) ? params[key] : undefined;
    if (existing === undefined) params[key] = value;
    else params[key] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  return params;
}

/** Twilio's signature over the public URL of `pathAndQuery` and the parsed params. */
export function twilioSignature(pathAndQuery: string, params: Record<string, unknown>, token = AUTH_TOKEN): string {
  return getExpectedTwilioSignature(token, PUBLIC_BASE_URL + pathAndQuery, params);
}

/** A correctly signed form POST, as Twilio sends it. */
export async function signedForm(
  address: string,
  path: string,
  pairs: Array<[string, string]>,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; headers: Headers }> {
  const response = await fetch(address + path, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      'x-twilio-signature': twilioSignature(path, paramsOf(pairs)),
      ...headers,
    },
    body: new URLSearchParams(pairs).toString(),
  });
  return { status: response.status, body: await response.text(), headers: response.headers };
}

/** A Twilio call SID: `CA` and 32 hex digits. */
export function callSidFor(n: number): string {
  return `CA${n.toString(16).padStart(32, '0')}`;
}

/** Figures go to the test output with one recognisable prefix (docs/hardening.md collects them). */
export function figure(line: string): void {
  console.log(`[hardening] ${line}`);
}

/** Lines that contain any of the secrets (none is expected). */
export function linesWithSecrets(lines: string[], secrets: string[]): string[] {
  return lines.filter((line) => secrets.some((secret) => line.includes(secret)));
}
