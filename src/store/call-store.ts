/**
 * Where calls live between webhooks: the machine snapshot of every call, its
 * record (who called, what was said, how long each part took) and the answers
 * already given to Twilio, keyed by request, so a retried webhook gets the same
 * TwiML.
 *
 * `commit` is a compare-and-set on `revision`: a webhook that computed its next
 * state from revision N can only store it if nobody stored N+1 first. Adapters:
 * `sqlite-store.ts` (embedded default), `firestore-store.ts` (production).
 */
import type { PathStep, Turn } from '../../machines/call.machine.ts';

export interface CallRecord {
  callSid: string;
  from: string;
  to: string;
  /** ms since epoch */
  startedAt: number;
  endedAt?: number;
  durationSec?: number;
  /** Last status Twilio reported (`in-progress`, `completed`, `busy`, `no-answer`, `failed`, `canceled`). */
  status: string;
  /** Why the call ended: `goodbye`, `silence`, `failures` or `hangup`. */
  endReason?: string;
  /** The machine state the call is in. */
  state: string;
  turns: Turn[];
  path: PathStep[];
  lastError?: string;
  /**
   * While a turn is being worked on (agent, speech): the service instance running
   * it and until when its lease holds. The owner renews it; past `until` another
   * instance takes the turn over.
   */
  worker?: { instance: string; until: number };
}

/**
 * A call as a list shows it: the record without its turns and path (which a long
 * call makes large), with how many turns it had. Lists return these, never whole
 * records, so a page of calls stays small however long the calls were.
 */
export type CallSummary = Omit<CallRecord, 'turns' | 'path' | 'worker'> & { turnCount: number };

export function summaryOf(record: CallRecord): CallSummary {
  const { turns, path: _path, worker: _worker, ...rest } = record;
  return { ...rest, turnCount: turns.length };
}

export interface StoredCall {
  callSid: string;
  revision: number;
  /** The persisted XState snapshot; null once expired. */
  snapshot: unknown;
  record: CallRecord;
  /** TwiML already answered, by request key (idempotency token or request fingerprint). */
  responses: Record<string, string>;
  updatedAt: number;
}

export interface CommitRequest {
  callSid: string;
  /** The revision the new snapshot was computed from; 0 creates the call. */
  expectedRevision: number;
  snapshot: unknown;
  record: CallRecord;
  /** The answer to remember for a retried request. */
  response?: { key: string; body: string };
  now: number;
}

export type CommitResult = { ok: true; revision: number } | { ok: false; reason: 'conflict' };

export interface RecordQuery {
  /** Calls started at or after (ms). */
  since?: number;
  /** Calls started before (ms). */
  until?: number;
  /** Caller or called number, E.164. */
  number?: string;
  limit?: number;
}

export interface CallStore {
  readonly kind: string;
  load(callSid: string): Promise<StoredCall | null>;
  commit(request: CommitRequest): Promise<CommitResult>;
  getRecord(callSid: string): Promise<CallRecord | null>;
  /** Newest first; summaries (see `CallSummary`), not whole records. */
  listSummaries(query: RecordQuery): Promise<CallSummary[]>;
  /** Drops snapshots not updated since `before` (records stay). Returns how many. */
  expireSnapshots(before: number): Promise<number>;
  /**
   * True when the store can be written and read back now (a small write to a
   * health record, within a bounded time); readiness follows it. Never throws.
   */
  healthy(): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * The store cannot be used at start (an embedded database that is corrupt or
 * cannot be opened): the message names the file and what is wrong, in one line.
 */
export class StoreOpenError extends Error {
  override readonly name = 'StoreOpenError';
}

/** How many remembered answers a call keeps (Twilio retries only recent requests). */
export const REMEMBERED_RESPONSES = 16;

export function rememberResponse(
  responses: Record<string, string>,
  response: CommitRequest['response'],
): Record<string, string> {
  if (!response) return responses;
  const entries = Object.entries(responses).filter(([k]) => k !== response.key);
  entries.push([response.key, response.body]);
  return Object.fromEntries(entries.slice(-REMEMBERED_RESPONSES));
}
