// Puts SQLite's committed write-ahead log, and its checkpoints, on the disk without stopping the
// event loop.
//
// With `synchronous = FULL` SQLite flushes the WAL inside COMMIT, on the thread that runs it: on
// this service's one event loop, every check and every other call waits for the disk. And its
// automatic checkpoints (copying the WAL's pages into the database file) flush the WAL and the
// database file inside the COMMIT that triggers them: tens to hundreds of milliseconds of stopped
// event loop every few megabytes of writes. So the service's database runs with `synchronous =
// OFF` and `wal_autocheckpoint = 0` (set here), and the group commit (transactions.ts):
// - calls `flush()` after each COMMIT and acknowledges the group's writes only once it resolves:
//   fdatasync of the WAL file on libuv's thread pool. A flush that starts after a COMMIT covers it
//   (fdatasync covers every write to the file before it), so groups that commit while one flush
//   runs share the next one;
// - runs `checkpoint()` between two groups once the WAL has grown by about CHECKPOINT_PAGES: the
//   WAL is flushed first (the database file must never receive a page the WAL could still lose: a
//   power cut would leave half a transaction in the file), the pages are copied (writes into the
//   page cache, on the event loop), and the database file is flushed on the thread pool before the
//   next group begins (its first write starts the WAL over, overwriting the frames just copied).
//   Reads go on meanwhile; only writes wait.
// At close, SQLite's own last checkpoint flushes again (`synchronous = FULL`), since it then
// deletes the WAL.
//
// The WAL file is the same inode for as long as the database is open: with `locking_mode =
// EXCLUSIVE` SQLite keeps it (truncated after checkpoints, never deleted) until it closes.
//
// A failed flush (an I/O error) may have dropped the pages it was flushing, and a later flush can
// succeed without them: every flush after a failure fails too, so no write is acknowledged again
// until the process restarts and SQLite recovers from what the disk holds.

import { open } from "node:fs/promises";
import type SqliteDatabase from "better-sqlite3";

type FileHandle = Awaited<ReturnType<typeof open>>;

/** WAL pages (of 4 KiB) between checkpoints: a WAL of about 8 MiB (SQLite's default is 1000 pages). */
export const CHECKPOINT_PAGES = 2048;
/**
 * The WAL pages a group is assumed to add until the first checkpoint measures it: high, so that a
 * first run of large groups cannot take the WAL far past its bound.
 */
const FIRST_PAGES_PER_GROUP = 64;

/** Runs `copy` while no statement of anyone else's is running on the connection. */
export type ExclusiveUse = <T>(copy: () => T) => Promise<T>;

export class WalFlusher {
  readonly #walPath: string;
  readonly #databasePath: string;
  readonly #database: SqliteDatabase.Database;
  readonly #checkpointPages: number;
  #file: Promise<FileHandle> | undefined;
  #databaseFile: Promise<FileHandle> | undefined;
  #groupsSinceCheckpoint = 0;
  #pagesPerGroup = FIRST_PAGES_PER_GROUP;
  /** A group committed after the running flush (if any) began: that flush does not cover it. */
  #committedSinceFlushBegan = false;
  /** The flush running now. */
  #running: Promise<void> | undefined;
  /** The flush that starts when the running one ends, shared by every COMMIT made meanwhile. */
  #queued: Promise<void> | undefined;
  #failure: unknown;

  constructor(databasePath: string, database: SqliteDatabase.Database, checkpointPages = CHECKPOINT_PAGES) {
    this.#walPath = `${databasePath}-wal`;
    this.#databasePath = databasePath;
    this.#database = database;
    this.#checkpointPages = checkpointPages;
    // SQLite flushes nothing itself and runs no checkpoint of its own: both are done here.
    database.pragma("synchronous = OFF");
    database.pragma("wal_autocheckpoint = 0");
  }

  /** Notes that a group committed: the WAL grew by about a group's pages. */
  committed(): void {
    this.#groupsSinceCheckpoint++;
    this.#committedSinceFlushBegan = true;
  }

  /** Whether the WAL has grown enough since the last checkpoint to copy it into the database file. */
  get checkpointDue(): boolean {
    return this.#groupsSinceCheckpoint * this.#pagesPerGroup >= this.#checkpointPages;
  }

  /**
   * Copies the WAL into the database file and puts the file on the disk. The caller begins no
   * write transaction until it resolves (see the top of this file).
   */
  async checkpoint(exclusively: ExclusiveUse): Promise<void> {
    // Every committed frame on the disk first (the flush already running may cover them all), and
    // nothing copied from a WAL whose flush failed.
    if (this.#failure !== undefined) throw this.#failure;
    await (this.#committedSinceFlushBegan ? this.flush() : this.#running);
    const [result] = (await exclusively(() => this.#database.pragma("wal_checkpoint(PASSIVE)"))) as {
      log: number;
    }[];
    // What the WAL held is what these groups wrote (the previous checkpoint copied all it had).
    const groups = this.#groupsSinceCheckpoint;
    if (groups > 0 && result !== undefined && result.log > 0) this.#pagesPerGroup = Math.max(1, result.log / groups);
    this.#groupsSinceCheckpoint = 0;
    await this.#sync(() => (this.#databaseFile ??= open(this.#databasePath, "r")));
  }

  /** Resolves once everything committed before this call is on the disk. */
  flush(): Promise<void> {
    if (this.#queued !== undefined) return this.#queued;
    if (this.#running === undefined) return this.#start();
    const start = () => this.#start();
    this.#queued = this.#running.then(start, start);
    return this.#queued;
  }

  /** Call after the last write: SQLite's own checkpoint at close then flushes what it copies. */
  async close(): Promise<void> {
    await Promise.allSettled([this.#running, this.#queued]);
    this.#database.pragma("synchronous = FULL");
    const files = [this.#file, this.#databaseFile];
    this.#file = undefined;
    this.#databaseFile = undefined;
    // A file that never opened failed its flushes already: nothing to close.
    for (const file of files) {
      await file?.then(
        (handle) => handle.close(),
        () => {},
      );
    }
  }

  #start(): Promise<void> {
    this.#queued = undefined;
    this.#committedSinceFlushBegan = false;
    const running = this.#datasync();
    this.#running = running;
    const clear = () => {
      if (this.#running === running) this.#running = undefined;
    };
    running.then(clear, clear);
    return running;
  }

  #datasync(): Promise<void> {
    // Opened at the first flush: the file exists once a transaction has committed.
    return this.#sync(() => (this.#file ??= open(this.#walPath, "r")));
  }

  async #sync(file: () => Promise<FileHandle>): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure;
    try {
      await (await file()).datasync();
    } catch (error) {
      this.#failure = error;
      throw error;
    }
  }
}
