// Integrity checks of the SQLite file: a bounded one that every start runs, and the full one that
// `node dist/src/main.js check-database` runs on demand (or on a schedule, off the serving path).
//
// The full check (PRAGMA integrity_check) reads every page and compares every index with its
// table, so its time grows with the file: tens of seconds at a million Connections with the file
// out of the page cache, during which a replacement replica would not be ready. At start the
// service reads instead what a damaged file most often breaks first and what it writes next:
// the header, the whole schema, and the first and last entries of every table and index (each a
// root-to-leaf path, bounded by the trees' depth). New rows go to the end of every table (rowids
// only grow) and the WAL's frames carry checksums that SQLite verifies when it reads them, so the
// recently written parts are the ones covered. Damage elsewhere shows up as an INTERNAL answer of
// the requests that read it, and in the full check.

import type SqliteDatabase from "better-sqlite3";

export interface IntegrityReport {
  /** What was read, in words, for the operator. */
  readonly checked: readonly string[];
  /** Empty when nothing is wrong. */
  readonly findings: readonly string[];
}

interface SchemaEntry {
  readonly type: string;
  readonly name: string;
  readonly tbl_name: string;
}

const quote = (identifier: string) => `"${identifier.replaceAll('"', '""')}"`;

/**
 * Bounded work whatever the file's size; returns what it read. Damage that SQLite notices while
 * reading throws its error (SQLITE_CORRUPT, SQLITE_NOTADB).
 */
export function checkAtStart(database: SqliteDatabase.Database): string[] {
  const pages = database.pragma("page_count", { simple: true }) as number;
  const schema = database
    .prepare<[], SchemaEntry>("select type, name, tbl_name from sqlite_schema where name not like 'sqlite_%'")
    .all();
  const tables = schema.filter((entry) => entry.type === "table");
  // A table WITHOUT ROWID has no rowid to order by: it is its primary key's B-tree, whose ends the
  // index loop reads. None is in this release's schema; a later release's may add one, and this
  // release must still start on it (a rollback).
  const withoutRowid = new Set(
    (database.pragma("table_list") as { name: string; wr: number }[])
      .filter((table) => table.wr === 1)
      .map((table) => table.name),
  );
  let indexes = 0;
  for (const table of tables) {
    const name = quote(table.name);
    if (!withoutRowid.has(table.name)) {
      database.prepare(`select * from ${name} order by rowid limit 1`).all();
      database.prepare(`select * from ${name} order by rowid desc limit 1`).all();
    }
    for (const index of database.pragma(`index_list(${name})`) as { name: string; partial: number }[]) {
      // A partial index is used only for queries that imply its condition: its ends are left out.
      if (index.partial === 1) continue;
      const columns = (database.pragma(`index_info(${quote(index.name)})`) as { name: string | null }[])
        .map((column) => column.name)
        .filter((column): column is string => column !== null)
        .map(quote);
      if (columns.length === 0) continue;
      const from = `from ${name} indexed by ${quote(index.name)}`;
      database.prepare(`select ${columns.join(", ")} ${from} order by ${columns.join(", ")} limit 1`).all();
      const descending = columns.map((column) => `${column} desc`).join(", ");
      database.prepare(`select ${columns.join(", ")} ${from} order by ${descending} limit 1`).all();
      indexes++;
    }
  }
  return [
    `the header (${pages} pages)`,
    `the schema (${schema.length} tables, indexes and triggers)`,
    `the first and last rows of ${tables.length} tables and the first and last entries of ${indexes} indexes`,
  ];
}

/** Every page, and every index against its table; time grows with the file. */
export function checkEverything(database: SqliteDatabase.Database): IntegrityReport {
  const pages = database.pragma("page_count", { simple: true }) as number;
  const pageSize = database.pragma("page_size", { simple: true }) as number;
  const integrity = (database.pragma("integrity_check") as { integrity_check: string }[]).map(
    (row) => row.integrity_check,
  );
  const foreignKeys = (
    database.pragma("foreign_key_check") as { table: string; rowid: number | null; parent: string }[]
  ).map((row) => `${row.table} row ${row.rowid ?? "?"} refers to a missing ${row.parent} row`);
  return {
    checked: [
      `every page of the file (${pages} pages of ${pageSize} bytes) and every index against its table (PRAGMA integrity_check)`,
      "every reference between tables (PRAGMA foreign_key_check)",
    ],
    findings: [...integrity.filter((line) => line !== "ok"), ...foreignKeys],
  };
}
