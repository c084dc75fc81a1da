// Waiting for a condition instead of for a fixed time: a loaded machine stretches every step, so a
// test that sleeps "long enough" and then looks passes on an idle machine and fails on a busy one.

import { setTimeout as sleep } from "node:timers/promises";

/** Resolves once `condition()` holds, looking every 10 ms; rejects naming `what` after `timeoutMs`. */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await sleep(10);
  }
}
