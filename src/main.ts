// Entry point: configuration from the environment, start, and a clean stop on SIGTERM/SIGINT.

import { ConfigError, loadConfig } from "./config.js";
import { createLogger, flushLogs } from "./log.js";
import { startService } from "./server.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`connections: ${error.message}\n`);
    process.exit(2);
  }
  const logger = createLogger(config.logLevel);
  let service: Awaited<ReturnType<typeof startService>>;
  try {
    service = await startService(config, logger);
  } catch (error) {
    logger.fatal({ err: error }, "could not start");
    flushLogs(logger);
    process.exit(1);
  }
  logger.info(
    { host: config.host, port: service.port, adminPort: service.adminPort, database: redactUrl(config.databaseUrl) },
    "serving gRPC, gRPC-Web and Connect",
  );

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, "second signal: exiting now");
      flushLogs(logger);
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal, graceMs: config.shutdownGraceMs }, "shutting down");
    service.close().then(
      () => {
        logger.info("stopped");
        flushLogs(logger);
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, "unclean shutdown");
        flushLogs(logger);
        process.exit(1);
      },
    );
  };
  // The callers file and TLS credentials are read again without a restart.
  process.on("SIGHUP", () => service.reload());
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

/** Passwords in a DATABASE_URL stay out of the log. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@");
}

await main();
