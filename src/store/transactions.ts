// How the store talks to its database: reads that survive one broken connection, and writes as
// transactions that retry a lost race a bounded number of times, stop committing once the call is
// cut short, and on SQLite never let a failed ROLLBACK hide the error that caused it.

import { setTimeout as sleep } from "node:timers/promises";
import { type Kysely, sql } from "kysely";
import { classifyError, translateError } from "./errors.js";
import type { StorePool } from "./pg-pool.js";
import type { Database } from "./schema.js";

const MAX_WRITE_ATTEMPTS = 5;

export interface TransactionsOptions {
  /** PostgreSQL: the pool behind `db`, whose connections writes reserve so that they can be cancelled. */
  readonly pool?: StorePool;
  /** SQLite: whether a transaction is open (SQLite rolls some back by itself, e.g. on a full disk). */
  readonly inTransaction?: () => boolean;
  /** Called after every write commits. */
  readonly committed: () => void;
}

export class Transactions {
  readonly #db: Kysely<Database>;
  readonly #pool: StorePool | undefined;
  readonly #inTransaction: (() => boolean) | undefined;
  readonly #committed: () => void;

  constructor(db: Kysely<Database>, options: TransactionsOptions) {
    this.#db = db;
    this.#pool = options.pool;
    this.#inTransaction = options.inTransaction;
    this.#committed = options.committed;
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
   * query is cancelled on the server) and the write rejects with the signal's reason.
   */
  async write<T>(signal: AbortSignal | undefined, work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
    const workThenCheck = async (trx: Kysely<Database>) => {
      const result = await work(trx);
      // The last moment before COMMIT: a call that was cut short must not change anything.
      signal?.throwIfAborted();
      return result;
    };
    for (let attempt = 1; ; attempt++) {
      try {
        signal?.throwIfAborted();
        const result = await (this.#pool === undefined
          ? this.#sqliteTransaction(workThenCheck)
          : this.#pool.reserve(signal, (db) => db.transaction().execute(workThenCheck)));
        this.#committed();
        return result;
      } catch (error) {
        if (signal?.aborted) throw signal.reason;
        const failure = classifyError(error);
        if (failure.kind !== "retryable" || attempt >= MAX_WRITE_ATTEMPTS) throw translateError(error, failure);
        await sleep(5 * 2 ** (attempt - 1) * (0.5 + Math.random()));
      }
    }
  }

  /**
   * BEGIN IMMEDIATE ... COMMIT on SQLite's one connection. When SQLite has already rolled back by
   * itself (a full disk, some I/O errors), ROLLBACK would fail with "no transaction is active" and
   * hide the real error; it is sent only while a transaction is open, and the first error wins.
   */
  #sqliteTransaction<T>(work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
    return this.#db.connection().execute(async (connection) => {
      await sql`begin immediate`.execute(connection);
      try {
        const result = await work(connection);
        await sql`commit`.execute(connection);
        return result;
      } catch (error) {
        if (this.#inTransaction?.() ?? true) await sql`rollback`.execute(connection).catch(() => {});
        throw error;
      }
    });
  }
}
