// Migrations on a database that already holds data: each later migration must work on a database
// that an earlier release created and filled, on every dialect, not only on an empty one.

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely, Migrator, PostgresDialect, SqliteDialect, sql } from "kysely";
import { expect, it } from "vitest";
import { migrationProvider } from "../../src/store/migrations.js";
import { openStore, parseDatabaseUrl } from "../../src/store/open.js";
import { describeEachDatabase, provisionDatabase, testPool } from "../support/databases.js";

function connect(url: string): Kysely<unknown> {
  const target = parseDatabaseUrl(url);
  if (target.dialect === "sqlite") mkdirSync(dirname(target.path), { recursive: true });
  return target.dialect === "sqlite"
    ? new Kysely({ dialect: new SqliteDialect({ database: new SqliteDatabase(target.path) }) })
    : new Kysely({ dialect: new PostgresDialect({ pool: testPool({ connectionString: target.url, max: 1 }) }) });
}

describeEachDatabase("migration 0002 on a database that 0001 made and filled", (database) => {
  // An in-memory SQLite database does not outlive its connection: nothing to migrate later.
  it.skipIf(database.kind === "sqlite-memory")(
    "fills in the parties and scopes of every old event, and keeps listing",
    { timeout: 30_000 },
    async () => {
      const provisioned = await provisionDatabase(database);
      try {
        const dialect = database.dialect;
        const db = connect(provisioned.url);
        try {
          const migrator = new Migrator({ db, provider: migrationProvider(dialect) });
          const first = await migrator.migrateTo("0001_initial");
          expect(first.error).toBeUndefined();
          // Rows as the 0001 release wrote them.
          await sql`insert into organizations (id, name, create_time) values
            ('org_a', 'A', '2026-01-01T00:00:00.000Z'), ('org_b', 'B', '2026-01-01T00:00:00.000Z')`.execute(db);
          await sql`insert into connections (id, source_organization_id, destination_organization_id, name, scopes,
              state, create_time, update_time, activate_time, deactivate_time, creator, create_request_id, version)
            values ('cxn_old', 'org_a', 'org_b', 'Old', '["account.read","inquiry.read"]', 'ACTIVE',
              '2026-01-02T00:00:00.000Z', '2026-01-03T00:00:00.000Z', '2026-01-03T00:00:00.000Z', null, '', '', 2)`.execute(
            db,
          );
          await sql`insert into connection_events (id, connection_id, type, from_state, to_state,
              actor_organization_id, caller, actor, reason, request_id, create_time)
            values
              ('evt_1', 'cxn_old', 'CREATED', null, 'PENDING', 'org_a', 'api-gateway', '', '', 'req_1', '2026-01-02T00:00:00.000Z'),
              ('evt_2', 'cxn_old', 'ACTIVATED', 'PENDING', 'ACTIVE', 'org_b', 'dashboard-bff', '', '', 'req_2', '2026-01-03T00:00:00.000Z')`.execute(
            db,
          );
          const rest = await migrator.migrateToLatest();
          expect(rest.error).toBeUndefined();
          expect(rest.results?.map((result) => result.status)).not.toContain("Error");
        } finally {
          await db.destroy();
        }

        const store = await openStore({ databaseUrl: provisioned.url });
        try {
          const events = await store.listEvents({ connectionId: "cxn_old", after: undefined, limit: 10 });
          expect(
            events.items.map(({ id, sourceOrganizationId, destinationOrganizationId, scopes, previousScopes }) => ({
              id,
              sourceOrganizationId,
              destinationOrganizationId,
              scopes,
              previousScopes,
            })),
          ).toEqual(
            ["evt_1", "evt_2"].map((id) => ({
              id,
              sourceOrganizationId: "org_a",
              destinationOrganizationId: "org_b",
              scopes: ["account.read", "inquiry.read"],
              previousScopes: [],
            })),
          );
          const listed = await store.listConnections({
            organizationId: "org_b",
            direction: "BOTH",
            states: [],
            before: undefined,
            limit: 10,
          });
          expect(listed.items.map((connection) => connection.id)).toEqual(["cxn_old"]);
        } finally {
          await store.close();
        }
      } finally {
        await provisioned.drop();
      }
    },
  );
});
