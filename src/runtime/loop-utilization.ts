// How busy the event loop was: the share of the time it spent outside waiting for events (node's
// event-loop utilization), measured from one reading to the next.

import { performance } from "node:perf_hooks";

/** Returns a function whose every call gives the loop's utilization since its previous call (or since this one). */
export function loopUtilizationMeter(): () => number {
  let since = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const { utilization } = performance.eventLoopUtilization(now, since);
    since = now;
    return utilization;
  };
}
