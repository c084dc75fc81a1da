// The Store on Kysely: one implementation for SQLite and PostgreSQL. The queries of every table live
// here; row mapping is in rows.ts, the transaction and retry policy in transactions.ts, and dialect
// differences in the migrations (column types) and in how checks read (check-reader.ts).

import type SqliteDatabase from "better-sqlite3";
import { type CompiledQuery, type Insertable, type Kysely, type RawBuilder, sql } from "kysely";
import type { Cancellation } from "../runtime/cancellation.js";
import {
  BatchingCheckReader,
  CachingCheckReader,
  type CheckCacheStats,
  type CheckReader,
  DEFAULT_CHECK_CACHE_ENTRIES,
  LruMap,
} from "./check-reader.js";
import type { FeedListener } from "./feed-notifications.js";
import { FEED_HORIZON } from "./migrations.js";
import type { StorePool } from "./pg-pool.js";
import {
  CONNECTION_COLUMNS,
  CONNECTION_RECORD_COLUMNS,
  type ConnectionRow,
  connectionCursor,
  EVENT_COLUMNS,
  EVENT_WRITE_COLUMNS,
  IDEMPOTENCY_COLUMNS,
  parseConnectionCursor,
  parseCursor,
  preparedQuery,
  preparedStatement,
  toConnection,
  toConnectionRow,
  toDate,
  toEvent,
  toEventRow,
  toIdempotencyRecord,
  toIdempotencyRow,
  toPage,
  withParameters,
} from "./rows.js";
import type {
  ConnectionEventsTable,
  ConnectionsTable,
  Database,
  IdempotencyRecordsTable,
  SqlDialect,
} from "./schema.js";
import { readSchemaStatus } from "./schema-version.js";
import { SqliteCheckSource } from "./sqlite-check-source.js";
import {
  type ConnectionRecord,
  type EventRecord,
  FEED_START,
  type FeedEntry,
  type FeedPosition,
  type FeedQuery,
  feedPosition,
  feedPositionParts,
  type IdempotencyRecord,
  InvalidCursorError,
  type ListConnectionsQuery,
  type ListEventsQuery,
  type OrganizationRecord,
  type Page,
  type PoolStats,
  type Store,
} from "./store.js";
import { Transactions } from "./transactions.js";
import type { WalFlusher } from "./wal-flush.js";

const KNOWN_ORGANIZATIONS = 100_000;

/** The values of a transition's UPDATE. */
const TRANSITION_COLUMNS = [
  "id",
  "name",
  "scopes",
  "state",
  "update_time",
  "activate_time",
  "deactivate_time",
  "version",
  "previous_version",
] as const;

/**
 * The change feed on each dialect (see feedTransactionOrder in migrations.ts): an event's place
 * (its transaction id, as text, and its position), and the condition that only events no running
 * transaction can come before are read. SQLite's one connection shows committed writes only and
 * commits one transaction after the other, so there the transaction id is 0 and every event counts.
 */
const FEED = {
  postgres: {
    position: sql.ref<number>("connection_events.feed_position"),
    transaction: sql<string>`connection_events.feed_xid::text`.as("feed_transaction"),
    visible: sql<boolean>`connection_events.feed_xid < ${FEED_HORIZON}`,
  },
  sqlite: {
    // The rowid, which feed_position mirrors: SQLite reads it without an index of its own.
    position: sql.ref<number>("connection_events.seq"),
    transaction: sql<string>`'0'`.as("feed_transaction"),
    visible: sql<boolean>`true`,
  },
} as const;

