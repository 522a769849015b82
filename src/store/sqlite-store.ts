/**
 * The embedded call store: one SQLite file under DATA_DIR, through Node's built-in
 * `node:sqlite` (no native build). WAL mode: a process killed with SIGKILL loses no
 * committed webhook; a restarted one continues every call where it was.
 *
 * Durability: `synchronous = NORMAL` in WAL mode writes every commit to the WAL
 * before `commit` returns (the process may die right after: nothing is lost) and
 * syncs to disk at each checkpoint. An operating-system crash or power cut may
 * roll back the commits since the last checkpoint, never corrupt the file.
 * Checkpoints (copying the WAL into the database, with two fsyncs) run in a
 * worker thread on a connection of its own every CHECKPOINT_EVERY_MS, instead of
 * inside whichever commit fills the WAL: an fsync costs milliseconds, and on the
 * event loop it would hold up every call in progress. The window of commits a
 * power cut may take is that interval.
 *
 * The compare-and-set is `UPDATE ... WHERE revision = ?` (or an INSERT that fails
 * on the primary key for a new call): SQLite runs each statement atomically, so two
 * webhooks computed from the same revision cannot both commit, even from two
 * processes sharing the file.
 *
 * @see https://nodejs.org/api/sqlite.html
 * @see https://www.sqlite.org/wal.html#checkpointing
 * @see https://www.sqlite.org/pragma.html#pragma_synchronous
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { Worker } from 'node:worker_threads';
import {
  rememberResponse,
  type CallRecord,
  type CallStore,
  type CommitRequest,
  type CommitResult,
  type RecordQuery,
  type StoredCall,
} from './call-store.ts';

interface Row {
  call_sid: string;
  revision: number;
  snapshot: string | null;
  record: string;
  responses: string;
  updated_at: number;
}

/** How often the checkpointer copies the WAL into the database (and how much a power cut may take back). */
const CHECKPOINT_EVERY_MS = 1_000;
/** SQLite's own default, used again if the checkpointer stops. */
const AUTO_CHECKPOINT_PAGES = 1_000;

/**
 * The checkpointer's thread. PASSIVE never waits for readers or writers: what it
 * cannot copy now it copies next time, and commits go on meanwhile.
 */
const CHECKPOINTER = `
const { parentPort, workerData } = require('node:worker_threads');
const { DatabaseSync } = require('node:sqlite');
const db = new DatabaseSync(workerData.file);
db.exec('PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;');
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const timer = setInterval(() => checkpoint.get(), workerData.everyMs);
parentPort.once('message', () => {
  clearInterval(timer);
  db.close();
  parentPort.close();
});
`;

