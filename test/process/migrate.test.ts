// Migrations as a deploy step: `main.js migrate` applies them and exits; with MIGRATE_ON_START=false
// a replica on a schema that is behind serves NOT_SERVING, says "run migrate" and answers its calls
// UNAVAILABLE (retryable) until the step has run; one on a schema further ahead than
// SCHEMA_AHEAD_LIMIT refuses to start, and one within the limit serves; and the previous release's
// own code (checked out from git) serves on this release's schema, beside this release's code, as
// during a rolling deploy.

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { migrationProvider } from "../../src/store/migrations.js";
import {
  describeEachDatabase,
  type ProvisionedDatabase,
  provisionDatabase,
  testDatabases,
} from "../support/databases.js";
import { connect } from "../support/fixtures.js";
import { BUILT_HEALTHCHECK, BUILT_MAIN, type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, expectRpcError, GrpcJsRpcClient, registerOrganizations, uniqueId } from "../support/service.js";

const ROOT = new URL("../..", import.meta.url).pathname;

/** Runs the built service (or another built tool) to its end; exit code and output. */
function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, output }));
  });
}

const migrate = (databaseUrl: string) => run([BUILT_MAIN, "migrate"], { DATABASE_URL: databaseUrl });
/** The container health check: exit 0 for SERVING. */
const healthy = async (port: number) =>
  (await run([BUILT_HEALTHCHECK], { PORT: String(port), HOST: "127.0.0.1" })).code === 0;

async function untilHealthy(port: number): Promise<boolean> {
  for (let attempt = 0; attempt < 20; attempt++) {
    if (await healthy(port)) return true;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return false;
}

/** Marks migrations that no shipped release has as applied, as a newer release would have. */
async function applyFutureMigrations(databaseUrl: string, count: number): Promise<void> {
  const names = Array.from({ length: count }, (_, index) => `9${String(index).padStart(3, "0")}_from_the_future`);
  if (databaseUrl.startsWith("sqlite:")) {
    const { default: SqliteDatabase } = await import("better-sqlite3");
    const database = new SqliteDatabase(databaseUrl.slice("sqlite:".length));
    const insert = database.prepare("insert into kysely_migration (name, timestamp) values (?, ?)");
    for (const name of names) insert.run(name, new Date().toISOString());
    database.close();
    return;
  }
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    for (const name of names) {
      await client.query("insert into kysely_migration (name, timestamp) values ($1, $2)", [
        name,
        new Date().toISOString(),
      ]);
    }
  } finally {
    await client.end();
  }
}

/** git in this checkout: what it printed, or undefined when it failed (no git, no history, no such commit). */
function git(args: readonly string[]): string | undefined {
  const result = spawnSync("git", ["-C", ROOT, ...args], { encoding: "utf8" });
  return result.status === 0 ? result.stdout.trim() : undefined;
}

/** Main-line commits, newest first, whose change to `path` (a merge's against its first parent) matches `filter`. */
function mainLineChanges(filter: string, path: string): string[] {
  const log = git([
    "log",
    "--first-parent",
    "--diff-merges=first-parent",
    "--no-patch",
    "--format=%H",
    filter,
    "--",
    path,
  ]);
  return log === undefined || log === "" ? [] : log.split("\n");
}

type Release = { readonly commit: string; readonly what: string } | { readonly skipped: string };

/**
 * The release that a rolling deploy onto this checkout's schema comes from: the main-line commit
 * just before the newest migration arrived (HEAD while that migration is not committed yet). None
 * older than the first release that knows SCHEMA_AHEAD_LIMIT (schema-version.ts, which says how far
 * ahead a release serves), since an older one refuses to start on a schema it does not know:
 * until a migration comes after that release, it is that release itself, on the same migrations.
 */
function previousRelease(newestMigration: string): Release {
  const head = git(["rev-parse", "HEAD"]);
  if (head === undefined) return { skipped: "this is not a git checkout" };
  if (git(["rev-parse", "--is-shallow-repository"]) !== "false") {
    return { skipped: "this is a shallow clone (git fetch --unshallow brings the history)" };
  }
  const windowStart = mainLineChanges("--diff-filter=A", "src/store/schema-version.ts").at(-1);
  if (windowStart === undefined) return { skipped: "no main-line commit adds src/store/schema-version.ts" };
  const arrival = mainLineChanges(`-S"${newestMigration}"`, "src/store/migrations.ts").at(-1);
  const before = arrival === undefined ? head : git(["rev-parse", `${arrival}^1`]);
  if (before === undefined) return { skipped: `${arrival} has no parent in this clone` };
  const predatesWindow =
    before !== windowStart && git(["merge-base", "--is-ancestor", before, windowStart]) !== undefined;
  return predatesWindow
    ? {
        commit: windowStart,
        what: `the first release with SCHEMA_AHEAD_LIMIT (${before.slice(0, 7)}, before ${newestMigration}, predates it)`,
      }
    : { commit: before, what: `the release before ${newestMigration}` };
}

