// The composition root: configuration in, a running service out. Tests start it exactly as
// main.ts does, on ephemeral ports.

import type { Logger } from "pino";
import { ConnectionService } from "../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../gen/connections/v1/organization_service_pb.js";
import { CallerAuthenticator } from "./api/callers.js";
import { connectionServiceHandlers } from "./api/connection-service.js";
import { organizationServiceHandlers } from "./api/organization-service.js";
import { RpcPipeline } from "./api/rpc.js";
import { Connections } from "./app/connections.js";
import { Organizations } from "./app/organizations.js";
import type { Config } from "./config.js";
import { Metrics, startAdminServer } from "./metrics.js";
import { openStore } from "./store/open.js";
import { serve } from "./transport/server.js";

const STORE_CLOSE_TIMEOUT_MS = 2_000;

export interface RunningService {
  readonly port: number;
  /** Undefined when metrics are off. */
  readonly adminPort: number | undefined;
  /** Drains in-flight RPCs (up to the configured grace), then closes the database. */
  close(): Promise<void>;
}

export async function startService(config: Config, logger: Logger): Promise<RunningService> {
  const authenticator = callerAuthenticator(config, logger);
  const store = await openStore({
    databaseUrl: config.databaseUrl,
    poolSize: config.databasePoolSize,
    statementTimeoutMs: config.databaseStatementTimeoutMs,
    logger,
  });
  try {
    const organizations = new Organizations(store);
    const metrics = new Metrics(store);
    const pipeline = new RpcPipeline({
      authenticator,
      organizations,
      logger,
      observer: metrics,
      maxDeadlineMs: config.maxDeadlineMs,
    });
    pipeline.register(ConnectionService, connectionServiceHandlers(new Connections(store)));
    pipeline.register(OrganizationService, organizationServiceHandlers(organizations));

    const server = await serve({
      pipeline,
      host: config.host,
      port: config.port,
      logger,
      maxRequestBytes: config.maxRequestBytes,
      readiness: () =>
        store.ping().then(
          () => true,
          () => false,
        ),
    });
    const admin =
      config.adminPort === undefined
        ? undefined
        : await startAdminServer(metrics.registry, config.host, config.adminPort);
    return {
      port: server.port,
      adminPort: admin?.port,
      async close() {
        await server.close(config.shutdownGraceMs);
        await admin?.close();
        // A query that outlived the grace period (say, waiting on a lock) must not hold the exit:
        // when the process ends, the database rolls its transaction back.
        const closed = await Promise.race([
          store.close().then(() => true),
          new Promise<false>((resolve) => setTimeout(resolve, STORE_CLOSE_TIMEOUT_MS, false).unref()),
        ]);
        if (!closed) logger.warn({ timeoutMs: STORE_CLOSE_TIMEOUT_MS }, "database did not close in time; leaving it");
      },
    };
  } catch (error) {
    await store.close();
    throw error;
  }
}

function callerAuthenticator(config: Config, logger: Logger): CallerAuthenticator {
  if (config.callersFile !== undefined) return CallerAuthenticator.fromFile(config.callersFile);
  logger.warn(
    "dev mode: no CALLERS_FILE, so the tokens dev-dashboard-bff, dev-api-gateway, dev-token-service and " +
      "dev-provisioning are accepted; never run like this in production",
  );
  return CallerAuthenticator.dev();
}