export interface KyselyStoreOptions {
  readonly dialect: SqlDialect;
  /** PostgreSQL: the pool size; at most half of it serves coalesced checks. */
  readonly poolSize?: number;
  /** PostgreSQL: the pool behind `db`, whose connections writes reserve so that they can be cancelled. */
  readonly pool?: StorePool;
  /** SQLite: whether a transaction is open (SQLite rolls some back by itself, e.g. on a full disk). */
  readonly inTransaction?: () => boolean;
  /** SQLite on a file: flushes the WAL before writes are acknowledged (see transactions.ts). */
  readonly walFlusher?: WalFlusher;
  /** SQLite (required there): the database behind `db`, which check-cache misses read directly. */
  readonly sqlite?: SqliteDatabase.Database;
  /** SQLite: how many Connections the check cache holds (about the least recently used go first). */
  readonly checkCacheEntries?: number;
  /** PostgreSQL: notifications of events committed by other processes; none when the feed only polls. */
  readonly feedListener?: FeedListener;
  /** SQLite: copies the database to a file while it stays in use (better-sqlite3's online backup). */
  readonly backup?: (destination: string) => Promise<unknown>;
}

/** SQLite has one connection and no pool; better-sqlite3 runs each statement synchronously. */
const SQLITE_POOL_STATS: PoolStats = { total: 1, idle: 1, waiting: 0, exhausted: 0 };

export class KyselyStore implements Store {
  readonly #db: Kysely<Database>;
  readonly #dialect: SqlDialect;
  readonly #backup: ((destination: string) => Promise<unknown>) | undefined;
  readonly #checks: CheckReader;
  readonly #pool: StorePool | undefined;
  readonly #transactions: Transactions;
  /** Organizations are never deleted: a positive answer stays true on every replica. */
  readonly #knownOrganizations = new LruMap<string, true>(KNOWN_ORGANIZATIONS);
  /** Compiled once: the check path, point reads and writes skip Kysely's query building. */
  readonly #connectionById: CompiledQuery<ConnectionRow>;
  readonly #insertConnection: (row: Insertable<ConnectionsTable>) => CompiledQuery;
  readonly #insertEvent: (row: Insertable<ConnectionEventsTable>) => CompiledQuery;
  readonly #insertAnswer: (row: Insertable<IdempotencyRecordsTable>) => CompiledQuery;
  /** PostgreSQL: a create's rows in one statement (one round trip, not three); see createConnection. */
  readonly #insertCreated: WriteStatements | undefined;
  /** PostgreSQL: a transition's UPDATE, event and answer in one statement; see saveTransition. */
  readonly #saveTransitioned: WriteStatements | undefined;

  readonly #updateConnection: (values: Readonly<Record<(typeof TRANSITION_COLUMNS)[number], unknown>>) => CompiledQuery;
  readonly #connectionByPair: (values: { source: string; destination: string }) => CompiledQuery<ConnectionRow>;
  readonly #feedListener: FeedListener | undefined;
  readonly #walFlusher: WalFlusher | undefined;
  /** Told after every write of this process commits: it may have appended events. */
  readonly #feedAppended = new Set<() => void>();
  #feedId: string | undefined;

