// The check cache's reads on SQLite, straight through better-sqlite3: a miss is one prepared
// primary-key read and a batch's misses one prepared statement (`id in (?, ?, ...)`, one per
// number of ids), with no query building, no promise and no wait for Kysely's connection mutex.
// Each row comes back as one JSON array (json_array, times as epoch milliseconds computed by SQLite)
// and one JSON.parse: better-sqlite3 builds a row's array or object through one V8 API call per
// column, and V8's date-string parser is slower still, so these cost more instructions than the
// B-tree reads (docs/performance.md). Reading beside Kysely is safe because better-sqlite3 runs every
// statement synchronously on the one connection this process holds exclusively; the one state in
// which such a read could see uncommitted rows, a write's open transaction, is reported by idle(),
// and then the read waits for Kysely's connection.

import type SqliteDatabase from "better-sqlite3";
import type { Kysely } from "kysely";
import type { State } from "../domain/connection.js";
import type { CheckSource } from "./check-reader.js";
import { translateError } from "./errors.js";
import { CONNECTION_RECORD_COLUMNS } from "./rows.js";
import type { Database } from "./schema.js";
import type { ConnectionRecord } from "./store.js";

const TIME_COLUMNS: ReadonlySet<string> = new Set(["create_time", "update_time", "activate_time", "deactivate_time"]);

/** One row as a JSON array of CONNECTION_RECORD_COLUMNS' values, times (stored as ISO 8601 text) in epoch ms. */
const ROW_AS_JSON = `json_array(${CONNECTION_RECORD_COLUMNS.map((column) =>
  TIME_COLUMNS.has(column) ? `cast(round(unixepoch(${column}, 'subsec') * 1000) as integer)` : column,
).join(", ")})`;

/** ROW_AS_JSON parsed. */
type ConnectionValues = [
  id: string,
  sourceOrganizationId: string,
  destinationOrganizationId: string,
  name: string,
  scopes: string,
  state: string,
  createTime: number,
  updateTime: number,
  activateTime: number | null,
  deactivateTime: number | null,
  creator: string,
  createRequestId: string,
  version: number,
];

/** The most ids one statement binds: BatchCheckConnection's limit. Larger reads are split. */
const MAX_IDS_PER_STATEMENT = 100;
/** Distinct scope sets kept parsed; the scope catalogue allows a handful, so this is only a bound. */
const MAX_SCOPE_SETS = 256;

export class SqliteCheckSource implements CheckSource {
  // Prepared on first use: a replica started before the migrate step has no table to prepare them on.
  #byId: SqliteDatabase.Statement<[string], string> | undefined;
  /** Index n: the statement for n ids. */
  readonly #byIds: (SqliteDatabase.Statement<string[], string> | undefined)[] = [];
  /** Scopes as stored (a JSON array) to the frozen array every record with them shares. */
  readonly #scopes = new Map<string, readonly string[]>();

  constructor(
    private readonly database: SqliteDatabase.Database,
    private readonly db: Kysely<Database>,
  ) {}

  idle(): boolean {
    return !this.database.inTransaction;
  }

  one(id: string): ConnectionRecord | undefined {
    try {
      this.#byId ??= this.database
        .prepare<[string], string>(`select ${ROW_AS_JSON} from connections where id = ?`)
        .pluck(true);
      const row = this.#byId.get(id);
      return row === undefined ? undefined : this.#record(row);
    } catch (error) {
      throw translateError(error);
    }
  }

  many(ids: readonly string[]): ConnectionRecord[] {
    try {
      const records: ConnectionRecord[] = [];
      for (let from = 0; from < ids.length; from += MAX_IDS_PER_STATEMENT) {
        const chunk = ids.length <= MAX_IDS_PER_STATEMENT ? ids : ids.slice(from, from + MAX_IDS_PER_STATEMENT);
        for (const row of this.#statementFor(chunk.length).all(...chunk)) records.push(this.#record(row));
      }
      return records;
    } catch (error) {
      throw translateError(error);
    }
  }

  whenIdle<T>(read: () => T): Promise<T> {
    // Kysely hands out its one connection only once the transaction holding it has ended.
    return this.db.connection().execute(async () => read());
  }

  #statementFor(count: number): SqliteDatabase.Statement<string[], string> {
    let statement = this.#byIds[count];
    if (statement === undefined) {
      const placeholders = new Array<string>(count).fill("?").join(", ");
      statement = this.database
        .prepare<string[], string>(`select ${ROW_AS_JSON} from connections where id in (${placeholders})`)
        .pluck(true);
      this.#byIds[count] = statement;
    }
    return statement;
  }

  #record(json: string): ConnectionRecord {
    const row = JSON.parse(json) as ConnectionValues;
    return {
      id: row[0],
      sourceOrganizationId: row[1],
      destinationOrganizationId: row[2],
      name: row[3],
      scopes: this.#parsedScopes(row[4]),
      state: row[5] as State,
      createTime: new Date(row[6]),
      updateTime: new Date(row[7]),
      activateTime: row[8] === null ? undefined : new Date(row[8]),
      deactivateTime: row[9] === null ? undefined : new Date(row[9]),
      creator: row[10],
      createRequestId: row[11],
      version: row[12],
    };
  }

  #parsedScopes(json: string): readonly string[] {
    let scopes = this.#scopes.get(json);
    if (scopes === undefined) {
      if (this.#scopes.size >= MAX_SCOPE_SETS) this.#scopes.clear();
      scopes = Object.freeze(JSON.parse(json) as string[]);
      this.#scopes.set(json, scopes);
    }
    return scopes;
  }
}
