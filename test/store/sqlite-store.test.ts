/**
 * What the embedded store does with its files, beyond the contract every store
 * keeps (call-store.contract.test.ts): the write-ahead log stays bounded however
 * fast calls commit, a row holds nothing twice, the files are the service user's
 * only, and a corrupt database is refused at open with one line naming it.
 *
 * The payload is a real call's: twenty turns placed through the service (fake
 * agent on loopback), then committed again and again, a claim (no answer to
 * remember) and an answer (with one) per turn, as webhooks do.
 *
 * Frames are counted from the WAL-index header (`mxFrame`, the number of valid
 * frames in the WAL, documented in https://www.sqlite.org/walformat.html#the_wal_index_file_format):
 * it grows by the frames of each commit and drops to 0 when the WAL starts over.
 */
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { endianness, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreOpenError, type StoredCall } from '../../src/store/call-store.ts';
import { SqliteCallStore } from '../../src/store/sqlite-store.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startService } from '../support/service.ts';

/** The WAL file may not pass this, whatever the commit rate (docs/hardening.md). */
const WAL_BOUND_BYTES = 5 * 1024 * 1024;
const PAGE_SIZE = 4096;
/** A WAL frame is a 24-byte header and one page. */
const FRAME_BYTES = 24 + PAGE_SIZE;

let agent: FakeAgent;
let payload: StoredCall;
const dirs: string[] = [];

beforeAll(async () => {
  agent = await startFakeAgent();
  const svc = await startService({ KOOZIE_AGENT_URI: agent.url, LOG_LEVEL: 'silent' });
  try {
    const call = svc.call();
    await call.dial();
    for (let i = 0; i < 20; i++) await call.say(`question number ${i}: when do you open on Saturdays, and until when?`);
    payload = (await svc.service.store.load(call.callSid))!;
  } finally {
    await svc.close();
  }
});

afterAll(async () => {
  await agent.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'heyai-wal-'));
  dirs.push(dir);
  return dir;
}

/** `mxFrame` of the WAL-index header: bytes 16–19 of the -shm file, native byte order. */
function walFrames(dataDir: string): number {
  const fd = openSync(join(dataDir, 'calls.sqlite-shm'), 'r');
  try {
    const header = Buffer.alloc(4);
    readSync(fd, header, 0, 4, 16);
    return endianness() === 'LE' ? header.readUInt32LE(0) : header.readUInt32BE(0);
  } finally {
    closeSync(fd);
  }
}

function walBytes(dataDir: string): number {
  const wal = join(dataDir, 'calls.sqlite-wal');
  return existsSync(wal) ? statSync(wal).size : 0;
}

describe('the SQLite write-ahead log', () => {
  it('stays under its bound through 600 commits of a 20-turn call, and each commit writes about 0.65× its JSON', async () => {
    const dataDir = tempDir();
    const store = new SqliteCallStore(dataDir);
    const body = Object.values(payload.responses).at(-1)!;
    const rowBytes = JSON.stringify(payload.snapshot).length + JSON.stringify(payload.record).length + JSON.stringify(payload.responses).length;
    const revisions = new Map<string, number>();
    let frames = 0;
    let commits = 0;
    let largestWal = 0;
    try {
      for (let turn = 0; commits < 600; turn++) {
        for (let i = 0; i < 10; i++) {
          const callSid = `CA${i.toString(16).padStart(32, '0')}`;
          for (const response of [undefined, { key: `/speech-result|turn-${turn}`, body }]) {
            const before = walFrames(dataDir);
            const result = await store.commit({
              callSid,
              expectedRevision: revisions.get(callSid) ?? 0,
              snapshot: payload.snapshot,
              record: { ...payload.record, callSid },
              ...(response ? { response } : {}),
              now: Date.now(),
            });
            expect(result.ok).toBe(true);
            if (result.ok) revisions.set(callSid, result.revision);
            const after = walFrames(dataDir);
            frames += after >= before ? after - before : after;
            commits += 1;
            largestWal = Math.max(largestWal, walBytes(dataDir));
          }
        }
      }
    } finally {
      await store.close();
    }
    const perCommit = (frames * FRAME_BYTES) / commits;
    console.log(
      `[store] ${commits} commits of a 20-turn call (${rowBytes} B of JSON a row): WAL ${(perCommit / 1024).toFixed(1)} KiB a commit ` +
        `(${(frames / commits).toFixed(1)} frames, ${(perCommit / rowBytes).toFixed(2)}× the row), largest WAL file ${(largestWal / 1024 / 1024).toFixed(2)} MiB`,
    );
    expect(largestWal).toBeLessThan(WAL_BOUND_BYTES);
    // The row no longer holds the turns twice (snapshot and record): 6.8 frames a commit before.
    expect(frames / commits).toBeLessThan(6);
  });
});

