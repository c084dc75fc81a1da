// Configuration from the environment: defaults, and refusals that name the variable and the fix.

import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config/config.js";

function problemsOf(env: NodeJS.ProcessEnv): readonly string[] {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  return [];
}

describe("IDEMPOTENCY_RETENTION", () => {
  it("keeps answers for 7 days by default", () => {
    expect(loadConfig({}).idempotencyRetentionMs).toBe(7 * 24 * 3_600_000);
  });

  it.each([
    ["24h", 24 * 3_600_000],
    ["36h", 36 * 3_600_000],
    ["2d", 2 * 24 * 3_600_000],
    ["1440m", 24 * 3_600_000],
    ["86400s", 24 * 3_600_000],
  ])("reads %s", (raw, ms) => {
    expect(loadConfig({ IDEMPOTENCY_RETENTION: raw }).idempotencyRetentionMs).toBe(ms);
  });

  it.each(["23h", "0d", "7", "7 days", "-1d", "1.5d", "1w"])("refuses %s, saying a day is the least", (raw) => {
    const problems = problemsOf({ IDEMPOTENCY_RETENTION: raw });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(`IDEMPOTENCY_RETENTION=${raw}`);
    expect(problems[0]).toContain("at least 24h");
  });
});

describe("HEAP_GROWING_PERCENT", () => {
  it("holds V8's heap growth to 50% by default; 0 leaves it to V8", () => {
    expect(loadConfig({}).heapGrowingPercent).toBe(50);
    expect(loadConfig({ HEAP_GROWING_PERCENT: "0" }).heapGrowingPercent).toBe(0);
    expect(loadConfig({ HEAP_GROWING_PERCENT: "100" }).heapGrowingPercent).toBe(100);
  });

  it("refuses what is not a percentage V8 takes", () => {
    expect(problemsOf({ HEAP_GROWING_PERCENT: "-1" })).toEqual([
      "HEAP_GROWING_PERCENT=-1: expected a whole number from 0 to 1000",
    ]);
  });
});

describe("SQLITE_MMAP_MIB", () => {
  it("maps as much of the file as SQLite allows by default; 0 turns the map off", () => {
    expect(loadConfig({}).sqliteMmapMib).toBe(2047);
    expect(loadConfig({ SQLITE_MMAP_MIB: "0" }).sqliteMmapMib).toBe(0);
  });

  it("refuses more than SQLite can map", () => {
    expect(problemsOf({ SQLITE_MMAP_MIB: "4096" })).toEqual([
      "SQLITE_MMAP_MIB=4096: expected a whole number from 0 to 2047",
    ]);
  });
});

describe("ADMISSION_*", () => {
  it("turns admission control on by default, with a ceiling of 1000 and a queue of 1000 calls per caller; 0 turns it off", () => {
    expect(loadConfig({}).admission).toMatchObject({ maxInFlight: 1000, minInFlight: 64, maxQueued: 1000 });
    expect(loadConfig({ ADMISSION_MAX_IN_FLIGHT: "0" }).admission).toBeUndefined();
    expect(loadConfig({ ADMISSION_MAX_QUEUED: "0" }).admission?.maxQueued).toBe(0);
  });
});
