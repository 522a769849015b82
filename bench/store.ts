/**
 * The embedded store alone: how long a webhook's store calls hold the event loop.
 * `node:sqlite` is synchronous, so every load and commit runs on the service's
 * event loop, and a commit that happens to checkpoint the WAL (two fsyncs) holds
 * up every call in progress for that long.
 *
 * Run in the benchmark's own process against a fresh data directory, with the
 * payload of a real call (the largest of a few the service just stored): for each
 * of `calls` calls, `rounds` times, what a turn does to the store: load the call,
 * commit a claim (no answer to remember), commit an answer (with one).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StoredCall } from '../src/store/call-store.ts';
import { SqliteCallStore } from '../src/store/sqlite-store.ts';

export interface StoreTimings {
  /** Per operation, µs. */
  load: number[];
  claim: number[];
  answer: number[];
  /** Sizes of the payload, bytes of JSON. */
  sizes: { snapshot: number; record: number; responses: number };
}

/** The largest of the calls stored in `dataDir` (the service's, while it runs). */
export async function largestStoredCall(dataDir: string, callSids: string[]): Promise<StoredCall> {
  const store = new SqliteCallStore(dataDir);
  try {
    const calls = (await Promise.all(callSids.map((callSid) => store.load(callSid)))).filter((c): c is StoredCall => c !== null);
    const size = (c: StoredCall) => JSON.stringify(c).length;
    const largest = calls.sort((a, b) => size(b) - size(a))[0];
    if (!largest) throw new Error('the service stored none of the calls');
    return largest;
  } finally {
    await store.close();
  }
}

export async function measureStore(payload: StoredCall, options: { calls: number; rounds: number }): Promise<StoreTimings> {
  const dataDir = mkdtempSync(join(tmpdir(), 'heyai-bench-store-'));
  const store = new SqliteCallStore(dataDir);
  const timings: StoreTimings = {
    load: [],
    claim: [],
    answer: [],
    sizes: {
      snapshot: JSON.stringify(payload.snapshot).length,
      record: JSON.stringify(payload.record).length,
      responses: JSON.stringify(payload.responses).length,
    },
  };
  const body = Object.values(payload.responses).at(-1) ?? '<Response/>';
  const revisions = new Map<string, number>();
  const timed = async <T>(into: number[], work: () => Promise<T>): Promise<T> => {
    const started = process.hrtime.bigint();
    const result = await work();
    into.push(Number(process.hrtime.bigint() - started) / 1e3);
    return result;
  };
  try {
    for (let round = 0; round < options.rounds; round++) {
      for (let i = 0; i < options.calls; i++) {
        const callSid = `CA${i.toString(16).padStart(32, '0')}`;
        const commit = async (into: number[], response?: { key: string; body: string }) => {
          const result = await timed(into, () =>
            store.commit({
              callSid,
              expectedRevision: revisions.get(callSid) ?? 0,
              snapshot: payload.snapshot,
              record: { ...payload.record, callSid },
              ...(response ? { response } : {}),
              now: Date.now(),
            }),
          );
          if (!result.ok) throw new Error(`store benchmark: a commit of ${callSid} conflicted`);
          revisions.set(callSid, result.revision);
        };
        await timed(timings.load, () => store.load(callSid));
        await commit(timings.claim);
        await commit(timings.answer, { key: `/speech-result|round-${round}`, body });
      }
    }
  } finally {
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return timings;
}
