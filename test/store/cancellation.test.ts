// A write whose call was cut short (client gone, deadline passed, shutdown) must not commit: the
// signal handed to the store aborts it, the transaction rolls back, and the write rejects with the
// signal's reason. On every database, and on SQLite also while the write waits for the one
// connection and in the middle of its transaction.

import SqliteDatabase from "better-sqlite3";
import { Kysely, type KyselyPlugin, SqliteDialect } from "kysely";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { KyselyStore } from "../../src/store/kysely-store.js";
import { migrateToLatest } from "../../src/store/migrations.js";
import type { Database } from "../../src/store/schema.js";
import type { Store } from "../../src/store/store.js";
import { createTestStore, describeEachDatabase, type TestStore } from "../support/databases.js";
import { connectionRecord, createdEvent, newOrganization, transition } from "./fixtures.js";

const CUT = new Error("the call was cut short");

function aborted(): AbortSignal {
  const controller = new AbortController();
  controller.abort(CUT);
  return controller.signal;
}

async function pendingConnection(store: Store) {
  const connection = connectionRecord(await newOrganization(store), await newOrganization(store));
  await store.createConnection(connection, createdEvent(connection));
  return connection;
}

describeEachDatabase("Store writes after the call was cut short", (database) => {
  let testStore: TestStore;
  beforeAll(async () => {
    testStore = await createTestStore(database);
  });
  afterAll(async () => {
    await testStore.dispose();
  });

  it("change nothing and reject with the signal's reason", async () => {
    const { store } = testStore;
    const connection = await pendingConnection(store);
    const { next, event } = transition(connection, "INACTIVE");
    await expect(store.saveTransition(next, event, aborted())).rejects.toBe(CUT);
    const fresh = connectionRecord(connection.sourceOrganizationId, await newOrganization(store));
    await expect(store.createConnection(fresh, createdEvent(fresh), aborted())).rejects.toBe(CUT);
    const organization = { id: `org_cut_${Date.now()}`, name: "Cut", createTime: new Date() };
    await expect(store.createOrganization(organization, aborted())).rejects.toBe(CUT);

    expect((await store.getConnection(connection.id))?.version).toBe(1);
    expect((await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 })).items).toHaveLength(
      1,
    );
    expect(await store.getConnection(fresh.id)).toBeUndefined();
    expect(await store.getOrganization(organization.id)).toBeUndefined();
    // The check path (a cache on SQLite) saw no write either.
    expect((await store.getConnectionForCheck(connection.id))?.state).toBe("PENDING");
  });
});

/** Aborts `controller` once the UPDATE of a transition has run, i.e. inside the open transaction. */
class AbortAfterUpdate implements KyselyPlugin {
  controller: AbortController | undefined;
  transformQuery: KyselyPlugin["transformQuery"] = (args) => args.node;
  async transformResult(args: Parameters<KyselyPlugin["transformResult"]>[0]) {
    if (args.result.numAffectedRows !== undefined && this.controller !== undefined) this.controller.abort(CUT);
    return args.result;
  }
}

describe("SQLite writes cut short while they wait or run", () => {
  let db: Kysely<Database>;
  let store: KyselyStore;
  const plugin = new AbortAfterUpdate();

  beforeAll(async () => {
    const sqlite = new SqliteDatabase(":memory:");
    db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }), plugins: [plugin] });
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    store = new KyselyStore(db, { dialect: "sqlite", inTransaction: () => sqlite.inTransaction, sqlite });
  });
  afterEach(() => {
    plugin.controller = undefined;
  });
  afterAll(async () => {
    await db.destroy();
  });

  it("does not commit a transition whose signal aborted while it waited for the connection", async () => {
    const connection = await pendingConnection(store);
    let release = () => {};
    const held = db.connection().execute(() => new Promise<void>((resolve) => (release = resolve)));
    const controller = new AbortController();
    const { next, event } = transition(connection, "INACTIVE");
    const write = store.saveTransition(next, event, controller.signal);
    await new Promise((resolve) => setTimeout(resolve, 50));
    controller.abort(CUT);
    release();
    await held;
    await expect(write).rejects.toBe(CUT);
    expect((await store.getConnection(connection.id))?.state).toBe("PENDING");
  });

  it("rolls back a transition whose signal aborted after its UPDATE, before COMMIT", async () => {
    const connection = await pendingConnection(store);
    const controller = new AbortController();
    plugin.controller = controller;
    const { next, event } = transition(connection, "INACTIVE");
    await expect(store.saveTransition(next, event, controller.signal)).rejects.toBe(CUT);
    plugin.controller = undefined;
    expect((await store.getConnection(connection.id))?.state).toBe("PENDING");
    expect((await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 })).items).toHaveLength(
      1,
    );
    // The connection is usable afterwards: the rollback left no transaction open.
    const retry = transition(connection, "INACTIVE");
    expect(await store.saveTransition(retry.next, retry.event)).toBe(true);
  });
});
