// The service's log: pino writing JSON lines to stdout asynchronously, and the one way to end it
// before the process exits with everything written.

import pino, { type Logger } from "pino";

/** How long exiting waits for the log to be written out (a stdout that nobody reads never drains). */
const LOG_END_TIMEOUT_MS = 2000;

const destinations = new WeakMap<Logger, ReturnType<typeof pino.destination>>();

/**
 * JSON lines on stdout, each written (write(2)) when it is logged: a line is in the pipe or file
 * before the call it tells of is answered, so a process killed with SIGKILL loses none. Node writes
 * process.stdout to files and pipes the same way on Linux, as Go services' loggers do. Written
 * asynchronously instead (pino's default), each line was a hop to libuv's thread pool and back,
 * which below saturation woke the event loop once more per call (docs/performance.md: 1 to 1.4
 * wake-ups per create at half load against 4 to 6, and 40-50% less CPU per create there), and what
 * was queued was lost with the process. The cost: a reader that stops reading stdout (a pipe it
 * never drains) stops the service once the pipe is full, where the asynchronous writes grew its
 * memory instead.
 */
export function createLogger(level: string): Logger {
  const destination = pino.destination({ dest: 1, sync: true });
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
 * Ends the log (every line is written already; ending waits for the stream to close), then calls
 * `then` (at the latest after LOG_END_TIMEOUT_MS).
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
