/**
 * The Firestore guarantees the call store's compare-and-set rests on, shown with
 * the real client against Google's emulator: `create` refuses an existing
 * document, an update precondition on `updateTime` refuses a stale version, a
 * batch commits all of its writes or none, and a commit that read the call before
 * another commit landed loses without writing anything.
 *
 * @see ../../src/store/firestore-store.ts
 * @see ../../docs/firestore.md
 */
import { DocumentReference, Firestore, type DocumentSnapshot } from '@google-cloud/firestore';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CallRecord, CommitRequest } from '../../src/store/call-store.ts';
import { FirestoreCallStore } from '../../src/store/firestore-store.ts';
import {
  FIRESTORE_EMULATOR_BIN,
  firestoreEmulatorAvailable,
  startFirestoreEmulator,
  type FirestoreEmulator,
} from '../support/firestore-emulator.ts';

const ALREADY_EXISTS = 6;
const NOT_FOUND = 5;
const FAILED_PRECONDITION = 9;

// On CI a missing emulator must fail the run; elsewhere it may be skipped.
const skip = !firestoreEmulatorAvailable() && !process.env.CI;
if (skip) console.warn(`Skipping the Firestore guarantees: no emulator at ${FIRESTORE_EMULATOR_BIN} (set CI=1 to make this a failure).`);

function codeOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => 'committed',
    (error: { code?: unknown }) => error.code,
  );
}

function record(callSid: string, state: string): CallRecord {
  return { callSid, from: '+14155550123', to: '+18005550100', startedAt: 1, status: 'in-progress', state, turns: [], path: [] };
}

function commit(callSid: string, expectedRevision: number, state: string): CommitRequest {
  return { callSid, expectedRevision, snapshot: { state }, record: record(callSid, state), now: 1_000 + expectedRevision };
}

describe.skipIf(skip)('Firestore guarantees the call store relies on (emulator)', () => {
  let emulator: FirestoreEmulator | undefined;
  let firestore: Firestore;

  beforeAll(async () => {
    process.env.METADATA_SERVER_DETECTION ??= 'none';
    emulator = await startFirestoreEmulator();
  });
  afterAll(async () => {
    await emulator?.stop();
  });
  beforeEach(() => {
    if (!emulator) throw new Error('The Firestore emulator did not start');
    firestore = new Firestore({ projectId: emulator.projectId, host: emulator.host, ssl: false });
  });
  afterEach(async () => {
    await firestore.terminate();
  });

  it('`create` fails with ALREADY_EXISTS when the document exists, and nothing else in its batch is written', async () => {
    const call = firestore.doc('calls/CA-create');
    const other = firestore.doc('callSnapshots/CA-create');
    await call.create({ revision: 1 });

    const batch = firestore.batch().create(call, { revision: 99 }).set(other, { revision: 99 });
    expect(await codeOf(batch.commit())).toBe(ALREADY_EXISTS);

    expect((await call.get()).get('revision')).toBe(1);
    expect((await other.get()).exists).toBe(false);
  });

  it('an update with a stale `lastUpdateTime` precondition fails with FAILED_PRECONDITION, and nothing else in its batch is written', async () => {
    const call = firestore.doc('calls/CA-precondition');
    const other = firestore.doc('callSnapshots/CA-precondition');
    await call.set({ revision: 1 });
    const read = await call.get();
    await call.update({ revision: 2 });

    const stale = firestore.batch().update(call, { revision: 3 }, { lastUpdateTime: read.updateTime! }).set(other, { revision: 3 });
    expect(await codeOf(stale.commit())).toBe(FAILED_PRECONDITION);
    expect((await call.get()).get('revision')).toBe(2);
    expect((await other.get()).exists).toBe(false);

    const current = await call.get();
    const fresh = firestore.batch().update(call, { revision: 3 }, { lastUpdateTime: current.updateTime! }).set(other, { revision: 3 });
    expect(await codeOf(fresh.commit())).toBe('committed');
    expect((await other.get()).get('revision')).toBe(3);
  });

  it('an update of a missing document fails (NOT_FOUND, or FAILED_PRECONDITION as the emulator answers)', async () => {
    const existing = firestore.doc('calls/CA-exists');
    await existing.set({ revision: 1 });
    const { updateTime } = await existing.get();
    const batch = firestore.batch().update(firestore.doc('calls/CA-missing'), { revision: 2 }, { lastUpdateTime: updateTime! });
    expect([NOT_FOUND, FAILED_PRECONDITION]).toContain(await codeOf(batch.commit()));
  });

  it('a change gives the document a new update time; a write that changes nothing keeps the old one', async () => {
    // Why every commit of the store changes `revision`: the precondition compares update times.
    const call = firestore.doc('calls/CA-time');
    await call.set({ revision: 1 });
    const first = (await call.get()).updateTime!;
    await call.set({ revision: 1 });
    expect((await call.get()).updateTime!.isEqual(first)).toBe(true);
    await call.set({ revision: 2 });
    expect((await call.get()).updateTime!.isEqual(first)).toBe(false);
  });

  it('a commit that read the call before another commit landed loses, writes nothing, and leaves the winner alone', async () => {
    const { projectId, host } = emulator!;
    const loser = new FirestoreCallStore({ projectId, firestore: new Firestore({ projectId, host, ssl: false }) });
    const winner = new FirestoreCallStore({ projectId, firestore: new Firestore({ projectId, host, ssl: false }) });
    await winner.commit(commit('CA-interleaved', 0, 'created'));

    // Right after the loser's read of the call document (revision 1), the winner
    // commits revision 2 from the same revision: the loser's revision check passes,
    // and only the update-time precondition can stop it.
    const realGet = DocumentReference.prototype.get;
    let interleaved = false;
    DocumentReference.prototype.get = async function (this: DocumentReference): Promise<DocumentSnapshot> {
      const snapshot = await realGet.call(this);
      if (!interleaved && this.path === 'calls/CA-interleaved') {
        interleaved = true;
        expect(await winner.commit(commit('CA-interleaved', 1, 'winner'))).toEqual({ ok: true, revision: 2 });
      }
      return snapshot;
    };
    try {
      expect(await loser.commit(commit('CA-interleaved', 1, 'loser'))).toEqual({ ok: false, reason: 'conflict' });
    } finally {
      DocumentReference.prototype.get = realGet;
    }

    expect(interleaved).toBe(true);
    const stored = await loser.load('CA-interleaved');
    expect(stored).toMatchObject({ revision: 2, snapshot: { state: 'winner' }, record: { state: 'winner' } });
    await loser.close();
    await winner.close();
  });
});
