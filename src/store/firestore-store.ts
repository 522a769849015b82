/**
 * The production call store: Cloud Firestore, shared by every Cloud Run instance.
 *
 * Two documents per call, always written together in one atomic commit:
 *
 * - `calls/{callSid}` — the call: `revision`, `record` (a native map, so it can be
 *   queried and read in the console), top-level `startedAt`, `from`, `to` and
 *   `numbers` (`[from, to]`, for `array-contains`), `responses` (the remembered
 *   TwiML as an ordered array of `{ key, body }`: keys are idempotency tokens or
 *   request fingerprints, which Firestore field paths would choke on, and the
 *   array keeps the oldest-first order `rememberResponse` trims by) and `updatedAt`.
 * - `callSnapshots/{callSid}` — the XState snapshot as a JSON string (snapshots
 *   hold nested arrays and arbitrary keys, which Firestore maps and arrays do not
 *   allow), the `revision` it belongs to, `updatedAt` and `expireAt`.
 *
 * `expireAt` (a Timestamp, `updatedAt + snapshotTtlMs`) is the field of a
 * Firestore TTL policy. TTL deletes a whole document, never a field, which is why
 * the snapshot has its own document: the policy drops snapshots of old calls while
 * their records stay. TTL deletion runs eventually (typically within a day of
 * `expireAt`), so `load` may still see an expired snapshot for a while;
 * `expireSnapshots` does the same deletion on demand (tests, the emulator, which has
 * no TTL).
 *
 * `firestore.indexes.json` at the repository root (`firebase deploy --only
 * firestore:indexes`) holds the composite index `listSummaries` needs for a number
 * (`numbers` CONTAINS + `startedAt` DESCENDING), the TTL policy on
 * `callSnapshots.expireAt` (or `gcloud firestore fields ttls update expireAt
 * --collection-group=callSnapshots --enable-ttl`), and index exemptions for the
 * fields never queried (snapshot string, responses, record turns and path).
 *
 * `commit` is the compare-and-set on `revision`. Creating a call relies on
 * `create` failing when the document exists; every later commit reads the call
 * document and writes it back with an update precondition on the update time it
 * read. Both write the two documents in one batch, which is atomic. No commit
 * takes a lock, so a losing webhook learns it lost at once.
 *
 * A document is at most 1 MiB: the call document carries the record (all turns)
 * and the snapshot document the snapshot, which also holds the turns, so a call
 * has room for a few hundred turns.
 *
 * Readiness writes and reads back one small document per store instance,
 * `storeHealth/{random id}` (a document per instance: Firestore sustains about one
 * write a second to one document), within HEALTH_TIMEOUT_MS.
 *
 * The emulator is chosen by `FIRESTORE_EMULATOR_HOST`, which the client library
 * reads itself; tests pass their own client instead.
 *
 * @see https://cloud.google.com/firestore/docs/manage-data/transactions#batched-writes
 * @see https://cloud.google.com/firestore/docs/reference/rest/v1/Precondition
 * @see https://firebase.google.com/docs/firestore/transaction-data-contention
 * @see https://cloud.google.com/firestore/docs/ttl
 * @see https://cloud.google.com/firestore/quotas#limits
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { Firestore, Timestamp, type CollectionReference, type DocumentReference, type Query } from '@google-cloud/firestore';
import {
  rememberResponse,
  summaryOf,
  type CallRecord,
  type CallSummary,
  type CallStore,
  type CommitRequest,
  type CommitResult,
  type RecordQuery,
  type StoredCall,
} from './call-store.ts';

export interface FirestoreCallStoreOptions {
  projectId: string;
  /** Collection of call documents. */
  collection?: string;
  /** Collection of snapshot documents (the one with the TTL policy). */
  snapshotCollection?: string;
  /** Collection of the readiness documents, one per store instance. */
  healthCollection?: string;
  /** How long a snapshot outlives its last commit before the TTL policy may drop it. */
  snapshotTtlMs?: number;
  /** A ready client (tests, emulator); by default one is built for `projectId`. */
  firestore?: Firestore;
}

interface CallDocument {
  revision: number;
  record: CallRecord;
  /** What a list reads (CallSummary); documents written before it was kept have none. */
  summary: CallSummary;
  startedAt: number;
  from: string;
  to: string;
  numbers: string[];
  responses: Array<{ key: string; body: string }>;
  updatedAt: number;
}

interface SnapshotDocument {
  revision: number;
  snapshot: string;
  updatedAt: number;
  expireAt: Timestamp;
}

const DAY_MS = 24 * 60 * 60 * 1000;
/**
 * The gRPC status codes the client's errors carry. Not the package's `GrpcStatus`:
 * it is a getter on the CommonJS exports that Node's ESM loader does not expose as
 * a named export, so importing it stops `node src/server.ts` at start.
 * @see https://grpc.github.io/grpc/core/md_doc_statuscodes.html
 */
