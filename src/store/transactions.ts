// How the store talks to its database: reads that survive one broken connection, and writes as
// transactions that retry a lost race a bounded number of times, stop committing once the call is
// cut short, and on SQLite never let a failed ROLLBACK hide the error that caused it.
//
// On SQLite every acknowledged write is on the disk, and a disk flush costs far more than a
// write's statements. So writes are committed in groups: the writes that arrive while a group is
// committing form the next group, which runs as ONE transaction with each write in its own
// SAVEPOINT, so a write that fails rolls back alone and the others commit. Its writes are
// acknowledged once the WAL is flushed (wal-flush.ts, off the event loop), and the next group
// commits while that flush runs; between two groups, now and then, the WAL is checkpointed. A
// group holds at most MAX_GROUP writes, so no write waits longer than the group in front of it and
// its own. PostgreSQL groups concurrent commits by itself; there a write that is one statement is
// sent with its BEGIN and COMMIT in one go (writeStatement).

import { setImmediate as nextTurn, setTimeout as sleep } from "node:timers/promises";
import { CompiledQuery, type Kysely, type QueryResult } from "kysely";
import type { Cancellation } from "../runtime/cancellation.js";
import { classifyError, translateError } from "./errors.js";
import type { StorePool } from "./pg-pool.js";
import type { Database } from "./schema.js";
import type { WalFlusher } from "./wal-flush.js";

const MAX_WRITE_ATTEMPTS = 5;
/** Writes per SQLite transaction: bounds how long a write waits for the group in front of it. */
const MAX_GROUP = 100;

const BEGIN = CompiledQuery.raw("begin immediate");
const COMMIT = CompiledQuery.raw("commit");
const ROLLBACK = CompiledQuery.raw("rollback");
const SAVEPOINT = CompiledQuery.raw("savepoint write");
const RELEASE = CompiledQuery.raw("release write");
const ROLLBACK_TO = CompiledQuery.raw("rollback to write");

export interface TransactionsOptions {
  /** PostgreSQL: the pool behind `db`, whose connections writes reserve so that they can be cancelled. */
  readonly pool?: StorePool;
  /** SQLite: whether a transaction is open (SQLite rolls some back by itself, e.g. on a full disk). */
  readonly inTransaction?: () => boolean;
  /** SQLite on a file: puts each group's COMMIT on the disk before its writes are acknowledged. */
  readonly walFlusher?: WalFlusher;
  /**
   * Called after every write commits, and (`false`) after one whose transaction ended without
   * committing: on PostgreSQL the change feed's readers may have been waiting for it to end.
   */
  readonly ended: (committed: boolean) => void;
}

type Work<T> = (trx: Kysely<Database>) => Promise<T>;

export class Transactions {
  readonly #pool: StorePool | undefined;
  readonly #groups: GroupCommit | undefined;
  readonly #ended: (committed: boolean) => void;

  constructor(db: Kysely<Database>, options: TransactionsOptions) {
    this.#pool = options.pool;
    this.#groups =
      options.pool === undefined ? new GroupCommit(db, options.inTransaction, options.walFlusher) : undefined;
    this.#ended = options.ended;
  }

  /** Runs a read, once more when the connection broke under it (e.g. after a database restart). */
  async read<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await query();
    } catch (error) {
      const failure = classifyError(error);
      if (failure.kind !== "connection_lost") throw translateError(error, failure);
    }
    try {
      return await query();
    } catch (error) {
      throw translateError(error);
    }
  }

  /**
   * Runs `work` in a transaction, again (a bounded number of times) when it lost a race. Once
   * `signal` aborts, nothing more commits: the transaction rolls back (on PostgreSQL the running
   * query is cancelled on the server; on SQLite the write's savepoint, or its group, rolls back)
   * and the write rejects with the signal's reason.
   */
  async write<T>(signal: Cancellation | undefined, work: Work<T>): Promise<T> {
    const workThenCheck = async (trx: Kysely<Database>) => {
      const result = await work(trx);
      // The last moment before COMMIT: a call that was cut short must not change anything.
      signal?.throwIfAborted();
      return result;
    };
    return this.#attempts(signal, () =>
      this.#groups !== undefined
        ? this.#groups.run(signal, workThenCheck)
        : (this.#pool as StorePool).reserve(signal, (db) =>
            // REPEATABLE READ: the change feed's order within a Connection relies on it (see
            // feedTransactionOrder in migrations.ts); a write that lost a race retries.
            db.transaction().setIsolationLevel("repeatable read").execute(workThenCheck),
          ),
    );
  }

  /**
   * PostgreSQL: a write that is one statement, as `write` runs it (REPEATABLE READ, the statement
   * timeout, retries, cancellation), with its BEGIN and COMMIT sent along in one go
   * (StorePool.writeStatement). A signal that aborts while it is at the server cancels it there.
   */
  async writeStatement<R>(signal: Cancellation | undefined, statement: CompiledQuery<R>): Promise<QueryResult<R>> {
    const pool = this.#pool;
    if (pool === undefined) throw new Error("writeStatement is for PostgreSQL");
    return this.#attempts(signal, () => pool.writeStatement(signal, statement));
  }

  /** Runs a write's transaction, again when it lost a race; tells `ended` how each attempt ended. */
  async #attempts<T>(signal: Cancellation | undefined, transaction: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        signal?.throwIfAborted();
        const result = await transaction();
        this.#ended(true);
        return result;
      } catch (error) {
        this.#ended(false);
        if (signal?.aborted) throw signal.reason;
        const failure = classifyError(error);
        if (failure.kind !== "retryable" || attempt >= MAX_WRITE_ATTEMPTS) throw translateError(error, failure);
        await sleep(5 * 2 ** (attempt - 1) * (0.5 + Math.random()));
      }
    }
  }
}

