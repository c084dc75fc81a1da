// Kysely's SQLite dialect, with two changes: uses of the connection hold the event loop for at most
// TURN_BUDGET_MS before the next one waits for a fresh turn, and statements are prepared once per
// SQL text.
//
// better-sqlite3 runs each query synchronously, and Kysely hands its single connection from one
// waiter to the next by resolving a promise. A queue of queries (hundreds of concurrent
// ListConnections on one busy connection) therefore ran back to back in microtasks, with the
// request handling after each: the event loop did not turn for seconds, so no socket was read or
// written, keepalive PINGs went unanswered until clients gave the connection up, health checks
// stalled, and every response waited in memory. Yielding once the budget is spent bounds such a
// stall to the budget plus one query and its response.
//
// Yielding before every use instead (as this did first) made each query wait for a whole turn: on a
// loop busy with other callers' calls (a retry storm of cached checks, turns of tens of ms) the
// database served one query per turn, and a dashboard's GetConnection waited seconds behind a
// queue of its own queries (docs/performance.md, Overload).
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
/** How long uses of the connection may hold the event loop in one turn before the next waits for another. */
export const TURN_BUDGET_MS = 5;

/** When the uses of the connection in this turn of the event loop began. */
class TurnBudget {
  private startedAt: number | undefined;
  private readonly turned = () => {
    this.startedAt = undefined;
  };

  /** Counts a use starting now; true when this turn's budget is spent and the use should wait for the next. */
  spent(): boolean {
    const now = performance.now();
    if (this.startedAt === undefined) {
      this.startedAt = now;
      // Immediates run once the turn's I/O callbacks are done: the loop turned.
      setImmediate(this.turned);
      return false;
    }
    return now - this.startedAt >= TURN_BUDGET_MS;
  }
}

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
    const budget = new TurnBudget();
    driver.acquireConnection = async (): Promise<DatabaseConnection> => {
      const connection = await acquire();
      if (budget.spent()) {
        await nextTurn();
        // The turn's own immediate ran before this one: a new budget starts with this use.
        budget.spent();
      }
      return connection;
    };
    return driver;
  }
}