const GRPC_NOT_FOUND = 5;
const GRPC_ALREADY_EXISTS = 6;
const GRPC_FAILED_PRECONDITION = 9;
/** Snapshot documents deleted per transaction (a commit takes at most 500 writes). */
const EXPIRE_PAGE = 250;
const HEALTH_TIMEOUT_MS = 2_000;
/** Reads of a call whose two documents disagree (read across a commit) before `load` gives up. */
const LOAD_ATTEMPTS = 5;
/** Pause before the next read, times the attempt: a commit in flight lands within milliseconds. */
const LOAD_RETRY_MS = 5;

export class FirestoreCallStore implements CallStore {
  readonly kind = 'firestore';
  readonly #firestore: Firestore;
  readonly #calls: CollectionReference;
  readonly #snapshots: CollectionReference;
  readonly #snapshotTtlMs: number;
  readonly #health: DocumentReference;
  #closed = false;

  constructor({
    projectId,
    collection = 'calls',
    snapshotCollection = 'callSnapshots',
    healthCollection = 'storeHealth',
    snapshotTtlMs = DAY_MS,
    firestore,
  }: FirestoreCallStoreOptions) {
    this.#firestore = firestore ?? new Firestore({ projectId });
    this.#calls = this.#firestore.collection(collection);
    this.#snapshots = this.#firestore.collection(snapshotCollection);
    this.#snapshotTtlMs = snapshotTtlMs;
    this.#health = this.#firestore.collection(healthCollection).doc(randomUUID());
  }

