import pino, { type Logger } from "pino";

/**
 * JSON lines on stdout. Writes are asynchronous so that logging one line per RPC does not put a
 * write(2) on every request; `flushLogs` runs at shutdown so nothing is lost on a clean exit.
 */
export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { service: "connections" },
      // Tokens are never logged; this catches any header object logged by mistake.
      redact: { paths: ["authorization", "*.authorization", "headers.authorization"], censor: "[redacted]" },
    },
    pino.destination({ dest: 1, sync: false }),
  );
}

export function flushLogs(logger: Logger): void {
  logger.flush();
}
