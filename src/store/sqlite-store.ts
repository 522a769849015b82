/**
 * The embedded call store: one SQLite file under DATA_DIR, through Node's built-in
 * `node:sqlite` (no native build). WAL mode: a process killed with SIGKILL loses no
 * committed webhook; a restarted one continues every call where it was.
 *
 * The compare-and-set is `UPDATE ... WHERE revision = ?` (or an INSERT that fails
 * on the primary key for a new call): SQLite runs each statement atomically, so two
 * webhooks computed from the same revision cannot both commit, even from two
 * processes sharing the file.
 *
 * @see https://nodejs.org/api/sqlite.html
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
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

export class SqliteCallStore implements CallStore {
  readonly kind = 'sqlite';
  readonly #db: DatabaseSync;
  readonly #statements;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.#db = new DatabaseSync(join(dataDir, 'calls.sqlite'));
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      PRAGMA busy_timeout = 5000;
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
      load: this.#db.prepare('SELECT * FROM calls WHERE call_sid = ?'),
      insert: this.#db.prepare(
        `INSERT INTO calls (call_sid, revision, snapshot, record, responses, started_at, from_number, to_number, updated_at)
         VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO NOTHING`,
      ),
      update: this.#db.prepare(
        `UPDATE calls SET revision = revision + 1, snapshot = ?, record = ?, responses = ?, updated_at = ?
         WHERE call_sid = ? AND revision = ?`,
      ),
      expire: this.#db.prepare('UPDATE calls SET snapshot = NULL WHERE updated_at < ? AND snapshot IS NOT NULL'),
    };
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
    // Read the remembered answers and write them back in one transaction, so a
    // concurrent commit cannot slip between the read and the compare-and-set.
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      const row = this.#statements.load.get(callSid) as Row | undefined;
      if (!row || row.revision !== expectedRevision) {
        this.#db.exec('ROLLBACK');
        return { ok: false, reason: 'conflict' };
      }
      const responses = JSON.stringify(rememberResponse(JSON.parse(row.responses), request.response));
      const result = this.#statements.update.run(snapshot, JSON.stringify(record), responses, now, callSid, expectedRevision);
      this.#db.exec('COMMIT');
      return result.changes === 1 ? { ok: true, revision: expectedRevision + 1 } : { ok: false, reason: 'conflict' };
    } catch (error) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
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
    const rows = this.#db.prepare(sql).all(...params) as Array<{ record: string }>;
    return rows.map((r) => JSON.parse(r.record) as CallRecord);
  }

  async expireSnapshots(before: number): Promise<number> {
    return Number(this.#statements.expire.run(before).changes);
  }

  async healthy(): Promise<boolean> {
    try {
      this.#db.prepare('SELECT 1').get();
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
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
