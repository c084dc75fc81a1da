// The collections after a burst: when they run (the first quiet look after a burst; quiet, and the
// old generation holds more than after the last full collection; or quiet for a while with the
// young generation still at its storm size), when they do not (busy, a short spell of work, or
// nothing to give back), and that on the real process the first frees what a burst left.

import vm from "node:vm";
import pino from "pino";
import { describe, expect, it, vi } from "vitest";
import {
  BURST_LOOKS,
  collectWhenIdle,
  IdleCollector,
  LARGE_YOUNG_BYTES,
  processRuntime,
  QUIET_UTILIZATION,
  type Runtime,
  WORTH_COLLECTING_BYTES,
  YOUNG_SETTLE_TICKS,
} from "../../src/runtime/idle-collection.js";

const MIB = 2 ** 20;

/** A process described by figures: its generations, how busy its loop was, and its collections. */
class FakeRuntime implements Runtime {
  busy = 0;
  live = 40 * MIB;
  garbage = 0;
  young = MIB;
  collections = 0;

  utilization(): number {
    return this.busy;
  }

  oldGenerationBytes(): number {
    return this.live + this.garbage;
  }

  youngGenerationBytes(): number {
    return this.young;
  }

  collect(): void {
    this.collections++;
    this.garbage = 0;
  }
}

/** Ticks `count` times; returns the reasons of the collections that ran. */
function ticks(collector: IdleCollector, count: number): string[] {
  const reasons: string[] = [];
  for (let tick = 0; tick < count; tick++) {
    const reason = collector.tick();
    if (reason !== undefined) reasons.push(reason);
  }
  return reasons;
}

describe("IdleCollector: the old generation", () => {
  it("collects once the loop is quiet after the old generation grew, and only once", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.busy = 0.9;
    runtime.garbage = 3 * WORTH_COLLECTING_BYTES;
    expect(collector.tick()).toBeUndefined();
    runtime.busy = QUIET_UTILIZATION;
    expect(collector.tick()).toBe("old generation grew");
    expect(runtime.garbage).toBe(0);
    // Quiet and nothing new: a quiet process pays nothing.
    expect(ticks(collector, 20)).toEqual([]);
    expect(runtime.collections).toBe(1);
  });

  it("leaves growth below the threshold alone, and counts growth from the last collection", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.garbage = WORTH_COLLECTING_BYTES - 1;
    expect(collector.tick()).toBeUndefined();
    runtime.live += 8 * MIB;
    runtime.garbage = WORTH_COLLECTING_BYTES;
    expect(collector.tick()).toBe("old generation grew");
    // The 8 MiB it kept are live: the next collection needs the threshold's growth over them.
    runtime.garbage = WORTH_COLLECTING_BYTES - 1;
    expect(collector.tick()).toBeUndefined();
    expect(runtime.collections).toBe(1);
  });

  it("counts from V8's own collections too: the old generation's low point since the last look", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    // V8 collected on its own and the live set shrank (say, entries evicted from a cache).
    runtime.live -= 20 * MIB;
    expect(collector.tick()).toBeUndefined();
    runtime.garbage = WORTH_COLLECTING_BYTES;
    expect(collector.tick()).toBe("old generation grew");
  });

  it("never collects while the loop is busy, however much has grown", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.busy = QUIET_UTILIZATION + 0.01;
    runtime.young = 2 * LARGE_YOUNG_BYTES;
    for (let second = 1; second <= 20; second++) {
      runtime.garbage = second * WORTH_COLLECTING_BYTES;
      expect(collector.tick()).toBeUndefined();
    }
    expect(runtime.collections).toBe(0);
  });
});

describe("IdleCollector: the end of a burst", () => {
  it("collects at the first quiet look after BURST_LOOKS busy looks, and only then", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.busy = 0.9;
    // A storm's leftovers that the old generation's growth does not show (native memory, mostly).
    runtime.garbage = MIB;
    expect(ticks(collector, BURST_LOOKS)).toEqual([]);
    runtime.busy = QUIET_UTILIZATION;
    expect(collector.tick()).toBe("burst ended");
    expect(runtime.garbage).toBe(0);
    expect(ticks(collector, 20)).toEqual([]);
    expect(runtime.collections).toBe(1);
  });

  it("leaves a shorter spell of work to the other rules, and counts a burst's looks in a row", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.garbage = MIB;
    for (let spell = 0; spell < 5; spell++) {
      runtime.busy = 0.9;
      expect(ticks(collector, BURST_LOOKS - 1)).toEqual([]);
      runtime.busy = 0;
      expect(collector.tick()).toBeUndefined();
    }
    expect(runtime.collections).toBe(0);
  });

  it("counts the old generation's growth from the collection that ended the burst", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.busy = 0.9;
    runtime.garbage = WORTH_COLLECTING_BYTES - 1;
    ticks(collector, BURST_LOOKS);
    runtime.busy = 0;
    expect(collector.tick()).toBe("burst ended");
    runtime.garbage = WORTH_COLLECTING_BYTES - 1;
    expect(collector.tick()).toBeUndefined();
    runtime.garbage = WORTH_COLLECTING_BYTES;
    expect(collector.tick()).toBe("old generation grew");
  });
});

