// The service's log: pino writing JSON lines to stdout asynchronously, and the one way to end it
// before the process exits with everything written.

import pino, { type Logger } from "pino";

/** How long exiting waits for the log to be written out (a stdout that nobody reads never drains). */
const LOG_END_TIMEOUT_MS = 2000;

const destinations = new WeakMap<Logger, ReturnType<typeof pino.destination>>();

/**
 * JSON lines on stdout. Writes are asynchronous so that logging one line per RPC does not put a
 * write(2) on every request; `endLogs` runs before the process exits so nothing is lost.
 */
export function createLogger(level: string): Logger {
  const destination = pino.destination({ dest: 1, sync: false });
  const logger = pino(
    {
      level,
      base: { service: "connections" },
      // Tokens are never logged; this catches any header object logged by mistake.
      redact: { paths: ["authorization", "*.authorization", "headers.authorization"], censor: "[redacted]" },
    },
    destination,
  );
  destinations.set(logger, destination);
  return logger;
}

/**
 * Writes out every line logged so far, in order, then calls `then` (at the latest after
 * LOG_END_TIMEOUT_MS). A write may still be under way on libuv's thread pool: pino's own flush at
 * exit writes what is queued synchronously and does not wait for it, so a crash's fatal line
 * could land after "stopped", or be lost. Ending the stream waits for that write first.
 */
export function endLogs(logger: Logger, then: () => void): void {
  const destination = destinations.get(logger);
  let called = false;
  const once = () => {
    if (called) return;
    called = true;
    then();
  };
  if (destination === undefined) {
    once();
    return;
  }
  // Not unref'd: should nothing else keep the event loop alive, the process must still exit with its code.
  setTimeout(once, LOG_END_TIMEOUT_MS);
  destination.once("close", once);
  destination.once("error", once);
  try {
    destination.end();
  } catch {
    // Already ended or destroyed: nothing is left to write.
    once();
  }
}
