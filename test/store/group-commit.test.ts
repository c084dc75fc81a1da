// SQLite's group commit (src/store/transactions.ts): writes that arrive together share one
// transaction, yet each succeeds or fails on its own, and a write whose call was cut short while
// its group ran never commits with the others. On a file, no write is acknowledged before its
// WAL flush, and none after a flush failed.

import { mkdtemp, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely, type KyselyPlugin, SqliteDialect } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { KyselyStore } from "../../src/store/kysely-store.js";
import { migrateToLatest } from "../../src/store/migrations.js";
import { openStore } from "../../src/store/open.js";
import type { Database } from "../../src/store/schema.js";
import { AlreadyExistsError } from "../../src/store/store.js";
import { connectionRecord, createdEvent, newOrganization, transition, uniqueId } from "./fixtures.js";

const CUT = new Error("the call was cut short");

/** Aborts `controller` once an UPDATE has run (a transition, inside the group's transaction). */
class AbortOnUpdate implements KyselyPlugin {
  controller: AbortController | undefined;
  transformQuery: KyselyPlugin["transformQuery"] = (args) => args.node;
  async transformResult(args: Parameters<KyselyPlugin["transformResult"]>[0]) {
    if (args.result.numAffectedRows !== undefined) this.controller?.abort(CUT);
    return args.result;
  }
}

describe("SQLite group commit", () => {
  let db: Kysely<Database>;
  let store: KyselyStore;
  let commits = 0;
  const plugin = new AbortOnUpdate();

  beforeAll(async () => {
    const sqlite = new SqliteDatabase(":memory:");
    db = new Kysely<Database>({
      dialect: new SqliteDialect({ database: sqlite }),
      plugins: [plugin],
      log: (event) => {
        if (event.query.sql === "commit") commits++;
      },
    });
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    store = new KyselyStore(db, { dialect: "sqlite", inTransaction: () => sqlite.inTransaction, sqlite });
  });
  beforeEach(() => {
    plugin.controller = undefined;
  });
  afterAll(async () => {
    await db.destroy();
  });

  it("commits writes that arrive together in one transaction, and fails only the one that fails", async () => {
    const source = await newOrganization(store);
    const destinations = await Promise.all(Array.from({ length: 5 }, () => newOrganization(store)));
    const connections = destinations.map((destination) => connectionRecord(source, destination));
    const [first] = connections;
    if (first === undefined) throw new Error("no connections");
    // The same pair as the first: it fails, alone.
    const duplicate = connectionRecord(source, first.destinationOrganizationId);
    const before = commits;
    const results = await Promise.allSettled(
      [...connections, duplicate].map((connection) => store.createConnection(connection, createdEvent(connection))),
    );
    expect(commits - before).toBe(1);
    expect(results.map((result) => result.status)).toEqual([...connections.map(() => "fulfilled"), "rejected"]);
    expect((results.at(-1) as PromiseRejectedResult).reason).toBeInstanceOf(AlreadyExistsError);
    for (const connection of connections) expect((await store.getConnection(connection.id))?.id).toBe(connection.id);
    expect(await store.getConnection(duplicate.id)).toBeUndefined();
    expect((await store.listEvents({ connectionId: first.id, after: undefined, limit: 10 })).items).toHaveLength(1);
  });

  it("groups the writes that arrive in separate callbacks of one turn of the event loop", async () => {
    const source = await newOrganization(store);
    const destinations = await Promise.all(Array.from({ length: 5 }, () => newOrganization(store)));
    const connections = destinations.map((destination) => connectionRecord(source, destination));
    const before = commits;
    // As requests read from several sockets arrive: one I/O callback each, promises run after each.
    const written = connections.map(
      (connection) =>
        new Promise<void>((resolve, reject) =>
          setImmediate(() => store.createConnection(connection, createdEvent(connection)).then(resolve, reject)),
        ),
    );
    await Promise.all(written);
    expect(commits - before).toBe(1);
  });

  it("does not commit a write cut short after its savepoint, while a later write of its group ran", async () => {
    const connection = connectionRecord(await newOrganization(store), await newOrganization(store));
    await store.createConnection(connection, createdEvent(connection));
    const controller = new AbortController();
    const organization = { id: uniqueId("org_cut"), name: "Cut", createTime: new Date() };
    const { next, event } = transition(connection, "ACTIVE");
    // The organization's write runs first in the group; the transition's UPDATE then cuts its call.
    plugin.controller = controller;
    const [cut, saved] = await Promise.allSettled([
      store.createOrganization(organization, controller.signal),
      store.saveTransition(next, event),
    ]);
    expect(cut).toEqual({ status: "rejected", reason: CUT });
    expect(saved).toEqual({ status: "fulfilled", value: true });
    expect(await store.getOrganization(organization.id)).toBeUndefined();
    expect((await store.getConnection(connection.id))?.state).toBe("ACTIVE");
  });
});

describe("SQLite group commit on a file", () => {
  let directory: string;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "connections-flush-"));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it("acknowledges no write once a flush of the WAL has failed, not even a later one", async () => {
    const path = join(directory, "flush-fails.db");
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      // SQLite keeps writing to the file it holds open; the flush, which opens it by name, cannot.
      await unlink(`${path}-wal`);
      const organization = { id: uniqueId("org"), name: "Organization", createTime: new Date() };
      await expect(store.createOrganization(organization)).rejects.toMatchObject({ code: "ENOENT" });
      await expect(store.createOrganization({ ...organization, id: uniqueId("org") })).rejects.toMatchObject({
        code: "ENOENT",
      });
    } finally {
      await store.close();
    }
  });

  it("closes after the group of a write that failed and was answered before its group's COMMIT", async () => {
    const store = await openStore({ databaseUrl: `sqlite:${join(directory, "close-after-failure.db")}` });
    let closed = false;
    try {
      const organization = { id: uniqueId("org"), name: "Organization", createTime: new Date() };
      await store.createOrganization(organization);
      // Rejected inside its savepoint, before the group (of that one write) commits.
      await expect(store.createOrganization(organization)).rejects.toBeInstanceOf(AlreadyExistsError);
      await store.close();
      closed = true;
    } finally {
      if (!closed) await store.close().catch(() => {});
    }
  });
});
