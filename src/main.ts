// Entry point: configuration from the environment, start, and one clean stop on SIGTERM/SIGINT or
// on a crash. Production runs this file built (`node dist/src/main.js`), with nothing between the
// signal and node. `node dist/src/main.js <command>` runs one of COMMANDS instead of serving.

import type { Logger } from "pino";
import { checkDatabase } from "./bin/check-database.js";
import { type RunningService, startService } from "./composition/start-service.js";
import { type Config, ConfigError, loadConfig } from "./config/config.js";
import { createLogger, endLogs } from "./observability/log.js";
import { limitHeapGrowth } from "./runtime/heap-growth.js";
import { collectWhenIdle } from "./runtime/idle-collection.js";
import { migrateDatabase } from "./store/open.js";

/**
 * A repeat of the signal within this window is the same stop, not a second one: a process group
 * signal and the copy that npm (or tsx, ~30 ms later) forwards arrive together. An operator who
 * means "now" sends the second signal later than this.
 */
const REPEATED_SIGNAL_WINDOW_MS = 1_000;
/** How long past the grace period a drain may take (closing the database) before we exit anyway. */
const DRAIN_OVERRUN_MS = 5_000;

/** Subcommands: each runs with the configuration and a logger and resolves with the exit code. */
const COMMANDS: Readonly<Record<string, (config: Config, logger: Logger) => Promise<number>>> = {
  /** Applies pending migrations and exits: the deploy step before replicas of a new release start. */
  async migrate(config, logger) {
    await migrateDatabase({
      databaseUrl: config.databaseUrl,
      migrationUrl: config.databaseMigrationUrl,
      schemaAheadLimit: config.schemaAheadLimit,
      logger,
    });
    logger.info({ database: redactUrl(config.databaseUrl) }, "migrated: the schema is at this release's migrations");
    return 0;
  },
  /** SQLite: reads the whole file (integrity, foreign keys); exits 0 sound, 1 damaged, 2 not checked. */
  async "check-database"(config) {
    return checkDatabase(config.databaseUrl, (line) => process.stdout.write(`${line}\n`));
  },
};

function configOrExit(serving: boolean): Config {
  try {
    return loadConfig(process.env, { serving });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`connections: ${error.message}\n`);
    process.exit(2);
  }
}

async function runCommand(name: string): Promise<void> {
  const command = COMMANDS[name];
  if (command === undefined) {
    process.stderr.write(`connections: unknown command "${name}"; commands: ${Object.keys(COMMANDS).join(", ")}\n`);
    process.exit(2);
  }
  const config = configOrExit(false);
  const logger = createLogger(config.logLevel);
  let code: number;
  try {
    code = await command(config, logger);
  } catch (error) {
    logger.fatal({ err: error }, `${name} failed`);
    code = 1;
  }
  endLogs(logger, () => process.exit(code));
}

async function serve(): Promise<void> {
  const config = configOrExit(true);
  const logger = createLogger(config.logLevel);
  const lifecycle = new Lifecycle(logger, config.shutdownGraceMs);
  process.on("uncaughtException", (error) => lifecycle.crash(error, "uncaughtException"));
  process.on("unhandledRejection", (reason) => lifecycle.crash(reason, "unhandledRejection"));
  process.on("SIGTERM", (signal) => lifecycle.signal(signal));
  process.on("SIGINT", (signal) => lifecycle.signal(signal));

  let service: RunningService;
  try {
    service = await startService(config, logger);
  } catch (error) {
    logger.fatal({ err: error }, "could not start");
    lifecycle.exit(1);
    return;
  }
  logger.info(
    {
      host: config.host,
      port: service.port,
      adminPort: service.adminPort,
      database: redactUrl(config.databaseUrl),
      pid: process.pid,
    },
    "serving gRPC, gRPC-Web and Connect",
  );
  lifecycle.started(service);
  // One process, one heap: per process, not per service (tests run several services in one).
  limitHeapGrowth(config.heapGrowingPercent);
  collectWhenIdle(logger);
  // The callers file and TLS credentials are read again without a restart.
  process.on("SIGHUP", () => service.reload());
  // An online backup of the SQLite file (which this process holds exclusively) into BACKUP_DIR.
  process.on("SIGUSR2", () => void service.backup());
}

/** Start, serve, drain once, exit: whichever of a signal, a crash or a start-up failure comes first. */
class Lifecycle {
  private service: RunningService | undefined;
  private stopRequestedAt: number | undefined;
  /** The exit code once the drain ends: 0 for a signal, 1 once anything crashed. */
  private exitCode = 0;
  private drainStarted = false;
  private exiting = false;

  constructor(
    private readonly logger: Logger,
    private readonly graceMs: number,
  ) {}

  started(service: RunningService): void {
    this.service = service;
    // A signal that came while starting is honoured now that there is something to drain.
    if (this.stopRequestedAt !== undefined) this.drain();
  }

  signal(signal: NodeJS.Signals): void {
    // The exit code is decided and the log is closing: a line logged now would throw.
    if (this.exiting) return;
    const now = performance.now();
    if (this.stopRequestedAt === undefined) {
      this.stopRequestedAt = now;
      this.logger.info({ signal, graceMs: this.graceMs }, "shutting down");
      this.drain();
      return;
    }
    if (now - this.stopRequestedAt < REPEATED_SIGNAL_WINDOW_MS) {
      this.logger.debug({ signal }, "the same stop signal again (forwarded or sent to the group); already draining");
      return;
    }
    this.logger.warn({ signal }, "second signal: exiting now without draining");
    this.exit(1);
  }

  /** Logs the error (with its request id when it carries one), drains as on SIGTERM, exits 1. */
  crash(error: unknown, origin: string): void {
    if (this.exiting) {
      // The log is closing (logging would throw again); the exit is already under way.
      process.stderr.write(`connections: ${origin} while exiting: ${String(error)}\n`);
      return;
    }
    const requestId =
      typeof error === "object" && error !== null && "requestId" in error ? String(error.requestId) : undefined;
    this.logger.fatal({ err: error, origin, requestId }, "crashed: draining, then exiting");
    this.exitCode = 1;
    if (this.stopRequestedAt !== undefined) return;
    this.stopRequestedAt = performance.now();
    this.drain();
  }

  /** Exits with `code` once the log is written out; the first exit decides the code. */
  exit(code: number): void {
    if (this.exiting) return;
    this.exiting = true;
    endLogs(this.logger, () => process.exit(code));
  }

  private drain(): void {
    const service = this.service;
    // Still starting: started() drains as soon as there is a service; a crash before that exits.
    if (service === undefined) {
      if (this.exitCode !== 0) this.exit(this.exitCode);
      return;
    }
    if (this.drainStarted) return;
    this.drainStarted = true;
    setTimeout(() => {
      this.logger.error({ overrunMs: DRAIN_OVERRUN_MS }, "drain overran the grace period; exiting");
      this.exit(1);
    }, this.graceMs + DRAIN_OVERRUN_MS).unref();
    service.close().then(
      () => {
        this.logger.info("stopped");
        this.exit(this.exitCode);
      },
      (error: unknown) => {
        this.logger.error({ err: error }, "unclean shutdown");
        this.exit(1);
      },
    );
  }
}

/** Passwords in a DATABASE_URL stay out of the log. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@");
}

const command = process.argv[2];
await (command === undefined ? serve() : runCommand(command));
