// The SQLite dialect's turn budget: uses of the one connection run back to back while the event loop
// has not been held for TURN_BUDGET_MS, and wait for the next turn once it has. The clock is the
// dialect's performance.now(), held still or moved here, so nothing depends on this machine's speed.

import { setImmediate as setImmediatePromise } from "node:timers/promises";
import Database from "better-sqlite3";
import { Kysely, sql } from "kysely";
import { afterEach, describe, expect, it, vi } from "vitest";
import { EventLoopFriendlySqliteDialect, TURN_BUDGET_MS } from "../../src/store/sqlite-dialect.js";

/** Counts the turns of the event loop (its check phases) from now until stopped. */
function countTurns(): { readonly turns: () => number; readonly stop: () => void } {
  let turns = 0;
  let timer = setImmediate(function turned() {
    turns++;
    timer = setImmediate(turned);
  });
  return { turns: () => turns, stop: () => clearImmediate(timer) };
}

describe("EventLoopFriendlySqliteDialect", () => {
  const databases: Kysely<unknown>[] = [];

  afterEach(async () => {
    vi.restoreAllMocks();
    for (const db of databases.splice(0)) await db.destroy();
  });

  function open(): Kysely<unknown> {
    const db = new Kysely<unknown>({
      dialect: new EventLoopFriendlySqliteDialect({ database: new Database(":memory:") }),
    });
    databases.push(db);
    return db;
  }

  /** A first query (Kysely's own set-up), then a turn of the loop: the budget starts afresh with the next use. */
  async function warmUp(db: Kysely<unknown>): Promise<void> {
    await sql`select 1`.execute(db);
    await setImmediatePromise();
  }

  async function queriesOneAfterAnother(db: Kysely<unknown>, count: number): Promise<number> {
    const counter = countTurns();
    try {
      for (let i = 0; i < count; i++) await sql`select ${i} as value`.execute(db);
      return counter.turns();
    } finally {
      counter.stop();
    }
  }

  it("runs queries within the budget without waiting for the event loop to turn", async () => {
    const db = open();
    await warmUp(db);
    // A still clock: no time passes, so the budget is never spent.
    vi.spyOn(performance, "now").mockReturnValue(performance.now());
    expect(await queriesOneAfterAnother(db, 20)).toBe(0);
  });

  it("lets the event loop turn before each use once the uses have held it for the budget", async () => {
    const db = open();
    await warmUp(db);
    // Every reading of the clock finds a whole budget gone since the last.
    let now = performance.now();
    vi.spyOn(performance, "now").mockImplementation(() => {
      now += TURN_BUDGET_MS;
      return now;
    });
    expect(await queriesOneAfterAnother(db, 20)).toBeGreaterThanOrEqual(19);
  });
});
