// The NOTIFY that tells other replicas of this one's commits: a burst of writes is told in few
// notifications, and the last write of a burst is always told, also when it came while a NOTIFY was
// on its way or had just been sent. And the LISTEN: only while the process has a reader.

import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ANNOUNCE_SPACING_MS, FeedListener } from "../../src/store/feed-notifications.js";
import { FEED_CHANNEL } from "../../src/store/migrations.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";

describePostgres("FeedListener's announcements", () => {
  let database: ProvisionedDatabase;
  let other: pg.Client;
  let announcer: FeedListener;
  const received: number[] = [];
  const waiters = new Set<() => void>();

  beforeAll(async () => {
    database = await provisionPostgres();
    // Another replica, listening on the channel.
    other = new pg.Client({ connectionString: database.url });
    await other.connect();
    other.on("notification", () => {
      received.push(performance.now());
      for (const wake of waiters) wake();
    });
    await other.query(`listen ${FEED_CHANNEL}`);
    announcer = new FeedListener(database.url, undefined);
  }, 60_000);

  afterAll(async () => {
    await announcer?.close();
    await other?.end();
    await database?.drop();
  });

  /** Resolves once `count` notifications have arrived in all. */
  const notifications = (count: number) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (received.length < count) return;
        waiters.delete(check);
        resolve();
      };
      waiters.add(check);
      check();
    });

  /** Waits (up to 5 s) until `condition` holds. */
  const until = async (condition: () => boolean) => {
    for (let waited = 0; waited < 5_000 && !condition(); waited += 10)
      await new Promise((resolve) => setTimeout(resolve, 10));
  };

  /** Lets every NOTIFY that is due go out and arrive (a SELECT on the same connection follows them). */
  const settled = async () => {
    await new Promise((resolve) => setTimeout(resolve, ANNOUNCE_SPACING_MS * 4));
    await other.query("select 1");
  };

  it("tells of a burst of writes in at most two notifications, the last after the last write", async () => {
    for (let write = 0; write < 100; write++) announcer.announce();
    const burstEnded = performance.now();
    await notifications(1);
    await settled();
    expect(received.length).toBeGreaterThanOrEqual(1);
    expect(received.length).toBeLessThanOrEqual(2);
    expect(received.at(-1)).toBeGreaterThanOrEqual(burstEnded);
  });

  it("tells of a write made while a notification was just sent, after the spacing", async () => {
    await settled();
    const before = received.length;
    announcer.announce();
    // The first at once; this one comes while the spacing runs, and must not be dropped.
    announcer.announce();
    await notifications(before + 2);
    await settled();
    expect(received.length).toBe(before + 2);

    // Quiet since: the next write is told on its own.
    announcer.announce();
    await notifications(before + 3);
    expect(received.length).toBe(before + 3);
  });

  it("LISTENs only while it has a listener, and wakes it once the LISTEN is in force", async () => {
    const replica = new FeedListener(database.url, undefined);
    try {
      // Writes alone connect it (to NOTIFY), but a replica without a reader is not woken by others' writes.
      const before = received.length;
      replica.announce();
      await until(() => received.length > before);
      expect(received.length).toBeGreaterThan(before);
      expect(replica.listening).toBe(false);

      let wakes = 0;
      const unsubscribe = replica.subscribe(() => wakes++);
      await until(() => wakes > 0);
      expect(replica.listening).toBe(true);
      const woken = wakes;
      await other.query(`notify ${FEED_CHANNEL}`);
      await until(() => wakes > woken);
      expect(wakes).toBeGreaterThan(woken);

      unsubscribe();
      expect(replica.listening).toBe(false);
      // A new reader gets the LISTEN back, and is woken once it is in force.
      let later = 0;
      replica.subscribe(() => later++);
      await until(() => later > 0);
      expect(replica.listening).toBe(true);
    } finally {
      await replica.close();
    }
  });
});
