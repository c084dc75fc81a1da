// The change feed's storage contract on every database: positions dense and in commit order,
// range reads with visibility, and (PostgreSQL) the case that sequence ids get wrong: a
// transaction that recorded an event stays open while others try to commit theirs. A watcher
// resumed from a cursor taken before must still get every event exactly once, in commit order.

import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { encodeCursor, Feed, type FeedBatch } from "../../src/app/feed.js";
import type { Store } from "../../src/store/store.js";
import { createTestStore, describeEachDatabase, type TestStore } from "../support/databases.js";
import { connectionRecord, createdEvent, newOrganization, transition, uniqueId } from "./fixtures.js";

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

  async function newConnection(source?: string, destination?: string) {
    const connection = connectionRecord(
      source ?? (await newOrganization(store)),
      destination ?? (await newOrganization(store)),
    );
    await store.createConnection(connection, createdEvent(connection));
    return connection;
  }

  it("numbers events 1, 2, 3 ... and reads ranges with the parties, filtered by organization", async () => {
    expect(await store.feedHead()).toBe(0);
    const [a, b, c] = [await newOrganization(store), await newOrganization(store), await newOrganization(store)];
    const ab = await newConnection(a, b);
    const bc = await newConnection(b, c);
    const { next, event } = transition(ab, "ACTIVE");
    expect(await store.saveTransition(next, event)).toBe(true);
    expect(await store.feedHead()).toBe(3);

    const all = await store.readFeed({ after: 0, through: undefined, organizationId: undefined, limit: 10 });
    expect(all.map((entry) => [entry.position, entry.event.connectionId, entry.event.type])).toEqual([
      [1, ab.id, "CREATED"],
      [2, bc.id, "CREATED"],
      [3, ab.id, "ACTIVATED"],
    ]);
    expect(all[2]).toMatchObject({ sourceOrganizationId: a, destinationOrganizationId: b, event });
    const ofC = await store.readFeed({ after: 0, through: undefined, organizationId: c, limit: 10 });
    expect(ofC.map((entry) => entry.position)).toEqual([2]);
    const window = await store.readFeed({ after: 1, through: 2, organizationId: undefined, limit: 10 });
    expect(window.map((entry) => entry.position)).toEqual([2]);
    expect(await store.readFeed({ after: 0, through: undefined, organizationId: undefined, limit: 1 })).toHaveLength(1);
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
    const feed = new Feed(store, { maxWatchers: 10, heartbeatMs: 50, pollIntervalMs: 1000 }, (error) => {
      throw error;
    });
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

  it.runIf(database.dialect === "postgres")(
    "delivers an event whose transaction was held open while others wrote, exactly once and in commit order",
    async () => {
      const held = await newConnection();
      const other = await newConnection();
      const start = await store.feedHead();
      const feed = new Feed(store, { maxWatchers: 10, heartbeatMs: 10_000, pollIntervalMs: 50 }, (error) => {
        throw error;
      });
      const abort = new AbortController();
      const batches = feed.watch(
        { organizationId: undefined },
        { startAfter: encodeCursor(await store.feedId(), start), startAtNow: false },
        { signal: abort.signal, deadline: undefined },
      );
      expect((await batches.next()).value).toMatchObject({ events: [] });

      // The held transaction records its event (taking its sequence id and feed position) and waits.
      const raw = new pg.Client({ connectionString: testStore.url });
      await raw.connect();
      const heldEvent = createdEvent(held);
      const heldEventId = uniqueId("evt_held");
      await raw.query("begin");
      await raw.query(
        `insert into connection_events (id, connection_id, type, from_state, to_state, actor_organization_id,
           caller, actor, reason, request_id, create_time)
         values ($1, $2, 'DEACTIVATED', 'PENDING', 'INACTIVE', $3, 'dashboard-bff', '', '', '', now())`,
        [heldEventId, heldEvent.connectionId, held.sourceOrganizationId],
      );

      // Meanwhile another transition commits as far as it can (its event insert waits behind the
      // held transaction) and an organization, which records no event, commits freely.
      const { next, event } = transition(other, "ACTIVE");
      const otherSaved = store.saveTransition(next, event);
      await newOrganization(store);
      await waitForLockWaiter(raw);
      expect(await store.feedHead()).toBe(start);
      expect(await store.readFeed({ after: start, through: undefined, organizationId: undefined, limit: 10 })).toEqual(
        [],
      );

      await raw.query("commit");
      await raw.end();
      expect(await otherSaved).toBe(true);

      const delivered: string[] = [];
      while (delivered.length < 2) {
        const batch = (await batches.next()).value as FeedBatch;
        delivered.push(...batch.events.map((e) => e.id));
      }
      expect(delivered).toEqual([heldEventId, event.id]);
      const positions = await store.readFeed({
        after: start,
        through: undefined,
        organizationId: undefined,
        limit: 10,
      });
      expect(positions.map((entry) => [entry.position, entry.event.id])).toEqual([
        [start + 1, heldEventId],
        [start + 2, event.id],
      ]);
      abort.abort();
      await batches.return();
    },
  );
});

/** Resolves once some other session waits for a lock that `holder`'s transaction holds. */
async function waitForLockWaiter(holder: pg.Client): Promise<void> {
  const pid = (await holder.query<{ pid: number }>("select pg_backend_pid() as pid")).rows[0]?.pid;
  for (let attempt = 0; attempt < 400; attempt++) {
    const { rows } = await holder.query("select 1 from pg_stat_activity where $1 = any(pg_blocking_pids(pid))", [pid]);
    if (rows.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error("no session ever waited for the held transaction");
}
