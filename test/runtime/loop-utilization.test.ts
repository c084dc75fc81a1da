// The event loop's utilization from one reading to the next: near 1 while the thread computes,
// near 0 while it waits for a timer.

import { setTimeout as sleep } from "node:timers/promises";
import { expect, it } from "vitest";
import { loopUtilizationMeter } from "../../src/runtime/loop-utilization.js";
import { until } from "../support/until.js";

/** Keeps the thread busy for `ms`: no event can be waited for meanwhile. */
function compute(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // busy
  }
}

it("reads busy while the thread computes and idle while it waits, each reading since the last", async () => {
  const utilization = loopUtilizationMeter();
  compute(50);
  expect(utilization()).toBeGreaterThan(0.8);
  // The test worker may run other work of its own meanwhile (more of it on a loaded machine), so
  // the idle reading is taken again until one window was mostly waiting.
  await until(async () => {
    await sleep(100);
    return utilization() < 0.5;
  }, "a reading of a mostly idle loop");
  // Since the last reading only: after the idle windows, 50 ms of work reads busy again (a meter
  // counting from its start would read at most half).
  compute(50);
  expect(utilization()).toBeGreaterThan(0.8);
});
