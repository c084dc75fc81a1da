// Puts SQLite's committed write-ahead log on the disk without stopping the event loop.
//
// With `synchronous = FULL` SQLite flushes the WAL inside COMMIT, on the thread that runs it: on
// this service's one event loop, every check and every other call waits for the disk. Instead the
// database runs with `synchronous = NORMAL` (COMMIT writes the WAL, no flush; SQLite still
// flushes around its checkpoints) and the group commit (transactions.ts) calls `flush()` after
// each COMMIT, acknowledging the group's writes only once it resolves: fdatasync of the WAL file
// on libuv's thread pool. A flush that starts after a COMMIT covers it (fdatasync covers every
// write to the file before it), so groups that commit while one flush runs share the next one.
//
// The WAL file is the same inode for as long as the database is open: with `locking_mode =
// EXCLUSIVE` SQLite keeps it (truncated after checkpoints, never deleted) until it closes.
//
// A failed flush (an I/O error) may have dropped the pages it was flushing, and a later flush can
// succeed without them: every flush after a failure fails too, so no write is acknowledged again
// until the process restarts and SQLite recovers from what the disk holds.

import { open } from "node:fs/promises";

type FileHandle = Awaited<ReturnType<typeof open>>;

export class WalFlusher {
  readonly #walPath: string;
  #file: Promise<FileHandle> | undefined;
  /** The flush running now. */
  #running: Promise<void> | undefined;
  /** The flush that starts when the running one ends, shared by every COMMIT made meanwhile. */
  #queued: Promise<void> | undefined;
  #failure: unknown;

  constructor(databasePath: string) {
    this.#walPath = `${databasePath}-wal`;
  }

  /** Resolves once everything committed before this call is on the disk. */
  flush(): Promise<void> {
    if (this.#queued !== undefined) return this.#queued;
    if (this.#running === undefined) return this.#start();
    const start = () => this.#start();
    this.#queued = this.#running.then(start, start);
    return this.#queued;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.#running, this.#queued]);
    const file = this.#file;
    this.#file = undefined;
    // A file that never opened failed its flushes already: nothing to close.
    await file?.then(
      (handle) => handle.close(),
      () => {},
    );
  }

  #start(): Promise<void> {
    this.#queued = undefined;
    const running = this.#datasync();
    this.#running = running;
    const clear = () => {
      if (this.#running === running) this.#running = undefined;
    };
    running.then(clear, clear);
    return running;
  }

  async #datasync(): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure;
    try {
      // Opened at the first flush: the file exists once a transaction has committed.
      this.#file ??= open(this.#walPath, "r");
      await (await this.#file).datasync();
    } catch (error) {
      this.#failure = error;
      throw error;
    }
  }
}
