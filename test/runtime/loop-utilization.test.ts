// The event loop's utilization from one reading to the next: near 1 while the thread computes,
// near 0 while it waits for a timer.

import { setTimeout as sleep } from "node:timers/promises";
import { expect, it } from "vitest";
import { loopUtilizationMeter } from "../../src/runtime/loop-utilization.js";

it("reads busy while the thread computes and idle while it waits, each reading since the last", async () => {
  const utilization = loopUtilizationMeter();
  const until = performance.now() + 50;
  while (performance.now() < until) {
    // The thread is busy: no event can be waited for.
  }
  expect(utilization()).toBeGreaterThan(0.5);
  await sleep(100);
  expect(utilization()).toBeLessThan(0.5);
});
