// Opens the store that DATABASE_URL names, applies the migrations, and hands back a Store.

import { accessSync, constants, existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely, type MigrationResult, PostgresDialect, sql } from "kysely";
import pg from "pg";
import type { Logger } from "pino";
import { translateError } from "./errors.js";
import { FeedListener } from "./feed-notifications.js";
import { KyselyStore } from "./kysely-store.js";
import { migrateToLatest } from "./migrations.js";
import { StorePool } from "./pg-pool.js";
import type { Database, SqlDialect } from "./schema.js";
import { EventLoopFriendlySqliteDialect } from "./sqlite-dialect.js";
import type { Store } from "./store.js";

export interface OpenStoreOptions {
  readonly databaseUrl: string;
  /** PostgreSQL pool size (default 10). */
  readonly poolSize?: number;
  /** PostgreSQL statement_timeout (default 5000 ms). */
  readonly statementTimeoutMs?: number;
  /** SQLite: the CheckConnection cache's bound, in Connections (default 200,000). */
  readonly checkCacheEntries?: number;
  readonly logger?: Logger;
}

export type DatabaseTarget =
  | { readonly dialect: "sqlite"; readonly path: string }
  | { readonly dialect: "postgres"; readonly url: string };

const SQLITE_MEMORY = ":memory:";
/** How long a starting process waits for the SQLite file lock (e.g. a predecessor shutting down). */
const SQLITE_LOCK_WAIT_MS = 1000;
const SQLITE_BUSY_TIMEOUT_MS = 5000;
/** Checkpoint the WAL after this many pages (SQLite's default is 1000, about 4 MB). */
const SQLITE_WAL_PAGES = 256;
/** SQLite's page cache, in KiB. */
const SQLITE_CACHE_KIB = 32 * 1024;
/** After a checkpoint the WAL file is truncated to at most this. */
const SQLITE_WAL_BYTES = 1024 * 1024;
const PG_CONNECT_TIMEOUT_MS = 2000;
/** Idle time before the first TCP keepalive probe on a PostgreSQL connection. */
const PG_KEEPALIVE_DELAY_MS = 10_000;
/** The client gives a query this long past the server's statement_timeout before giving up on it. */
const PG_QUERY_TIMEOUT_MARGIN_MS = 1_000;
/** Any 64-bit constant works: it only has to be the same in every replica. */
const PG_MIGRATION_LOCK = 0x636f6e6e; // "conn"

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
  return target.dialect === "sqlite" ? openSqlite(target.path, options) : openPostgres(target.url, options);
}

async function openSqlite(path: string, options: OpenStoreOptions): Promise<Store> {
  let database: SqliteDatabase.Database | undefined;
  try {
    if (path !== SQLITE_MEMORY) mkdirSync(dirname(resolve(path)), { recursive: true });
    database = new SqliteDatabase(path, { timeout: SQLITE_LOCK_WAIT_MS });
    // Held until close: no other process may write (or read) the file behind the check cache.
    database.pragma("locking_mode = EXCLUSIVE");
    database.pragma("journal_mode = WAL");
    database.exec("BEGIN EXCLUSIVE; COMMIT");
    // Every page's structure, not only the ones read at start: a damaged file is refused here
    // rather than answering INTERNAL (and being written further) once serving.
    const check = database.pragma("quick_check", { simple: true });
    if (check !== "ok") throw new DamagedDatabaseError(String(check));
  } catch (error) {
    database?.close();
    throw sqliteStartError(path, error);
  }
  database.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
  // FULL: the WAL is flushed at every COMMIT, so an acknowledged write survives a power cut or a
  // kernel crash, not only a killed process (transactions.ts groups writes to share the flush).
  database.pragma("synchronous = FULL");
  database.pragma("foreign_keys = ON");
  // Writes touch every index of a Connection and its event at random keys: SQLite's default page
  // cache (2 MB) soon misses on each of them.
  database.pragma(`cache_size = -${SQLITE_CACHE_KIB}`);
  // A bounded WAL: checkpoint every SQLITE_WAL_PAGES pages and truncate the file back to
  // SQLITE_WAL_BYTES afterwards, so that a small volume that filled up once has room again.
  database.pragma(`wal_autocheckpoint = ${SQLITE_WAL_PAGES}`);
  database.pragma(`journal_size_limit = ${SQLITE_WAL_BYTES}`);
  const db = new Kysely<Database>({ dialect: new EventLoopFriendlySqliteDialect({ database }) });
  await migrate(db, "sqlite", options.logger);
  const sqlite = database;
  return new KyselyStore(db, {
    dialect: "sqlite",
    inTransaction: () => sqlite.inTransaction,
    checkCacheEntries: options.checkCacheEntries,
  });
}

