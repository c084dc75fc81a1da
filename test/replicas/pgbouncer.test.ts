// Replicas behind a real PgBouncer in transaction pooling (its default configuration otherwise):
// several start at once and migrate once; a replica restarted under load starts again (no migration
// lock left behind on a pooled connection); a start that waits for the migration lock says so in
// its log, naming the holder; the statement timeout still applies (set per transaction); the feed
// warns that it can only poll, and is notified at once when DATABASE_LISTEN_URL names a session
// connection.

import { type ChildProcess, spawn } from "node:child_process";
import pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { migrationProvider } from "../../src/store/migrations.js";
import { openStore } from "../../src/store/open.js";
import { PG_MIGRATION_LOCK } from "../../src/store/schema-version.js";
import { type Store, UnavailableError } from "../../src/store/store.js";
import { type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";
import { connect } from "../support/fixtures.js";
import { describePgBouncer, type PgBouncer, startPgBouncer } from "../support/pgbouncer.js";
import { BUILT_MAIN, type ServiceProcess, startServiceProcess, untilLogged } from "../support/process.js";
import { GrpcJsRpcClient, registerOrganizations, uniqueId } from "../support/service.js";
import { watchClient } from "../support/watch.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const POOLER_WARNING = /connection pooler .* LISTEN does not work/;

describePgBouncer("replicas behind PgBouncer in transaction pooling", () => {
  let database: ProvisionedDatabase;
  let bouncer: PgBouncer;
  let bounced: string;
  const replicas: ServiceProcess[] = [];
  const clients: GrpcJsRpcClient[] = [];

  beforeAll(async () => {
    database = await provisionPostgres();
    bouncer = await startPgBouncer();
    bounced = bouncer.through(database.url);
  }, 60_000);

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close();
    await Promise.all(replicas.splice(0).map((replica) => replica.stop()));
  });

  afterAll(async () => {
    await bouncer?.stop();
    await database?.drop();
  });

  async function start(
    env: Record<string, string> = {},
  ): Promise<{ replica: ServiceProcess; client: GrpcJsRpcClient }> {
    const replica = await startServiceProcess({ DATABASE_URL: bounced, ...env });
    replicas.push(replica);
    const client = new GrpcJsRpcClient(`127.0.0.1:${replica.port}`);
    clients.push(client);
    return { replica, client };
  }

  async function direct<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      return await work(client);
    } finally {
      await client.end();
    }
  }

  it("starts three replicas at once, migrates once, and warns that the feed only polls", async () => {
    const started = await Promise.all([start(), start(), start()]);
    const { rows } = await direct((client) => client.query("select name from kysely_migration order by name"));
    const shipped = Object.keys(await migrationProvider("postgres").getMigrations()).sort();
    expect(rows).toEqual(shipped.map((name) => ({ name })));
    for (const { replica, client } of started) {
      expect(replica.logs.some((entry) => POOLER_WARNING.test(String(entry.msg)))).toBe(true);
      const [source = "", destination = ""] = await registerOrganizations(client, 2, "org_pgb");
      expect((await connect(client, source, destination)).id).toMatch(/^cxn_/);
    }
  }, 120_000);

  it("restarts a replica under load: it starts again, and the other one fails no call", async () => {
    const steady = await start();
    let restarting = await start();
    const created: string[] = [];
    const failures: unknown[] = [];
    let running = true;
    const load = Array.from({ length: 8 }, async () => {
      while (running) {
        const id = uniqueId("org_load");
        try {
          await steady.client.as({ caller: "provisioning" }).createOrganization({ id, name: id });
          created.push(id);
          await steady.client.as({ caller: "provisioning" }).getOrganization({ id });
        } catch (error) {
          failures.push(error);
        }
      }
    });
    // The replica being restarted is under load too until its drain: its calls may fail then.
    const restartedLoad = (async () => {
      while (running) {
        await restarting.client
          .as({ caller: "provisioning" })
          .getOrganization({ id: created[0] ?? "org_none" })
          .catch(() => undefined);
      }
    })();
    try {
      for (let round = 0; round < 2; round++) {
        await restarting.replica.stop();
        restarting = await start();
        const [source = "", destination = ""] = await registerOrganizations(restarting.client, 2, "org_restart");
        expect((await connect(restarting.client, source, destination)).id).toMatch(/^cxn_/);
      }
    } finally {
      running = false;
      await Promise.all([...load, restartedLoad]);
    }
    expect(failures).toEqual([]);
    expect(created.length).toBeGreaterThan(0);
    const { rows } = await direct((client) =>
      client.query("select count(*)::int as found from organizations where id = any($1)", [created]),
    );
    expect(rows[0]?.found).toBe(created.length);
  }, 120_000);

  it("logs a start that waits for the migration lock, naming who holds it, then starts once it is free", async () => {
    // Held on a session the way an earlier release's session lock could stay held behind a pooler.
    const holder = new pg.Client({ connectionString: database.url, application_name: "lock-holder" });
    await holder.connect();
    // The same lock in another database of the cluster (another service migrating there) is not
    // this one's: it blocks nothing here and must not be named.
    const elsewhere = await provisionPostgres();
    const otherHolder = new pg.Client({ connectionString: elsewhere.url, application_name: "elsewhere" });
    await otherHolder.connect();
    let child: ChildProcess | undefined;
    try {
      await holder.query("select pg_advisory_lock($1)", [PG_MIGRATION_LOCK]);
      await otherHolder.query("select pg_advisory_lock($1)", [PG_MIGRATION_LOCK]);
      child = spawn(process.execPath, [BUILT_MAIN], {
        cwd: ROOT,
        env: { ...process.env, PORT: "0", ADMIN_PORT: "off", DATABASE_URL: bounced, LOG_LEVEL: "info" },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const logs: Record<string, unknown>[] = [];
      const exited = new Promise<number | null>((resolve) => child?.once("exit", (code) => resolve(code)));
      const waiting = await untilLogged(
        child,
        logs,
        exited,
        (entry) => String(entry.msg).startsWith("waiting for the migration lock"),
        30_000,
      );
      expect(waiting.holders).toEqual([expect.objectContaining({ application_name: "lock-holder" })]);
      const serving = untilLogged(child, [], exited, (entry) => typeof entry.port === "number", 30_000);
      await holder.query("select pg_advisory_unlock($1)", [PG_MIGRATION_LOCK]);
      expect((await serving).port).toBeGreaterThan(0);
    } finally {
      child?.kill("SIGTERM");
      await holder.end();
      await otherHolder.end();
      await elsewhere.drop();
    }
  }, 60_000);

  it("is notified at once across replicas when DATABASE_LISTEN_URL names a session connection", async () => {
    // No periodic poll within the test's time: only NOTIFY can deliver the event.
    const env = { DATABASE_LISTEN_URL: database.url, WATCH_POLL_INTERVAL_MS: "60000" };
    const [watched, writer] = await Promise.all([start(env), start(env)]);
    expect(watched.replica.logs.some((entry) => POOLER_WARNING.test(String(entry.msg)))).toBe(false);
    const [source = "", destination = ""] = await registerOrganizations(writer.client, 2, "org_listen");
    const watcher = watchClient("grpc-js", `127.0.0.1:${watched.replica.port}`);
    try {
      const stream = watcher.watch({ startAtNow: true }, { caller: "token-service" });
      await stream.next();
      const created = await connect(writer.client, source, destination);
      expect((await stream.events(1)).events.map((event) => event.connectionId)).toEqual([created.id]);
      stream.cancel();
    } finally {
      watcher.close();
    }
  }, 60_000);

  it("keeps the statement timeout: a write blocked by a lock is cancelled by the server", async () => {
    const store: Store = await openStore({ databaseUrl: bounced, statementTimeoutMs: 300, poolSize: 2 });
    const blocker = new pg.Client({ connectionString: database.url });
    await blocker.connect();
    try {
      await blocker.query("begin");
      // Every organization insert waits on this row lock of the same primary key.
      const id = uniqueId("org_blocked");
      await blocker.query("insert into organizations (id, name, create_time) values ($1, 'x', now())", [id]);
      const error = await store.createOrganization({ id, name: "blocked", createTime: new Date() }).then(
        () => undefined,
        (caught: unknown) => caught,
      );
      expect(error).toBeInstanceOf(UnavailableError);
      // 57014 query_canceled: PostgreSQL's statement_timeout, not the client giving up.
      expect((error as UnavailableError).cause).toMatchObject({ code: "57014" });
    } finally {
      await blocker.query("rollback").catch(() => undefined);
      await blocker.end();
      await store.close();
    }
  }, 30_000);
});