/** A write waiting for, or running in, a group. */
interface Member {
  readonly signal: Cancellation | undefined;
  readonly work: Work<unknown>;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: unknown) => void;
  result?: unknown;
}

/** SQLite's group commit on its one connection (see the top of this file). */
class GroupCommit {
  readonly #db: Kysely<Database>;
  readonly #inTransaction: () => boolean;
  readonly #walFlusher: WalFlusher | undefined;
  #queue: Member[] = [];
  #draining = false;

  constructor(db: Kysely<Database>, inTransaction: (() => boolean) | undefined, walFlusher: WalFlusher | undefined) {
    this.#db = db;
    this.#inTransaction = inTransaction ?? (() => true);
    this.#walFlusher = walFlusher;
  }

  /** Resolves once `work` has committed; rejects with its own error, or the group's COMMIT's. */
  run<T>(signal: Cancellation | undefined, work: Work<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ signal, work, resolve: resolve as (result: unknown) => void, reject });
      if (!this.#draining) {
        this.#draining = true;
        void this.#drain();
      }
    });
  }

  async #drain(): Promise<void> {
    const rejectQueued = (error: unknown) => {
      for (const member of this.#queue.splice(0)) member.reject(error);
    };
    while (this.#queue.length > 0) {
      // Between two groups, the WAL copied into the database file once it has grown enough: the
      // writes wait (the next group's first write may start the WAL over), reads go on.
      if (this.#walFlusher?.checkpointDue) {
        const checkpointed = await this.#walFlusher.checkpoint().then(() => true, rejectQueued);
        if (!checkpointed) continue;
      }
      // The group is taken on the next turn of the event loop, once the connection is ours: the
      // writes read from every socket in this turn join it, and those that arrived while the
      // previous group (or a read) held the connection. Taken at once, it would hold only the
      // writes of the one socket callback that started it (node runs the promises after each I/O
      // callback): groups of a few writes, about 1.5x the CPU per write (docs/performance.md).
      await nextTurn();
      await this.#db
        .connection()
        .execute((connection) => this.#commitGroup(connection, this.#queue.splice(0, MAX_GROUP)))
        .catch(rejectQueued);
    }
    this.#draining = false;
  }

  /**
   * BEGIN IMMEDIATE, each write in its savepoint, COMMIT; never throws: every member is settled.
   * When SQLite has already rolled back by itself (a full disk, some I/O errors), ROLLBACK would
   * fail with "no transaction is active" and hide the real error: rollbacks are sent only while a
   * transaction is open, the failing write gets its own error, and the writes that had succeeded
   * in that transaction run again in a new one (as do they when a member's call was cut short
   * after its savepoint was released: it must not commit with them).
   */
  async #commitGroup(connection: Kysely<Database>, group: Member[]): Promise<void> {
    let pending = group;
    while (pending.length > 0) {
      try {
        await connection.executeQuery(BEGIN);
      } catch (error) {
        for (const member of pending) member.reject(error);
        return;
      }
      const succeeded: Member[] = [];
      let again: Member[] | undefined;
      for (const [index, member] of pending.entries()) {
        if (member.signal?.aborted) {
          member.reject(member.signal.reason);
          continue;
        }
        try {
          await connection.executeQuery(SAVEPOINT);
          member.result = await member.work(connection);
          await connection.executeQuery(RELEASE);
          succeeded.push(member);
        } catch (error) {
          member.reject(error);
          if (!(await this.#undoWrite(connection))) {
            again = [...succeeded, ...pending.slice(index + 1)];
            break;
          }
        }
      }
      if (again === undefined && succeeded.some((member) => member.signal?.aborted)) {
        await this.#rollBackAll(connection);
        again = succeeded;
      }
      if (again !== undefined) {
        pending = again;
        continue;
      }
      try {
        await connection.executeQuery(COMMIT);
      } catch (error) {
        await this.#rollBackAll(connection);
        for (const member of succeeded) member.reject(error);
        return;
      }
      this.#acknowledge(succeeded);
      return;
    }
  }

  /** Settles the committed writes once they are on the disk; the next group need not wait for it. */
  #acknowledge(committed: Member[]): void {
    const resolveAll = () => {
      for (const member of committed) member.resolve(member.result);
    };
    if (this.#walFlusher === undefined) {
      resolveAll();
      return;
    }
    this.#walFlusher.committed();
    this.#walFlusher.flush().then(resolveAll, (error: unknown) => {
      for (const member of committed) member.reject(error);
    });
  }

  /** Rolls back the write's savepoint; false when that failed and the whole transaction is gone. */
  async #undoWrite(connection: Kysely<Database>): Promise<boolean> {
    if (!this.#inTransaction()) return false;
    try {
      await connection.executeQuery(ROLLBACK_TO);
      await connection.executeQuery(RELEASE);
      return true;
    } catch {
      await this.#rollBackAll(connection);
      return false;
    }
  }

  async #rollBackAll(connection: Kysely<Database>): Promise<void> {
    if (this.#inTransaction()) await connection.executeQuery(ROLLBACK).catch(() => {});
  }
}
