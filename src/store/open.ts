// Opens the store that DATABASE_URL names, applies the migrations (or checks that the schema is
// one this build may serve on), and hands back a Store. SQLite is opened here; PostgreSQL in
// open-postgres.ts, loaded only when it is the database (the pg driver is a fair part of start-up
// otherwise spent for nothing). PostgreSQL is reached the way PgBouncer in transaction pooling
// allows: no startup parameters, no session state (the statement timeout is set per transaction),
// migrations in one transaction, LISTEN only on a session connection.

import { accessSync, constants, existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely } from "kysely";
import type { Logger } from "pino";
import { DEFAULT_CHECK_CACHE_ENTRIES } from "./check-reader.js";
import { KyselyStore } from "./kysely-store.js";
import type { Database } from "./schema.js";
import { prepareSchema } from "./schema-version.js";
import { EventLoopFriendlySqliteDialect } from "./sqlite-dialect.js";
import { checkAtStart } from "./sqlite-integrity.js";
import type { Store } from "./store.js";
import { WalFlusher } from "./wal-flush.js";

export interface OpenStoreOptions {
  readonly databaseUrl: string;
  /** PostgreSQL pool size (default 10). */
  readonly poolSize?: number;
  /** PostgreSQL statement_timeout, set per write transaction (default 5000 ms). */
  readonly statementTimeoutMs?: number;
  /** Apply pending migrations (default); when false only check that the schema is not too far ahead. */
  readonly migrate?: boolean;
  /** How many migrations this build does not know the schema may be ahead by (default DEFAULT_SCHEMA_AHEAD_LIMIT). */
  readonly schemaAheadLimit?: number;
  /** PostgreSQL: where migrations run (a direct, non-pooled connection); DATABASE_URL when unset. */
  readonly migrationUrl?: string;
  /** PostgreSQL: a session connection (direct, or session pooling) for LISTEN; DATABASE_URL when unset. */
  readonly listenUrl?: string;
  /** SQLite: the CheckConnection cache's bound, in Connections (DEFAULT_CHECK_CACHE_ENTRIES). */
  readonly checkCacheEntries?: number;
  /** SQLite: how much of the file is read through a memory map, in MiB (MAX_SQLITE_MMAP_MIB); 0 reads with read(). */
  readonly sqliteMmapMib?: number;
  readonly logger?: Logger;
}

export type DatabaseTarget =
  | { readonly dialect: "sqlite"; readonly path: string }
  | { readonly dialect: "postgres"; readonly url: string };

const SQLITE_MEMORY = ":memory:";
/** How long a starting process waits for the SQLite file lock (e.g. a predecessor shutting down). */
const SQLITE_LOCK_WAIT_MS = 1000;
/**
 * SQLite's page cache, in KiB: 2,048 pages. No larger, because a COMMIT after a page split may
 * walk the whole cache (docs/performance.md, "SQLite's page cache walked at COMMIT"), and with the
 * memory map (SQLITE_MMAP_MIB) reads outside a write do not go through the cache.
 */
const SQLITE_CACHE_KIB = 8 * 1024;
/** The most of the file SQLite reads through a memory map: its compile-time limit (0x7fff0000 bytes), in MiB. */
export const MAX_SQLITE_MMAP_MIB = 2047;
const SQLITE_BUSY_TIMEOUT_MS = 5000;

/** Throws an error naming what is wrong with the URL (never echoing credentials). */
export function parseDatabaseUrl(databaseUrl: string): DatabaseTarget {
  if (databaseUrl.startsWith("sqlite:")) {
    const path = databaseUrl.slice("sqlite:".length);
    if (path === "") throw new Error("DATABASE_URL sqlite: needs a file path, e.g. sqlite:data/connections.db");
    return { dialect: "sqlite", path };
  }
  if (databaseUrl.startsWith("postgres://") || databaseUrl.startsWith("postgresql://")) {
    return { dialect: "postgres", url: databaseUrl };
  }
  const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(databaseUrl)?.[0] ?? "(no scheme)";
  throw new Error(`DATABASE_URL must start with sqlite:, postgres:// or postgresql:// (it starts with ${scheme})`);
}

