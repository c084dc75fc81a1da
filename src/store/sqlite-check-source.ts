// The check cache's reads on SQLite, straight through better-sqlite3: a miss is one prepared
// primary-key read and a batch's misses one prepared statement, with no query building, no
// promise and no wait for Kysely's connection mutex. Reading beside Kysely is safe because
// better-sqlite3 runs every statement synchronously on the one connection this process holds
// exclusively; the one state in which such a read could see uncommitted rows, a write's open
// transaction, is reported by idle(), and then the read waits for Kysely's connection.

import type SqliteDatabase from "better-sqlite3";
import type { Kysely } from "kysely";
import type { CheckSource } from "./check-reader.js";
import { translateError } from "./errors.js";
import { CONNECTION_RECORD_COLUMNS, type ConnectionRecordRow, toConnection } from "./rows.js";
import type { Database } from "./schema.js";
import type { ConnectionRecord } from "./store.js";

const COLUMNS = CONNECTION_RECORD_COLUMNS.join(", ");

export class SqliteCheckSource implements CheckSource {
  // Prepared on first use: a replica started before the migrate step has no table to prepare them on.
  #byId: SqliteDatabase.Statement<[string], ConnectionRecordRow> | undefined;
  /** The ids as one JSON array: one statement whatever the batch's size, each id a primary-key read. */
  #byIds: SqliteDatabase.Statement<[string], ConnectionRecordRow> | undefined;

  constructor(
    private readonly database: SqliteDatabase.Database,
    private readonly db: Kysely<Database>,
  ) {}

  idle(): boolean {
    return !this.database.inTransaction;
  }

  one(id: string): ConnectionRecord | undefined {
    try {
      this.#byId ??= this.database.prepare(`select ${COLUMNS} from connections where id = ?`);
      const row = this.#byId.get(id);
      return row === undefined ? undefined : toConnection(row);
    } catch (error) {
      throw translateError(error);
    }
  }

  many(ids: readonly string[]): ConnectionRecord[] {
    try {
      this.#byIds ??= this.database.prepare(
        `select ${COLUMNS} from connections where id in (select value from json_each(?))`,
      );
      return this.#byIds.all(JSON.stringify(ids)).map(toConnection);
    } catch (error) {
      throw translateError(error);
    }
  }

  whenIdle<T>(read: () => T): Promise<T> {
    // Kysely hands out its one connection only once the transaction holding it has ended.
    return this.db.connection().execute(async () => read());
  }
}