  constructor(db: Kysely<Database>, options: KyselyStoreOptions) {
    this.#db = db;
    this.#dialect = options.dialect;
    this.#backup = options.backup;
    this.#pool = options.pool;
    this.#transactions = new Transactions(db, {
      pool: options.pool,
      inTransaction: options.inTransaction,
      walFlusher: options.walFlusher,
      ended: (committed) => {
        if (committed) for (const listener of this.#feedAppended) listener();
        // Other replicas learn of it after the commit (or the rollback, which may have held their
        // feed back), in one notification for many writes.
        this.#feedListener?.announce();
      },
    });
    this.#feedListener = options.feedListener;
    this.#walFlusher = options.walFlusher;
    this.#connectionById = db.selectFrom("connections").select(CONNECTION_COLUMNS).where("id", "=", "").compile();
    this.#insertConnection = preparedQuery(CONNECTION_RECORD_COLUMNS, (row) =>
      db.insertInto("connections").values(row),
    );
    this.#insertEvent = preparedQuery(EVENT_WRITE_COLUMNS, (row) => db.insertInto("connection_events").values(row));
    this.#insertAnswer = preparedQuery(IDEMPOTENCY_COLUMNS, (row) => db.insertInto("idempotency_records").values(row));
    this.#insertCreated = options.dialect === "postgres" ? createdRowsStatements(db) : undefined;
    this.#saveTransitioned = options.dialect === "postgres" ? transitionStatements(db) : undefined;
    this.#updateConnection = preparedQuery(TRANSITION_COLUMNS, (values) =>
      db
        .updateTable("connections")
        .set(transitionSet(values))
        .where("id", "=", values.id)
        .where("version", "=", values.previous_version),
    );
    this.#connectionByPair = preparedQuery(["source", "destination"], (values) =>
      db
        .selectFrom("connections")
        .select(CONNECTION_COLUMNS)
        .where("source_organization_id", "=", values.source)
        .where("destination_organization_id", "=", values.destination),
    );
    if (options.dialect === "postgres") {
      const connectionsByIds = db
        .selectFrom("connections")
        .select(CONNECTION_COLUMNS)
        .where("id", "=", sql<string>`any(${[]})`)
        .compile();
      this.#checks = new BatchingCheckReader(
        (ids) =>
          this.#transactions.read(async () => {
            const result = await db.executeQuery(withParameters(connectionsByIds, [ids]));
            return result.rows.map(toConnection);
          }),
        Math.max(1, Math.floor((options.poolSize ?? 10) / 2)),
      );
    } else {
      if (options.sqlite === undefined) throw new Error("KyselyStore on SQLite needs options.sqlite");
      const cacheEntries = options.checkCacheEntries ?? DEFAULT_CHECK_CACHE_ENTRIES;
      this.#checks = new CachingCheckReader(new SqliteCheckSource(options.sqlite, db, cacheEntries), cacheEntries);
    }
  }

  async createOrganization(
    organization: OrganizationRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<OrganizationRecord> {
    await this.#transactions.write(signal, async (trx) => {
      await trx
        .insertInto("organizations")
        .values({
          id: organization.id,
          name: organization.name,
          create_time: organization.createTime.toISOString(),
        })
        .execute();
      await this.#saveAnswer(trx, answer);
    });
    this.#knownOrganizations.set(organization.id, true);
    return organization;
  }

  async getOrganization(id: string): Promise<OrganizationRecord | undefined> {
    const row = await this.#transactions.read(() =>
      this.#db
        .selectFrom("organizations")
        .select(["id", "name", "create_time"])
        .where("id", "=", id)
        .executeTakeFirst(),
    );
    if (row === undefined) return undefined;
    this.#knownOrganizations.set(row.id, true);
    return { id: row.id, name: row.name, createTime: toDate(row.create_time) };
  }

  async organizationExists(id: string): Promise<boolean> {
    if (this.#knownOrganizations.get(id) === true) return true;
    const row = await this.#transactions.read(() =>
      this.#db.selectFrom("organizations").select("id").where("id", "=", id).executeTakeFirst(),
    );
    if (row === undefined) return false;
    this.#knownOrganizations.set(id, true);
    return true;
  }

  async createConnection(
    connection: ConnectionRecord,
    event: EventRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<void> {
    const created = this.#insertCreated;
    if (created !== undefined) {
      const rows = { connection: toConnectionRow(connection), event: toEventRow(event) };
      await this.#transactions.writeStatement(signal, created.statement(rows, answer));
    } else {
      await this.#transactions.write(signal, async (trx) => {
        await trx.executeQuery(this.#insertConnection(toConnectionRow(connection)));
        await trx.executeQuery(this.#insertEvent(toEventRow(event)));
        await this.#saveAnswer(trx, answer);
      });
    }
    this.#checks.written(connection);
  }

  async getConnection(id: string): Promise<ConnectionRecord | undefined> {
    const result = await this.#transactions.read(() =>
      this.#db.executeQuery(withParameters(this.#connectionById, [id])),
    );
    const row = result.rows[0];
    return row === undefined ? undefined : toConnection(row);
  }

  async findConnectionByPair(
    sourceOrganizationId: string,
    destinationOrganizationId: string,
  ): Promise<ConnectionRecord | undefined> {
    const result = await this.#transactions.read(() =>
      this.#db.executeQuery(
        this.#connectionByPair({ source: sourceOrganizationId, destination: destinationOrganizationId }),
      ),
    );
    const row = result.rows[0];
    return row === undefined ? undefined : toConnection(row);
  }

  async listConnections(query: ListConnectionsQuery): Promise<Page<ConnectionRecord>> {
    const before = query.before === undefined ? undefined : parseConnectionCursor(query.before);
    const fetch = query.limit + 1;
    // Newest first by create_time, the time every reader is shown; seq breaks ties. create_time
    // comes from the application's clock, so under concurrent creates (or replicas) it need not
    // follow seq: ordering by seq alone would list out of create_time order. Each side is one
    // backward scan of its (organization, create_time, seq) index from the cursor on, so every
    // page costs the same however deep it is; BOTH merges the two scans instead of OR-ing columns.
    const side = (column: "source_organization_id" | "destination_organization_id") => {
      let select = this.#db
        .selectFrom("connections")
        .select(CONNECTION_COLUMNS)
        .where(column, "=", query.organizationId);
      if (query.states.length > 0) select = select.where("state", "in", query.states);
      if (before !== undefined) {
        select = select.where(sql<boolean>`(create_time, seq) < (${before.createTime}, ${before.seq})`);
      }
      return select.orderBy("create_time", "desc").orderBy("seq", "desc").limit(fetch);
    };
    const rows = await this.#transactions.read(() => {
      switch (query.direction) {
        case "OUTBOUND":
          return side("source_organization_id").execute();
        case "INBOUND":
          return side("destination_organization_id").execute();
        case "BOTH":
          return this.#db
            .selectFrom(side("source_organization_id").as("outbound"))
            .selectAll()
            .unionAll(this.#db.selectFrom(side("destination_organization_id").as("inbound")).selectAll())
            .orderBy("create_time", "desc")
            .orderBy("seq", "desc")
            .limit(fetch)
            .execute();
      }
    });
    return toPage(rows, query.limit, toConnection, connectionCursor);
  }

  async saveTransition(
    next: ConnectionRecord,
    event: EventRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<boolean> {
    const values = {
      id: next.id,
      name: next.name,
      scopes: JSON.stringify(next.scopes),
      state: next.state,
      update_time: next.updateTime.toISOString(),
      activate_time: next.activateTime?.toISOString() ?? null,
      deactivate_time: next.deactivateTime?.toISOString() ?? null,
      version: next.version,
      previous_version: next.version - 1,
    };
    const transitioned = this.#saveTransitioned;
    let saved: boolean;
    if (transitioned !== undefined) {
      // The event and the answer are inserted only if the UPDATE found the version: a count of 0
      // is a lost race, as below.
      const rows = { connection: values, event: toEventRow(event) };
      const result = await this.#transactions.writeStatement(signal, transitioned.statement(rows, answer));
      saved = result.numAffectedRows !== 0n;
    } else {
      saved = await this.#transactions.write(signal, async (trx) => {
        const result = await trx.executeQuery(this.#updateConnection(values));
        if (result.numAffectedRows === 0n) return false;
        await trx.executeQuery(this.#insertEvent(toEventRow(event)));
        await this.#saveAnswer(trx, answer);
        return true;
      });
    }
    if (saved) this.#checks.written(next);
    return saved;
  }

  async listEvents(query: ListEventsQuery): Promise<Page<EventRecord>> {
    const after = query.after === undefined ? undefined : parseCursor(query.after);
    const rows = await this.#transactions.read(() => {
      let select = this.#db
        .selectFrom("connection_events")
        .select(EVENT_COLUMNS)
        .where("connection_id", "=", query.connectionId);
      if (after !== undefined) select = select.where("seq", ">", after);
      return select
        .orderBy("seq", "asc")
        .limit(query.limit + 1)
        .execute();
    });
    return toPage(rows, query.limit, toEvent, (row) => String(row.seq));
  }

  async findIdempotencyRecord(scope: string, requestId: string): Promise<IdempotencyRecord | undefined> {
    const row = await this.#transactions.read(() =>
      this.#db
        .selectFrom("idempotency_records")
        .select(IDEMPOTENCY_COLUMNS)
        .where("scope", "=", scope)
        .where("request_id", "=", requestId)
        .executeTakeFirst(),
    );
    return row === undefined ? undefined : toIdempotencyRecord(row);
  }

  async saveIdempotencyRecord(record: IdempotencyRecord, signal?: Cancellation): Promise<void> {
    await this.#transactions.write(signal, (trx) => this.#saveAnswer(trx, record));
  }

  async pruneIdempotencyRecords(before: Date, limit: number): Promise<number> {
    // One short statement per batch, by primary key, so that no write waits on a long delete.
    const result = await this.#transactions.write(undefined, (trx) =>
      trx
        .deleteFrom("idempotency_records")
        .where((eb) =>
          eb(
            eb.refTuple("scope", "request_id"),
            "in",
            eb
              .selectFrom("idempotency_records")
              .select(["scope", "request_id"])
              .where("create_time", "<", before.toISOString())
              .orderBy("create_time")
              .limit(limit)
              .$asTuple("scope", "request_id"),
          ),
        )
        .executeTakeFirst(),
    );
    return Number(result.numDeletedRows);
  }

  async feedId(): Promise<string> {
    this.#feedId ??= (
      await this.#transactions.read(() => this.#db.selectFrom("feed").select("id").executeTakeFirstOrThrow())
    ).id;
    return this.#feedId;
  }

  async feedHead(): Promise<FeedPosition> {
    const feed = FEED[this.#dialect];
    const row = await this.#transactions.read(() => {
      let select = this.#db
        .selectFrom("connection_events")
        .select([feed.position.as("feed_position"), feed.transaction])
        .where(feed.visible);
      if (this.#dialect === "postgres") select = select.orderBy(sql`connection_events.feed_xid`, "desc");
      return select.orderBy(feed.position, "desc").limit(1).executeTakeFirst();
    });
    return row === undefined ? FEED_START : feedPosition(row.feed_transaction, row.feed_position);
  }

  async feedContains(position: FeedPosition): Promise<boolean> {
    const parts = feedPositionParts(position);
    if (parts === undefined || (this.#dialect === "sqlite" && parts.transaction !== "0")) return false;
    const row = await this.#transactions.read(() => {
      const select = this.#db
        .selectFrom("connection_events")
        .select("seq")
        .where(FEED[this.#dialect].position, "=", Number(parts.position));
      return (
        this.#dialect === "postgres" ? select.where(sql<boolean>`feed_xid = ${parts.transaction}::xid8`) : select
      ).executeTakeFirst();
    });
    return row !== undefined;
  }

  async readFeed(query: FeedQuery): Promise<FeedEntry[]> {
    const feed = FEED[this.#dialect];
    const rows = await this.#transactions.read(() => {
      // Named columns, not `*`: a prepared statement whose `*` a migration widens fails with
      // "cached plan must not change result type" (pg-pool.ts).
      let select = this.#db
        .selectFrom("connection_events")
        .innerJoin("connections", "connections.id", "connection_events.connection_id")
        .select(EVENT_COLUMNS.map((column) => `connection_events.${column}` as const))
        .select([feed.position.as("feed_position"), feed.transaction])
        .where(feed.visible)
        .select([
          "connections.source_organization_id as feed_source_organization_id",
          "connections.destination_organization_id as feed_destination_organization_id",
        ])
        .where(this.#feedCompare(">", query.after));
      if (query.through !== undefined) select = select.where(this.#feedCompare("<=", query.through));
      const organizationId = query.organizationId;
      if (organizationId !== undefined) {
        select = select.where((eb) =>
          eb.or([
            eb("connections.source_organization_id", "=", organizationId),
            eb("connections.destination_organization_id", "=", organizationId),
          ]),
        );
      }
      if (this.#dialect === "postgres") select = select.orderBy(sql`connection_events.feed_xid`);
      return select.orderBy(feed.position).limit(query.limit).execute();
    });
    return rows.map((row) => ({
      position: feedPosition(row.feed_transaction, row.feed_position),
      event: toEvent(row),
      sourceOrganizationId: row.feed_source_organization_id,
      destinationOrganizationId: row.feed_destination_organization_id,
    }));
  }

  /** An event's place compared with `position`, in the feed's order. */
  #feedCompare(operator: ">" | "<=", position: FeedPosition): RawBuilder<boolean> {
    const parts = feedPositionParts(position);
    if (parts === undefined) throw new InvalidCursorError();
    if (this.#dialect === "sqlite") {
      // Transaction ids are all 0 on SQLite: past any place with another one, or before it.
      if (parts.transaction !== "0") return sql<boolean>`${sql.lit(operator === "<=")}`;
      return sql<boolean>`${FEED.sqlite.position} ${sql.raw(operator)} ${Number(parts.position)}`;
    }
    return sql<boolean>`(connection_events.feed_xid, connection_events.feed_position) ${sql.raw(operator)} (${parts.transaction}::xid8, ${parts.position}::bigint)`;
  }

  onFeedAppended(listener: () => void): () => void {
    this.#feedAppended.add(listener);
    const unsubscribe = this.#feedListener?.subscribe(listener);
    return () => {
      this.#feedAppended.delete(listener);
      unsubscribe?.();
    };
  }

  getConnectionForCheck(id: string): Promise<ConnectionRecord | undefined> {
    return this.#checks.get(id);
  }

  getConnectionsForCheck(ids: readonly string[]): Promise<(ConnectionRecord | undefined)[]> {
    return this.#checks.getMany(ids);
  }

  checkCacheStats(): CheckCacheStats | undefined {
    return this.#checks.cacheStats();
  }

  poolStats(): PoolStats {
    return this.#pool?.stats() ?? SQLITE_POOL_STATS;
  }

  async ping(): Promise<void> {
    // PostgreSQL: the pool's probe, which also decides whether calls fail at once.
    if (this.#pool !== undefined) return this.#pool.probe();
    await this.#transactions.read(() => sql`select 1`.execute(this.#db));
  }

  async backup(destination: string): Promise<void> {
    if (this.#backup === undefined) {
      throw new Error("PostgreSQL is backed up with its own tools (pg_dump, pg_basebackup); see docs/operations.md");
    }
    await this.#backup(destination);
  }

  async pendingMigrations(): Promise<readonly string[]> {
    const status = await this.#transactions.read(() => readSchemaStatus(this.#db as Kysely<unknown>, this.#dialect));
    return status.pending;
  }

  /** Saves the answer of an idempotent write in the write's own transaction. */
  async #saveAnswer(trx: Kysely<Database>, answer: IdempotencyRecord | undefined): Promise<void> {
    if (answer !== undefined) await trx.executeQuery(this.#insertAnswer(toIdempotencyRow(answer)));
  }

  async close(): Promise<void> {
    await this.#feedListener?.close();
    await this.#walFlusher?.close();
    await this.#db.destroy();
  }
}

/** What a transition writes: TRANSITION_COLUMNS but the id it matches and the version it replaces. */
function transitionSet<V>(values: Readonly<Record<(typeof TRANSITION_COLUMNS)[number], V>>) {
  return {
    name: values.name,
    scopes: values.scopes,
    state: values.state,
    update_time: values.update_time,
    activate_time: values.activate_time,
    deactivate_time: values.deactivate_time,
    version: values.version,
  };
}

/**
 * PostgreSQL's writes of a Connection as one statement each, through data-modifying CTEs, sent with
 * their BEGIN and COMMIT in one go (Transactions.writeStatement): each round trip to the server
 * costs the replica more CPU than the rows do. A write's transaction still runs at REPEATABLE READ
 * with its statement timeout, and an event's foreign key is checked at the end of the statement,
 * when the Connection's row is there. SQLite has no such CTEs, and no round trips to save.
 */
interface WriteStatements {
  /** The statement for these rows, with the answer's row when the write has an idempotency record. */
  statement(
    rows: { readonly connection: Readonly<Record<string, unknown>>; readonly event: Insertable<ConnectionEventsTable> },
    answer: IdempotencyRecord | undefined,
  ): CompiledQuery;
}

/** A prepared write statement: each row's values under its name (preparedStatement). */
type RowsStatement = (rows: {
  readonly connection: Readonly<Record<string, unknown>>;
  readonly event: Insertable<ConnectionEventsTable>;
  readonly answer?: Insertable<IdempotencyRecordsTable>;
}) => CompiledQuery;

/** The statement with the answer's row and the one without, each prepared once. */
function writeStatements(withAnswer: RowsStatement, withoutAnswer: RowsStatement): WriteStatements {
  return {
    statement: (rows, answer) =>
      answer === undefined ? withoutAnswer(rows) : withAnswer({ ...rows, answer: toIdempotencyRow(answer) }),
  };
}

/** A create: the Connection, its event and (for an idempotent write) the answer. */
function createdRowsStatements(db: Kysely<Database>): WriteStatements {
  const prepare = (withAnswer: boolean) =>
    preparedStatement(
      {
        connection: CONNECTION_RECORD_COLUMNS,
        event: EVENT_WRITE_COLUMNS,
        answer: withAnswer ? IDEMPOTENCY_COLUMNS : [],
      },
      (markers) => {
        const connection = db.with("new_connection", (cte) => cte.insertInto("connections").values(markers.connection));
        return withAnswer
          ? connection
              .with("new_event", (cte) => cte.insertInto("connection_events").values(markers.event))
              .insertInto("idempotency_records")
              .values(markers.answer as Insertable<IdempotencyRecordsTable>)
          : connection.insertInto("connection_events").values(markers.event);
      },
    );
  return writeStatements(prepare(true), prepare(false));
}

/**
 * A transition: the UPDATE under the optimistic version lock, then the event and (for an
 * idempotent write) the answer, each inserted from the UPDATE's result, so only when it found the
 * version. The statement's count of rows is then 1, or 0 for a lost race. PostgreSQL takes the
 * parameters' types from the columns they are inserted into.
 */
function transitionStatements(db: Kysely<Database>): WriteStatements {
  const prepare = (withAnswer: boolean) =>
    preparedStatement(
      { connection: TRANSITION_COLUMNS, event: EVENT_WRITE_COLUMNS, answer: withAnswer ? IDEMPOTENCY_COLUMNS : [] },
      (markers) => {
        const values = markers.connection;
        const updated = db.with("updated", (cte) =>
          cte
            .updateTable("connections")
            .set(transitionSet(values))
            .where("id", "=", values.id)
            .where("version", "=", values.previous_version)
            .returning("id"),
        );
        /** `row` as one row per updated Connection (none when the version was not found). */
        const ifUpdated = (row: Readonly<Record<string, never>>) =>
          db
            .selectFrom("updated" as never)
            .select((eb) => Object.entries(row).map(([column, marker]) => eb.val(marker).as(column)));
        return withAnswer
          ? updated
              .with("new_event", (cte) =>
                cte
                  .insertInto("connection_events")
                  .columns([...EVENT_WRITE_COLUMNS])
                  .expression(ifUpdated(markers.event)),
              )
              .insertInto("idempotency_records")
              .columns([...IDEMPOTENCY_COLUMNS])
              .expression(ifUpdated(markers.answer as Readonly<Record<string, never>>))
          : updated
              .insertInto("connection_events")
              .columns([...EVENT_WRITE_COLUMNS])
              .expression(ifUpdated(markers.event));
      },
    );
  return writeStatements(prepare(true), prepare(false));
}
