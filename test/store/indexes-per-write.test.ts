// What a write costs is mostly the B-tree pages it changes: on SQLite each is a page of WAL written
// and flushed, on PostgreSQL an index insert with its WAL record. Migration 0006 removed, on each
// dialect, a unique index that every event (and every Connection, on PostgreSQL) wrote and no read
// used: on SQLite the feed position's (a copy of the rowid, which the feed now reads), on
// PostgreSQL seq's (an identity column). Migration 0007 (PostgreSQL) leaves room on Connection
// pages, so that a transition updates its row in place (HOT) without touching any index. Checked
// here: the indexes left, that the SQLite feed reads by the rowid and never scans the events, that
// a database an earlier release filled keeps its feed, and that transitions stay on their page.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely, Migrator, SqliteDialect, sql } from "kysely";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { KyselyStore } from "../../src/store/kysely-store.js";
import { migrateToLatest, migrationProvider } from "../../src/store/migrations.js";
import { openStore } from "../../src/store/open.js";
import type { Database } from "../../src/store/schema.js";
import { FEED_START, feedPosition } from "../../src/store/store.js";
import { describePostgres, provisionPostgres, testPool } from "../support/databases.js";
import { connectionRecord, createdEvent, newOrganization, transition } from "./fixtures.js";

describe("SQLite: the indexes a write changes (migration 0006)", () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it("keeps no index of the feed's position", async () => {
    const sqlite = new SqliteDatabase(":memory:");
    const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
    cleanups.push(() => db.destroy());
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    const indexes = (sqlite.prepare("pragma index_list(connection_events)").all() as { name: string }[]).map(
      (index) => index.name,
    );
    expect(indexes.sort()).toEqual(["connection_events_connection_seq_idx", "sqlite_autoindex_connection_events_1"]);
  });

  it("reads the feed by the rowid, never by a scan of the events", async () => {
    const sqlite = new SqliteDatabase(":memory:");
    const statements: string[] = [];
    const db = new Kysely<Database>({
      dialect: new SqliteDialect({ database: sqlite }),
      log: (event) => {
        if (event.level === "query") statements.push(event.query.sql);
      },
    });
    cleanups.push(() => db.destroy());
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    const store = new KyselyStore(db, { dialect: "sqlite", sqlite, inTransaction: () => sqlite.inTransaction });
    await store.createOrganization({ id: "org_a", name: "A", createTime: new Date() });
    await store.createOrganization({ id: "org_b", name: "B", createTime: new Date() });
    const fillStatements = statements.length;

    const head = await store.feedHead();
    expect(await store.feedContains(head)).toBe(false);
    await store.readFeed({ after: FEED_START, through: head, organizationId: "org_a", limit: 10 });
    await store.readFeed({ after: feedPosition(0, 5), through: undefined, organizationId: undefined, limit: 10 });

    const feedStatements = statements.slice(fillStatements).filter((text) => text.includes("connection_events"));
    expect(feedStatements.length).toBeGreaterThanOrEqual(4);
    for (const text of feedStatements) {
      const parameters = Array.from(text.matchAll(/\?/g), () => 0);
      const plan = (sqlite.prepare(`explain query plan ${text}`).all(...parameters) as { detail: string }[])
        .map((step) => step.detail)
        .join("; ");
      // Unfiltered, a place in the feed is sought in the rowid's B-tree, and the head is the last
      // row in the rowid's own order (SQLite calls that a scan; LIMIT 1 ends it at the first row).
      // One organization's events are found through its Connections (as before 0006).
      if (text.includes('organization_id" = ?')) {
        expect(plan, text).toMatch(/SEARCH connection_events USING INDEX connection_events_connection_seq_idx/);
      } else if (/\bseq" (>|<=|=) \?/.test(text)) {
        expect(plan, text).toMatch(/SEARCH connection_events USING INTEGER PRIMARY KEY/);
        expect(plan, text).not.toMatch(/TEMP B-TREE/);
      } else {
        expect(plan, text).toBe("SCAN connection_events");
      }
    }
  });

  it("keeps the feed of a database that the release before it filled", async () => {
    const directory = mkdtempSync(join(tmpdir(), "connections-pages-"));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    const path = join(directory, "filled.db");

    const db = new Kysely<unknown>({ dialect: new SqliteDialect({ database: new SqliteDatabase(path) }) });
    try {
      const migrator = new Migrator({ db, provider: migrationProvider("sqlite") });
      expect((await migrator.migrateTo("0004_idempotency")).error).toBeUndefined();
      await sql`insert into organizations (id, name, create_time) values
        ('org_a', 'A', '2026-01-01T00:00:00.000Z'), ('org_b', 'B', '2026-01-01T00:00:00.000Z')`.execute(db);
      await sql`insert into connections (id, source_organization_id, destination_organization_id, name, scopes,
          state, create_time, update_time, activate_time, deactivate_time, creator, create_request_id, version)
        values ('cxn_old', 'org_a', 'org_b', 'Old', '["account.read"]', 'ACTIVE', '2026-01-02T00:00:00.000Z',
          '2026-01-03T00:00:00.000Z', '2026-01-03T00:00:00.000Z', null, '', '', 2)`.execute(db);
      await sql`insert into connection_events (id, connection_id, type, from_state, to_state, actor_organization_id,
          caller, actor, reason, request_id, create_time, source_organization_id, destination_organization_id, scopes)
        values
          ('evt_1', 'cxn_old', 'CREATED', null, 'PENDING', 'org_a', 'api-gateway', '', '', 'req_1',
            '2026-01-02T00:00:00.000Z', 'org_a', 'org_b', '["account.read"]'),
          ('evt_2', 'cxn_old', 'ACTIVATED', 'PENDING', 'ACTIVE', 'org_b', 'dashboard-bff', '', '', 'req_2',
            '2026-01-03T00:00:00.000Z', 'org_a', 'org_b', '["account.read"]')`.execute(db);
    } finally {
      await db.destroy();
    }

    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      const feed = await store.readFeed({
        after: FEED_START,
        through: undefined,
        organizationId: undefined,
        limit: 10,
      });
      expect(feed.map((entry) => [entry.event.id, entry.position])).toEqual([
        ["evt_1", feedPosition(0, 1)],
        ["evt_2", feedPosition(0, 2)],
      ]);
      expect(await store.feedHead()).toBe(feedPosition(0, 2));
      expect(await store.feedContains(feedPosition(0, 2))).toBe(true);
      expect(await store.feedContains(feedPosition(0, 3))).toBe(false);
    } finally {
      await store.close();
    }
  });
});

