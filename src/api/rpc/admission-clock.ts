// What moves admission control's limit: every window, the event loop's delay over it (node's own
// histogram, sampled natively) and how busy the loop was (its utilization: the share of the window
// it spent outside waiting for events), handed to the pure controller in admission.ts, which then
// admits the waiting calls that the window made room for. Kept apart so that the controller stays
// free of timers and is tested on figures alone.

import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { loopUtilizationMeter } from "../../runtime/loop-utilization.js";
import type { AdmissionController } from "./admission.js";

/** How often the limit moves. */
const WINDOW_MS = 100;
/** The histogram's sampling period, in ms: fine enough for delays near the target. */
const RESOLUTION_MS = 10;

/** Starts adapting `controller` to the event loop's delay; returns the function that stops it. */
export function adaptToEventLoopDelay(controller: AdmissionController): () => void {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  const utilization = loopUtilizationMeter();
  const timer = setInterval(() => {
    // Nanoseconds; the histogram's own period is counted in, so it is taken off.
    const delayMs = Math.max(0, histogram.percentile(99) / 1e6 - RESOLUTION_MS);
    histogram.reset();
    controller.adapt(delayMs, utilization());
    controller.admitWaiting(performance.now());
  }, WINDOW_MS).unref();
  return () => {
    clearInterval(timer);
    histogram.disable();
  };
}
