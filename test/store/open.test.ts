// Opening a store: DATABASE_URL, the SQLite single-owner lock, and failing fast (and recovering)
// when PostgreSQL is not there.

import { existsSync, readFileSync } from "node:fs";
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import pg from "pg";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { migrationProvider } from "../../src/store/migrations.js";
import { openStore, parseDatabaseUrl } from "../../src/store/open.js";
import { type Store, UnavailableError } from "../../src/store/store.js";
import {
  describePostgres,
  type ProvisionedDatabase,
  postgresAdminUrl,
  provisionPostgres,
  provisionSqliteFile,
} from "../support/databases.js";
import { openStoreInChildProcess } from "../support/process.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import { until } from "../support/until.js";
import { connectionRecord, createdEvent, newOrganization, transition } from "./fixtures.js";

describe("parseDatabaseUrl", () => {
  it.each([
    ["sqlite:data/connections.db", { dialect: "sqlite", path: "data/connections.db" }],
    ["sqlite:/var/lib/connections.db", { dialect: "sqlite", path: "/var/lib/connections.db" }],
    ["sqlite::memory:", { dialect: "sqlite", path: ":memory:" }],
    ["postgres://u@h:5432/db", { dialect: "postgres", url: "postgres://u@h:5432/db" }],
    ["postgresql://u@h/db", { dialect: "postgres", url: "postgresql://u@h/db" }],
  ])("reads %s", (url, target) => {
    expect(parseDatabaseUrl(url)).toEqual(target);
  });

  it("names what is wrong without echoing credentials", () => {
    expect(() => parseDatabaseUrl("mysql://root:hunter2@db/x")).toThrow(/must start with sqlite:.*starts with mysql:/);
    expect(() => parseDatabaseUrl("mysql://root:hunter2@db/x")).not.toThrow(/hunter2/);
    expect(() => parseDatabaseUrl("sqlite:")).toThrow(/needs a file path/);
    expect(() => parseDatabaseUrl("")).toThrow(/no scheme/);
  });
});

describe("SQLite file", () => {
  let file: ProvisionedDatabase;

  beforeAll(async () => {
    file = await provisionSqliteFile();
  });

  afterAll(async () => {
    await file.drop();
  });

  it("is owned by one process: a second store fails to start with a clear error until the first closes", async () => {
    const first = await openStore({ databaseUrl: file.url });
    const source = await newOrganization(first);
    const destination = await newOrganization(first);
    const created = connectionRecord(source, destination, { createTime: new Date("2024-01-02T03:04:05.678Z") });
    await first.createConnection(created, createdEvent(created));
    const { next, event } = transition(created, "ACTIVE");
    await first.saveTransition(next, event);

    // WAL without shared memory: the exclusive lock keeps every other connection out.
    const path = file.url.slice("sqlite:".length);
    expect([existsSync(`${path}-wal`), existsSync(`${path}-shm`)]).toEqual([true, false]);

    await expect(openStore({ databaseUrl: file.url })).rejects.toThrow(/is in use by another process/);
    const child = await openStoreInChildProcess(file.url);
    expect(child.code).toBe(3);
    expect(child.stderr).toMatch(/is in use by another process/);
    // The failed attempts left the owner working.
    expect(await first.getConnectionForCheck(created.id)).toEqual(next);

    await first.close();
    const second = await openStore({ databaseUrl: file.url });
    try {
      // A cold cache reads what the first process wrote, timestamps to the millisecond.
      expect(await second.getConnectionForCheck(created.id)).toEqual(next);
      expect(await second.organizationExists(source)).toBe(true);
    } finally {
      await second.close();
    }
    expect((await openStoreInChildProcess(file.url)).code).toBe(0);
  }, 30_000);
});

describe("SQLite check cache size", () => {
  let file: ProvisionedDatabase;

  beforeAll(async () => {
    file = await provisionSqliteFile();
    const store = await openStore({ databaseUrl: file.url });
    for (let i = 0; i < 3; i++) {
      const connection = connectionRecord(await newOrganization(store), await newOrganization(store));
      await store.createConnection(connection, createdEvent(connection));
    }
    await store.close();
  });

  afterAll(async () => {
    await file.drop();
  });

  async function warningsWith(checkCacheEntries: number): Promise<Record<string, unknown>[]> {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "warn" }, { write: (line: string) => lines.push(JSON.parse(line)) });
    await (await openStore({ databaseUrl: file.url, checkCacheEntries, logger })).close();
    return lines;
  }

  it("warns at start when the cache cannot hold every Connection, with both numbers", async () => {
    const [warning, ...rest] = await warningsWith(2);
    expect(rest).toEqual([]);
    expect(warning).toMatchObject({ level: 40, connections: 3, checkCacheEntries: 2 });
    expect(warning?.msg).toMatch(/^CHECK_CACHE_ENTRIES is smaller than the number of Connections/);
  });

  it("says nothing when the cache holds them all", async () => {
    expect(await warningsWith(3)).toEqual([]);
  });

  it("reads the file through a memory map unless SQLITE_MMAP_MIB is 0", async () => {
    const path = file.url.slice("sqlite:".length);
    /** Whether this process maps the file after a check has read it from the database. */
    const mappedAfterARead = async (sqliteMmapMib: number | undefined) => {
      const store = await openStore({ databaseUrl: file.url, sqliteMmapMib });
      try {
        await store.getConnectionForCheck("cxn_not_cached");
        return readFileSync("/proc/self/maps", "utf8").includes(path);
      } finally {
        await store.close();
      }
    };
    expect(await mappedAfterARead(undefined)).toBe(true);
    expect(await mappedAfterARead(0)).toBe(false);
  });
});

