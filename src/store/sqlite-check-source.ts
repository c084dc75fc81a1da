// The check cache's reads on SQLite, straight through better-sqlite3: a miss is one prepared read
// and a batch's misses one prepared statement (`seq in (?, ?, ...)`, one per number of ids), with
// no query building, no promise and no wait for Kysely's connection mutex. Each row comes back as
// one JSON array (json_array) and one JSON.parse: better-sqlite3 builds a row's array or object
// through one V8 API call per column, which cost more instructions than the B-tree reads
// (docs/performance.md). Times are read from their ISO 8601 text by timeOf: V8's date-string
// parser tries every format it knows, and SQLite's unixepoch() cost about 0.1 µs a time. Reading
// beside Kysely is safe because better-sqlite3 runs every statement synchronously on the one
// connection this process holds exclusively; the one state in which such a read could see
// uncommitted rows, a write's open transaction, is reported by idle(), and then the read waits for
// Kysely's connection.
//
// The table's key is its rowid (`seq`), not `id`: reading by id descends the `id` index and then
// the table, two random pages of a file far larger than the caches (the index's descent measured
// 0.3-0.6 µs of a 4-5 µs read on a 200,000-Connection file). So the source remembers where each id
// it read lives (RowidIndex) and reads those by rowid, one descent; an id it has not placed yet is
// read by id, and placed.

import type SqliteDatabase from "better-sqlite3";
import type { Kysely } from "kysely";
import type { State } from "../domain/connection.js";
import { type CheckSource, hashString } from "./check-reader.js";
import { translateError } from "./errors.js";
import { CONNECTION_RECORD_COLUMNS } from "./rows.js";
import type { Database } from "./schema.js";
import type { ConnectionRecord } from "./store.js";

/** One row as a JSON array of its rowid and CONNECTION_RECORD_COLUMNS' values. */
const ROW_AS_JSON = `json_array(seq, ${CONNECTION_RECORD_COLUMNS.join(", ")})`;

/** ROW_AS_JSON parsed. */
type ConnectionValues = [
  rowid: number,
  id: string,
  sourceOrganizationId: string,
  destinationOrganizationId: string,
  name: string,
  scopes: string,
  state: string,
  createTime: string,
  updateTime: string,
  activateTime: string | null,
  deactivateTime: string | null,
  creator: string,
  createRequestId: string,
  version: number,
];

/** The most ids one statement binds: BatchCheckConnection's limit. Larger reads are split. */
const MAX_IDS_PER_STATEMENT = 100;
/** Distinct scope sets kept parsed; the scope catalogue allows a handful, so this is only a bound. */
const MAX_SCOPE_SETS = 256;
/** How many ids the source places at most, for each entry the check cache holds (RowidIndex's bound). */
const PLACED_IDS_PER_CACHE_ENTRY = 4;

export class SqliteCheckSource implements CheckSource {
  // Prepared on first use: a replica started before the migrate step has no table to prepare them on.
  #byId: SqliteDatabase.Statement<[string], string> | undefined;
  #byRowid: SqliteDatabase.Statement<[number], string> | undefined;
  /** Index n: the statement for n ids. */
  readonly #byIds: (SqliteDatabase.Statement<string[], string> | undefined)[] = [];
  /** Index n: the statement for n rowids. */
  readonly #byRowids: (SqliteDatabase.Statement<number[], string> | undefined)[] = [];
  readonly #rowids: RowidIndex;
  /** Scopes as stored (a JSON array) to the frozen array every record with them shares. */
  readonly #scopes = new Map<string, readonly string[]>();

  /** @param cacheEntries the check cache's capacity: the source places up to PLACED_IDS_PER_CACHE_ENTRY times as many ids */
  constructor(
    private readonly database: SqliteDatabase.Database,
    private readonly db: Kysely<Database>,
    cacheEntries: number,
  ) {
    this.#rowids = new RowidIndex(PLACED_IDS_PER_CACHE_ENTRY * cacheEntries);
  }

  idle(): boolean {
    return !this.database.inTransaction;
  }

