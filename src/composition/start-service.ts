// The composition root: configuration in, a running service out. Tests start it exactly as
// main.ts does, on ephemeral ports; `composeRpcs` alone (the services on a store, no port) is what
// the in-memory tests call through connect's router transport.

import { mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { CallerAuthenticator, CallerTable } from "../api/callers.js";
import { connectionServiceHandlers } from "../api/connection-service.js";
import { watchConnectionEventsHandler } from "../api/feed-service.js";
import { IdempotentWrites } from "../api/idempotency.js";
import { organizationServiceHandlers } from "../api/organization-service.js";
import { AdmissionController } from "../api/rpc/admission.js";
import { adaptToEventLoopDelay } from "../api/rpc/admission-clock.js";
import { RpcPipeline } from "../api/rpc/pipeline.js";
import { Connections } from "../app/connections.js";
import { Feed } from "../app/feed.js";
import { Idempotency, startPruning } from "../app/idempotency.js";
import { Organizations } from "../app/organizations.js";
import type { Config } from "../config/config.js";
import { ConfigReloader } from "../config/reload.js";
import { Metrics, startAdminServer } from "../observability/metrics.js";
import type { Tracing } from "../observability/tracing.js";
import { openStore } from "../store/open.js";
import { SchemaGate } from "../store/schema-gate.js";
import type { Store } from "../store/store.js";
import { type RunningServer, serve } from "../transport/server.js";
import { readTlsCredentials } from "../transport/tls.js";

const STORE_CLOSE_TIMEOUT_MS = 2_000;
/** How often records past IDEMPOTENCY_RETENTION are deleted (a batch at a time). */
const IDEMPOTENCY_PRUNE_INTERVAL_MS = 10 * 60_000;

/** The RPCs of both services on a store, behind the pipeline: everything but the port. */
export interface ComposedRpcs {
  readonly pipeline: RpcPipeline;
  readonly feed: Feed;
  readonly metrics: Metrics;
  /** The saved answers of idempotent writes, which the caller prunes. */
  readonly idempotency: Idempotency;
}

export function composeRpcs(
  store: Store,
  authenticator: CallerAuthenticator,
  config: Pick<Config, "maxDeadlineMs" | "maxWatchers" | "watchHeartbeatMs" | "watchPollIntervalMs">,
  logger: Logger,
  { tracing, admission }: { readonly tracing?: Tracing; readonly admission?: AdmissionController } = {},
): ComposedRpcs {
  const organizations = new Organizations(store);
  const metrics = new Metrics(store);
  if (admission !== undefined) metrics.watchAdmission(admission);
  const pipeline = new RpcPipeline({
    authenticator,
    organizations,
    logger,
    observer: metrics,
    maxDeadlineMs: config.maxDeadlineMs,
    tracing,
    admission: admission === undefined ? undefined : { controller: admission, observer: metrics },
  });
  const feed = new Feed(
    store,
    {
      maxWatchers: config.maxWatchers,
      heartbeatMs: config.watchHeartbeatMs,
      pollIntervalMs: config.watchPollIntervalMs,
    },
    (error) => logger.warn({ err: error }, "change feed poll failed; retrying at the next poll"),
  );
  metrics.countWatchers(() => feed.watcherCount);
  metrics.observeFeed(feed);
  const idempotency = new Idempotency(store);
  const writes = new IdempotentWrites(idempotency, (method) => metrics.countIdempotencyReplay(method));
  pipeline.register(ConnectionService, {
    ...connectionServiceHandlers(new Connections(store), writes),
    watchConnectionEvents: watchConnectionEventsHandler(feed),
  });
  pipeline.register(OrganizationService, organizationServiceHandlers(organizations, writes));
  return { pipeline, feed, metrics, idempotency };
}

export interface RunningService {
  readonly port: number;
  /** Undefined when metrics are off. */
  readonly adminPort: number | undefined;
  /** Reads the callers file and TLS credentials again (SIGHUP); a bad file keeps the previous one. */
  reload(): void;
  /** SQLite: writes an online backup into BACKUP_DIR (SIGUSR2) and logs where, or why it failed. */
  backup(): Promise<void>;
  /** Drains in-flight RPCs (up to the configured grace), then closes the database. */
  close(): Promise<void>;
}

export async function startService(config: Config, logger: Logger): Promise<RunningService> {
  // Files are read (and a bad one refused) before anything else starts; later reads swap them in.
  const reloader = new ConfigReloader(logger);
  const authenticator = callerAuthenticator(config, logger, reloader);
  let server: RunningServer | undefined;
  const tlsFiles = config.tls;
  const tls =
    tlsFiles === undefined
      ? undefined
      : reloader.add(
          "tls",
          [
            tlsFiles.certFile,
            tlsFiles.keyFile,
            ...(tlsFiles.clientCaFile === undefined ? [] : [tlsFiles.clientCaFile]),
          ],
          () => readTlsCredentials(tlsFiles),
          (credentials) => server?.setTlsCredentials(credentials),
        );
  const openedStore = await openStore({
    databaseUrl: config.databaseUrl,
    poolSize: config.databasePoolSize,
    statementTimeoutMs: config.databaseStatementTimeoutMs,
    checkCacheEntries: config.checkCacheEntries,
    sqliteMmapMib: config.sqliteMmapMib,
    migrate: config.migrateOnStart,
    schemaAheadLimit: config.schemaAheadLimit,
    migrationUrl: config.databaseMigrationUrl,
    listenUrl: config.databaseListenUrl,
    logger,
  });
  let tracing: Tracing | undefined;
  let stopAdmission: (() => void) | undefined;
  let stopPruning: (() => Promise<void>) | undefined;
  try {
    // Loaded only when asked for: without an OTLP endpoint no OpenTelemetry code is even imported.
    if (config.tracing !== undefined)
      tracing = (await import("../observability/tracing.js")).Tracing.start(config.tracing, logger);
    const dbSystem = config.databaseUrl.startsWith("sqlite:") ? "sqlite" : "postgresql";
    const tracedStore = tracing?.traced(openedStore, "Store", { "db.system": dbSystem }) ?? openedStore;
    const schema = await SchemaGate.start(tracedStore, logger);
    const store = schema.guard(tracedStore);
    const admission = config.admission === undefined ? undefined : new AdmissionController(config.admission);
    const { pipeline, feed, metrics, idempotency } = composeRpcs(store, authenticator, config, logger, {
      tracing,
      admission,
    });
    if (admission !== undefined) stopAdmission = adaptToEventLoopDelay(admission);
    stopPruning = startPruning(idempotency, {
      retentionMs: config.idempotencyRetentionMs,
      intervalMs: IDEMPOTENCY_PRUNE_INTERVAL_MS,
      logger,
      onPruned: (count) => metrics.countIdempotencyPruned(count),
    });

    server = await serve({
      pipeline,
      host: config.host,
      port: config.port,
      logger,
      maxRequestBytes: config.maxRequestBytes,
      tls,
      limits: config.limits,
      observer: metrics,
      readiness: () =>
        store.ping().then(
          () => schema.current(),
          () => false,
        ),
    });
    const admin =
      config.adminPort === undefined
        ? undefined
        : await startAdminServer(metrics.registry, config.host, config.adminPort);
    reloader.observe(metrics);
    reloader.watch();
    const running = server;
    return {
      port: running.port,
      adminPort: admin?.port,
      reload: () => reloader.reload("SIGHUP"),
      backup: () => backUp(store, config.backupDir, logger),
      async close() {
        reloader.close();
        // Watch streams never finish by themselves: end them with UNAVAILABLE (and a cursor
        // already sent) so that the drain below is not spent waiting for them.
        feed.shutDown();
        await running.close(config.shutdownGraceMs);
        await stopPruning?.();
        await admin?.close();
        // A query that outlived the grace period (say, waiting on a lock) must not hold the exit:
        // when the process ends, the database rolls its transaction back.
        const closed = await Promise.race([
          store.close().then(() => true),
          new Promise<false>((resolve) => setTimeout(resolve, STORE_CLOSE_TIMEOUT_MS, false).unref()),
        ]);
        if (!closed) logger.warn({ timeoutMs: STORE_CLOSE_TIMEOUT_MS }, "database did not close in time; leaving it");
        await tracing?.shutdown();
        stopAdmission?.();
      },
    };
  } catch (error) {
    stopAdmission?.();
    reloader.close();
    await stopPruning?.();
    await openedStore.close();
    await tracing?.shutdown();
    throw error;
  }
}

async function backUp(store: Store, directory: string | undefined, logger: Logger): Promise<void> {
  if (directory === undefined) {
    logger.error("backup refused: only an SQLite file is backed up this way (PostgreSQL: pg_dump, pg_basebackup)");
    return;
  }
  const path = join(directory, `connections-${new Date().toISOString().replace(/[:.]/g, "-")}.db`);
  try {
    await mkdir(directory, { recursive: true });
    await store.backup(path);
    logger.info({ path, bytes: (await stat(path)).size }, "backup written");
  } catch (error) {
    logger.error({ err: error, path }, "backup failed");
  }
}

function callerAuthenticator(config: Config, logger: Logger, reloader: ConfigReloader): CallerAuthenticator {
  const file = config.callersFile;
  if (file !== undefined) {
    let authenticator: CallerAuthenticator | undefined;
    const table = reloader.add(
      "callers",
      [file],
      () => CallerTable.fromFile(file),
      (next) => authenticator?.replace(next),
    );
    authenticator = new CallerAuthenticator(table);
    return authenticator;
  }
  logger.warn(
    "dev mode: no CALLERS_FILE, so the tokens dev-dashboard-bff, dev-api-gateway, dev-token-service and " +
      "dev-provisioning are accepted; never run like this in production",
  );
  return CallerAuthenticator.dev();
}
