// SIGTERM on a real process with a call in flight. The call is held inside the database by a row
// lock that the test owns, so "in flight" is certain rather than hoped for.

import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  POSTGRES_SKIP_MESSAGE,
  type ProvisionedDatabase,
  postgresAdminUrl,
  provisionPostgres,
} from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, RpcError, uniqueId } from "../support/service.js";

if (postgresAdminUrl === undefined) console.warn(POSTGRES_SKIP_MESSAGE);

describe.skipIf(postgresAdminUrl === undefined)("graceful shutdown", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** A service with one PENDING connection, and a database session holding that row locked. */
  async function serviceWithLockedConnection(env: Record<string, string>) {
    const database: ProvisionedDatabase = await provisionPostgres();
    cleanups.push(() => database.drop());
    const service: ServiceProcess = await startServiceProcess({
      DATABASE_URL: database.url,
      DATABASE_STATEMENT_TIMEOUT_MS: "60000",
      ...env,
    });
    cleanups.push(() => service.stop("SIGKILL"));
    const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
    cleanups.push(() => client.close());

    const [source, destination] = [uniqueId("org"), uniqueId("org")];
    for (const id of [source, destination]) {
      await client.as({ caller: "provisioning" }).createOrganization({ id, name: id });
    }
    const { connection } = await client
      .as({ caller: "api-gateway", organizationId: source })
      .createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] });
    const id = connection?.id ?? "";

    const locker = new pg.Client({ connectionString: database.url });
    await locker.connect();
    cleanups.push(() => locker.end());
    await locker.query("BEGIN");
    await locker.query("SELECT id FROM connections WHERE id = $1 FOR UPDATE", [id]);

    const deactivate = () => client.as({ caller: "api-gateway", organizationId: source }).deactivateConnection({ id });
    const waitUntilBlocked = async () => {
      for (let attempt = 0; attempt < 200; attempt++) {
        const { rows } = await locker.query<{ waiting: string }>(
          "SELECT count(*) AS waiting FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        if (Number(rows[0]?.waiting) > 0) return;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      throw new Error("the call never reached the database");
    };
    return { service, client, locker, id, source, deactivate, waitUntilBlocked };
  }

  it("lets an in-flight RPC finish, refuses new connections, then exits 0", async () => {
    const { service, locker, deactivate, waitUntilBlocked, id, source } = await serviceWithLockedConnection({
      SHUTDOWN_GRACE_MS: "20000",
    });
    const inFlight = deactivate();
    await waitUntilBlocked();

    service.child.kill("SIGTERM");
    const fresh = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
    cleanups.push(() => fresh.close());
    let refused = false;
    for (let attempt = 0; attempt < 100 && !refused; attempt++) {
      refused = await fresh
        .as({ caller: "api-gateway", organizationId: source })
        .getConnection({ id })
        .then(
          () => false,
          (error: unknown) => error instanceof RpcError && error.code === Code.Unavailable,
        );
      if (!refused) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(refused, "a new connection is refused once shutdown began").toBe(true);

    await locker.query("COMMIT");
    const reply = await inFlight;
    expect(reply.connection?.state).toBe(Connection_State.INACTIVE);
    expect(await service.exited).toBe(0);
    expect(service.logs.some((line) => line.msg === "stopped")).toBe(true);
  });

  it("cancels an RPC that outlives the grace period, rolls it back, and still exits 0", async () => {
    const { service, locker, deactivate, waitUntilBlocked, id } = await serviceWithLockedConnection({
      SHUTDOWN_GRACE_MS: "300",
    });
    const inFlight = deactivate().then(
      () => "finished",
      (error: unknown) => (error instanceof RpcError ? "failed" : "threw"),
    );
    await waitUntilBlocked();

    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
    expect(await inFlight).toBe("failed");

    await locker.query("COMMIT");
    const { rows } = await locker.query<{ state: string }>("SELECT state FROM connections WHERE id = $1", [id]);
    expect(rows[0]?.state).toBe("PENDING");
  });
});
