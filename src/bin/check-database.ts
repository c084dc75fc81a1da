// `node dist/src/main.js check-database`: the full integrity check of the SQLite file that
// DATABASE_URL names, which start-up no longer runs (its time grows with the file; see
// store/sqlite-integrity.ts). Prints what it checked and what it found; exits 0 when the file is
// sound, 1 when it found damage, 2 when it could not check (not SQLite, no such file, in use).
// It holds the file exclusively while it reads, like the service: run it while the service is
// stopped, or on a copy (e.g. `sqlite3 connections.db ".backup copy.db"` from a snapshot).

import { existsSync } from "node:fs";
import { lockSqlite, parseDatabaseUrl } from "../store/open.js";
import { checkEverything, type IntegrityReport } from "../store/sqlite-integrity.js";

export const CHECK_DATABASE_OK = 0;
export const CHECK_DATABASE_DAMAGED = 1;
export const CHECK_DATABASE_UNCHECKED = 2;

export function checkDatabase(databaseUrl: string, write: (line: string) => void): number {
  const target = parseDatabaseUrl(databaseUrl);
  if (target.dialect !== "sqlite") {
    write("check-database checks SQLite files; PostgreSQL checks its own pages (data checksums, amcheck)");
    return CHECK_DATABASE_UNCHECKED;
  }
  if (target.path === ":memory:" || !existsSync(target.path)) {
    write(`check-database: there is no SQLite database at ${target.path}`);
    return CHECK_DATABASE_UNCHECKED;
  }
  write(`checking ${target.path}`);
  const started = performance.now();
  let report: IntegrityReport | undefined;
  try {
    lockSqlite(
      target.path,
      (database) => {
        report = checkEverything(database);
      },
      { fileMustExist: true },
    ).close();
  } catch (error) {
    // SQLite stops with an error instead of listing findings when a page is beyond reading.
    const code = (error as { cause?: { code?: unknown } }).cause?.code;
    const damaged = code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB";
    write(`${damaged ? "DAMAGED" : "check-database"}: ${error instanceof Error ? error.message : String(error)}`);
    return damaged ? CHECK_DATABASE_DAMAGED : CHECK_DATABASE_UNCHECKED;
  }
  const { checked, findings } = report as IntegrityReport;
  for (const line of checked) write(`checked ${line}`);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (findings.length === 0) {
    write(`ok: no damage found (${seconds} s)`);
    return CHECK_DATABASE_OK;
  }
  for (const line of findings) write(`found: ${line}`);
  write(
    `DAMAGED: ${findings.length} findings (${seconds} s). Restore the file from a backup; do not let the service ` +
      "write into it",
  );
  return CHECK_DATABASE_DAMAGED;
}
