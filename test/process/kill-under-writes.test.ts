// kill -9 under write load loses no acknowledged write, on SQLite (group commit: an answer goes
// out only after its group's COMMIT) and on PostgreSQL: a client records every create and
// deactivation the service acknowledged, the process is SIGKILLed while writes are in flight, and
// the database, opened again, holds every one of them.

import { afterEach, describe, expect, it } from "vitest";
import { openStore } from "../../src/store/open.js";
import {
  type ProvisionedDatabase,
  postgresAdminUrl,
  provisionPostgres,
  provisionSqliteFile,
} from "../support/databases.js";
import { startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient, registerOrganizations } from "../support/service.js";

const ORGANIZATIONS = 30;
const WRITERS = 32;
/** Acknowledged writes before the kill. */
const BEFORE_KILL = 200;

const databases = [
  { name: "sqlite (file)", enabled: true, provision: provisionSqliteFile },
  { name: "postgres", enabled: postgresAdminUrl !== undefined, provision: provisionPostgres },
];

describe.each(databases)("kill -9 under write load [$name]", ({ enabled, provision }) => {
  let database: ProvisionedDatabase | undefined;
  afterEach(async () => {
    await database?.drop();
  });

  it.skipIf(!enabled)(
    "keeps every acknowledged create and deactivation",
    async () => {
      database = await provision();
      const service = await startServiceProcess({ DATABASE_URL: database.url });
      const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      const organizations = await registerOrganizations(client, ORGANIZATIONS);
      const pairs = organizations.flatMap((source) =>
        organizations.filter((destination) => destination !== source).map((destination) => ({ source, destination })),
      );
      /** Connection id -> the last state the service acknowledged. */
      const acknowledged = new Map<string, "PENDING" | "INACTIVE">();
      let next = 0;
      let killed = false;
      const writer = async () => {
        while (!killed && next < pairs.length) {
          const { source, destination } = pairs[next++] as { source: string; destination: string };
          const asSource = client.as({ caller: "dashboard-bff", organizationId: source });
          try {
            const { connection } = await asSource.createConnection({
              destinationOrganizationId: destination,
              scopes: ["account.read"],
              name: "kill test",
            });
            const id = connection?.id ?? "";
            acknowledged.set(id, "PENDING");
            if (next % 2 === 0) {
              await asSource.deactivateConnection({ id, reason: "kill test" });
              acknowledged.set(id, "INACTIVE");
            }
          } catch (error) {
            // Only calls cut by the kill may fail.
            if (!killed) throw error;
          }
        }
      };
      const writers = Promise.all(Array.from({ length: WRITERS }, writer));
      // Rejects at once when a write failed before the kill.
      await Promise.race([
        writers,
        (async () => {
          while (acknowledged.size < BEFORE_KILL) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
      ]);
      killed = true;
      service.child.kill("SIGKILL");
      await service.exited;
      await writers;
      await client.close();

      const store = await openStore({ databaseUrl: database.url });
      try {
        const missing: string[] = [];
        for (const [id, state] of acknowledged) {
          const stored = await store.getConnection(id);
          if (stored === undefined || (state === "INACTIVE" && stored.state !== "INACTIVE")) {
            missing.push(`${id}: acknowledged ${state}, stored ${stored?.state ?? "nothing"}`);
          }
        }
        expect(missing).toEqual([]);
        expect(acknowledged.size).toBeGreaterThanOrEqual(BEFORE_KILL);
      } finally {
        await store.close();
      }
    },
    120_000,
  );
});
