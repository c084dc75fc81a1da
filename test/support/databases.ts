// The databases that every storage and end-to-end suite runs against: SQLite always, PostgreSQL
// when TEST_DATABASE_URL names a server (`npm test` starts one when it is not set: see
// postgres-server.ts). Each provisioned database is new and empty (a fresh PostgreSQL database or
// SQLite file), so runs and files never see each other's data. TEST_DATABASES (a comma-separated
// list of kinds) narrows the suites, e.g. to SQLite in memory for `npm run test:unit`.

import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe } from "vitest";
import { type OpenStoreOptions, openStore } from "../../src/store/open.js";
import type { Store } from "../../src/store/store.js";
import { PGBOUNCER_SKIP_MESSAGE, pgbouncerEnabled, startPgBouncer } from "./pgbouncer.js";

export type TestDialect = "sqlite" | "postgres";

export interface TestDatabase {
  /** Shown in suite titles. */
  readonly name: string;
  readonly dialect: TestDialect;
  /** False when the database is not configured here; its suites are skipped. */
  readonly enabled: boolean;
  readonly kind: "sqlite-memory" | "sqlite-file" | "postgres" | "pgbouncer";
}

/** Where PostgreSQL suites create their databases, e.g. postgres://postgres@127.0.0.1:5432/test. */
export const postgresAdminUrl: string | undefined = process.env.TEST_DATABASE_URL || undefined;

const chosenKinds = process.env.TEST_DATABASES?.split(",").map((kind) => kind.trim());
const chosen = (kind: TestDatabase["kind"]) => chosenKinds === undefined || chosenKinds.includes(kind);

export const testDatabases: readonly TestDatabase[] = (
  [
    { name: "sqlite (memory)", dialect: "sqlite", enabled: true, kind: "sqlite-memory" },
    { name: "sqlite (file)", dialect: "sqlite", enabled: true, kind: "sqlite-file" },
    { name: "postgres", dialect: "postgres", enabled: postgresAdminUrl !== undefined, kind: "postgres" },
  ] as const
).filter((database) => chosen(database.kind));

/**
 * PostgreSQL through a PgBouncer in transaction pooling (started per database): the acceptance
 * suites (describeE2E) run on it too, since that is how a fleet of replicas usually reaches it.
 */
export const pgbouncerDatabase: TestDatabase = {
  name: "postgres via pgbouncer",
  dialect: "postgres",
  enabled: pgbouncerEnabled,
  kind: "pgbouncer",
};

/** What the acceptance suites (describeE2E, the change feed) run on. */
export const acceptanceDatabases: readonly TestDatabase[] = [...testDatabases, pgbouncerDatabase];

export const POSTGRES_SKIP_MESSAGE =
  "PostgreSQL suites skipped: run them through `npm test` (which starts a PostgreSQL) or set TEST_DATABASE_URL " +
  "(e.g. postgres://postgres@127.0.0.1:5432/test)";

let skipNoticeShown = false;

function noticeSkipOnce(): void {
  if (skipNoticeShown) return;
  skipNoticeShown = true;
  console.info(POSTGRES_SKIP_MESSAGE);
}

/** Declares `body` once per test database, as `title [database]`; skips the ones not configured. */
export function describeEachDatabase(
  title: string,
  body: (database: TestDatabase) => void,
  databases: readonly TestDatabase[] = testDatabases,
): void {
  for (const database of databases) {
    if (database.kind === "pgbouncer" && !database.enabled) console.info(PGBOUNCER_SKIP_MESSAGE);
    else if (!database.enabled) noticeSkipOnce();
    describe.skipIf(!database.enabled)(`${title} [${database.name}]`, () => body(database));
  }
}

/** A suite that only PostgreSQL can run (replicas, outages); skipped with a message without it. */
export function describePostgres(title: string, body: () => void): void {
  if (!chosen("postgres")) {
    // Left out by TEST_DATABASES (the unit loop): listed as skipped, so its file still holds a suite.
    describe.skip(title, body);
    return;
  }
  if (postgresAdminUrl === undefined) noticeSkipOnce();
  describe.skipIf(postgresAdminUrl === undefined)(title, body);
}