/** `commit`'s code in a new directory (what it runs: src, gen, package.json, tsconfig.json), with this checkout's node_modules. */
function checkOut(commit: string): string {
  const root = mkdtempSync(join(tmpdir(), "connections-release-"));
  const archive = execFileSync("git", ["-C", ROOT, "archive", commit, "src", "gen", "package.json", "tsconfig.json"], {
    maxBuffer: 256 * 1024 * 1024,
  });
  execFileSync("tar", ["-x", "-C", root], { input: archive });
  symlinkSync(join(ROOT, "node_modules"), join(root, "node_modules"));
  return root;
}

const { CREATED, ACTIVATED, DEACTIVATED } = ConnectionEvent_Type;

const previousReleases = {
  sqlite: previousRelease(
    Object.keys(await migrationProvider("sqlite").getMigrations())
      .sort()
      .at(-1) ?? "",
  ),
  postgres: previousRelease(
    Object.keys(await migrationProvider("postgres").getMigrations())
      .sort()
      .at(-1) ?? "",
  ),
};

/** Whether `client` sees the Connection as `state` from the token service: its check, and its events in the feed. */
async function expectFollowed(
  client: GrpcJsRpcClient,
  connection: { readonly id: string; readonly sourceOrganizationId: string },
  state: "ACTIVE" | "INACTIVE",
  events: readonly ConnectionEvent_Type[],
): Promise<void> {
  const tokenService = client.as({ caller: "token-service" });
  const check = await tokenService.checkConnection({
    connectionId: connection.id,
    organizationId: connection.sourceOrganizationId,
    action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
    scope: "account.read",
  });
  expect(check.reason).toBe(
    state === "ACTIVE" ? CheckConnectionResponse_Reason.ALLOWED : CheckConnectionResponse_Reason.NOT_ACTIVE,
  );
  const listed = await client
    .as({ caller: "api-gateway", organizationId: connection.sourceOrganizationId })
    .listConnections({});
  expect(listed.connections.find((each) => each.id === connection.id)?.state).toBe(Connection_State[state]);
  // From the start of the feed: a new database holds a first message's worth of events.
  const feed = await tokenService.watchConnectionEvents({});
  expect(feed.events.filter((event) => event.connectionId === connection.id).map((event) => event.type)).toEqual(
    events,
  );
}

/** A write, a read, a check and a list, to be called in turn: each succeeds on a migrated schema. */
function everyKindOfCall(client: GrpcJsRpcClient): (() => Promise<unknown>)[] {
  const organizationId = uniqueId("org");
  return [
    () => client.call("createOrganization", { id: organizationId, name: "Acme" }, { caller: "provisioning" }),
    () => client.call("getOrganization", { id: organizationId }, { caller: "provisioning" }),
    () =>
      client.call(
        "checkConnection",
        {
          connectionId: "cxn_unknown",
          organizationId,
          action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
          scope: "account.read",
        },
        { caller: "token-service" },
      ),
    () => client.call("listConnections", {}, { caller: "api-gateway", organizationId }),
  ];
}

