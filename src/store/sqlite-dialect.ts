// Kysely's SQLite dialect, with two changes: every use of the connection starts on a fresh turn of
// the event loop, and statements are prepared once per SQL text.
//
// better-sqlite3 runs each query synchronously, and Kysely hands its single connection from one
// waiter to the next by resolving a promise. A queue of queries (hundreds of concurrent
// ListConnections on one busy connection) therefore ran back to back in microtasks, with the
// request handling after each: the event loop did not turn for seconds, so no socket was read or
// written, keepalive PINGs went unanswered until clients gave the connection up, health checks
// stalled, and every response waited in memory. Yielding once per acquisition bounds such a
// stall to one query and its response.
//
// Kysely prepares every query anew (better-sqlite3's prepare parses and plans the SQL), which a
// CPU profile of CreateConnection showed as a large share of a write. The service's queries are
// few distinct texts, so their statements are kept and reused; the cache is bounded all the same
// (IN lists make texts that depend on their length). Queries run one at a time on the one
// connection and never stream, so a statement is never in use twice at once.

import { setImmediate as nextTurn } from "node:timers/promises";
import type SqliteDatabase from "better-sqlite3";
import { type DatabaseConnection, type Driver, SqliteDialect, type SqliteStatement } from "kysely";

/** Distinct SQL texts whose statements are kept; past it, the cache starts again. */
const STATEMENTS = 500;

export class EventLoopFriendlySqliteDialect extends SqliteDialect {
  constructor(config: { readonly database: SqliteDatabase.Database }) {
    const database = config.database;
    const statements = new Map<string, SqliteStatement>();
    super({
      database: {
        close: () => database.close(),
        prepare: (sql: string) => {
          let statement = statements.get(sql);
          if (statement === undefined) {
            if (statements.size >= STATEMENTS) statements.clear();
            statement = database.prepare(sql) as unknown as SqliteStatement;
            statements.set(sql, statement);
          }
          return statement;
        },
      },
    });
  }

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