describe('a call’s row', () => {
  it('keeps the turns and the path once, and gives back exactly the snapshot and record committed', async () => {
    const dataDir = tempDir();
    const store = new SqliteCallStore(dataDir);
    const storedSnapshotBytes = () => {
      const db = new DatabaseSync(join(dataDir, 'calls.sqlite'));
      try {
        return (db.prepare('SELECT length(snapshot) AS bytes FROM calls').get() as { bytes: number }).bytes;
      } finally {
        db.close();
      }
    };
    try {
      await store.commit({ callSid: payload.callSid, expectedRevision: 0, snapshot: payload.snapshot, record: payload.record, now: Date.now() });
      // The stored snapshot is smaller than the turns alone: they are stored once, in the record.
      expect(storedSnapshotBytes()).toBeLessThan(JSON.stringify(payload.record.turns).length);
      const loaded = await store.load(payload.callSid);
      expect(loaded?.snapshot).toEqual(payload.snapshot);
      expect(loaded?.record).toEqual(payload.record);
      // A snapshot whose turns differ from the record's is kept whole.
      const other = structuredClone(payload.snapshot) as { context: { turns: unknown[] } };
      other.context.turns = other.context.turns.slice(1);
      await store.commit({ callSid: payload.callSid, expectedRevision: 1, snapshot: other, record: payload.record, now: Date.now() });
      expect((await store.load(payload.callSid))?.snapshot).toEqual(other);
      expect(storedSnapshotBytes()).toBeGreaterThan(JSON.stringify(other.context.turns).length);
    } finally {
      await store.close();
    }
  });

  it('reads a row stored whole by an older version', async () => {
    const dataDir = tempDir();
    await new SqliteCallStore(dataDir).close();
    const db = new DatabaseSync(join(dataDir, 'calls.sqlite'));
    db.prepare(
      `INSERT INTO calls (call_sid, revision, snapshot, record, responses, started_at, from_number, to_number, updated_at)
       VALUES (?, 3, ?, ?, '{}', ?, ?, ?, ?)`,
    ).run(payload.callSid, JSON.stringify(payload.snapshot), JSON.stringify(payload.record), payload.record.startedAt, payload.record.from, payload.record.to, Date.now());
    db.close();
    const store = new SqliteCallStore(dataDir);
    try {
      const loaded = await store.load(payload.callSid);
      expect(loaded?.snapshot).toEqual(payload.snapshot);
      expect(loaded?.revision).toBe(3);
    } finally {
      await store.close();
    }
  });
});

describe('readiness', () => {
  it('is false while the database cannot be written (another process holds its write lock), true again after', async () => {
    const dataDir = tempDir();
    const store = new SqliteCallStore(dataDir);
    const other = new DatabaseSync(join(dataDir, 'calls.sqlite'));
    try {
      expect(await store.healthy()).toBe(true);
      other.exec('BEGIN EXCLUSIVE');
      // Reads still work in WAL mode: a check that only read would say ready.
      expect(await store.load(payload.callSid)).toBeNull();
      expect(await store.healthy()).toBe(false);
      other.exec('COMMIT');
      expect(await store.healthy()).toBe(true);
    } finally {
      other.close();
      await store.close();
    }
    expect(await store.healthy()).toBe(false);
  });
});