describePostgres("PostgreSQL: the indexes a write changes (migration 0006)", () => {
  it("keeps no index of seq alone, and lists, pages events and reads the feed as before", {
    timeout: 30_000,
  }, async () => {
    const provisioned = await provisionPostgres();
    try {
      const store = await openStore({ databaseUrl: provisioned.url });
      try {
        const source = await newOrganization(store);
        const destinations = [await newOrganization(store), await newOrganization(store)];
        const connections = destinations.map((destination) => connectionRecord(source, destination));
        for (const connection of connections) await store.createConnection(connection, createdEvent(connection));
        const listed = await store.listConnections({
          organizationId: source,
          direction: "OUTBOUND",
          states: [],
          before: undefined,
          limit: 10,
        });
        expect(listed.items.map((connection) => connection.id)).toEqual(connections.map(({ id }) => id).reverse());
        const feed = await store.readFeed({ after: FEED_START, through: undefined, organizationId: source, limit: 10 });
        expect(feed.map((entry) => entry.event.connectionId)).toEqual(connections.map(({ id }) => id));
        const events = await store.listEvents({ connectionId: connections[0]?.id ?? "", after: undefined, limit: 10 });
        expect(events.items.map((event) => event.type)).toEqual(["CREATED"]);
      } finally {
        await store.close();
      }
      const pool = testPool({ connectionString: provisioned.url, max: 1 });
      try {
        const { rows } = await pool.query<{ indexname: string }>(
          "select indexname from pg_indexes where tablename in ('connections', 'connection_events') order by 1",
        );
        expect(rows.map((row) => row.indexname)).toEqual([
          "connection_events_connection_seq_idx",
          "connection_events_feed_order_key",
          "connection_events_pkey",
          "connections_destination_time_idx",
          "connections_pair_key",
          "connections_pkey",
          "connections_source_time_idx",
        ]);
      } finally {
        await pool.end();
      }
    } finally {
      await provisioned.drop();
    }
  });
  it("updates a Connection in place on its page (HOT) when it transitions", { timeout: 30_000 }, async () => {
    const provisioned = await provisionPostgres();
    try {
      const store = await openStore({ databaseUrl: provisioned.url });
      const pool = testPool({ connectionString: provisioned.url, max: 1 });
      try {
        const source = await newOrganization(store);
        const connections = [];
        // Enough rows to fill several pages.
        for (let i = 0; i < 250; i++) {
          const connection = connectionRecord(source, await newOrganization(store));
          await store.createConnection(connection, createdEvent(connection));
          connections.push(connection);
        }
        const pages = async () =>
          new Map(
            (
              await pool.query<{ id: string; page: string }>(
                "select id, (ctid::text::point)[0]::bigint::text as page from connections",
              )
            ).rows.map((row) => [row.id, row.page]),
          );
        const before = await pages();
        // One Connection on each page that inserts filled (every page but the last): the room
        // kept free takes one new row version. Later updates of the same page need its dead
        // versions pruned first, which any snapshot still open in the database may put off.
        const lastPage = Math.max(...Array.from(before.values(), Number));
        const firstOnPage = new Map<string, (typeof connections)[number]>();
        for (const connection of connections) {
          const page = before.get(connection.id) as string;
          if (Number(page) !== lastPage && !firstOnPage.has(page)) firstOnPage.set(page, connection);
        }
        expect(firstOnPage.size).toBeGreaterThan(3);
        // A snapshot older than the updates, as a concurrent read may hold: no dead version can be
        // pruned meanwhile, so the room kept free is all there is.
        const reader = new pg.Client({ connectionString: provisioned.url });
        await reader.connect();
        await reader.query("begin isolation level repeatable read");
        await reader.query("select count(*) from connections");
        for (const connection of firstOnPage.values()) {
          const { next, event } = transition(connection, "ACTIVE");
          expect(await store.saveTransition(next, event)).toBe(true);
        }
        await reader.end();
        const after = await pages();
        const moved = [...firstOnPage.values()].filter(
          (connection) => after.get(connection.id) !== before.get(connection.id),
        );
        expect(moved).toEqual([]);
      } finally {
        await pool.end();
        await store.close();
      }
    } finally {
      await provisioned.drop();
    }
  });
});
