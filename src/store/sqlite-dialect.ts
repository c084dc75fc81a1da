// Kysely's SQLite dialect, with one change: every use of the connection starts on a fresh turn of
// the event loop.
//
// better-sqlite3 runs each query synchronously, and Kysely hands its single connection from one
// waiter to the next by resolving a promise. A queue of queries (hundreds of concurrent
// ListConnections on one busy connection) therefore ran back to back in microtasks, with the
// request handling after each: the event loop did not turn for seconds, so no socket was read or
// written, keepalive PINGs went unanswered until clients gave the connection up, health checks
// stalled, and every response waited in memory. Yielding once per acquisition bounds such a
// stall to one query and its response.

import { setImmediate as nextTurn } from "node:timers/promises";
import { type DatabaseConnection, type Driver, SqliteDialect } from "kysely";

export class EventLoopFriendlySqliteDialect extends SqliteDialect {
  override createDriver(): Driver {
    const driver = super.createDriver();
    const acquire = driver.acquireConnection.bind(driver);
    driver.acquireConnection = async (): Promise<DatabaseConnection> => {
      const connection = await acquire();
      await nextTurn();
      return connection;
    };
    return driver;
  }
}
