// The NOTIFY that tells other replicas of this one's commits: a burst of writes is told in few
// notifications, and the last write of a burst is always told, also when it came while a NOTIFY was
// on its way or had just been sent.

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
});
