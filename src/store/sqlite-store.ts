/**
 * The embedded call store: one SQLite file under DATA_DIR, through Node's built-in
 * `node:sqlite` (no native build). WAL mode: a process killed with SIGKILL loses no
 * committed webhook; a restarted one continues every call where it was.
 *
 * Durability: `synchronous = NORMAL` in WAL mode writes every commit to the WAL
 * before `commit` returns (the process may die right after: nothing is lost) and
 * syncs to disk at each checkpoint. An operating-system crash or power cut may
 * roll back the commits since the last checkpoint, never corrupt the file (the WAL
 * is checksummed frame by frame; SQLite's documentation calls NORMAL "a good
 * choice for most applications running in WAL mode"). FULL would add an fsync to
 * every commit, on the event loop, for calls whose next webhook replays the same
 * request anyway.
 *
 * The write-ahead log is bounded. Checkpoints (copying the WAL into the database,
 * with two fsyncs) run in a worker thread on a connection of its own every
 * CHECKPOINT_EVERY_MS, instead of inside whichever commit fills the WAL: an fsync
 * costs milliseconds, and on the event loop it would hold up every call in
 * progress. The WAL starts over only once a checkpoint has copied all of it, which
 * a checkpointer running beside continuous commits never manages (10 callers made
 * the file 4.6 GB in 95 s). So a commit still checkpoints by itself once the WAL
 * holds WAL_CHECKPOINT_PAGES (most of it already copied by the worker; on the
 * event loop, but only under sustained writes), and the WAL file is cut back to
 * WAL_SIZE_LIMIT_BYTES when it starts over.
 *
 * Every commit rewrites its call's row, so the row holds nothing twice: the
 * machine's context carries the call's turns and path, which the record carries
 * too, and the stored snapshot leaves out what equals the record's field of the
 * same name (`sharedWithRecord`), put back from the record on load. A 20-turn call
 * then writes 23 % fewer bytes to the WAL per commit (docs/hardening.md). Rows
 * stored whole by older versions are read as they are.
 *
 * The compare-and-set is `UPDATE ... WHERE revision = ?` (or an INSERT that fails
 * on the primary key for a new call): SQLite runs each statement atomically, so two
 * webhooks computed from the same revision cannot both commit, even from two
 * processes sharing the file.
 *
 * At start the file is checked (`PRAGMA quick_check`): a corrupt or unopenable
 * database stops the start with one line naming the file (StoreOpenError). The
 * files (database, WAL, shared memory) are the service user's only (0600).
 *
 * @see https://nodejs.org/api/sqlite.html
 * @see https://www.sqlite.org/wal.html#checkpointing
 * @see https://www.sqlite.org/wal.html#avoiding_excessively_large_wal_files
 * @see https://www.sqlite.org/pragma.html#pragma_synchronous
 * @see https://www.sqlite.org/pragma.html#pragma_journal_size_limit
 * @see https://www.sqlite.org/pragma.html#pragma_quick_check
 */
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { isDeepStrictEqual } from 'node:util';
import { Worker } from 'node:worker_threads';
import {
  rememberResponse,
  StoreOpenError,
  summaryOf,
  type CallRecord,
  type CallSummary,
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

/** A stored snapshot without the context fields it shares with the record. */
interface TrimmedSnapshot {
  sharedWithRecord: string[];
  snapshot: { context: Record<string, unknown> };
}

/** How often the checkpointer copies the WAL into the database (and how much a power cut may take back). */
const CHECKPOINT_EVERY_MS = 1_000;
/** WAL pages after which a commit checkpoints by itself (SQLite's default): 4 MiB at 4 KiB pages. */
const WAL_CHECKPOINT_PAGES = 1_000;
/** What the WAL file is cut back to when it starts over. */
const WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024;
/** How long a commit waits for a lock another connection holds. */
const BUSY_TIMEOUT_MS = 5_000;
/** How long the readiness write waits for one: a probe must answer in time. */
const HEALTH_BUSY_TIMEOUT_MS = 1_000;
/** Database, WAL and shared-memory files: the service user's only. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

/**
 * The checkpointer's thread. PASSIVE never waits for readers or writers: what it
 * cannot copy now it copies next time, and commits go on meanwhile; a checkpoint
 * that fails (a full disk) is tried again next time too.
 */
const CHECKPOINTER = `
const { parentPort, workerData } = require('node:worker_threads');
const { DatabaseSync } = require('node:sqlite');
const db = new DatabaseSync(workerData.file);
db.exec('PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;');
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const timer = setInterval(() => {
  try {
    checkpoint.get();
  } catch {
    // A disk that is full or failing: tried again next time; commits and readiness report it.
  }
}, workerData.everyMs);
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
    mkdirSync(dataDir, { recursive: true, mode: DIR_MODE });
    const file = join(dataDir, 'calls.sqlite');
    this.#db = openChecked(file);
    this.#db.exec(`
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
      CREATE TABLE IF NOT EXISTS store_health (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at INTEGER NOT NULL
      );
    `);
    // The list's summary (CallSummary), kept beside the record since it was added; older rows have none.
    const columns = (this.#db.prepare('PRAGMA table_info(calls)').all() as Array<{ name: string }>).map((c) => c.name);
    if (!columns.includes('summary')) this.#db.exec('ALTER TABLE calls ADD COLUMN summary TEXT');
    this.#statements = {
      load: this.#db.prepare('SELECT call_sid, revision, snapshot, record, responses, updated_at FROM calls WHERE call_sid = ?'),
      responses: this.#db.prepare('SELECT revision, responses FROM calls WHERE call_sid = ?'),
      insert: this.#db.prepare(
        `INSERT INTO calls (call_sid, revision, snapshot, record, responses, started_at, from_number, to_number, updated_at, summary)
         VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO NOTHING`,
      ),
      update: this.#db.prepare(
        `UPDATE calls SET revision = revision + 1, snapshot = ?, record = ?, updated_at = ?, summary = ?
         WHERE call_sid = ? AND revision = ?`,
      ),
      updateWithResponses: this.#db.prepare(
        `UPDATE calls SET revision = revision + 1, snapshot = ?, record = ?, responses = ?, updated_at = ?, summary = ?
         WHERE call_sid = ? AND revision = ?`,
      ),
      expire: this.#db.prepare('UPDATE calls SET snapshot = NULL WHERE updated_at < ? AND snapshot IS NOT NULL'),
      writeHealth: this.#db.prepare('INSERT INTO store_health (id, checked_at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at'),
      readHealth: this.#db.prepare('SELECT checked_at FROM store_health WHERE id = 1'),
      begin: this.#db.prepare('BEGIN IMMEDIATE'),
      commit: this.#db.prepare('COMMIT'),
      rollback: this.#db.prepare('ROLLBACK'),
    };
    this.#checkpointer = new Worker(CHECKPOINTER, { eval: true, workerData: { file, everyMs: CHECKPOINT_EVERY_MS } });
    // Never what keeps the process alive; if it stops, the commits' own checkpoints bound the WAL alone.
    this.#checkpointer.unref();
    this.#checkpointer.once('error', (error) => {
      process.emitWarning(`SQLite checkpointer stopped (${error.message}); commits checkpoint the WAL themselves`);
    });
    this.#checkpointerStopped = new Promise((resolve) => this.#checkpointer.once('exit', resolve));
  }

  async load(callSid: string): Promise<StoredCall | null> {
    const row = this.#statements.load.get(callSid) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  async commit(request: CommitRequest): Promise<CommitResult> {
    const { callSid, expectedRevision, record, now } = request;
    const snapshot = storedSnapshot(request.snapshot, record);
    const summary = JSON.stringify(summaryOf(record));
    if (expectedRevision === 0) {
      const responses = JSON.stringify(rememberResponse({}, request.response));
      const result = this.#statements.insert.run(
        callSid, snapshot, JSON.stringify(record), responses, record.startedAt, record.from, record.to, now, summary,
      );
      return result.changes === 1 ? { ok: true, revision: 1 } : { ok: false, reason: 'conflict' };
    }
    if (!request.response) {
      // The remembered answers stay as they are: one statement, the compare-and-set itself.
      const result = this.#statements.update.run(snapshot, JSON.stringify(record), now, summary, callSid, expectedRevision);
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
      const result = this.#statements.updateWithResponses.run(snapshot, JSON.stringify(record), responses, now, summary, callSid, expectedRevision);
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

  async listSummaries(query: RecordQuery): Promise<CallSummary[]> {
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
    // A row written before summaries were kept is summarised from its record; no other record is read.
    const sql = `SELECT summary, CASE WHEN summary IS NULL THEN record END AS record FROM calls
                 ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY started_at DESC LIMIT ?`;
    params.push(Math.min(Math.max(query.limit ?? 100, 1), 1000));
    let statement = this.#listings.get(sql);
    if (!statement) this.#listings.set(sql, (statement = this.#db.prepare(sql)));
    const rows = statement.all(...params) as Array<{ summary: string | null; record: string | null }>;
    return rows.map((r) => (r.summary !== null ? (JSON.parse(r.summary) as CallSummary) : summaryOf(JSON.parse(r.record!) as CallRecord)));
  }

  async expireSnapshots(before: number): Promise<number> {
    return Number(this.#statements.expire.run(before).changes);
  }

  async healthy(): Promise<boolean> {
    if (!this.#db.isOpen) return false;
    // node:sqlite is synchronous: a lock held elsewhere would hold the event loop for the whole busy timeout.
    this.#db.exec(`PRAGMA busy_timeout = ${HEALTH_BUSY_TIMEOUT_MS}`);
    try {
      const at = Date.now();
      this.#statements.writeHealth.run(at);
      return (this.#statements.readHealth.get() as { checked_at: number } | undefined)?.checked_at === at;
    } catch {
      // SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY, SQLITE_BUSY, SQLITE_CORRUPT: not ready.
      return false;
    } finally {
      this.#db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
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
    snapshot: row.snapshot === null ? null : loadedSnapshot(row.snapshot, row.record),
    record: JSON.parse(row.record) as CallRecord,
    responses: JSON.parse(row.responses) as Record<string, string>,
    updatedAt: row.updated_at,
  };
}

/**
 * The snapshot as stored: without the context fields that equal the record's
 * field of the same name (the turns and the path), or whole when none does.
 */
function storedSnapshot(snapshot: unknown, record: CallRecord): string {
  const context = (snapshot as { context?: unknown } | null)?.context;
  if (typeof context !== 'object' || context === null) return JSON.stringify(snapshot);
  const fields = record as unknown as Record<string, unknown>;
  const sharedWithRecord = Object.keys(fields).filter(
    (field) => typeof fields[field] === 'object' && isDeepStrictEqual((context as Record<string, unknown>)[field], fields[field]),
  );
  if (sharedWithRecord.length === 0) return JSON.stringify(snapshot);
  const trimmed: Record<string, unknown> = { ...context };
  for (const field of sharedWithRecord) delete trimmed[field];
  return JSON.stringify({ sharedWithRecord, snapshot: { ...(snapshot as object), context: trimmed } } satisfies TrimmedSnapshot);
}

/** The snapshot with what it shares with the record put back (a copy of its own, parsed again). */
function loadedSnapshot(stored: string, recordJson: string): unknown {
  const parsed = JSON.parse(stored) as unknown;
  if (!isTrimmed(parsed)) return parsed;
  const record = JSON.parse(recordJson) as Record<string, unknown>;
  for (const field of parsed.sharedWithRecord) parsed.snapshot.context[field] = record[field];
  return parsed.snapshot;
}

function isTrimmed(value: unknown): value is TrimmedSnapshot {
  return typeof value === 'object' && value !== null && Object.hasOwn(value, 'sharedWithRecord') && Object.hasOwn(value, 'snapshot');
}

/** SQLite's result codes for a file that is not a database and for a damaged one. */
const SQLITE_CORRUPT = 11;
const SQLITE_NOTADB = 26;
const MOVE_ASIDE = 'move it aside to start with an empty store, or restore a backup';

/**
 * Opens the database with its files private to the service user, sets it up for
 * WAL and checks it: anything wrong is a StoreOpenError naming the file, in one
 * line, instead of a stack trace at the first webhook.
 */
function openChecked(file: string): DatabaseSync {
  for (const path of [file, `${file}-wal`, `${file}-shm`]) {
    // SQLite creates the WAL and shared-memory files with the database file's mode.
    if (existsSync(path)) chmodSync(path, FILE_MODE);
  }
  if (!existsSync(file)) closeSync(openSync(file, 'a', FILE_MODE));
  let db: DatabaseSync | undefined;
  try {
    db = new DatabaseSync(file);
    db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS};
      PRAGMA wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES};
      PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT_BYTES};
    `);
    // Each problem is a line or two ("*** in database main ***\nTree 2 page 30 cell 1: …"): one line each here.
    const problems = (db.prepare('PRAGMA quick_check').all() as Array<{ quick_check: string }>).map((r) => r.quick_check.replace(/\s+/g, ' '));
    if (problems[0] !== 'ok') {
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : '';
      throw new StoreOpenError(`${file}: the database is corrupt: ${problems[0]}${more}; ${MOVE_ASIDE}`);
    }
    return db;
  } catch (error) {
    if (db?.isOpen) db.close();
    if (error instanceof StoreOpenError) throw error;
    const sqlite = error as Error & { errcode?: number };
    const what =
      sqlite.errcode === SQLITE_NOTADB ? 'not a SQLite database, or its header is corrupt'
      : sqlite.errcode === SQLITE_CORRUPT ? 'the database is corrupt'
      : undefined;
    if (what) throw new StoreOpenError(`${file}: ${what} (${sqlite.message}); ${MOVE_ASIDE}`);
    throw new StoreOpenError(`${file}: the database cannot be opened (${sqlite.message})`);
  }
}