/** A port where nothing listens. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function timed<T>(promise: Promise<T>): Promise<{ error: unknown; ms: number }> {
  const started = performance.now();
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  return { error, ms: performance.now() - started };
}

describe("PostgreSQL that is not there", () => {
  it("fails fast with UnavailableError when nothing listens", async () => {
    const port = await closedPort();
    const { error, ms } = await timed(openStore({ databaseUrl: `postgres://postgres@127.0.0.1:${port}/test` }));
    expect(error).toBeInstanceOf(UnavailableError);
    expect((error as Error).message).toBe("database unavailable");
    expect(ms).toBeLessThan(3000);
  });

  describe("when the server accepts but never answers", () => {
    let server: Server;
    const sockets = new Set<Socket>();

    beforeAll(async () => {
      server = createServer((socket) => sockets.add(socket));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    });

    afterAll(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    it("gives up after the connect timeout with UnavailableError", async () => {
      const { port } = server.address() as AddressInfo;
      const { error, ms } = await timed(openStore({ databaseUrl: `postgres://postgres@127.0.0.1:${port}/test` }));
      expect(error).toBeInstanceOf(UnavailableError);
      expect(ms).toBeLessThan(4000);
    }, 10_000);
  });
});

describePostgres("PostgreSQL going away and coming back", () => {
  let database: ProvisionedDatabase;
  const stores: Store[] = [];

  beforeAll(async () => {
    database = await provisionPostgres();
  });

  afterEach(async () => {
    await Promise.all(stores.splice(0).map((store) => store.close()));
  });

  afterAll(async () => {
    await database?.drop();
  });

  async function open(url: string): Promise<Store> {
    const store = await openStore({ databaseUrl: url, poolSize: 4 });
    stores.push(store);
    return store;
  }

  it("migrates once when several replicas start together", async () => {
    const replicas = await Promise.all(Array.from({ length: 4 }, () => open(database.url)));
    for (const replica of replicas) await replica.ping();
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      const { rows } = await client.query("select name from kysely_migration order by name");
      const shipped = Object.keys(await migrationProvider("postgres").getMigrations()).sort();
      expect(rows).toEqual(shipped.map((name) => ({ name })));
    } finally {
      await client.end();
    }
  });

  it("answers UnavailableError quickly while the database is cut off, and recovers by itself", async () => {
    const url = new URL(database.url);
    const proxy = new TcpProxy(url.hostname, Number(url.port || 5432));
    await proxy.start();
    try {
      url.host = `127.0.0.1:${proxy.port}`;
      const store = await open(url.toString());
      const connection = connectionRecord(await newOrganization(store), await newOrganization(store));
      await store.createConnection(connection, createdEvent(connection));

      await proxy.cut();
      const attempts: (() => Promise<unknown>)[] = [
        () => store.ping(),
        () => store.getConnectionForCheck(connection.id),
        () => store.getConnection(connection.id),
      ];
      for (const attempt of attempts) {
        const { error, ms } = await timed(attempt());
        expect(error).toBeInstanceOf(UnavailableError);
        expect(ms).toBeLessThan(3000);
      }

      await proxy.start();
      // By itself, but not at once: the pool reconnects when it next probes, and on a loaded machine
      // a probe's connect may time out once more.
      const pingSucceeds = () =>
        store.ping().then(
          () => true,
          () => false,
        );
      await until(pingSucceeds, "the store to reach PostgreSQL again", 20_000);
      expect(await store.getConnectionForCheck(connection.id)).toEqual(connection);
    } finally {
      await proxy.cut();
    }
  }, 40_000);

  it("survives its connections being terminated by the server", async () => {
    const store = await open(database.url);
    const connection = connectionRecord(await newOrganization(store), await newOrganization(store));
    await store.createConnection(connection, createdEvent(connection));
    const admin = new pg.Client({ connectionString: postgresAdminUrl });
    await admin.connect();
    try {
      await admin.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
        [url(database).pathname.slice(1)],
      );
    } finally {
      await admin.end();
    }
    expect(await store.getConnectionForCheck(connection.id)).toEqual(connection);
    expect(await store.getConnection(connection.id)).toEqual(connection);
  });
});

function url(database: ProvisionedDatabase): URL {
  return new URL(database.url);
}
