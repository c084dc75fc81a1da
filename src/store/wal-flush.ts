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
// - runs `checkpoint()` between two groups once the WAL has grown past CHECKPOINT_BYTES: the
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

import { fstatSync } from "node:fs";
import { open } from "node:fs/promises";
import type SqliteDatabase from "better-sqlite3";

type FileHandle = Awaited<ReturnType<typeof open>>;

/**
 * The WAL's size at which it is checkpointed (8 MiB; SQLite's default is 1000 pages of 4 KiB). The
 * file is also truncated back to it after a checkpoint (`journal_size_limit`), so from then on it
 * grows past this size exactly when the WAL written since the last checkpoint does.
 */
const CHECKPOINT_BYTES = 8 * 1024 * 1024;

/** Runs `use` while no statement of anyone else's is running on the connection. */
export type ExclusiveUse = <T>(use: () => T) => Promise<T>;

export class WalFlusher {
  readonly #walPath: string;
  readonly #databasePath: string;
  readonly #database: SqliteDatabase.Database;
  readonly #exclusively: ExclusiveUse;
  #file: Promise<FileHandle> | undefined;
  /** The WAL file's descriptor once opened: its size says when to checkpoint. */
  #walDescriptor: number | undefined;
  #databaseFile: Promise<FileHandle> | undefined;
  /** A group committed after the running flush (if any) began: that flush does not cover it. */
  #committedSinceFlushBegan = false;
  /** The flush running now. */
  #running: Promise<void> | undefined;
  /** The flush that starts when the running one ends, shared by every COMMIT made meanwhile. */
  #queued: Promise<void> | undefined;
  #failure: unknown;

  /** `exclusively`: how to wait for the connection (the writes' transactions) to be free. */
  constructor(databasePath: string, database: SqliteDatabase.Database, exclusively: ExclusiveUse) {
    this.#walPath = `${databasePath}-wal`;
    this.#databasePath = databasePath;
    this.#database = database;
    this.#exclusively = exclusively;
    // SQLite flushes nothing itself and runs no checkpoint of its own: both are done here.
    database.pragma("synchronous = OFF");
    database.pragma("wal_autocheckpoint = 0");
    // After a checkpoint the file is truncated back to the bound, so that its size says when the
    // next is due, and a small volume that filled up once has room again.
    database.pragma(`journal_size_limit = ${CHECKPOINT_BYTES}`);
  }

  /** Notes that a group committed, before its flush() is asked for. */
  committed(): void {
    this.#committedSinceFlushBegan = true;
  }

  /** Whether the WAL has grown past CHECKPOINT_BYTES since the last checkpoint (one fstat). */
  get checkpointDue(): boolean {
    return this.#walDescriptor !== undefined && fstatSync(this.#walDescriptor).size > CHECKPOINT_BYTES;
  }

  /**
   * Copies the WAL into the database file and puts the file on the disk. The caller begins no
   * write transaction until it resolves (see the top of this file).
   */
  async checkpoint(): Promise<void> {
    // Every committed frame on the disk first (the flush already running may cover them all), and
    // nothing copied from a WAL whose flush failed.
    if (this.#failure !== undefined) throw this.#failure;
    await (this.#committedSinceFlushBegan ? this.flush() : this.#running);
    await this.#exclusively(() => this.#database.pragma("wal_checkpoint(PASSIVE)"));
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

  /**
   * Call after the last write: SQLite's own checkpoint at close then flushes what it copies. The
   * last group may still be committing (a write that failed is answered before its group's COMMIT),
   * and the pragma fails inside a transaction: it waits for the connection.
   */
  async close(): Promise<void> {
    await this.#exclusively(() => {
      if (this.#database.open) this.#database.pragma("synchronous = FULL");
    });
    await Promise.allSettled([this.#running, this.#queued]);
    const files = [this.#file, this.#databaseFile];
    this.#file = undefined;
    this.#walDescriptor = undefined;
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
    this.#file ??= open(this.#walPath, "r").then((handle) => {
      this.#walDescriptor = handle.fd;
      return handle;
    });
    return this.#sync(() => this.#file as Promise<FileHandle>);
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
