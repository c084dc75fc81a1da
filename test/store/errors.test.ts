// Driver errors become sentinels in one place; the store retries what is worth retrying.

import SqliteDatabase from "better-sqlite3";
import {
  Kysely,
  type KyselyPlugin,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  type QueryResult,
  type RootOperationNode,
  SqliteDialect,
  type UnknownRow,
} from "kysely";
import { afterEach, describe, expect, it } from "vitest";
import { translateError } from "../../src/store/errors.js";
import { KyselyStore } from "../../src/store/kysely-store.js";
import { migrateToLatest } from "../../src/store/migrations.js";
import type { Database } from "../../src/store/schema.js";
import { AlreadyExistsError, ConflictError, UnavailableError } from "../../src/store/store.js";
import { connectionRecord, createdEvent } from "./fixtures.js";

function driverError(message: string, fields: Record<string, unknown>): Error {
  return Object.assign(new Error(message), fields);
}

describe("translateError", () => {
  it.each([
    ["UNIQUE constraint failed: organizations.id", { code: "SQLITE_CONSTRAINT_PRIMARYKEY" }, "organization"],
    [
      "UNIQUE constraint failed: connections.source_organization_id, connections.destination_organization_id",
      { code: "SQLITE_CONSTRAINT_UNIQUE" },
      "pair",
    ],
    [
      "UNIQUE constraint failed: idempotency_records.scope, idempotency_records.request_id",
      { code: "SQLITE_CONSTRAINT_PRIMARYKEY" },
      "request_id",
    ],
    [
      'duplicate key value violates unique constraint "organizations_pkey"',
      { code: "23505", constraint: "organizations_pkey" },
      "organization",
    ],
    ["duplicate key value", { code: "23505", constraint: "connections_pair_key" }, "pair"],
    ["duplicate key value", { code: "23505", constraint: "idempotency_records_pkey" }, "request_id"],
  ])("maps %j to AlreadyExistsError", (message, fields, conflict) => {
    const error = driverError(message, fields);
    const sentinel = translateError(error);
    expect(sentinel).toBeInstanceOf(AlreadyExistsError);
    expect(sentinel).toMatchObject({ conflict, message: `already exists: ${conflict}`, cause: error });
  });

  it.each([
    ["UNIQUE constraint failed: connection_events.id", { code: "SQLITE_CONSTRAINT_UNIQUE" }],
    ["duplicate key value", { code: "23505", constraint: "connections_pkey" }],
    ["FOREIGN KEY constraint failed", { code: "SQLITE_CONSTRAINT_FOREIGNKEY" }],
    ["syntax error", { code: "42601" }],
    ["plain bug", {}],
  ])("leaves %j alone: it is no sentinel", (message, fields) => {
    const error = driverError(message, fields);
    expect(translateError(error)).toBe(error);
  });

  it.each([
    ["could not serialize access", { code: "40001" }],
    ["deadlock detected", { code: "40P01" }],
    ["database is locked", { code: "SQLITE_BUSY" }],
    ["database table is locked", { code: "SQLITE_LOCKED" }],
  ])("maps %j to ConflictError", (message, fields) => {
    const error = driverError(message, fields);
    expect(translateError(error)).toMatchObject({ name: "ConflictError", message: "write conflict", cause: error });
  });

  it.each([
    ["connect ECONNREFUSED 127.0.0.1:5432", { code: "ECONNREFUSED" }],
    ["read ECONNRESET", { code: "ECONNRESET" }],
    ["terminating connection due to administrator command", { code: "57P01" }],
    ["the database system is starting up", { code: "57P03" }],
    ["canceling statement due to statement timeout", { code: "57014" }],
    ["connection failure", { code: "08006" }],
    ["sorry, too many clients already", { code: "53300" }],
    ["Connection terminated unexpectedly", {}],
    ["Connection terminated due to connection timeout", {}],
    ["timeout exceeded when trying to connect", {}],
    ["disk I/O error", { code: "SQLITE_IOERR_WRITE" }],
  ])("maps %j to UnavailableError", (message, fields) => {
    const error = driverError(message, fields);
    expect(translateError(error)).toMatchObject({
      name: "UnavailableError",
      message: "database unavailable",
      cause: error,
    });
  });

  it("reads the code of every address node:net tried", () => {
    const error = new AggregateError([driverError("connect ECONNREFUSED ::1:5432", { code: "ECONNREFUSED" })], "");
    expect(translateError(error)).toBeInstanceOf(UnavailableError);
  });

  it("passes sentinels through unchanged", () => {
    const sentinel = new ConflictError();
    expect(translateError(sentinel)).toBe(sentinel);
  });
});

