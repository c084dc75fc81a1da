// Migrations as a deploy step: `main.js migrate` applies them and exits; with MIGRATE_ON_START=false
// a replica on a schema that is behind serves NOT_SERVING, says "run migrate" and answers its calls
// UNAVAILABLE (retryable) until the step has run; one on a schema further ahead than
// SCHEMA_AHEAD_LIMIT refuses to start, and one within the limit serves (the previous release
// during a rolling deploy).

import { spawn } from "node:child_process";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { CheckConnectionRequest_Action } from "../../gen/connections/v1/connection_service_pb.js";
import { migrationProvider } from "../../src/store/migrations.js";
import {
  describeEachDatabase,
  type ProvisionedDatabase,
  provisionDatabase,
  testDatabases,
} from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, expectRpcError, GrpcJsRpcClient, uniqueId } from "../support/service.js";

const ROOT = new URL("../..", import.meta.url).pathname;

/** Runs `src/main.ts` (or a tool under src/) to its end; exit code and output. */
function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", ...args], {
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

const migrate = (databaseUrl: string) => run(["src/main.ts", "migrate"], { DATABASE_URL: databaseUrl });
/** The container health check: exit 0 for SERVING. */
const healthy = async (port: number) =>
  (await run(["src/bin/healthcheck.ts"], { PORT: String(port), HOST: "127.0.0.1" })).code === 0;

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
      const refused = await run(["src/main.ts"], {
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
  },
  // In-memory SQLite is gone with its process: there is no step to run before the service.
  testDatabases.filter((database) => database.kind !== "sqlite-memory"),
);
