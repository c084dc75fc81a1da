// Statements with parameters are prepared once per connection when the pool reaches PostgreSQL
// itself, and parsed each time otherwise (through a pooler the next transaction may run on a
// server connection that never saw the name). A migration that changes a prepared statement's
// result columns drops the connection that held it instead of failing every later call on it.

import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { StorePool } from "../../src/store/pg-pool.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres, testPool } from "../support/databases.js";

/** A pool of one connection, so that every use sees the session of the one before. */
function onePool(url: string, namedStatements: boolean): StorePool {
  const connection = { connectionString: url };
  return new StorePool(testPool({ ...connection, max: 1, pipeline: true }), 1, {
    connection,
    statementTimeoutMs: 5_000,
    namedStatements,
  });
}

async function preparedOnTheConnection(pool: StorePool): Promise<string[]> {
  const { rows } = await pool.reserve(undefined, (db) =>
    sql<{ statement: string }>`select statement from pg_prepared_statements order by statement`.execute(db),
  );
  return rows.map((row) => row.statement);
}

describePostgres("PostgreSQL statements prepared per connection", () => {
  let database: ProvisionedDatabase;
  beforeAll(async () => {
    database = await provisionPostgres();
  });
  afterAll(async () => {
    await database?.drop();
  });

  it("prepares a statement with parameters once and runs it by name after that", async () => {
    const pool = onePool(database.url, true);
    try {
      for (const value of [1, 2, 3]) {
        const { rows } = await pool.reserve(undefined, (db) =>
          sql<{ n: number }>`select ${value}::int as n`.execute(db),
        );
        expect(rows).toEqual([{ n: value }]);
      }
      expect(await preparedOnTheConnection(pool)).toEqual(["select $1::int as n"]);
    } finally {
      await pool.forKysely.end();
    }
  });

  it("prepares nothing when told the connections go through a pooler", async () => {
    const pool = onePool(database.url, false);
    try {
      await pool.reserve(undefined, (db) => sql`select ${1}::int as n`.execute(db));
      expect(await preparedOnTheConnection(pool)).toEqual([]);
    } finally {
      await pool.forKysely.end();
    }
  });

  it("drops a connection whose prepared statement a migration made stale, and prepares it afresh", async () => {
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    const pool = onePool(database.url, true);
    try {
      await admin.query("create table widened (id int primary key)");
      await admin.query("insert into widened values (1)");
      const read = () => pool.reserve(undefined, (db) => sql`select * from widened where id = ${1}`.execute(db));
      expect((await read()).rows).toEqual([{ id: 1 }]);
      await admin.query("alter table widened add column note text");
      await expect(read()).rejects.toThrow(/cached plan must not change result type/);
      expect((await read()).rows).toEqual([{ id: 1, note: null }]);
    } finally {
      await pool.forKysely.end();
      await admin.end();
    }
  });
});
