// Schema migrations, shipped in the code (not read from disk) so that the built service and the
// tests migrate the same way. Column types differ by dialect only in columnTypes() below.

import {
  type CreateTableBuilder,
  type Kysely,
  type Migration,
  type MigrationProvider,
  type MigrationResult,
  Migrator,
  sql,
} from "kysely";
import type { SqlDialect } from "./schema.js";

/** Constraint and index names that the error translation recognises. */
export const CONSTRAINTS = {
  organizationId: "organizations_pkey",
  pair: "connections_pair_key",
  requestId: "connections_request_id_key",
} as const;

interface ColumnTypes {
  readonly timestamp: "text" | "timestamptz";
  /**
   * Adds `seq` (the keyset cursor, growing with every insert) and `id`. SQLite can only
   * autoincrement its INTEGER PRIMARY KEY, which is also the rowid, so there `seq` is the
   * primary key and `id` is unique; on PostgreSQL `id` is the primary key.
   */
  seqAndId<T extends string>(table: CreateTableBuilder<T, never>): CreateTableBuilder<T, never>;
}

function columnTypes(dialect: SqlDialect): ColumnTypes {
  if (dialect === "sqlite") {
    return {
      timestamp: "text",
      seqAndId: (table) =>
        table
          .addColumn("seq", "integer", (col) => col.primaryKey().autoIncrement())
          .addColumn("id", "text", (col) => col.notNull().unique()),
    };
  }
  return {
    timestamp: "timestamptz",
    seqAndId: (table) =>
      table
        .addColumn("seq", "bigint", (col) => col.generatedAlwaysAsIdentity().notNull().unique())
        .addColumn("id", "text", (col) => col.primaryKey()),
  };
}

function initial(dialect: SqlDialect): Migration {
  const types = columnTypes(dialect);
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("organizations")
        .addColumn("id", "text", (col) => col.notNull())
        .addColumn("name", "text", (col) => col.notNull())
        .addColumn("create_time", types.timestamp, (col) => col.notNull())
        .addPrimaryKeyConstraint(CONSTRAINTS.organizationId, ["id"])
        .execute();

      await types
        .seqAndId(db.schema.createTable("connections"))
        .addColumn("source_organization_id", "text", (col) => col.notNull().references("organizations.id"))
        .addColumn("destination_organization_id", "text", (col) => col.notNull().references("organizations.id"))
        .addColumn("name", "text", (col) => col.notNull())
        .addColumn("scopes", "text", (col) => col.notNull())
        .addColumn("state", "text", (col) => col.notNull())
        .addColumn("create_time", types.timestamp, (col) => col.notNull())
        .addColumn("update_time", types.timestamp, (col) => col.notNull())
        .addColumn("activate_time", types.timestamp)
        .addColumn("deactivate_time", types.timestamp)
        .addColumn("creator", "text", (col) => col.notNull())
        .addColumn("create_request_id", "text", (col) => col.notNull())
        .addColumn("version", "integer", (col) => col.notNull())
        .addUniqueConstraint(CONSTRAINTS.pair, ["source_organization_id", "destination_organization_id"])
        .execute();
      await db.schema
        .createIndex(CONSTRAINTS.requestId)
        .on("connections")
        .columns(["source_organization_id", "create_request_id"])
        .unique()
        .where(sql.ref("create_request_id"), "<>", "")
        .execute();
      await db.schema
        .createIndex("connections_source_seq_idx")
        .on("connections")
        .columns(["source_organization_id", "seq"])
        .execute();
      await db.schema
        .createIndex("connections_destination_seq_idx")
        .on("connections")
        .columns(["destination_organization_id", "seq"])
        .execute();

      await types
        .seqAndId(db.schema.createTable("connection_events"))
        .addColumn("connection_id", "text", (col) => col.notNull().references("connections.id"))
        .addColumn("type", "text", (col) => col.notNull())
        .addColumn("from_state", "text")
        .addColumn("to_state", "text", (col) => col.notNull())
        .addColumn("actor_organization_id", "text", (col) => col.notNull())
        .addColumn("caller", "text", (col) => col.notNull())
        .addColumn("actor", "text", (col) => col.notNull())
        .addColumn("reason", "text", (col) => col.notNull())
        .addColumn("request_id", "text", (col) => col.notNull())
        .addColumn("create_time", types.timestamp, (col) => col.notNull())
        .execute();
      await db.schema
        .createIndex("connection_events_connection_seq_idx")
        .on("connection_events")
        .columns(["connection_id", "seq"])
        .execute();
    },
  };
}

/**
 * UpdateConnection: scopes can now change, so every event says whose Connection it is and what it
 * shares after it (and, for an update, before it); events made before this are filled in from
 * their Connection, whose scopes never changed until now. ListConnections orders by create_time
 * (the time every reader is shown) and then seq, so its indexes follow.
 */
function eventPartiesAndScopes(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const columns = [
        ["source_organization_id", "''"],
        ["destination_organization_id", "''"],
        ["scopes", "'[]'"],
        ["previous_scopes", "'[]'"],
      ] as const;
      for (const [column, empty] of columns) {
        await db.schema
          .alterTable("connection_events")
          .addColumn(column, "text", (col) => col.notNull().defaultTo(sql.raw(empty)))
          .execute();
      }
      // UPDATE ... FROM: PostgreSQL, and SQLite since 3.33.
      await sql`
        update connection_events
        set source_organization_id = c.source_organization_id,
            destination_organization_id = c.destination_organization_id,
            scopes = c.scopes
        from connections as c
        where c.id = connection_events.connection_id`.execute(db);

      await db.schema.dropIndex("connections_source_seq_idx").execute();
      await db.schema.dropIndex("connections_destination_seq_idx").execute();
      await db.schema
        .createIndex("connections_source_time_idx")
        .on("connections")
        .columns(["source_organization_id", "create_time", "seq"])
        .execute();
      await db.schema
        .createIndex("connections_destination_time_idx")
        .on("connections")
        .columns(["destination_organization_id", "create_time", "seq"])
        .execute();
    },
  };
}

export function migrationProvider(dialect: SqlDialect): MigrationProvider {
  const migrations: Record<string, Migration> = {
    "0001_initial": initial(dialect),
    "0002_event_parties_and_scopes": eventPartiesAndScopes(),
  };
  return { getMigrations: () => Promise.resolve(migrations) };
}

/** Applies every pending migration; throws the first failure. */
export async function migrateToLatest(db: Kysely<unknown>, dialect: SqlDialect): Promise<readonly MigrationResult[]> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider(dialect) }).migrateToLatest();
  if (error !== undefined) throw error;
  return results ?? [];
}