export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const target = parseDatabaseUrl(options.databaseUrl);
  if (target.dialect === "sqlite") return openSqlite(target.path, options);
  return (await import("./open-postgres.js")).openPostgres(target.url, options);
}

/** The `migrate` subcommand: applies the pending migrations, then closes what it opened. */
export async function migrateDatabase(
  options: Pick<OpenStoreOptions, "databaseUrl" | "migrationUrl" | "schemaAheadLimit" | "logger">,
): Promise<void> {
  const target = parseDatabaseUrl(options.databaseUrl);
  if (target.dialect === "postgres") {
    await (await import("./open-postgres.js")).migratePostgres(options.migrationUrl ?? target.url, options);
    return;
  }
  const { db } = openSqliteFile(target.path, options);
  await prepareSchema(db, "sqlite", options);
  await db.destroy();
}

async function openSqlite(path: string, options: OpenStoreOptions): Promise<Store> {
  const { database, db } = openSqliteFile(path, options);
  await prepareSchema(db, "sqlite", options);
  warnWhenCacheTooSmall(database, options);
  return new KyselyStore(db, {
    dialect: "sqlite",
    inTransaction: () => database.inTransaction,
    walFlusher:
      path === SQLITE_MEMORY
        ? undefined
        : new WalFlusher(path, database, (use) => db.connection().execute(async () => use())),
    sqlite: database,
    checkCacheEntries: options.checkCacheEntries,
    backup: (destination) => database.backup(destination),
  });
}

/** Opens (or creates) the file for this process alone, checked where damage shows first, tuned. */
function openSqliteFile(
  path: string,
  { logger, sqliteMmapMib = MAX_SQLITE_MMAP_MIB }: Pick<OpenStoreOptions, "logger" | "sqliteMmapMib">,
): { database: SqliteDatabase.Database; db: Kysely<Database> } {
  const database = lockSqlite(path, (locked) => {
    // Bounded whatever the file's size (see sqlite-integrity.ts); `check-database` reads it all.
    const started = performance.now();
    const checked = checkAtStart(locked);
    logger?.debug({ checked, ms: Math.round(performance.now() - started) }, "start-up integrity check");
  });
  database.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
  // Left at SQLite's default (FULL, with its own checkpoints) for the migrate step; the service's
  // WalFlusher takes flushing and checkpoints off the event loop (wal-flush.ts).
  database.pragma("foreign_keys = ON");
  // Writes touch every index of a Connection and its event, some at random keys: SQLite's default
  // page cache (2 MB) would miss on more of them.
  database.pragma(`cache_size = -${SQLITE_CACHE_KIB}`);
  // Reads through a memory map: a check that misses the cache reads a random page of a file far
  // larger than SQLite's page cache, and through the map that costs no read() and no copy
  // (docs/performance.md). Writes still go through write(). The price: an I/O error while reading
  // the map is a SIGBUS that ends the process, where read() would fail the one call.
  database.pragma(`mmap_size = ${sqliteMmapMib * 2 ** 20}`);
  // A group commit's writes each run in a savepoint (transactions.ts), which keeps the pages it
  // changes as they were. Past 64 KiB SQLite moves that into a temporary file, and with an
  // EXCLUSIVE lock keeps the file open: from then on a write system call for every page a write
  // changes, about half of a grouped write's CPU. In memory it is at most a group's pages.
  database.pragma("temp_store = MEMORY");
  return { database, db: new Kysely<Database>({ dialect: new EventLoopFriendlySqliteDialect({ database }) }) };
}

