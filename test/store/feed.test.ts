// The change feed's storage contract on every database: places growing with every event, range
// reads with visibility, and (PostgreSQL) the cases that sequence ids get wrong: a transaction
// that recorded an event stays open while a younger one commits its own, or two writers commit out
// of transaction id order. A watcher resumed from a cursor taken before must still get every event
// exactly once, in the feed's order; and a cursor issued before places carried transaction ids
// (a dense position) still resumes after the upgrade.

import { Kysely, Migrator, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, expect, it, onTestFinished } from "vitest";
import { encodeCursor, Feed, type FeedBatch, type FeedOptions } from "../../src/app/feed.js";
import { migrationProvider } from "../../src/store/migrations.js";
import { openStore } from "../../src/store/open.js";
import {
  type ConnectionRecord,
  FEED_START,
  type FeedPosition,
  feedPosition,
  type Store,
} from "../../src/store/store.js";
import {
  createTestStore,
  describeEachDatabase,
  postgresAdminUrl,
  provisionPostgres,
  type TestStore,
  testPool,
} from "../support/databases.js";
import { until } from "../support/until.js";
import { connectionRecord, createdEvent, newOrganization, transition, uniqueId } from "./fixtures.js";

/**
 * A feed on `store` whose poll errors are kept for the test to look at: thrown from the poller,
 * they would be unhandled rejections reported against whichever file runs next.
 */
function feedOn(store: Store, options: Partial<FeedOptions>): { feed: Feed; pollErrors: unknown[] } {
  const pollErrors: unknown[] = [];
  const feed = new Feed(store, { maxWatchers: 10, heartbeatMs: 10_000, pollIntervalMs: 50, ...options }, (error) =>
    pollErrors.push(error),
  );
  return { feed, pollErrors };
}

