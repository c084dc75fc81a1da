// Where the database's schema stands against the migrations this build ships, and how they are
// applied: in ONE transaction that first takes a transaction-level advisory lock. Both matter
// behind PgBouncer in transaction pooling, where a session-level lock (Kysely's own, or an
// earlier release's) may be taken on one server connection and released on another, staying held
// by an idle pooled connection so that the next start waits forever. A wait for the lock is
// logged every few seconds with who holds it, so a start never hangs silently.

import { setTimeout as sleep } from "node:timers/promises";
import { type Kysely, type MigrationResult, PostgresAdapter, PostgresDialect, sql } from "kysely";
import type { Logger } from "pino";
import { translateError } from "./errors.js";
import { migrateToLatest, migrationProvider } from "./migrations.js";
import type { Database, SqlDialect } from "./schema.js";

/** Any 64-bit constant works: it only has to be the same in every replica (and every release). */
export const PG_MIGRATION_LOCK = 0x636f6e6e; // "conn"
/** How often a start that waits for the migration lock tries it again, and says so in the log. */
const LOCK_RETRY_MS = 250;
export const LOCK_WAIT_LOG_MS = 3_000;
/**
 * A rolling deploy runs the previous release against the new schema, which works because migrations
 * are additive (expand only; see docs/operations.md): a release serves a schema up to this many
 * migrations ahead of the ones it knows.
 */
export const DEFAULT_SCHEMA_AHEAD_LIMIT = 5;
/** Kysely's migration bookkeeping table. */
const MIGRATION_TABLE = "kysely_migration";

export interface SchemaStatus {
  /** Migrations this build ships that the database has not applied: it is behind. */
  readonly pending: readonly string[];
  /** Migrations the database has applied that this build does not know: it is ahead (a newer release ran). */
  readonly unknown: readonly string[];
}

/** The schema is further ahead than this build may serve on. */
export class SchemaAheadError extends Error {
  constructor(
    readonly unknown: readonly string[],
    readonly aheadLimit: number,
  ) {
    super(
      `the database schema is ${unknown.length} migration(s) ahead of this release (${unknown.join(", ")}), ` +
        `more than SCHEMA_AHEAD_LIMIT=${aheadLimit} allows: a newer release migrated it. Deploy that release ` +
        "(or a newer one) instead of this one; see docs/operations.md, upgrading",
    );
    this.name = "SchemaAheadError";
  }
}

export async function readSchemaStatus(db: Kysely<unknown>, dialect: SqlDialect): Promise<SchemaStatus> {
  const known = Object.keys(await migrationProvider(dialect).getMigrations()).sort();
  const exists =
    dialect === "sqlite"
      ? sql<{
          found: number;
        }>`select count(*) as found from sqlite_master where type = 'table' and name = ${MIGRATION_TABLE}`
      : sql<{ found: number }>`select count(*)::int as found from pg_class where oid = to_regclass(${MIGRATION_TABLE})`;
  const { rows } = await exists.execute(db);
  const applied =
    Number(rows[0]?.found ?? 0) === 0
      ? []
      : (await sql<{ name: string }>`select name from ${sql.table(MIGRATION_TABLE)}`.execute(db)).rows.map(
          (row) => row.name,
        );
  const appliedSet = new Set(applied);
  const knownSet = new Set(known);
  return {
    pending: known.filter((name) => !appliedSet.has(name)),
    unknown: applied.filter((name) => !knownSet.has(name)).sort(),
  };
}

/** Throws SchemaAheadError when the schema is further ahead than `aheadLimit` migrations. */
export function refuseIfTooFarAhead(status: SchemaStatus, aheadLimit: number, logger: Logger | undefined): void {
  if (status.unknown.length > aheadLimit) throw new SchemaAheadError(status.unknown, aheadLimit);
  if (status.unknown.length > 0) {
    logger?.warn(
      { unknownMigrations: status.unknown, aheadLimit },
      "the database schema is ahead of this release, within SCHEMA_AHEAD_LIMIT (migrations are additive): serving",
    );
  }
}

/**
 * Applies the pending migrations on `connection` (one connection, no transaction open), inside one
 * transaction under the migration lock; nothing when the schema is ahead (a newer release's
 * migrations are not this build's to judge). Throws SchemaAheadError beyond `aheadLimit`.
 */