/** Checks of Connections the cache cannot hold read the database: say so at start, with the numbers. */
function warnWhenCacheTooSmall(database: SqliteDatabase.Database, options: OpenStoreOptions): void {
  const checkCacheEntries = options.checkCacheEntries ?? DEFAULT_CHECK_CACHE_ENTRIES;
  // Not migrated yet (MIGRATE_ON_START=false before the migrate step): nothing to count.
  if (
    database.prepare("select 1 from sqlite_schema where type = 'table' and name = 'connections'").get() === undefined
  ) {
    return;
  }
  // seq only grows (autoincrement) and Connections are never deleted: its largest value is the
  // count, read from the end of the table instead of counting every row.
  const { connections } = database
    .prepare<[], { connections: number }>("select coalesce(max(seq), 0) as connections from connections")
    .get() as { connections: number };
  if (connections <= checkCacheEntries) return;
  options.logger?.warn(
    { connections, checkCacheEntries },
    "CHECK_CACHE_ENTRIES is smaller than the number of Connections: checks of the least recently checked ones " +
      "read the database, which costs more CPU per check. Raise it if memory allows (its cost per entry is in " +
      "docs/performance.md)",
  );
}

/**
 * Opens the SQLite file at `path` for this process alone (held until it is closed) and runs
 * `check` on it; failures become errors that say what is wrong and what to do.
 */
export function lockSqlite(
  path: string,
  check: (database: SqliteDatabase.Database) => void,
  options: SqliteDatabase.Options = {},
): SqliteDatabase.Database {
  let database: SqliteDatabase.Database | undefined;
  try {
    if (path !== SQLITE_MEMORY) mkdirSync(dirname(resolve(path)), { recursive: true });
    database = new SqliteDatabase(path, { timeout: SQLITE_LOCK_WAIT_MS, ...options });
    // Held until close: no other process may write (or read) the file behind the check cache.
    database.pragma("locking_mode = EXCLUSIVE");
    database.pragma("journal_mode = WAL");
    database.exec("BEGIN EXCLUSIVE; COMMIT");
    check(database);
    return database;
  } catch (error) {
    database?.close();
    throw sqliteStartError(path, error);
  }
}

/** A start-up failure that names the file, says what is wrong in words, and what to do about it. */
function sqliteStartError(path: string, error: unknown): Error {
  const code = typeof error === "object" && error !== null ? String((error as { code?: unknown }).code ?? "") : "";
  const where = `SQLite database ${path}`;
  const user = `the service's user (uid ${process.getuid?.() ?? "?"})`;
  let explanation: string;
  if (code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB") {
    explanation =
      "is damaged or not an SQLite database (integrity check failed). Restore it from a backup, or move it " +
      "(and its -wal file) away to start with an empty database; do not let the service write into it";
  } else if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
    explanation =
      "is in use by another process; one file serves one process (stop the other one or use another DATABASE_URL)";
  } else if (code.startsWith("SQLITE_READONLY") || (code.startsWith("SQLITE_IOERR") && !writable(path))) {
    explanation =
      `is read-only to ${user} (a read-only file such as mode 0444, or a read-only directory or mount): the ` +
      `service writes the file and creates ${path}-wal next to it. Make the file and its directory writable`;
  } else if (code.startsWith("SQLITE_CANTOPEN") || code === "EACCES" || code === "EROFS") {
    explanation =
      `cannot be opened or created: its directory ${dirname(resolve(path))} is missing or not writable by ${user}. ` +
      "Create the directory and let that user write to it, or point DATABASE_URL elsewhere";
  } else if (code === "SQLITE_FULL" || code === "ENOSPC") {
    explanation = "cannot be written: the disk is full. Free space on its volume, then start again";
  } else if (code.startsWith("SQLITE_IOERR")) {
    explanation = "failed with an I/O error: check the disk and the mount it lives on (dmesg), then start again";
  } else {
    return error instanceof Error ? error : new Error(String(error));
  }
  return new Error(`${where} ${explanation}.`, { cause: error });
}

/** Whether this process may write the file (or create it in its directory). */
function writable(path: string): boolean {
  try {
    accessSync(existsSync(path) ? path : dirname(resolve(path)), constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
