// The pool's probe decides whether every call fails at once and every query in flight is cut, so
// it must not mistake a busy machine for a silent database: neither a stall of this process (its
// timer fires before its loop reads the answer that came meanwhile) nor one slow answer is enough.
// A database that stays silent is still found unreachable.

import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { StorePool } from "../../src/store/pg-pool.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres, testPool } from "../support/databases.js";
import { TcpProxy } from "../support/tcp-proxy.js";

function poolFor(url: string): StorePool {
  const connection = { connectionString: url };
  return new StorePool(testPool({ ...connection, max: 1, pipeline: true }), 1, {
    connection,
    statementTimeoutMs: 5_000,
    namedStatements: false,
  });
}

/** `url` through `proxy`. */
function proxied(url: string, proxy: TcpProxy): string {
  const through = new URL(url);
  through.host = `127.0.0.1:${proxy.port}`;
  return through.toString();
}

/** Blocks this process's event loop, as a long GC or a starved CPU would. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // busy
  }
}

describePostgres("the PostgreSQL pool's probe", () => {
  let database: ProvisionedDatabase;
  const cleanups: (() => Promise<unknown>)[] = [];

  async function proxyTo(url: string, onConnection?: () => void): Promise<TcpProxy> {
    const target = new URL(url);
    const proxy = new TcpProxy(target.hostname, Number(target.port || 5432), onConnection);
    await proxy.start();
    cleanups.push(() => proxy.cut());
    return proxy;
  }

  beforeAll(async () => {
    database = await provisionPostgres();
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    await database?.drop();
  });

  it("finds the database reachable when this process stalled past the timeout with the answer waiting", async () => {
    const pool = poolFor(database.url);
    cleanups.push(() => pool.forKysely.end());
    await pool.probe();
    const probing = pool.probe();
    stall(1_500);
    await expect(probing).resolves.toBeUndefined();
    expect(pool.unreachable).toBe(false);
  });

  it("asks once more before one slow answer fails every call", async () => {
    // The database answers again once the probe has given up on its first connection and opens
    // another: the first answer was late, not missing.
    let thawOnNextConnection = false;
    const proxy = await proxyTo(database.url, () => {
      if (thawOnNextConnection) proxy.thaw();
    });
    const pool = poolFor(proxied(database.url, proxy));
    cleanups.push(() => pool.forKysely.end());
    await pool.probe();
    proxy.freeze();
    thawOnNextConnection = true;
    await expect(pool.probe()).resolves.toBeUndefined();
    expect(pool.unreachable).toBe(false);
  });

  it("still finds a database that stays silent unreachable", async () => {
    const proxy = await proxyTo(database.url);
    const pool = poolFor(proxied(database.url, proxy));
    cleanups.push(() => pool.forKysely.end());
    await pool.probe();
    proxy.freeze();
    await expect(pool.probe()).rejects.toThrow();
    expect(pool.unreachable).toBe(true);
  });
});
