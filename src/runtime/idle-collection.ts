// Gives a burst's memory back once the process goes quiet. V8 collects when allocation fills the
// heap, and a quiet process allocates next to nothing, so after a storm its garbage stays resident
// until traffic returns: the promoted objects of thousands of calls, and with them the native memory
// of node:http2's streams, which is freed only when their JavaScript objects are collected
// (docs/performance.md, "memory given back after a storm"). So once a second, while the event loop
// is nearly idle:
// - at the first quiet look after a burst (BURST_LOOKS busy looks in a row), run one: a storm
//   leaves its objects in the old generation, their native memory (node:http2's streams and read
//   buffers) outside it, and neither is freed before a full collection; the old generation's own
//   growth missed them, 3.5 MiB over the bound's 16 while RSS stood 10-20 MiB above idle. Freed, the
//   memory goes back to the system within a second on the allocator the image preloads (jemalloc;
//   glibc's malloc keeps most of it);
// - when the old generation holds much more memory than after the last full collection, run one.
//   Held, not used: V8's own full collection at a storm's end frees the storm's objects but keeps
//   their pages (46 MiB held for 15 used, in the overload bench), and gives them back only in a
//   collection that compacts, which a quiet process does not start;
// - once the loop has been quiet for YOUNG_SETTLE_TICKS, run one more if the young generation is
//   still at its storm size: V8 shrinks it only in a collection that sees the allocation of its
//   last 5 s as low, which the first, a second after the storm, does not.
// A busy process is left to V8, which collects as it allocates; a quiet one pays one collection
// when a burst ends, and nothing more unless it grows.

import { performance } from "node:perf_hooks";
import v8 from "node:v8";
import vm from "node:vm";
import type { Logger } from "pino";
import { loopUtilizationMeter } from "./loop-utilization.js";

/** How often the process is looked at. */
const INTERVAL_MS = 1_000;
/** At most this share of the last interval spent outside waiting for events counts as quiet. */
export const QUIET_UTILIZATION = 0.1;
/** Growth of the old generation since the last full collection that is worth collecting. */
export const WORTH_COLLECTING_BYTES = 16 * 2 ** 20;
/** Busy looks in a row that make a burst, after which the first quiet look collects. */
export const BURST_LOOKS = 3;
/** Quiet looks before the young generation is shrunk: V8 judges allocation over its last 5 s. */
export const YOUNG_SETTLE_TICKS = 6;
/** A young generation this large once quiet is a storm's: V8 starts it at 1 MiB and grows it under load. */
export const LARGE_YOUNG_BYTES = 16 * 2 ** 20;
/** The young generation: scavenges empty it cheaply and often, so it is not counted as growth. */
const YOUNG_SPACES: ReadonlySet<string> = new Set(["new_space", "new_large_object_space"]);

/** What the collector reads and does; the process's own in production, figures in tests. */
export interface Runtime {
  /** The share of the time since the last call that the event loop was busy. */
  utilization(): number;
  /** Bytes V8 holds for its old generation (everything but the young generation), in use or not. */
  oldGenerationBytes(): number;
  /** Bytes V8 holds for its young generation, in use or not. */
  youngGenerationBytes(): number;
  /** A full, blocking collection. */
  collect(): void;
}

export type CollectionReason = "burst ended" | "old generation grew" | "young generation settled";

export class IdleCollector {
  /**
   * What the old generation held after the last full collection that gave memory back: ours, or
   * V8's (the least seen since).
   */
  #baseline: number;
  /** Looks in a row that found the loop quiet. */
  #quietTicks = 0;
  /** Looks in a row that found the loop busy. */
  #busyTicks = 0;

  constructor(private readonly runtime: Runtime) {
    this.#baseline = runtime.oldGenerationBytes();
  }

  /** Looks once; returns why it collected, or undefined when it did not. */
  tick(): CollectionReason | undefined {
    const quiet = this.runtime.utilization() <= QUIET_UTILIZATION;
    const burstEnded = quiet && this.#busyTicks >= BURST_LOOKS;
    this.#quietTicks = quiet ? this.#quietTicks + 1 : 0;
    this.#busyTicks = quiet ? 0 : this.#busyTicks + 1;
    const old = this.runtime.oldGenerationBytes();
    this.#baseline = Math.min(this.#baseline, old);
    if (!quiet) return undefined;
    let reason: CollectionReason | undefined;
    if (burstEnded) reason = "burst ended";
    else if (old - this.#baseline >= WORTH_COLLECTING_BYTES) reason = "old generation grew";
    else if (this.#quietTicks === YOUNG_SETTLE_TICKS && this.runtime.youngGenerationBytes() >= LARGE_YOUNG_BYTES)
      reason = "young generation settled";
    if (reason === undefined) return undefined;
    this.runtime.collect();
    this.#baseline = this.runtime.oldGenerationBytes();
    return reason;
  }
}

/** The running process, with V8's `gc` reached the way node's own tests reach it. */
export function processRuntime(): Runtime {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  const spaceBytes = (young: boolean) => {
    let bytes = 0;
    for (const space of v8.getHeapSpaceStatistics()) {
      if (YOUNG_SPACES.has(space.space_name) === young) bytes += space.space_size;
    }
    return bytes;
  };
  return {
    utilization: loopUtilizationMeter(),
    oldGenerationBytes: () => spaceBytes(false),
    youngGenerationBytes: () => spaceBytes(true),
    collect: gc,
  };
}

/** Starts looking once a second; returns the function that stops it. */
export function collectWhenIdle(logger: Logger, runtime: Runtime = processRuntime()): () => void {
  const collector = new IdleCollector(runtime);
  const timer = setInterval(() => {
    const before = v8.getHeapStatistics().total_heap_size;
    const started = performance.now();
    const reason = collector.tick();
    if (reason === undefined) return;
    logger.debug(
      {
        reason,
        ms: Math.round(performance.now() - started),
        heapMiB: Math.round(before / 2 ** 20),
        heapMiBAfter: Math.round(v8.getHeapStatistics().total_heap_size / 2 ** 20),
      },
      "quiet after a burst: collected",
    );
  }, INTERVAL_MS).unref();
  return () => clearInterval(timer);
}
