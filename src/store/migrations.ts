// Schema migrations, shipped in the code (not read from disk) so that the built service and the
// tests migrate the same way. Column types differ by dialect only in columnTypes() below.

import { randomBytes } from "node:crypto";
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
  idempotencyKey: "idempotency_records_pkey",
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
        .createIndex("connections_request_id_key")
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

/** PostgreSQL NOTIFY channel on which committed events are announced (see feedTransactionOrder). */
export const FEED_CHANNEL = "connections_feed";

/**
 * The change feed's order: `connection_events.feed_position`, dense (1, 2, 3, ...) and assigned in
 * COMMIT order, so that a reader who has seen position N has seen, or can still read, every
 * position below it. `seq` cannot serve: on PostgreSQL a sequence hands out ids at insert time,
 * and a transaction that took id 7 may commit after the one that took id 8 has been read, so a
 * cursor at 8 would skip 7 forever.
 *
 * - PostgreSQL: a BEFORE INSERT trigger takes the next number from the one-row `feed` table with
 *   an UPDATE, whose row lock is held until the transaction ends. The next writer waits on that
 *   lock, so it gets its number only after this one committed (or rolled back, which returns the
 *   number: no holes). Every event insert is the last statement of its transaction, so the lock
 *   is held only from there to COMMIT. The trigger also NOTIFYs FEED_CHANNEL, which PostgreSQL
 *   delivers at commit, to wake the watchers of every replica. Being a trigger, no code path can
 *   insert an event without a position.
 * - SQLite: one process and one connection write, one transaction at a time, so the
 *   autoincrement `seq` already is commit order; the position is a generated column of it.
 *
 * `feed.id` is a random identity of this database's feed, carried in every cursor so that a
 * cursor from another deployment is refused rather than misread.
 *
 * On PostgreSQL, migration 0005 (feedTransactionOrder) replaces the trigger and the counter.
 */
function feedPositions(dialect: SqlDialect): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const feedId = randomBytes(9).toString("base64url");
      if (dialect === "sqlite") {
        await sql`alter table connection_events add column feed_position integer generated always as (seq) virtual`.execute(
          db,
        );
        await db.schema
          .createTable("feed")
          .addColumn("id", "text", (col) => col.notNull())
          .execute();
        await db
          .insertInto("feed" as never)
          .values({ id: feedId } as never)
          .execute();
      } else {
        await sql`alter table connection_events add column feed_position bigint`.execute(db);
        // Every event already recorded has committed (the migration holds the table's lock).
        await sql`update connection_events e set feed_position = n.position
          from (select seq, row_number() over (order by seq) as position from connection_events) n
          where e.seq = n.seq`.execute(db);
        await sql`alter table connection_events alter column feed_position set not null`.execute(db);
        await sql`create table feed (id text not null, last_position bigint not null)`.execute(db);
        await sql`insert into feed (id, last_position) select ${feedId}, count(*) from connection_events`.execute(db);
        await sql`create function connection_events_feed_position() returns trigger language plpgsql as $$
          begin
            update feed set last_position = last_position + 1 returning last_position into new.feed_position;
            perform pg_notify(${sql.lit(FEED_CHANNEL)}, new.feed_position::text);
            return new;
          end $$`.execute(db);
        await sql`create trigger connection_events_feed_position before insert on connection_events
          for each row execute function connection_events_feed_position()`.execute(db);
      }
      await db.schema
        .createIndex("connection_events_feed_position_key")
        .on("connection_events")
        .column("feed_position")
        .unique()
        .execute();
    },
  };
}

/**
 * Every write is idempotent through its request_id: the first answer (the response message, or a
 * final error) is kept per (scope, request_id), written in the same transaction as the write it
 * answers, so that a crash can never leave a write without its answer or an answer without its
 * write. It replaces the unique index on connections.create_request_id, which could only say that
 * a create happened, not what it answered; the column itself stays (who created it, and what a
 * replica of the previous version reads during a rolling deploy).
 */
