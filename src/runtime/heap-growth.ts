// How far V8 lets the old generation grow before its next full collection. V8 sets that limit
// after each full collection from the bytes it kept and its measured speeds (a factor of 1.1 to 4),
// and under a storm it let 15-20 MiB of live objects grow to 60-70 MiB of heap: each full
// collection then had the garbage of several seconds of calls to clear, node:http2's header strings
// above all, and paused the event loop 45-124 ms, once every 3-6 s. With the factor held at 1.5
// they come three to four times as often and pause 6-46 ms. Those pauses had set every other
// caller's p99 during a storm (73-149 ms, now 42-84), and the heap's growth its RSS (1.26-1.73x
// idle, now 1.03-1.19x): docs/performance.md, Overload.

import v8 from "node:v8";

/** V8's old generation may grow by this share of what the last full collection kept. */
export const DEFAULT_HEAP_GROWING_PERCENT = 50;

/**
 * Holds V8's heap growth to `percent` (V8's `--heap-growing-percent`, read at every full
 * collection, so setting it at run time takes effect from the next one); 0 leaves V8 to choose.
 */
export function limitHeapGrowth(percent: number): void {
  if (percent > 0) v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
}