describeEachDatabase("Store change feed", (database) => {
  let testStore: TestStore;
  let store: Store;

  beforeAll(async () => {
    testStore = await createTestStore(database);
    store = testStore.store;
  }, 30_000);

  afterAll(async () => {
    await testStore?.dispose();
  });

  // On PostgreSQL a read may not see an event at once: the horizon stops below any transaction
  // that may still be running here (such as the NOTIFY that announced an earlier write), and one
  // that ends in another database between the query's snapshot and its look at pg_stat_activity
  // counts as such. It holds back, never skips: each read is looked at once it holds as much as it
  // will.
  async function settled<T extends { length: number }>(read: () => Promise<T>, length: number): Promise<T> {
    let result = await read();
    await until(async () => {
      result = await read();
      return result.length >= length;
    }, `a feed read of ${length}`);
    return result;
  }

  async function newConnection(source?: string, destination?: string) {
    const connection = connectionRecord(
      source ?? (await newOrganization(store)),
      destination ?? (await newOrganization(store)),
    );
    await store.createConnection(connection, createdEvent(connection));
    return connection;
  }

  it("places events in order, one after the other, and reads ranges with the parties, filtered by organization", async () => {
    expect(await store.feedHead()).toBe(FEED_START);
    const [a, b, c] = [await newOrganization(store), await newOrganization(store), await newOrganization(store)];
    const ab = await newConnection(a, b);
    const bc = await newConnection(b, c);
    const { next, event } = transition(ab, "ACTIVE");
    expect(await store.saveTransition(next, event)).toBe(true);

    const all = await settled(
      () => store.readFeed({ after: FEED_START, through: undefined, organizationId: undefined, limit: 10 }),
      3,
    );
    expect(all.map((entry) => [entry.event.connectionId, entry.event.type])).toEqual([
      [ab.id, "CREATED"],
      [bc.id, "CREATED"],
      [ab.id, "ACTIVATED"],
    ]);
    const [first, second, third] = all.map((entry) => entry.position) as [string, string, string];
    expect(first > FEED_START && second > first && third > second).toBe(true);
    await until(async () => (await store.feedHead()) === third, "the head to reach the third event");
    expect(all[2]).toMatchObject({ sourceOrganizationId: a, destinationOrganizationId: b, event });
    const ofC = await settled(
      () => store.readFeed({ after: FEED_START, through: undefined, organizationId: c, limit: 10 }),
      1,
    );
    expect(ofC.map((entry) => entry.position)).toEqual([second]);
    const window = await settled(
      () => store.readFeed({ after: first, through: second, organizationId: undefined, limit: 10 }),
      1,
    );
    expect(window.map((entry) => entry.position)).toEqual([second]);
    expect(
      await settled(
        () => store.readFeed({ after: FEED_START, through: undefined, organizationId: undefined, limit: 1 }),
        1,
      ),
    ).toHaveLength(1);
    expect(await store.feedContains(second)).toBe(true);
    expect(await store.feedContains(feedPosition(0, 1_000_000))).toBe(false);
    expect(await store.feedContains("garbage")).toBe(false);
  });

  it("has a stable identity and tells its subscribers about its own writes", async () => {
    const id = await store.feedId();
    expect(id).toMatch(/^[A-Za-z0-9_-]{8,}$/);
    expect(await store.feedId()).toBe(id);
    let told = 0;
    const unsubscribe = store.onFeedAppended(() => told++);
    await newConnection();
    expect(told).toBeGreaterThanOrEqual(1);
    unsubscribe();
    const before = told;
    await newConnection();
    expect(told).toBe(before);
  });

  it("resets a stream that must end while its consumer does not read, after a few heartbeat intervals", async () => {
    const { feed } = feedOn(store, { heartbeatMs: 50, pollIntervalMs: 1000 });
    let abandoned = 0;
    const batches = feed.watch(
      { organizationId: undefined },
      { startAfter: "", startAtNow: true },
      { signal: new AbortController().signal, deadline: undefined, abandon: () => abandoned++ },
    );
    await batches.next();
    expect(feed.watcherCount).toBe(1);
    // The consumer never asks for the next message; shutdown must still free the stream.
    feed.shutDown();
    for (let attempt = 0; attempt < 400 && abandoned === 0; attempt++) await new Promise((r) => setTimeout(r, 10));
    expect(abandoned).toBe(1);
    // Once the transport has reset the stream, the generator is closed and frees its slot.
    await batches.return();
    expect(feed.watcherCount).toBe(0);
  });

  /**
   * A watcher of every event from `start`, polling often (notifications do not come from raw
   * sessions). Stopped when the test ends, passed or failed: a poller left running would read a
   * closed store for the rest of the worker's files.
   */
  async function watchFrom(start: FeedPosition, pollIntervalMs = 50) {
    const { feed, pollErrors } = feedOn(store, { pollIntervalMs });
    const abort = new AbortController();
    const batches = feed.watch(
      { organizationId: undefined },
      { startAfter: encodeCursor(await store.feedId(), start), startAtNow: false },
      { signal: abort.signal, deadline: undefined },
    );
    const stop = async () => {
      abort.abort();
      await batches.return();
    };
    onTestFinished(stop);
    // Started now (a generator runs only when asked): its first message is taken with the rest.
    let first: Promise<IteratorResult<FeedBatch, void>> | undefined = batches.next();
    await first;
    return {
      /** The events of the next messages, until at least `count` came. */
      async take(count: number): Promise<string[]> {
        const delivered: string[] = [];
        while (delivered.length < count) {
          const batch = (await (first ?? batches.next())).value as FeedBatch;
          first = undefined;
          delivered.push(...batch.events.map((e) => e.id));
        }
        expect(pollErrors).toEqual([]);
        return delivered;
      },
      stop,
    };
  }

  /**
   * The head once it has reached `connection`'s last event: held back for a moment (see settled),
   * a head taken as a test's start would lie before events the test then receives.
   */
  async function settledHead(connection: ConnectionRecord): Promise<FeedPosition> {
    let last: FeedPosition | undefined;
    await until(async () => {
      const events = await store.readFeed({
        after: FEED_START,
        through: undefined,
        organizationId: connection.sourceOrganizationId,
        limit: 100,
      });
      last = events.at(-1)?.position;
      return last !== undefined && (await store.feedHead()) === last;
    }, `the head to reach ${connection.id}'s last event`);
    return last as FeedPosition;
  }

  /**
   * A raw session that records an event for `connection` in a transaction it leaves open, rolled
   * back if the test ends first: left open, it would hold the feed back for every later test.
   */
  async function openWriter(connection: ConnectionRecord) {
    const raw = new pg.Client({ connectionString: testStore.url });
    await raw.connect();
    let open = true;
    onTestFinished(async () => {
      if (open) await raw.query("rollback");
      open = false;
      await raw.end();
    });
    const id = uniqueId("evt_raw");
    await raw.query("begin");
    await raw.query(
      `insert into connection_events (id, connection_id, type, from_state, to_state, actor_organization_id,
         caller, actor, reason, request_id, create_time)
       values ($1, $2, 'DEACTIVATED', 'PENDING', 'INACTIVE', $3, 'dashboard-bff', '', '', '', now())`,
      [id, connection.id, connection.sourceOrganizationId],
    );
    return {
      id,
      async commit() {
        await raw.query("commit");
        open = false;
      },
    };
  }

  it.runIf(database.dialect === "postgres")(
    "delivers an event whose transaction was held open while a younger one committed, exactly once and in order",
    async () => {
      const held = await newConnection();
      const other = await newConnection();
      const start = await settledHead(other);
      const watcher = await watchFrom(start);

      // The held transaction records its event (taking the older transaction id) and stays open.
      const heldWriter = await openWriter(held);
      // Meanwhile a transition commits: nothing makes it wait (no lock that every writer takes).
      const { next, event } = transition(other, "ACTIVE");
      expect(await store.saveTransition(next, event)).toBe(true);
      await newOrganization(store);
      // The younger event is committed but is not read while the older transaction may still add
      // an event before it.
      expect((await store.feedHead()) <= start).toBe(true);
      expect(await store.readFeed({ after: start, through: undefined, organizationId: undefined, limit: 10 })).toEqual(
        [],
      );

      await heldWriter.commit();
      expect(await watcher.take(2)).toEqual([heldWriter.id, event.id]);
      const entries = await settled(
        () => store.readFeed({ after: start, through: undefined, organizationId: undefined, limit: 10 }),
        2,
      );
      expect(entries.map((entry) => entry.event.id)).toEqual([heldWriter.id, event.id]);
      await until(async () => (await store.feedHead()) === entries[1]?.position, "the head to reach the transition");
      await watcher.stop();
    },
  );

  it.runIf(database.dialect === "postgres")(
    "looks again soon after a wake-up found its event held back by a transaction outside the service",
    async () => {
      const [held, other] = [await newConnection(), await newConnection()];
      // No periodic poll within the test's time: only the looks after the wake-up can deliver.
      const watcher = await watchFrom(await settledHead(other), 60_000);
      const older = await openWriter(held);
      const { next, event } = transition(other, "ACTIVE");
      // Wakes the poller, which finds the younger event held back by the open transaction.
      expect(await store.saveTransition(next, event)).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 100));
      // A session outside the service: its commit is announced to no one.
      await older.commit();
      expect(await watcher.take(2)).toEqual([older.id, event.id]);
      await watcher.stop();
    },
  );

  it.runIf(database.dialect === "postgres")(
    "delivers two writers that commit out of transaction id order exactly once, older id first, to a resumed cursor",
    async () => {
      const [one, two] = [await newConnection(), await newConnection()];
      const start = await settledHead(two);
      const older = await openWriter(one);
      const younger = await openWriter(two);
      await younger.commit();
      const watcher = await watchFrom(start);
      await older.commit();
      expect(await watcher.take(2)).toEqual([older.id, younger.id]);
      await watcher.stop();
      // A cursor taken between the two (after the older one) resumes with the younger one only.
      const [first] = await settled(
        () => store.readFeed({ after: start, through: undefined, organizationId: undefined, limit: 1 }),
        1,
      );
      const resumed = await watchFrom(first?.position ?? start);
      expect(await resumed.take(1)).toEqual([younger.id]);
      await resumed.stop();
    },
  );
});

