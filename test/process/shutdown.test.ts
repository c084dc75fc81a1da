// SIGTERM, deadlines and cancellation on a real process with a call in flight. The call is held
// inside the database by a row lock that the test owns, so "in flight" is certain rather than
// hoped for, and what committed is read back from the database itself.

import { type CallOptions, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, RpcError, rpcError, uniqueId } from "../support/service.js";
import { until } from "../support/until.js";

describePostgres("graceful shutdown and cancellation", () => {
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
    const lockWaiters = async () => {
      const { rows } = await locker.query<{ waiting: string }>(
        "SELECT count(*) AS waiting FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      return Number(rows[0]?.waiting);
    };
    const waitUntilBlocked = async () => {
      for (let attempt = 0; attempt < 200; attempt++) {
        if ((await lockWaiters()) > 0) return;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      throw new Error("the call never reached the database");
    };
    /** True once no query waits on the lock any more: the service cancelled it in the database. */
    const waitUntilReleased = async () => {
      for (let attempt = 0; attempt < 200; attempt++) {
        if ((await lockWaiters()) === 0) return true;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      return false;
    };
    /** Deactivate over connect-node's gRPC transport (the fast path), with a deadline or a signal. */
    const deactivateWith = (options: CallOptions) =>
      createClient(ConnectionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${service.port}` }))
        .deactivateConnection(
          { id },
          { ...options, headers: { authorization: "Bearer dev-api-gateway", "x-organization-id": source } },
        )
        .then(
          () => ({ code: "OK" }),
          (error: unknown) => ({ code: Code[(error as { code: Code }).code] }),
        );
    /** The state in the database and the number of events: what committed. */
    const committed = async () => {
      const state = await locker.query<{ state: string }>("SELECT state FROM connections WHERE id = $1", [id]);
      const events = await locker.query<{ n: string }>(
        "SELECT count(*) AS n FROM connection_events WHERE connection_id = $1",
        [id],
      );
      return { state: state.rows[0]?.state, events: Number(events.rows[0]?.n) };
    };
    return {
      service,
      client,
      locker,
      id,
      source,
      deactivate,
      deactivateWith,
      waitUntilBlocked,
      waitUntilReleased,
      committed,
    };
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
    const inFlight = rpcError(deactivate());
    await waitUntilBlocked();

    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
    const error = await inFlight;
    expect({ code: Code[error.code], reason: error.reason }).toEqual({ code: "Unavailable", reason: "SHUTTING_DOWN" });

    await locker.query("COMMIT");
    const { rows } = await locker.query<{ state: string }>("SELECT state FROM connections WHERE id = $1", [id]);
    expect(rows[0]?.state).toBe("PENDING");
  });

  it("a second signal sent later, from outside, exits at once without draining", async () => {
    const { service, deactivate, waitUntilBlocked } = await serviceWithLockedConnection({
      SHUTDOWN_GRACE_MS: "60000",
    });
    const inFlight = deactivate().catch(() => undefined);
    await waitUntilBlocked();
    service.child.kill("SIGTERM");
    // Sent together (npm forwarding, a process group): one stop.
    service.child.kill("SIGTERM");
    // "Later" counts from when the service took the first signal, however late a busy machine let it.
    await until(() => service.logs.some((line) => line.msg === "shutting down"), "the service to start draining");
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(service.child.exitCode, "still draining after the repeated signal").toBeNull();
    service.child.kill("SIGINT");
    expect(await service.exited).toBe(1);
    await inFlight;
  });

  it("tells an exhausted pool (every connection busy, the database fine) from a database that is down", async () => {
    const { client, deactivate, waitUntilBlocked, locker, source } = await serviceWithLockedConnection({
      DATABASE_POOL_SIZE: "1",
      SHUTDOWN_GRACE_MS: "1000",
    });
    const blocked = deactivate().catch(() => undefined);
    await waitUntilBlocked();
    const error = await rpcError(client.as({ caller: "provisioning" }).getOrganization({ id: source }));
    expect({ code: Code[error.code], reason: error.reason }).toEqual({
      code: "Unavailable",
      reason: "DATABASE_UNAVAILABLE",
    });
    expect(error.rawMessage).toMatch(/every database connection of this replica is busy/);
    await locker.query("COMMIT");
    await blocked;
  });

  it.each([
    ["its deadline passes", "DeadlineExceeded"],
    ["the client cancels it", "Canceled"],
  ] as const)(
    "a transition whose caller gave up (%s) is cancelled in the database and never commits",
    async (_name, code) => {
      const { deactivateWith, waitUntilBlocked, waitUntilReleased, locker, committed } =
        await serviceWithLockedConnection({ SHUTDOWN_GRACE_MS: "1000" });
      const before = await committed();
      const cancel = new AbortController();
      const outcome = deactivateWith(code === "Canceled" ? { signal: cancel.signal } : { timeoutMs: 1_000 });
      await waitUntilBlocked();
      // The client cancels once the call waits in the database, not after a guess at how long that takes.
      cancel.abort();
      expect((await outcome).code).toBe(code);
      // The lock is still held: only a cancel sent by the service can have ended the waiting UPDATE.
      expect(await waitUntilReleased(), "the service cancelled its query in the database").toBe(true);
      await locker.query("COMMIT");
      // Whatever the service still had in hand, it must not commit now that the lock is free.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await committed()).toEqual(before);
    },
  );
});