describe('the store’s files', () => {
  const mode = (path: string) => statSync(path).mode & 0o777;

  it('are the service user’s only: database, WAL and shared memory 0600, a directory it makes 0700', async () => {
    const dataDir = join(tempDir(), 'data');
    const store = new SqliteCallStore(dataDir);
    try {
      await store.commit({ callSid: payload.callSid, expectedRevision: 0, snapshot: payload.snapshot, record: payload.record, now: Date.now() });
      expect(mode(dataDir)).toBe(0o700);
      for (const file of ['calls.sqlite', 'calls.sqlite-wal', 'calls.sqlite-shm']) expect(mode(join(dataDir, file)), file).toBe(0o600);
    } finally {
      await store.close();
    }
  });

  it('of an older version, readable by anyone, become 0600 at open', async () => {
    const dataDir = tempDir();
    await new SqliteCallStore(dataDir).close();
    chmodSync(join(dataDir, 'calls.sqlite'), 0o644);
    const store = new SqliteCallStore(dataDir);
    try {
      expect(mode(join(dataDir, 'calls.sqlite'))).toBe(0o600);
    } finally {
      await store.close();
    }
  });
});

describe('opening a damaged database', () => {
  /** A store with `calls` calls in it, closed: its file and its size in pages. */
  async function filledStore(calls: number): Promise<{ dataDir: string; file: string }> {
    const dataDir = tempDir();
    const store = new SqliteCallStore(dataDir);
    for (let i = 0; i < calls; i++) {
      const callSid = `CA${i.toString(16).padStart(32, '0')}`;
      await store.commit({ callSid, expectedRevision: 0, snapshot: payload.snapshot, record: { ...payload.record, callSid }, now: Date.now() });
    }
    await store.close();
    return { dataDir, file: join(dataDir, 'calls.sqlite') };
  }

  function overwrite(file: string, offset: number, bytes: Buffer): void {
    const fd = openSync(file, 'r+');
    try {
      writeSync(fd, bytes, 0, bytes.length, offset);
    } finally {
      closeSync(fd);
    }
  }

  function openError(dataDir: string): StoreOpenError {
    try {
      new SqliteCallStore(dataDir);
    } catch (error) {
      if (error instanceof StoreOpenError) return error;
      throw error;
    }
    throw new Error('the damaged database was opened');
  }

  it('with a garbled header: one line naming the file, the header and what to do', async () => {
    const { dataDir, file } = await filledStore(3);
    overwrite(file, 0, Buffer.from('this is not the SQLite header you were looking for, not at all'));
    const error = openError(dataDir);
    expect(error.message).toBe(`${file}: not a SQLite database, or its header is corrupt (file is not a database); move it aside to start with an empty store, or restore a backup`);
  });

  it('with corrupt pages: the integrity check at open names the file and the first problem', async () => {
    const { dataDir, file } = await filledStore(40);
    const db = new DatabaseSync(file);
    const { rootpage } = db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'calls'").get() as { rootpage: number };
    db.close();
    // Zeros over the root page of the calls table: the schema (page 1) still reads, the calls do not.
    overwrite(file, (rootpage - 1) * PAGE_SIZE, Buffer.alloc(PAGE_SIZE));
    const error = openError(dataDir);
    expect(error.message).toMatch(/^\S+calls\.sqlite: the database is corrupt: \*\*\* in database main \*\*\* Tree \d+ page \d+.*; move it aside to start with an empty store, or restore a backup$/);
    expect(error.message.startsWith(file)).toBe(true);
    expect(error.message).not.toContain('\n');
  });
});