/** quick_check found damage. */
class DamagedDatabaseError extends Error {
  constructor(readonly findings: string) {
    super(`quick_check: ${findings}`);
    this.name = "DamagedDatabaseError";
  }
}

/** A start-up failure that names the file, says what is wrong in words, and what to do about it. */
function sqliteStartError(path: string, error: unknown): Error {
  const code = typeof error === "object" && error !== null ? String((error as { code?: unknown }).code ?? "") : "";
  const where = `SQLite database ${path}`;
  const user = `the service's user (uid ${process.getuid?.() ?? "?"})`;
  let explanation: string;
  if (error instanceof DamagedDatabaseError || code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB") {
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

async function openPostgres(url: string, options: OpenStoreOptions): Promise<Store> {
  const poolSize = options.poolSize ?? 10;
  const statementTimeoutMs = options.statementTimeoutMs ?? 5000;
  const connection = {
    connectionString: url,
    connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
    application_name: "connections",
    // Finds a peer that vanished without a FIN or RST (a dead host, a dropped route).
    keepAlive: true,
    keepAliveInitialDelayMillis: PG_KEEPALIVE_DELAY_MS,
  };
  // Migrations may wait on replicas that migrate first: no client-side timeout on their connection.
  await migratePostgres(connection, options.logger);
  const pool = new pg.Pool({
    ...connection,
    max: poolSize,
    statement_timeout: statementTimeoutMs,
    // The client's own clock: a database that stops answering (frozen, partitioned, no packets at
    // all) fails the query instead of holding the connection; the server's statement_timeout
    // cannot, since it never gets to run.
    query_timeout: statementTimeoutMs + PG_QUERY_TIMEOUT_MARGIN_MS,
  });
  // A client whose server went away emits 'error', on the pool when idle and on the client while
  // checked out (its query fails too); an unheard 'error' would crash the process. The pool
  // drops such a client and connects a new one when next asked.
  pool.on("error", (error) => options.logger?.warn({ err: error }, "an idle PostgreSQL connection failed"));
  pool.on("connect", (client) =>
    client.on("error", (error) => options.logger?.debug({ err: error }, "a PostgreSQL connection failed")),
  );
  const storePool = new StorePool(pool, poolSize);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: storePool.forKysely }) });
  return new KyselyStore(db, {
    dialect: "postgres",
    poolSize,
    pool: storePool,
    feedListener: new FeedListener(url, options.logger),
  });
}

async function migratePostgres(connection: pg.ClientConfig, logger: Logger | undefined): Promise<void> {
  const client = new pg.Client(connection);
  client.on("error", (error) => logger?.debug({ err: error }, "the migration connection failed"));
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw translateError(error);
  }
  const pinned = { query: (text: string, values: unknown[]) => client.query(text, values), release: () => {} };
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: { connect: async () => pinned as never, end: () => client.end() } }),
  });
  await migrate(db, "postgres", logger);
  await db.destroy();
}

async function migrate(db: Kysely<Database>, dialect: SqlDialect, logger: Logger | undefined): Promise<void> {
  try {
    const results = await db
      .connection()
      .execute((connection) =>
        dialect === "sqlite"
          ? migrateSqlite(connection as Kysely<unknown>)
          : migratePostgresLocked(connection as Kysely<unknown>),
      );
    for (const result of results) logger?.info({ migration: result.migrationName, status: result.status }, "migration");
  } catch (error) {
    await db.destroy();
    throw translateError(error);
  }
}

/** Kysely runs SQLite migrations outside a transaction, but SQLite's DDL is transactional: use it. */
async function migrateSqlite(connection: Kysely<unknown>): Promise<readonly MigrationResult[]> {
  await sql`begin immediate`.execute(connection);
  try {
    const results = await migrateToLatest(connection, "sqlite");
    await sql`commit`.execute(connection);
    return results;
  } catch (error) {
    await sql`rollback`.execute(connection);
    throw error;
  }
}

async function migratePostgresLocked(connection: Kysely<unknown>): Promise<readonly MigrationResult[]> {
  // Replicas starting together migrate one after the other; waiting for the lock must not hit
  // the statement timeout meant for RPCs.
  await sql`set statement_timeout = 0`.execute(connection);
  await sql`select pg_advisory_lock(${PG_MIGRATION_LOCK})`.execute(connection);
  try {
    return await migrateToLatest(connection, "postgres");
  } finally {
    await sql`select pg_advisory_unlock(${PG_MIGRATION_LOCK})`.execute(connection);
    await sql`reset statement_timeout`.execute(connection);
  }
}
