// The change feed across real service processes on one PostgreSQL database: a transition made on
// one replica reaches a watcher on the other through NOTIFY (the poll is set far beyond the test's
// timeout, so only a notification can deliver it); a listener connection killed by the server
// loses nothing; and a watcher whose replica shuts down resumes on the other exactly once.

import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";
import { connect } from "../support/fixtures.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, registerOrganizations } from "../support/service.js";
import { type WatchClient, watchClient } from "../support/watch.js";

describePostgres("the change feed across replicas", () => {
  let database: ProvisionedDatabase;
  let replicas: ServiceProcess[] = [];
  let writer: GrpcJsRpcClient;
  const watchers: WatchClient[] = [];

  beforeAll(async () => {
    database = await provisionPostgres();
    // No periodic poll within the tests' time: delivery across replicas must come from NOTIFY.
    const env = { DATABASE_URL: database.url, WATCH_POLL_INTERVAL_MS: "60000" };
    replicas = await Promise.all([startServiceProcess(env), startServiceProcess(env)]);
    writer = new GrpcJsRpcClient(`127.0.0.1:${replicas[1]?.port}`);
  }, 120_000);

  afterAll(async () => {
    for (const made of watchers) made.close();
    await writer?.close();
    await Promise.all(replicas.map((replica) => replica.stop()));
    await database?.drop();
  });

  const watchOn = (index: number) => {
    const made = watchClient(index % 2 === 0 ? "grpc-js" : "connect-grpc", `127.0.0.1:${replicas[index]?.port}`);
    watchers.push(made);
    return made;
  };

  it("delivers a transition made on another replica, also after the listener connection was killed", async () => {
    const [source = "", destination = ""] = await registerOrganizations(writer, 2);
    const stream = watchOn(0).watch({ startAtNow: true }, { caller: "token-service" });
    await stream.next();
    const created = await connect(writer, source, destination);
    expect((await stream.events(1)).events.map((event) => event.connectionId)).toEqual([created.id]);

    // The server drops every listening connection; they reconnect and look at once.
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      const { rowCount } = await admin.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'connections-feed'",
      );
      expect(rowCount).toBeGreaterThanOrEqual(1);
    } finally {
      await admin.end();
    }
    await writer
      .as({ caller: "dashboard-bff", organizationId: source })
      .deactivateConnection({ id: created.id, reason: "listener test" });
    const { events } = await stream.events(1);
    expect(events.map((event) => event.type)).toEqual([ConnectionEvent_Type.DEACTIVATED]);
    stream.cancel();
  });

  it("lets a watcher whose replica shuts down resume on the other, exactly once", async () => {
    const [source = "", destination = ""] = await registerOrganizations(writer, 2);
    const stream = watchOn(0).watch({ startAtNow: true }, { caller: "token-service" });
    await stream.next();
    const first = await connect(writer, source, destination);
    const { cursor } = await stream.events(1);

    await replicas[0]?.stop();
    expect(await stream.end()).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    const second = await connect(writer, destination, source);

    const resumed = watchOn(1).watch({ startAfter: cursor }, { caller: "token-service" });
    const { events } = await resumed.events(1);
    expect(events.map((event) => event.connectionId)).toEqual([second.id]);
    expect(events.map((event) => event.connectionId)).not.toContain(first.id);
    resumed.cancel();
  });
});