  one(id: string): ConnectionRecord | undefined {
    try {
      const rowid = this.#rowids.get(id);
      if (rowid !== undefined) {
        this.#byRowid ??= this.database
          .prepare<[number], string>(`select ${ROW_AS_JSON} from connections where seq = ?`)
          .pluck(true);
        const row = this.#byRowid.get(rowid);
        const values = row === undefined ? undefined : (JSON.parse(row) as ConnectionValues);
        if (values?.[1] === id) return this.#record(values);
      }
      this.#byId ??= this.database
        .prepare<[string], string>(`select ${ROW_AS_JSON} from connections where id = ?`)
        .pluck(true);
      const row = this.#byId.get(id);
      return row === undefined ? undefined : this.#placed(JSON.parse(row) as ConnectionValues);
    } catch (error) {
      throw translateError(error);
    }
  }

  many(ids: readonly string[]): ConnectionRecord[] {
    try {
      const records: ConnectionRecord[] = [];
      // The rowid each placed id is read at; the rest, and any two ids whose hashes place them at one
      // rowid, are read by id.
      const idAt = new Map<number, string>();
      const unplaced: string[] = [];
      for (const id of ids) {
        const rowid = this.#rowids.get(id);
        if (rowid === undefined || idAt.has(rowid)) unplaced.push(id);
        else idAt.set(rowid, id);
      }
      if (idAt.size > 0) {
        for (const row of this.#rows(this.#byRowids, "seq", [...idAt.keys()])) {
          const values = JSON.parse(row) as ConnectionValues;
          // Another id's row, placed here by a colliding hash: that id is read by id below.
          if (idAt.get(values[0]) !== values[1]) continue;
          idAt.delete(values[0]);
          records.push(this.#record(values));
        }
        for (const id of idAt.values()) unplaced.push(id);
      }
      if (unplaced.length > 0) {
        for (const row of this.#rows(this.#byIds, "id", unplaced)) {
          records.push(this.#placed(JSON.parse(row) as ConnectionValues));
        }
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

  /** The rows whose `column` is among `keys`: one statement per MAX_IDS_PER_STATEMENT keys. */
  #rows<K extends string | number>(
    statements: (SqliteDatabase.Statement<K[], string> | undefined)[],
    column: "id" | "seq",
    keys: readonly K[],
  ): string[] {
    if (keys.length <= MAX_IDS_PER_STATEMENT) return this.#statement(statements, column, keys.length).all(...keys);
    const rows: string[] = [];
    for (let from = 0; from < keys.length; from += MAX_IDS_PER_STATEMENT) {
      const chunk = keys.slice(from, from + MAX_IDS_PER_STATEMENT);
      for (const row of this.#statement(statements, column, chunk.length).all(...chunk)) rows.push(row);
    }
    return rows;
  }

  /** The statement that reads the rows whose `column` is among `count` keys, prepared on first use. */
  #statement<K extends string | number>(
    statements: (SqliteDatabase.Statement<K[], string> | undefined)[],
    column: "id" | "seq",
    count: number,
  ): SqliteDatabase.Statement<K[], string> {
    let statement = statements[count];
    if (statement === undefined) {
      const placeholders = new Array<string>(count).fill("?").join(", ");
      statement = this.database
        .prepare<K[], string>(`select ${ROW_AS_JSON} from connections where ${column} in (${placeholders})`)
        .pluck(true);
      statements[count] = statement;
    }
    return statement;
  }

  /** A row read by id: its rowid is remembered, so that the next read of it is by rowid. */
  #placed(values: ConnectionValues): ConnectionRecord {
    this.#rowids.set(values[1], values[0]);
    return this.#record(values);
  }

  #record(row: ConnectionValues): ConnectionRecord {
    return {
      id: row[1],
      sourceOrganizationId: row[2],
      destinationOrganizationId: row[3],
      name: row[4],
      scopes: this.#parsedScopes(row[5]),
      state: row[6] as State,
      createTime: timeOf(row[7]),
      updateTime: timeOf(row[8]),
      activateTime: row[9] === null ? undefined : timeOf(row[9]),
      deactivateTime: row[10] === null ? undefined : timeOf(row[10]),
      creator: row[11],
      createRequestId: row[12],
      version: row[13],
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

const digit = (text: string, index: number) => text.charCodeAt(index) - 48;

/**
 * A time as the store writes it (toISOString: `YYYY-MM-DDTHH:MM:SS.sssZ`) read field by field;
 * anything else (a year before 1000, which Date.UTC would read as 19xx, or one past 9999) is left
 * to Date's own parser.
 */
export function timeOf(text: string): Date {
  if (
    text.length === 24 &&
    text.charCodeAt(0) !== 48 && // "0": a year before 1000
    text.charCodeAt(10) === 84 && // "T"
    text.charCodeAt(19) === 46 && // "."
    text.charCodeAt(23) === 90 // "Z"
  ) {
    return new Date(
      Date.UTC(
        digit(text, 0) * 1000 + digit(text, 1) * 100 + digit(text, 2) * 10 + digit(text, 3),
        digit(text, 5) * 10 + digit(text, 6) - 1,
        digit(text, 8) * 10 + digit(text, 9),
        digit(text, 11) * 10 + digit(text, 12),
        digit(text, 14) * 10 + digit(text, 15),
        digit(text, 17) * 10 + digit(text, 18),
        digit(text, 20) * 100 + digit(text, 21) * 10 + digit(text, 22),
      ),
    );
  }
  return new Date(text);
}

const INITIAL_POSITIONS = 1024;

/**
 * Where ids' rows are: each id's 32-bit hash (hashString) to its rowid, for the ids read so far. A
 * Connection is never deleted nor inserted again, so an id's rowid never changes; and a read by
 * rowid checks the id of the row it gets, so a colliding hash only sends that id to a read by id.
 *
 * An open-addressing table (linear probing, at most half full) of (hash, rowid) pairs in one typed
 * array: 16 to 32 bytes an id (8 a position, half to three quarters of them empty) and no object.
 * It doubles while it holds fewer than `maxIds` ids (so it holds up to twice as many); once full, a
 * new id takes its home position from the id there, which is then read by id again.
 */
export class RowidIndex {
  /** Per position: a hash, then a rowid (0: an empty position; SQLite's rowids here start at 1). */
  #entries = new Int32Array(2 * INITIAL_POSITIONS);
  #mask = INITIAL_POSITIONS - 1;
  #size = 0;

  constructor(private readonly maxIds: number) {}

  get size(): number {
    return this.#size;
  }

  get(id: string): number | undefined {
    const hash = hashString(id);
    const entries = this.#entries;
    for (let position = hash & this.#mask; ; position = (position + 1) & this.#mask) {
      const rowid = entries[2 * position + 1] as number;
      if (rowid === 0) return undefined;
      if (entries[2 * position] === hash) return rowid;
    }
  }

  set(id: string, rowid: number): void {
    // An Int32Array holds it; SQLite's rowids would only grow past it after two billion inserts.
    if (rowid < 1 || rowid > 0x7fff_ffff) return;
    const hash = hashString(id);
    let entries = this.#entries;
    let position = hash & this.#mask;
    for (; entries[2 * position + 1] !== 0; position = (position + 1) & this.#mask) {
      if (entries[2 * position] === hash) {
        entries[2 * position + 1] = rowid;
        return;
      }
    }
    if (2 * (this.#size + 1) > this.#mask + 1) {
      if (this.#size >= this.maxIds) {
        // Full: the id takes its home position from the id there, so no position is newly taken
        // (at least half stay empty, which ends every probe) and every probe run stays whole. An
        // empty home is left empty.
        position = hash & this.#mask;
        if (entries[2 * position + 1] === 0) return;
        entries[2 * position] = hash;
        entries[2 * position + 1] = rowid;
        return;
      }
      this.#grow();
      entries = this.#entries;
      for (position = hash & this.#mask; entries[2 * position + 1] !== 0; position = (position + 1) & this.#mask);
    }
    entries[2 * position] = hash;
    entries[2 * position + 1] = rowid;
    this.#size++;
  }

  #grow(): void {
    const old = this.#entries;
    const positions = old.length; // twice as many as before
    const entries = new Int32Array(2 * positions);
    const mask = positions - 1;
    for (let from = 0; from < old.length; from += 2) {
      if (old[from + 1] === 0) continue;
      let position = (old[from] as number) & mask;
      while (entries[2 * position + 1] !== 0) position = (position + 1) & mask;
      entries[2 * position] = old[from] as number;
      entries[2 * position + 1] = old[from + 1] as number;
    }
    this.#entries = entries;
    this.#mask = mask;
  }
}