export interface ProvisionedDatabase {
  /** A DATABASE_URL for the service or openStore. */
  readonly url: string;
  /** Removes the database (close every store on it first; PostgreSQL connections are forced off). */
  drop(): Promise<void>;
}

/** A new, empty database of the given kind. */
export async function provisionDatabase(database: TestDatabase): Promise<ProvisionedDatabase> {
  switch (database.kind) {
    case "sqlite-memory":
      return { url: "sqlite::memory:", drop: () => Promise.resolve() };
    case "sqlite-file":
      return provisionSqliteFile();
    case "postgres":
      return provisionPostgres();
    case "pgbouncer":
      return provisionThroughPgBouncer();
  }
}

async function provisionThroughPgBouncer(): Promise<ProvisionedDatabase> {
  const database = await provisionPostgres();
  const bouncer = await startPgBouncer().catch(async (error: unknown) => {
    await database.drop();
    throw error;
  });
  return {
    url: bouncer.through(database.url),
    async drop() {
      await bouncer.stop();
      await database.drop();
    },
  };
}

export async function provisionSqliteFile(): Promise<ProvisionedDatabase> {
  const directory = await mkdtemp(join(tmpdir(), "connections-test-"));
  return {
    url: `sqlite:${join(directory, "data", "connections.db")}`,
    drop: () => rm(directory, { recursive: true, force: true }),
  };
}

export async function provisionPostgres(): Promise<ProvisionedDatabase> {
  if (postgresAdminUrl === undefined) throw new Error(POSTGRES_SKIP_MESSAGE);
  const name = `connections_test_${randomBytes(6).toString("hex")}`;
  await withAdminClient((client) => client.query(`CREATE DATABASE ${name}`));
  const url = new URL(postgresAdminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: () => withAdminClient((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)),
  };
}

/**
 * A pg.Pool on a provisioned database, for tests that read or change it behind the store. pg.Pool
 * ends its clients without waiting for their sockets to close, so `drop()` (WITH FORCE) can
 * terminate one that is still closing: its error then goes to the pool, and a pool without an
 * error listener throws it out of the test file as an uncaught exception.
 */
export function testPool(config: pg.PoolConfig): pg.Pool {
  const pool = new pg.Pool(config);
  pool.on("error", () => {});
  return pool;
}

async function withAdminClient(work: (client: pg.Client) => Promise<unknown>): Promise<void> {
  const client = new pg.Client({ connectionString: postgresAdminUrl });
  await client.connect();
  try {
    await work(client);
  } finally {
    await client.end();
  }
}

export interface TestStore {
  readonly store: Store;
  readonly url: string;
  /** Closes the store and drops its database. */
  dispose(): Promise<void>;
}

/** A store on a new, empty database of the given kind. */
export async function createTestStore(
  database: TestDatabase,
  options: Omit<OpenStoreOptions, "databaseUrl"> = {},
): Promise<TestStore> {
  const provisioned = await provisionDatabase(database);
  let store: Store;
  try {
    store = await openStore({ ...options, databaseUrl: provisioned.url });
  } catch (error) {
    await provisioned.drop();
    throw error;
  }
  return {
    store,
    url: provisioned.url,
    async dispose() {
      await store.close();
      await provisioned.drop();
    },
  };
}

/** A store on a new database for the enclosing describe block (beforeAll), disposed of afterAll. */
export function useTestStore(database: TestDatabase): () => Store {
  let testStore: TestStore | undefined;
  beforeAll(async () => {
    testStore = await createTestStore(database);
  }, 30_000);
  afterAll(async () => {
    await testStore?.dispose();
  });
  return () => {
    if (testStore === undefined) throw new Error("the test store is not open (outside a test?)");
    return testStore.store;
  };
}