it.runIf(postgresAdminUrl !== undefined)(
  "resumes a cursor issued before places carried transaction ids, after the upgrade, exactly once",
  async () => {
    const database = await provisionPostgres();
    const db = new Kysely<unknown>({
      dialect: new PostgresDialect({ pool: testPool({ connectionString: database.url }) }),
    });
    let store: Store | undefined;
    try {
      // The schema as it was: dense positions from the one-row counter.
      const migrator = new Migrator({ db, provider: migrationProvider("postgres") });
      const { error } = await migrator.migrateTo("0003_feed_positions");
      if (error !== undefined) throw error;
      for (const id of ["org_a", "org_b"]) {
        await sql`insert into organizations (id, name, create_time) values (${id}, ${id}, now())`.execute(db);
      }
      const insertConnection = (id: string, source: string, destination: string) =>
        sql`insert into connections (id, source_organization_id, destination_organization_id, name, scopes, state,
              create_time, update_time, creator, create_request_id, version)
            values (${id}, ${source}, ${destination}, 'x', '[]', 'PENDING', now(), now(), '', '', 1)`.execute(db);
      const insertEvent = (id: string, connection: string) =>
        sql`insert into connection_events (id, connection_id, type, to_state, actor_organization_id, caller, actor,
              reason, request_id, create_time)
            values (${id}, ${connection}, 'CREATED', 'PENDING', 'org_a', 'dashboard-bff', '', '', '', now())`.execute(
          db,
        );
      await insertConnection("cxn_before_1", "org_a", "org_b");
      await insertEvent("evt_before_1", "cxn_before_1");
      await insertConnection("cxn_before_2", "org_b", "org_a");
      await insertEvent("evt_before_2", "cxn_before_2");
      const feedId = (await sql<{ id: string }>`select id from feed`.execute(db)).rows[0]?.id ?? "";
      // What a watcher held after the first event: position 1.
      const oldCursor = Buffer.from(`f1.${feedId}.1`).toString("base64url");

      store = await openStore({ databaseUrl: database.url });
      const connection = connectionRecord("org_a", await newOrganization(store));
      const created = createdEvent(connection);
      await store.createConnection(connection, created);
      const { feed, pollErrors } = feedOn(store, { pollIntervalMs: 50 });
      const abort = new AbortController();
      const batches = feed.watch(
        { organizationId: undefined },
        { startAfter: oldCursor, startAtNow: false },
        { signal: abort.signal, deadline: undefined },
      );
      // Stopped however the test ends, so that no poller outlives the store.
      const stop = async () => {
        abort.abort();
        await batches.return();
      };
      onTestFinished(stop);
      const delivered: string[] = [];
      while (delivered.length < 2)
        delivered.push(...((await batches.next()).value as FeedBatch).events.map((e) => e.id));
      expect(delivered).toEqual(["evt_before_2", created.id]);
      expect(pollErrors).toEqual([]);
      await stop();
      // A cursor beyond the old positions, or of the old format but another feed, is refused.
      for (const cursor of [`f1.${feedId}.99`, `f1.otherFeed.1`]) {
        const refused = feed.watch(
          { organizationId: undefined },
          { startAfter: Buffer.from(cursor).toString("base64url"), startAtNow: false },
          { signal: new AbortController().signal, deadline: undefined },
        );
        await expect(refused.next()).rejects.toMatchObject({ reason: "INVALID_ARGUMENT" });
      }
    } finally {
      await store?.close();
      await db.destroy();
      await database.drop();
    }
  },
  30_000,
);