function idempotencyRecords(dialect: SqlDialect): Migration {
  const types = columnTypes(dialect);
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("idempotency_records")
        .addColumn("scope", "text", (col) => col.notNull())
        .addColumn("request_id", "text", (col) => col.notNull())
        .addColumn("method", "text", (col) => col.notNull())
        .addColumn("fingerprint", "text", (col) => col.notNull())
        .addColumn("response", "text")
        .addColumn("error", "text")
        .addColumn("create_time", types.timestamp, (col) => col.notNull())
        .addPrimaryKeyConstraint(CONSTRAINTS.idempotencyKey, ["scope", "request_id"])
        .execute();
      // Pruning walks the oldest records first.
      await db.schema
        .createIndex("idempotency_records_create_time_idx")
        .on("idempotency_records")
        .column("create_time")
        .execute();
      await db.schema.dropIndex("connections_request_id_key").execute();
    },
  };
}

/**
 * PostgreSQL: the change feed without a lock that every writer holds until it commits (migration
 * 0003's one-row counter made every event-writing transaction of every replica wait for the one
 * before it to commit, and its pg_notify inside the transaction queued them on the notify lock).
 *
 * Each event records the id of its transaction (`feed_xid`, `pg_current_xact_id()` by default)
 * and a position from a sequence (`feed_position`; nextval holds no lock). The feed's order is
 * (feed_xid, feed_position), and a reader returns only events whose transaction id is below the
 * HORIZON: the oldest transaction id that may still be running in this database as of the query's
 * snapshot. Every transaction below it has ended (committed, and so visible to the query, or rolled
 * back), and every transaction that starts later gets a larger id, so no event can ever appear
 * below the horizon after a read: whatever a reader has passed is final. Gap-free and exactly once
 * follow: a cursor is a place (feed_xid, feed_position); resuming reads the places after it, and
 * an event that commits later lies after every place handed out before it committed. Writers that
 * commit out of id order are handled the same way: the younger one's events wait, unread, until
 * the older one has ended.
 *
 * Order within a Connection: its events are written by transactions that each saw the previous
 * one's commit (a transition updates the version it read), and writes run at REPEATABLE READ
 * (transactions.ts), where a transaction sees only what committed before its first statement, and
 * so before it got its id: the later event has the larger transaction id whatever a write's
 * statements are. Across Connections the order is the order of transaction ids, which is the order
 * of commits wherever one transaction could have seen the other.
 *
 * The horizon ignores only transactions that pg_stat_activity shows running in another database of
 * the cluster (transaction ids are cluster-wide; those cannot write here); anything it cannot place
 * (a session it may not see, a prepared transaction) holds the horizon back, which delays the feed
 * but never skips an event. A long transaction in this database delays the feed the same way, for
 * as long as it runs (statement_timeout bounds the service's own).
 *
 * Events recorded before this migration keep their dense positions with transaction id 0, so a
 * cursor issued then (position N) still names its event. NOTIFY moves out of the writing
 * transaction: the writing process announces commits afterwards, many in one notification
 * (feed-notifications.ts). No row is updated per write: nothing here grows dead rows.
 */
function feedTransactionOrder(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await sql`drop trigger connection_events_feed_position on connection_events`.execute(db);
      await sql`drop function connection_events_feed_position()`.execute(db);
      await sql`alter table feed drop column last_position`.execute(db);
      // A constant default for the rows already there (no table rewrite), then every new row's own.
      await sql`alter table connection_events add column feed_xid xid8 not null default '0'`.execute(db);
      await sql`alter table connection_events alter column feed_xid set default pg_current_xact_id()`.execute(db);
      await sql`create sequence connection_events_feed_position_seq owned by connection_events.feed_position`.execute(
        db,
      );
      await sql`select setval('connection_events_feed_position_seq', coalesce(max(feed_position), 0) + 1, false)
        from connection_events`.execute(db);
      await sql`alter table connection_events
        alter column feed_position set default nextval('connection_events_feed_position_seq')`.execute(db);
      await sql`drop index connection_events_feed_position_key`.execute(db);
      await sql`create unique index connection_events_feed_order_key on connection_events (feed_xid, feed_position)`.execute(
        db,
      );
    },
  };
}