  async load(callSid: string): Promise<StoredCall | null> {
    const refs = [this.#calls.doc(callSid), this.#snapshots.doc(callSid)] as const;
    // One BatchGetDocuments is not one point in time: it can read the call document
    // after a commit and the snapshot document before it (seen on the emulator under
    // concurrent commits, and a read-only transaction there did no better), and a
    // transition computed from that older snapshot would then commit against the
    // newer revision, losing the update in between. So the pair is checked instead
    // of trusted: both documents are written by one atomic commit with the same
    // `revision`, and each revision is committed once (compare-and-set), so a pair
    // that agrees belongs together. One that disagrees was read across a commit and
    // is read again. A snapshot still missing after that has expired (TTL).
    for (let attempt = 1; ; attempt++) {
      const [call, snapshot] = await this.#firestore.getAll(...refs);
      if (!call?.exists) return null;
      const data = call.data() as CallDocument;
      const stored = snapshot?.exists ? (snapshot.data() as SnapshotDocument) : undefined;
      if (stored?.revision === data.revision || (stored === undefined && attempt >= LOAD_ATTEMPTS)) {
        return {
          callSid,
          revision: data.revision,
          snapshot: stored ? JSON.parse(stored.snapshot) : null,
          record: data.record,
          responses: Object.fromEntries(data.responses.map((r) => [r.key, r.body])),
          updatedAt: data.updatedAt,
        };
      }
      if (attempt >= LOAD_ATTEMPTS) {
        throw new Error(`call ${callSid}: its call and snapshot documents disagreed on the revision ${LOAD_ATTEMPTS} reads in a row`);
      }
      await sleep(attempt * LOAD_RETRY_MS);
    }
  }

  async commit(request: CommitRequest): Promise<CommitResult> {
    const { callSid, expectedRevision, now } = request;
    const callRef = this.#calls.doc(callSid);
    const snapshotRef = this.#snapshots.doc(callSid);
    const snapshot: SnapshotDocument = {
      revision: expectedRevision + 1,
      snapshot: JSON.stringify(request.snapshot),
      updatedAt: now,
      expireAt: Timestamp.fromMillis(now + this.#snapshotTtlMs),
    };

    if (expectedRevision === 0) {
      // Relies on: `create` fails with ALREADY_EXISTS when the document exists, and
      // a batch commits all of its writes or none. Of two webhooks creating the same
      // call, the second fails whole and leaves the first one's snapshot alone.
      const batch = this.#firestore.batch();
      batch.create(callRef, callDocument(request, 1, rememberResponse({}, request.response)));
      batch.set(snapshotRef, snapshot);
      try {
        await batch.commit();
        return { ok: true, revision: 1 };
      } catch (error) {
        if (grpcCode(error) === GRPC_ALREADY_EXISTS) return { ok: false, reason: 'conflict' };
        throw error;
      }
    }

    // Relies on: an update precondition on `updateTime` is checked by the server
    // atomically with the write, and a batch commits all of its writes or none.
    // The read says which version of the call document this commit replaces; the
    // batch then updates that document only if it is still that very version
    // (`lastUpdateTime`; every commit changes `revision`, so it gives the document a
    // new update time: a write that changes nothing would keep the old one), and sets
    // the snapshot in the same atomic commit. Of two commits computed from the same
    // revision, the second fails whole with FAILED_PRECONDITION (or NOT_FOUND if the
    // document is gone) and writes nothing: a conflict, the caller reloads. So the
    // revision check and the remembered responses come from the version this write
    // replaces, as in a transaction, but no document lock is taken: losers fail at
    // once instead of waiting out lock contention and the client's backoff (a
    // transaction under contention took seconds on the emulator; see
    // docs/firestore.md).
    const current = await callRef.get();
    const data = current.data() as CallDocument | undefined;
    if (!data || data.revision !== expectedRevision || !current.updateTime) {
      return { ok: false, reason: 'conflict' };
    }
    const remembered = Object.fromEntries(data.responses.map((r) => [r.key, r.body]));
    const batch = this.#firestore.batch();
    batch.update(callRef, { ...callDocument(request, expectedRevision + 1, rememberResponse(remembered, request.response)) }, {
      lastUpdateTime: current.updateTime,
    });
    batch.set(snapshotRef, snapshot);
    try {
      await batch.commit();
      return { ok: true, revision: expectedRevision + 1 };
    } catch (error) {
      const code = grpcCode(error);
      if (code === GRPC_FAILED_PRECONDITION || code === GRPC_NOT_FOUND) return { ok: false, reason: 'conflict' };
      throw error;
    }
  }

  async getRecord(callSid: string): Promise<CallRecord | null> {
    const call = await this.#calls.doc(callSid).get();
    return call.exists ? (call.get('record') as CallRecord) : null;
  }

  async listSummaries(query: RecordQuery): Promise<CallSummary[]> {
    let q: Query = this.#calls;
    if (query.since !== undefined) q = q.where('startedAt', '>=', query.since);
    if (query.until !== undefined) q = q.where('startedAt', '<', query.until);
    // With a number this needs the composite index (numbers CONTAINS, startedAt
    // DESCENDING) from firestore.indexes.json on real Firestore; the emulator and
    // the time-only query (single-field index) need none.
    if (query.number !== undefined) q = q.where('numbers', 'array-contains', query.number);
    const limit = Math.min(Math.max(query.limit ?? 100, 1), 1000);
    // Only the summaries are read (a field mask): a call's turns never leave Firestore for a list.
    const page = await q.orderBy('startedAt', 'desc').limit(limit).select('summary').get();
    const older = page.docs.filter((doc) => doc.get('summary') === undefined).map((doc) => doc.ref);
    const records = new Map<string, CallRecord>();
    if (older.length > 0) {
      for (const doc of await this.#firestore.getAll(...older, { fieldMask: ['record'] })) records.set(doc.id, doc.get('record') as CallRecord);
    }
    return page.docs.map((doc) => (doc.get('summary') as CallSummary | undefined) ?? summaryOf(records.get(doc.id)!));
  }

  async expireSnapshots(before: number): Promise<number> {
    // In production the TTL policy on `expireAt` does this. Each page is deleted in a
    // transaction so a snapshot committed after the query read it is not deleted.
    const stale = this.#snapshots.where('updatedAt', '<', before).limit(EXPIRE_PAGE);
    let deleted = 0;
    for (;;) {
      const count = await this.#firestore.runTransaction(async (transaction) => {
        const page = await transaction.get(stale);
        for (const doc of page.docs) transaction.delete(doc.ref);
        return page.size;
      });
      deleted += count;
      if (count < EXPIRE_PAGE) return deleted;
    }
  }

  async healthy(): Promise<boolean> {
    // After terminate() a read neither settles nor fails cleanly; a closed store is unhealthy.
    if (this.#closed) return false;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), HEALTH_TIMEOUT_MS);
    });
    // A write and a read back: the store can take a commit, not just answer.
    const check = (async () => {
      const checkedAt = Date.now();
      await this.#health.set({ checkedAt });
      return (await this.#health.get()).get('checkedAt') === checkedAt;
    })().catch(() => false);
    try {
      return await Promise.race([check, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#firestore.terminate();
  }
}

function callDocument(request: CommitRequest, revision: number, responses: Record<string, string>): CallDocument {
  // Through JSON, as the embedded store stores it: `undefined` fields vanish (the
  // client rejects them) and only plain data reaches Firestore.
  const record = JSON.parse(JSON.stringify(request.record)) as CallRecord;
  return {
    revision,
    record,
    summary: summaryOf(record),
    startedAt: record.startedAt,
    from: record.from,
    to: record.to,
    numbers: [...new Set([record.from, record.to])],
    responses: Object.entries(responses).map(([key, body]) => ({ key, body })),
    updatedAt: request.now,
  };
}

function grpcCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
}