export async function applyMigrations(
  connection: Kysely<unknown>,
  dialect: SqlDialect,
  aheadLimit: number,
  logger: Logger | undefined,
): Promise<readonly MigrationResult[]> {
  // SQLite: BEGIN IMMEDIATE takes the write lock at once; its DDL is transactional too.
  await sql.raw(dialect === "sqlite" ? "begin immediate" : "begin").execute(connection);
  try {
    if (dialect === "postgres") {
      // Waiting for the lock or a long DDL must not hit a statement timeout meant for RPCs.
      await sql`set local statement_timeout = 0`.execute(connection);
      await takeMigrationLock(connection, logger);
    }
    const status = await readSchemaStatus(connection, dialect);
    refuseIfTooFarAhead(status, aheadLimit, logger);
    const results =
      status.unknown.length === 0 && status.pending.length > 0 ? await migrateToLatest(connection, dialect) : [];
    await sql`commit`.execute(connection);
    return results;
  } catch (error) {
    await sql`rollback`.execute(connection).catch(() => {});
    throw error;
  }
}

/** pg_advisory_xact_lock, tried until it is free, logging who holds it every LOCK_WAIT_LOG_MS. */
async function takeMigrationLock(connection: Kysely<unknown>, logger: Logger | undefined): Promise<void> {
  const started = performance.now();
  let loggedAt = started;
  for (;;) {
    const { rows } = await sql<{
      locked: boolean;
    }>`select pg_try_advisory_xact_lock(${PG_MIGRATION_LOCK}) as locked`.execute(connection);
    if (rows[0]?.locked === true) return;
    const now = performance.now();
    if (now - loggedAt >= LOCK_WAIT_LOG_MS) {
      loggedAt = now;
      logger?.warn(
        {
          lock: `pg_advisory_xact_lock(${PG_MIGRATION_LOCK})`,
          waitedMs: Math.round(now - started),
          holders: await lockHolders(connection),
        },
        "waiting for the migration lock: another replica is migrating, or a session holds it (an idle one " +
          "behind a pooler: end it with pg_terminate_backend(pid))",
      );
    }
    await sleep(LOCK_RETRY_MS);
  }
}

/**
 * The sessions that hold the migration lock, as pg_stat_activity describes them. Advisory locks
 * are per database: a service migrating another database of the cluster holds its own, not this.
 */
async function lockHolders(connection: Kysely<unknown>): Promise<unknown[]> {
  const { rows } = await sql`select l.pid, a.application_name, a.client_addr::text, a.state,
      a.backend_start, a.xact_start, a.state_change
    from pg_locks l left join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted and l.classid = 0 and l.objid = ${PG_MIGRATION_LOCK}
      and l.database = (select oid from pg_database where datname = current_database())`.execute(connection);
  return rows;
}

/** Kysely's Migrator takes a session lock of its own; the caller already holds the transaction's. */
class TransactionLockedAdapter extends PostgresAdapter {
  override async acquireMigrationLock(): Promise<void> {}
  override async releaseMigrationLock(): Promise<void> {}
}

/** PostgresDialect for the migration connection: the lock is applyMigrations' transaction-level one. */
export class PostgresMigrationDialect extends PostgresDialect {
  override createAdapter(): PostgresAdapter {
    return new TransactionLockedAdapter();
  }
}

/**
 * Applies the pending migrations (options.migrate, the default) or only reads where the schema
 * stands; either way refuses a schema further ahead than the limit. Destroys `db` when it fails.
 */
export async function prepareSchema(
  db: Kysely<Database>,
  dialect: SqlDialect,
  options: { readonly migrate?: boolean; readonly schemaAheadLimit?: number; readonly logger?: Logger },
): Promise<void> {
  const aheadLimit = options.schemaAheadLimit ?? DEFAULT_SCHEMA_AHEAD_LIMIT;
  try {
    if (options.migrate === false) {
      refuseIfTooFarAhead(await readSchemaStatus(db as Kysely<unknown>, dialect), aheadLimit, options.logger);
      return;
    }
    const results = await db
      .connection()
      .execute((connection) => applyMigrations(connection as Kysely<unknown>, dialect, aheadLimit, options.logger));
    for (const result of results) {
      options.logger?.info({ migration: result.migrationName, status: result.status }, "migration");
    }
  } catch (error) {
    await db.destroy();
    throw translateError(error);
  }
}