export class SqliteCallStore implements CallStore {
  readonly kind = 'sqlite';
  readonly #db: DatabaseSync;
  readonly #statements;
  /** Record listings by their SQL (one per combination of filters). */
  readonly #listings = new Map<string, StatementSync>();
  readonly #checkpointer: Worker;
  readonly #checkpointerStopped: Promise<unknown>;
  #closed: Promise<void> | undefined;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    const file = join(dataDir, 'calls.sqlite');
    this.#db = new DatabaseSync(file);
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      PRAGMA busy_timeout = 5000;
      PRAGMA wal_autocheckpoint = 0;
      CREATE TABLE IF NOT EXISTS calls (
        call_sid   TEXT PRIMARY KEY,
        revision   INTEGER NOT NULL,
        snapshot   TEXT,
        record     TEXT NOT NULL,
        responses  TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        from_number TEXT NOT NULL,
        to_number  TEXT NOT NULL,
        updated_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at);
      CREATE INDEX IF NOT EXISTS calls_from ON calls (from_number, started_at);
      CREATE INDEX IF NOT EXISTS calls_to ON calls (to_number, started_at);
      CREATE INDEX IF NOT EXISTS calls_updated ON calls (updated_at);
    `);
    this.#statements = {
      load: this.#db.prepare('SELECT call_sid, revision, snapshot, record, responses, updated_at FROM calls WHERE call_sid = ?'),
      responses: this.#db.prepare('SELECT revision, responses FROM calls WHERE call_sid = ?'),
      insert: this.#db.prepare(
        `INSERT INTO calls (call_sid, revision, snapshot, record, responses, started_at, from_number, to_number, updated_at)
         VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO NOTHING`,
      ),
      update: this.#db.prepare(
        `UPDATE calls SET revision = revision + 1, snapshot = ?, record = ?, updated_at = ?
         WHERE call_sid = ? AND revision = ?`,
      ),
      updateWithResponses: this.#db.prepare(
        `UPDATE calls SET revision = revision + 1, snapshot = ?, record = ?, responses = ?, updated_at = ?
         WHERE call_sid = ? AND revision = ?`,
      ),
      expire: this.#db.prepare('UPDATE calls SET snapshot = NULL WHERE updated_at < ? AND snapshot IS NOT NULL'),
      alive: this.#db.prepare('SELECT 1'),
      begin: this.#db.prepare('BEGIN IMMEDIATE'),
      commit: this.#db.prepare('COMMIT'),
      rollback: this.#db.prepare('ROLLBACK'),
    };
    this.#checkpointer = new Worker(CHECKPOINTER, { eval: true, workerData: { file, everyMs: CHECKPOINT_EVERY_MS } });
    // Never what keeps the process alive; if it stops, the commits checkpoint again, as SQLite does by default.
    this.#checkpointer.unref();
    this.#checkpointer.once('error', (error) => {
      process.emitWarning(`SQLite checkpointer stopped (${error.message}); commits checkpoint the WAL themselves again`);
    });
    this.#checkpointerStopped = new Promise((resolve) => this.#checkpointer.once('exit', resolve));
    void this.#checkpointerStopped.then(() => {
      if (!this.#closed && this.#db.isOpen) this.#db.exec(`PRAGMA wal_autocheckpoint = ${AUTO_CHECKPOINT_PAGES}`);
    });
  }

  async load(callSid: string): Promise<StoredCall | null> {
    const row = this.#statements.load.get(callSid) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  async commit(request: CommitRequest): Promise<CommitResult> {
    const { callSid, expectedRevision, record, now } = request;
    const snapshot = JSON.stringify(request.snapshot);
    if (expectedRevision === 0) {
      const responses = JSON.stringify(rememberResponse({}, request.response));
      const result = this.#statements.insert.run(
        callSid, snapshot, JSON.stringify(record), responses, record.startedAt, record.from, record.to, now,
      );
      return result.changes === 1 ? { ok: true, revision: 1 } : { ok: false, reason: 'conflict' };
    }
    if (!request.response) {
      // The remembered answers stay as they are: one statement, the compare-and-set itself.
      const result = this.#statements.update.run(snapshot, JSON.stringify(record), now, callSid, expectedRevision);
      return result.changes === 1 ? { ok: true, revision: expectedRevision + 1 } : { ok: false, reason: 'conflict' };
    }
    // Read the remembered answers and write them back in one transaction, so a
    // concurrent commit cannot slip between the read and the compare-and-set.
    this.#statements.begin.run();
    try {
      const row = this.#statements.responses.get(callSid) as Pick<Row, 'revision' | 'responses'> | undefined;
      if (!row || row.revision !== expectedRevision) {
        this.#statements.rollback.run();
        return { ok: false, reason: 'conflict' };
      }
      const responses = JSON.stringify(rememberResponse(JSON.parse(row.responses), request.response));
      const result = this.#statements.updateWithResponses.run(snapshot, JSON.stringify(record), responses, now, callSid, expectedRevision);
      this.#statements.commit.run();
      return result.changes === 1 ? { ok: true, revision: expectedRevision + 1 } : { ok: false, reason: 'conflict' };
    } catch (error) {
      if (this.#db.isTransaction) this.#statements.rollback.run();
      throw error;
    }
  }

  async getRecord(callSid: string): Promise<CallRecord | null> {
    return (await this.load(callSid))?.record ?? null;
  }

  async listRecords(query: RecordQuery): Promise<CallRecord[]> {
    const where: string[] = [];
    const params: Array<string | number> = [];
    if (query.since !== undefined) {
      where.push('started_at >= ?');
      params.push(query.since);
    }
    if (query.until !== undefined) {
      where.push('started_at < ?');
      params.push(query.until);
    }
    if (query.number !== undefined) {
      where.push('(from_number = ? OR to_number = ?)');
      params.push(query.number, query.number);
    }
    const sql = `SELECT record FROM calls ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 ORDER BY started_at DESC LIMIT ?`;
    params.push(Math.min(Math.max(query.limit ?? 100, 1), 1000));
    let statement = this.#listings.get(sql);
    if (!statement) this.#listings.set(sql, (statement = this.#db.prepare(sql)));
    const rows = statement.all(...params) as Array<{ record: string }>;
    return rows.map((r) => JSON.parse(r.record) as CallRecord);
  }

  async expireSnapshots(before: number): Promise<number> {
    return Number(this.#statements.expire.run(before).changes);
  }

  async healthy(): Promise<boolean> {
    try {
      this.#statements.alive.get();
      return true;
    } catch {
      return false;
    }
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      // The checkpointer closes its connection first; the last connection to close
      // checkpoints what is left and removes the WAL.
      this.#checkpointer.ref();
      this.#checkpointer.postMessage('close');
      await this.#checkpointerStopped;
      if (this.#db.isOpen) this.#db.close();
    })();
    return this.#closed;
  }
}

function fromRow(row: Row): StoredCall {
  return {
    callSid: row.call_sid,
    revision: row.revision,
    snapshot: row.snapshot === null ? null : JSON.parse(row.snapshot),
    record: JSON.parse(row.record) as CallRecord,
    responses: JSON.parse(row.responses) as Record<string, string>,
    updatedAt: row.updated_at,
  };
}