describe("IdleCollector: the young generation", () => {
  it("collects once more after YOUNG_SETTLE_TICKS quiet looks when the young generation is still large", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.young = LARGE_YOUNG_BYTES;
    runtime.garbage = WORTH_COLLECTING_BYTES;
    expect(ticks(collector, YOUNG_SETTLE_TICKS - 1)).toEqual(["old generation grew"]);
    expect(collector.tick()).toBe("young generation settled");
    // Once per quiet spell, whatever V8 did with the young generation.
    expect(ticks(collector, 30)).toEqual([]);
    expect(runtime.collections).toBe(2);
  });

  it("starts counting again after a busy look, and leaves a small young generation alone", () => {
    const runtime = new FakeRuntime();
    const collector = new IdleCollector(runtime);
    runtime.young = LARGE_YOUNG_BYTES;
    expect(ticks(collector, YOUNG_SETTLE_TICKS - 1)).toEqual([]);
    runtime.busy = 0.5;
    expect(collector.tick()).toBeUndefined();
    runtime.busy = 0;
    expect(ticks(collector, YOUNG_SETTLE_TICKS - 1)).toEqual([]);
    expect(collector.tick()).toBe("young generation settled");

    const small = new FakeRuntime();
    small.young = LARGE_YOUNG_BYTES - 1;
    expect(ticks(new IdleCollector(small), 3 * YOUNG_SETTLE_TICKS)).toEqual([]);
  });
});

describe("collectWhenIdle", () => {
  it("looks once a second, logs each collection with its reason, and stops", () => {
    vi.useFakeTimers();
    try {
      const lines: { reason?: string; msg?: string }[] = [];
      const logger = pino({ level: "debug" }, { write: (line: string) => lines.push(JSON.parse(line)) });
      const runtime = new FakeRuntime();
      const stop = collectWhenIdle(logger, runtime);
      runtime.garbage = WORTH_COLLECTING_BYTES;
      vi.advanceTimersByTime(999);
      expect(runtime.collections).toBe(0);
      vi.advanceTimersByTime(1);
      expect(runtime.collections).toBe(1);
      expect(lines).toMatchObject([{ reason: "old generation grew", msg: "quiet after a burst: collected" }]);
      stop();
      runtime.garbage = WORTH_COLLECTING_BYTES;
      vi.advanceTimersByTime(10_000);
      expect(runtime.collections).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("processRuntime", () => {
  it("frees a burst's garbage from this process's old generation", () => {
    const runtime = processRuntime();
    const utilization = runtime.utilization();
    expect(utilization).toBeGreaterThanOrEqual(0);
    expect(utilization).toBeLessThanOrEqual(1);
    expect(runtime.youngGenerationBytes()).toBeGreaterThan(0);
    // From a collected heap, so that V8's own collections have nothing left to take first; twice,
    // since a collection gives its empty pages back as its sweeping ends, which the next one waits for.
    runtime.collect();
    runtime.collect();
    // A quiet loop, so that the decision is the heap's alone.
    const collector = new IdleCollector({ ...runtime, utilization: () => 0 });
    const held = burstOfGarbage(runtime);
    expect(collector.tick()).toBe("old generation grew");
    // The collection also moves the young generation's survivors into the old one: a margin.
    expect(runtime.oldGenerationBytes()).toBeLessThanOrEqual(held - 2 * 8 * MIB);
  });
});

/** V8's scavenge, reached as processRuntime reaches its full collection (after it exposed `gc`). */
function scavenge(): void {
  (vm.runInNewContext("gc") as (options: { type: "minor" }) => void)({ type: "minor" });
}

/** Fills the old generation with 32 MiB that is garbage on return; returns its size while held. */
function burstOfGarbage(runtime: Runtime): number {
  // Arrays this large (8 MiB each) start in the young generation's large-object space, and the
  // scavenges their building set off promote them only if one comes after them: scavenged here, so
  // that all four are in the old generation whatever this machine's timing.
  const burst = Array.from({ length: 4 }, () => {
    const array: number[] = [];
    for (let index = 0; index < 2 ** 20; index++) array.push(index);
    return array;
  });
  scavenge();
  scavenge();
  return burst.length > 0 ? runtime.oldGenerationBytes() : 0;
}