/**
 * SQLite: the change feed reads `seq`, the rowid, which `feed_position` only mirrors (a generated
 * column of it), so the unique index on `feed_position` was one more B-tree page that every event
 * wrote and nothing needed. A release from before this migration still reads the feed correctly
 * (by a scan) until it is replaced.
 */
function feedReadsByRowid(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropIndex("connection_events_feed_position_key").execute();
    },
  };
}

/**
 * PostgreSQL: `seq` (an identity column, so unique by construction) lost the unique index that
 * `unique()` gave it in 0001. No read seeks `seq` alone: lists and the feed use the indexes that
 * end with it. The index was one more insert per Connection and per event, each at its rightmost
 * leaf, the one page that every concurrent writer of every replica changed.
 */
function seqWithoutUniqueIndex(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await sql`alter table connections drop constraint connections_seq_key`.execute(db);
      await sql`alter table connection_events drop constraint connection_events_seq_key`.execute(db);
    },
  };
}

/**
 * PostgreSQL: Connection pages keep 15% free, so that a transition's UPDATE (state, times,
 * version: no indexed column) can put the new row version on the row's own page, a HOT update,
 * instead of on another page with a new entry in each of the table's indexes. Applies to pages
 * written from now on; a table rewrite (VACUUM FULL, pg_repack) applies it to the old ones.
 */
function connectionsFillFactor(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await sql`alter table connections set (fillfactor = 85)`.execute(db);
    },
  };
}

/**
 * The feed's horizon (see feedTransactionOrder), evaluated in the snapshot of the query that uses
 * it: the smallest transaction id still running then, unless pg_stat_activity places it in another
 * database; with none, the snapshot's xmax (the next id to be assigned).
 */
export const FEED_HORIZON = sql<string>`(
  select coalesce(min(running.xid), pg_snapshot_xmax(pg_current_snapshot()))
  from pg_snapshot_xip(pg_current_snapshot()) as running(xid)
  where not exists (
    select 1 from pg_stat_activity as other
    where other.backend_xid = running.xid::xid and other.datname is distinct from current_database()
  )
)`;

export function migrationProvider(dialect: SqlDialect): MigrationProvider {
  const migrations: Record<string, Migration> = {
    "0001_initial": initial(dialect),
    "0002_event_parties_and_scopes": eventPartiesAndScopes(),
    "0003_feed_positions": feedPositions(dialect),
    "0004_idempotency": idempotencyRecords(dialect),
    // SQLite's one connection already commits in position order.
    ...(dialect === "postgres" ? { "0005_feed_transaction_order": feedTransactionOrder() } : {}),
    // Fewer index writes per write: 0006 drops an index that nothing read (each dialect had one);
    // 0007 leaves PostgreSQL room to update a Connection in place.
    ...(dialect === "sqlite"
      ? { "0006_feed_reads_by_rowid": feedReadsByRowid() }
      : {
          "0006_seq_without_unique_index": seqWithoutUniqueIndex(),
          "0007_connections_fill_factor": connectionsFillFactor(),
        }),
  };
  return { getMigrations: () => Promise.resolve(migrations) };
}

/**
 * Applies every pending migration; throws the first failure. The caller holds the transaction and
 * the lock (see schema-version.ts): Kysely's own would be a session lock and a second transaction.
 */
export async function migrateToLatest(db: Kysely<unknown>, dialect: SqlDialect): Promise<readonly MigrationResult[]> {
  const { error, results } = await new Migrator({
    db,
    provider: migrationProvider(dialect),
    disableTransactions: true,
  }).migrateToLatest();
  if (error !== undefined) throw error;
  return results ?? [];
}