describeEachDatabase(
  "migrations as a step",
  (database) => {
    let provisioned: ProvisionedDatabase | undefined;
    let service: ServiceProcess | undefined;

    afterEach(async () => {
      await service?.stop();
      service = undefined;
      await provisioned?.drop();
      provisioned = undefined;
    });

    it("migrate applies every migration and exits 0; a second run has nothing to do", async () => {
      provisioned = await provisionDatabase(database);
      const first = await migrate(provisioned.url);
      expect(first.code, first.output).toBe(0);
      const shipped = Object.keys(await migrationProvider(database.dialect).getMigrations());
      for (const name of shipped) expect(first.output).toContain(name);
      expect(first.output).toContain("migrated");
      const again = await migrate(provisioned.url);
      expect(again.code, again.output).toBe(0);
      expect(again.output).not.toContain(`"migration":"${shipped[0]}"`);
    }, 60_000);

    it("with MIGRATE_ON_START=false, serves NOT_SERVING and says run migrate until the step has run", async () => {
      provisioned = await provisionDatabase(database);
      service = await startServiceProcess({ DATABASE_URL: provisioned.url, MIGRATE_ON_START: "false" });
      expect(service.logs.some((entry) => /run migrate/.test(String(entry.msg)))).toBe(true);
      expect(await healthy(service.port)).toBe(false);
      // Calls that reach it anyway are refused as retryable, not failed as INTERNAL on missing tables.
      let client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      for (const call of everyKindOfCall(client)) {
        await expectRpcError(call(), Code.Unavailable, "DATABASE_UNAVAILABLE");
      }
      // SQLite's file belongs to the running process: the step runs there with the service stopped.
      if (database.dialect === "sqlite") {
        await client.close();
        await service.stop();
        expect((await migrate(provisioned.url)).code).toBe(0);
        service = await startServiceProcess({ DATABASE_URL: provisioned.url, MIGRATE_ON_START: "false" });
        client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      } else {
        expect((await migrate(provisioned.url)).code).toBe(0);
      }
      // The first call after the step looks at the schema again: no health poll is needed to open the gate.
      for (const call of everyKindOfCall(client)) await call();
      await client.close();
      expect(await untilHealthy(service.port)).toBe(true);
    }, 90_000);

    it("refuses to start on a schema further ahead than SCHEMA_AHEAD_LIMIT, and serves within it", async () => {
      provisioned = await provisionDatabase(database);
      expect((await migrate(provisioned.url)).code).toBe(0);
      await applyFutureMigrations(provisioned.url, 2);
      const refused = await run([BUILT_MAIN], {
        DATABASE_URL: provisioned.url,
        PORT: "0",
        ADMIN_PORT: "off",
        SCHEMA_AHEAD_LIMIT: "1",
      });
      expect(refused.code).toBe(1);
      expect(refused.output).toContain("migration(s) ahead of this release");
      expect(refused.output).toContain("9001_from_the_future");

      service = await startServiceProcess({ DATABASE_URL: provisioned.url, SCHEMA_AHEAD_LIMIT: "2" });
      expect(
        service.logs.some((entry) => /ahead of this release, within SCHEMA_AHEAD_LIMIT/.test(String(entry.msg))),
      ).toBe(true);
      expect(await untilHealthy(service.port)).toBe(true);
    }, 90_000);

    const release = previousReleases[database.dialect];
    if ("skipped" in release) console.info(`previous release test skipped [${database.name}]: ${release.skipped}`);
    it.skipIf("skipped" in release)(
      `serves with the previous release's code (${"commit" in release ? `${release.commit.slice(0, 7)}, ${release.what}` : ""}) on this release's schema`,
      async () => {
        const previousRoot = checkOut((release as { commit: string }).commit);
        let current: ServiceProcess | undefined;
        try {
          provisioned = await provisionDatabase(database);
          expect((await migrate(provisioned.url)).code).toBe(0);
          const env = { DATABASE_URL: provisioned.url, MIGRATE_ON_START: "false" };
          service = await startServiceProcess(env, [], previousRoot);
          expect(await untilHealthy(service.port)).toBe(true);
          const previous = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
          const [source = "", destination = ""] = await registerOrganizations(previous, 2, "org_rolling");
          const connection = await connect(previous, source, destination, { state: "ACTIVE" });
          await expectFollowed(previous, connection, "ACTIVE", [CREATED, ACTIVATED]);

          // This release's code beside it (PostgreSQL), or after it on the same file (SQLite, which
          // one process owns): it reads what the previous release wrote, and writes what it reads.
          if (database.dialect === "sqlite") {
            await previous.close();
            await service.stop();
          }
          current = await startServiceProcess(env);
          const client = new GrpcJsRpcClient(`127.0.0.1:${current.port}`);
          await expectFollowed(client, connection, "ACTIVE", [CREATED, ACTIVATED]);
          await client
            .as({ caller: "api-gateway", organizationId: destination })
            .deactivateConnection({ id: connection.id });
          await expectFollowed(client, connection, "INACTIVE", [CREATED, ACTIVATED, DEACTIVATED]);
          await client.close();
          if (database.dialect === "postgres") {
            await expectFollowed(previous, connection, "INACTIVE", [CREATED, ACTIVATED, DEACTIVATED]);
            await previous.close();
          }
        } finally {
          await current?.stop();
          rmSync(previousRoot, { recursive: true, force: true });
        }
      },
      120_000,
    );
  },
  // In-memory SQLite is gone with its process: there is no step to run before the service.
  testDatabases.filter((database) => database.kind !== "sqlite-memory"),
);
