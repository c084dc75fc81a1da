// The idempotency records' life: kept with the injected clock's time, pruned in batches once past
// the retention, so that the table stays the same size however long the service writes.

import pino from "pino";
import { describe, expect, it } from "vitest";
import { Idempotency, PRUNE_BATCH, startPruning } from "../../src/app/idempotency.js";
import type { Store } from "../../src/store/store.js";
import { describeEachDatabase, useTestStore } from "../support/databases.js";

const HOUR_MS = 3_600_000;

describeEachDatabase("idempotency records", (database) => {
  const testStore = useTestStore(database);

  it("stays the same size under three simulated days of writes, pruned hourly with a day's retention", async () => {
    // Far in the future, so that records of other tests in this database are all older.
    let now = Date.UTC(2100, 0, 1);
    const idempotency = new Idempotency(testStore(), () => new Date(now));
    const writesPerTick = 4;
    const tickMs = 10 * 60_000;
    let saved = 0;
    let pruned = 0;
    const liveAtEachHour: number[] = [];
    for (let tick = 0; tick < (72 * HOUR_MS) / tickMs; tick++) {
      for (let write = 0; write < writesPerTick; write++) {
        const key = {
          scope: "caller:provisioning",
          requestId: `r${tick}-${write}`,
          method: "CreateOrganization",
          fingerprint: "f",
        };
        await idempotency.save(idempotency.record(key, { response: new Uint8Array([tick % 256, write]) }));
        saved++;
      }
      now += tickMs;
      if (now % HOUR_MS === 0) {
        pruned += await idempotency.prune(24 * HOUR_MS);
        liveAtEachHour.push(saved - pruned);
      }
    }
    const perHour = writesPerTick * (HOUR_MS / tickMs);
    // From the second day on, a day's records (and at most the hour not yet pruned) remain.
    for (const live of liveAtEachHour.slice(25)) {
      expect(live).toBeGreaterThanOrEqual(24 * perHour);
      expect(live).toBeLessThanOrEqual(25 * perHour);
    }
    const found = (requestId: string) =>
      idempotency.find({ scope: "caller:provisioning", requestId, method: "", fingerprint: "" });
    expect(await found("r0-0")).toBeUndefined();
    expect(await found(`r${(72 * HOUR_MS) / tickMs - 1}-0`)).toBeDefined();
  }, 120_000);

  it("prunes in batches until none is left, and can be stopped between batches", async () => {
    let now = Date.UTC(2200, 0, 1);
    const idempotency = new Idempotency(testStore(), () => new Date(now));
    // The records of the tests before (older) go first, so that the counts below are exact.
    await idempotency.prune(0);
    const records = PRUNE_BATCH * 2 + 7;
    for (let index = 0; index < records; index++) {
      const key = {
        scope: "organization:org_batches",
        requestId: `b${index}`,
        method: "ActivateConnection",
        fingerprint: "f",
      };
      await idempotency.save(idempotency.record(key, { response: new Uint8Array([1]) }));
    }
    now += 25 * HOUR_MS;
    expect(await idempotency.prune(24 * HOUR_MS, () => true)).toBe(PRUNE_BATCH);
    expect(await idempotency.prune(24 * HOUR_MS)).toBe(records - PRUNE_BATCH);
    expect(await idempotency.prune(24 * HOUR_MS)).toBe(0);
  }, 60_000);

  it("prunes in the background from start until stopped, reporting what it deleted", async () => {
    let now = Date.UTC(2300, 0, 1);
    const idempotency = new Idempotency(testStore(), () => new Date(now));
    const key = {
      scope: "organization:org_background",
      requestId: "old",
      method: "ActivateConnection",
      fingerprint: "f",
    };
    await idempotency.save(idempotency.record(key, { response: new Uint8Array([1]) }));
    now += 48 * HOUR_MS;
    const counts: number[] = [];
    const deleted = new Promise<void>((resolve) => {
      const stop = startPruning(idempotency, {
        retentionMs: 24 * HOUR_MS,
        intervalMs: 50,
        logger: pino({ level: "silent" }),
        onPruned: (count) => {
          counts.push(count);
          void stop().then(resolve);
        },
      });
    });
    await deleted;
    expect(counts[0]).toBeGreaterThanOrEqual(1);
    expect(await idempotency.find(key)).toBeUndefined();
  });
});

describe("calls under way with one key", () => {
  const key = (requestId: string) => ({
    scope: "organization:org_a",
    requestId,
    method: "CreateConnection",
    fingerprint: "f",
  });
  const idempotency = new Idempotency({} as Store);

  it("runs a second call with the key only after the first ended, even when the first failed", async () => {
    const order: string[] = [];
    let failFirst = () => {};
    const first = idempotency.exclusive(key("r1"), async () => {
      order.push("first started");
      await new Promise<void>((_, reject) => {
        failFirst = () => reject(new Error("first failed"));
      });
    });
    const second = idempotency.exclusive(key("r1"), async () => {
      order.push("second started");
      return "second";
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual(["first started"]);
    failFirst();
    await expect(first).rejects.toThrow("first failed");
    await expect(second).resolves.toBe("second");
    expect(order).toEqual(["first started", "second started"]);
  });

  it("runs calls with different keys side by side", async () => {
    let release = () => {};
    const held = idempotency.exclusive(key("r2"), () => new Promise<void>((resolve) => (release = resolve)));
    await expect(idempotency.exclusive(key("r3"), async () => "other")).resolves.toBe("other");
    release();
    await held;
  });
});
