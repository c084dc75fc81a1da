// The PostgreSQL connection pool as the store needs it, on top of pg.Pool:
//  - a connection whose query timed out on the client side (`query_timeout`) or broke is thrown
//    away instead of going back to the pool, where the next caller would queue behind a query
//    that never answers (pg leaves it as the active query);
//  - a transaction can run on one reserved connection whose running query is cancelled on the
//    server (a CancelRequest, as psql's Ctrl-C) when the caller's signal aborts, so a call cut by
//    its deadline, its client or shutdown stops holding locks and a pool slot, and never commits;
//  - a pool that is merely exhausted (every connection busy) is told apart from a database that
//    does not answer.

import net from "node:net";
import { Kysely, PostgresDialect, type PostgresPool, type PostgresPoolClient } from "kysely";
import type pg from "pg";
import { classifyError } from "./errors.js";
import type { Database } from "./schema.js";
import { type PoolStats, UnavailableError } from "./store.js";

/** pg-pool's message when no connection became free, or none could be opened, in time. */
const POOL_WAIT_TIMEOUT = "timeout exceeded when trying to connect";
/** A CancelRequest that has not gone out by then is abandoned (the database does not answer). */
const CANCEL_TIMEOUT_MS = 2_000;
const CANCEL_REQUEST_CODE = 80877102;

/** What pg keeps on a connected client but does not declare. */
interface BackendKey {
  readonly processID?: number;
  readonly secretKey?: number;
  readonly host?: string;
  readonly port?: number;
}

/** One checked-out pg client, as Kysely sees it: it remembers whether it may go back to the pool. */
class TrackedClient {
  broken = false;

  constructor(readonly client: pg.PoolClient) {}

  async query(text: string, values: ReadonlyArray<unknown>): Promise<pg.QueryResult> {
    try {
      return await this.client.query(text, values as unknown[]);
    } catch (error) {
      const { kind } = classifyError(error);
      if (kind === "connection_lost" || kind === "unavailable") this.broken = true;
      throw error;
    }
  }

  /** Kysely passes `destroy` when its rollback failed. */
  release(destroy = false): void {
    const broken = this.broken || destroy;
    this.broken = false;
    // pg destroys a client released with an error instead of pooling it.
    this.client.release(broken ? new Error("connection discarded after a timeout or a cancel") : undefined);
  }
}

export class StorePool {
  /** What Kysely's PostgresDialect gets as its pool. */
  readonly forKysely: PostgresPool;
  readonly #pool: pg.Pool;
  readonly #max: number;
  #exhausted = 0;
  /** One Kysely per pg client, for transactions on a reserved connection. */
  readonly #reserved = new WeakMap<pg.PoolClient, PinnedClient>();

  constructor(pool: pg.Pool, max: number) {
    this.#pool = pool;
    this.#max = max;
    this.forKysely = {
      connect: () => this.#connect() as Promise<unknown> as Promise<PostgresPoolClient>,
      end: () => pool.end(),
    };
  }

  stats(): PoolStats {
    return {
      total: this.#pool.totalCount,
      idle: this.#pool.idleCount,
      waiting: this.#pool.waitingCount,
      exhausted: this.#exhausted,
    };
  }

  /**
   * Runs `work` on one connection of the pool. When `signal` aborts, the query running on it is
   * cancelled on the server and the connection is discarded afterwards (a late cancel must not
   * hit the next user's query).
   */
  async reserve<T>(signal: AbortSignal | undefined, work: (db: Kysely<Database>) => Promise<T>): Promise<T> {
    const tracked = await this.#connect();
    if (signal?.aborted) {
      tracked.release();
      throw signal.reason;
    }
    const cancel = () => {
      tracked.broken = true;
      cancelQuery(tracked.client);
    };
    signal?.addEventListener("abort", cancel);
    try {
      return await work(this.#kyselyFor(tracked));
    } finally {
      signal?.removeEventListener("abort", cancel);
      tracked.release();
    }
  }

  async #connect(): Promise<TrackedClient> {
    try {
      return new TrackedClient(await this.#pool.connect());
    } catch (error) {
      if (error instanceof Error && error.message.includes(POOL_WAIT_TIMEOUT) && this.#pool.totalCount >= this.#max) {
        this.#exhausted++;
        throw new UnavailableError({ cause: error, poolExhausted: true });
      }
      throw error;
    }
  }

  #kyselyFor(tracked: TrackedClient): Kysely<Database> {
    let pinned = this.#reserved.get(tracked.client);
    if (pinned === undefined) {
      const holder: PinnedClient = { tracked, db: undefined as unknown as Kysely<Database> };
      // Kysely releases its connection after the transaction; reserve() releases the checkout.
      const client = {
        query: (text: string, values: ReadonlyArray<unknown>) => holder.tracked.query(text, values),
        release: () => {},
      } as unknown as PostgresPoolClient;
      const pool: PostgresPool = { connect: async () => client, end: async () => {} };
      holder.db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
      pinned = holder;
      this.#reserved.set(tracked.client, pinned);
    }
    // A pg client is checked out by one caller at a time: this checkout is the one to mark broken.
    pinned.tracked = tracked;
    return pinned.db;
  }
}

/** A Kysely bound to one pg client, and the checkout of that client currently using it. */
interface PinnedClient {
  tracked: TrackedClient;
  db: Kysely<Database>;
}

/** Sends PostgreSQL's CancelRequest for the query running on `client`, on a connection of its own. */
function cancelQuery(client: pg.PoolClient): void {
  const key = client as unknown as BackendKey;
  if (key.processID === undefined || key.secretKey === undefined) return;
  const message = Buffer.alloc(16);
  message.writeInt32BE(16, 0);
  message.writeInt32BE(CANCEL_REQUEST_CODE, 4);
  message.writeInt32BE(key.processID, 8);
  message.writeInt32BE(key.secretKey, 12);
  const host = key.host ?? "localhost";
  const port = key.port ?? 5432;
  const socket = host.startsWith("/") ? net.connect(`${host}/.s.PGSQL.${port}`) : net.connect(port, host);
  socket.setTimeout(CANCEL_TIMEOUT_MS, () => socket.destroy());
  socket.on("error", () => socket.destroy());
  socket.on("connect", () => socket.end(message));
}