/** Fails the results of chosen kinds of queries, after they ran, as a driver would. */
class FailingPlugin implements KyselyPlugin {
  readonly #kinds = new WeakMap<object, RootOperationNode["kind"]>();
  failures: { kind: RootOperationNode["kind"]; error: Error; times: number } | undefined;
  thrown = 0;

  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    this.#kinds.set(args.queryId, args.node.kind);
    return args.node;
  }

  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    const failures = this.failures;
    if (failures !== undefined && failures.times > 0 && this.#kinds.get(args.queryId) === failures.kind) {
      failures.times--;
      this.thrown++;
      throw failures.error;
    }
    return args.result;
  }
}

describe("KyselyStore retries", () => {
  let db: Kysely<Database> | undefined;

  afterEach(async () => {
    await db?.destroy();
  });

  async function storeWith(plugin: FailingPlugin): Promise<KyselyStore> {
    const sqlite = new SqliteDatabase(":memory:");
    db = new Kysely<Database>({
      dialect: new SqliteDialect({ database: sqlite }),
      plugins: [plugin],
    });
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    return new KyselyStore(db, { dialect: "sqlite", sqlite });
  }

  const organization = () => ({ id: "org_a", name: "A", createTime: new Date() });

  it("runs a write again after it lost a race, and it counts once", async () => {
    const plugin = new FailingPlugin();
    const store = await storeWith(plugin);
    plugin.failures = { kind: "InsertQueryNode", error: driverError("busy", { code: "SQLITE_BUSY" }), times: 2 };
    await store.createOrganization(organization());
    expect(plugin.thrown).toBe(2);
    expect(await store.getOrganization("org_a")).toBeDefined();
  });

  it("gives up with ConflictError after a bounded number of attempts", async () => {
    const plugin = new FailingPlugin();
    const store = await storeWith(plugin);
    const cause = driverError("could not serialize access due to concurrent update", { code: "40001" });
    plugin.failures = { kind: "InsertQueryNode", error: cause, times: 100 };
    const error = await store.createOrganization(organization()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConflictError);
    expect((error as ConflictError).message).toBe("write conflict");
    expect((error as ConflictError).cause).toBe(cause);
    expect(plugin.thrown).toBe(5);
    plugin.failures = undefined;
    expect(await store.getOrganization("org_a")).toBeUndefined();
  });

  it("does not run a write again when the connection broke under it", async () => {
    const plugin = new FailingPlugin();
    const store = await storeWith(plugin);
    await store.createOrganization(organization());
    await store.createOrganization({ ...organization(), id: "org_b" });
    const connection = connectionRecord("org_a", "org_b");
    plugin.failures = {
      kind: "InsertQueryNode",
      error: driverError("read ECONNRESET", { code: "ECONNRESET" }),
      times: 1,
    };
    await expect(store.createConnection(connection, createdEvent(connection))).rejects.toBeInstanceOf(UnavailableError);
    expect(plugin.thrown).toBe(1);
  });

  it("runs a read once more when the connection broke under it, and only once", async () => {
    const plugin = new FailingPlugin();
    const store = await storeWith(plugin);
    await store.createOrganization(organization());
    const lost = driverError("Connection terminated unexpectedly", {});
    plugin.failures = { kind: "SelectQueryNode", error: lost, times: 1 };
    expect((await store.getOrganization("org_a"))?.id).toBe("org_a");
    plugin.failures = { kind: "SelectQueryNode", error: lost, times: 2 };
    await expect(store.getConnection("cxn_x")).rejects.toBeInstanceOf(UnavailableError);
    expect(plugin.thrown).toBe(3);
  });

  it("does not run a read again after a statement timeout", async () => {
    const plugin = new FailingPlugin();
    const store = await storeWith(plugin);
    plugin.failures = {
      kind: "SelectQueryNode",
      error: driverError("canceling statement", { code: "57014" }),
      times: 2,
    };
    await expect(store.getConnection("cxn_x")).rejects.toBeInstanceOf(UnavailableError);
    expect(plugin.thrown).toBe(1);
  });
});
