// The PostgreSQL connection pool as the store needs it, on top of pg.Pool:
//  - a connection whose query timed out on the client side (`query_timeout`) or broke is thrown
//    away instead of going back to the pool, where the next caller would queue behind a query
//    that never answers (pg leaves it as the active query);
//  - a transaction can run on one reserved connection whose running query is cancelled on the
//    server (a CancelRequest, as psql's Ctrl-C) when the caller's signal aborts, so a call cut by
//    its deadline, its client or shutdown stops holding locks and a pool slot, and never commits;
//  - every transaction starts with its statement timeout (`begin; set local statement_timeout`,
//    one round trip): a pooler in transaction mode (PgBouncer) keeps no session setting, and
//    refuses it as a startup parameter;
//  - a write that is one statement goes out with its BEGIN and COMMIT in one write to the socket
//    (the pool's clients pipeline), not in three round trips: a CPU profile of a replica under
//    writes had about a third of its time in the send(2) calls of these messages;
//  - a statement with parameters is prepared once per connection (a named statement) when the
//    connections reach PostgreSQL itself: parsing and planning a write's statement cost the server
//    about as much as running it (pgbench, the create's statement: 4,900 a second parsed each
//    time, 8,300 prepared). Through a pooler in transaction mode the next transaction may run on
//    another server connection, where the name is unknown (PgBouncer before 1.21), so there every
//    statement is parsed each time;
//  - a pool that is merely exhausted (every connection busy) is told apart from a database that
//    does not answer;
//  - once a probe finds the database unreachable (refused, or silent: frozen, partitioned), calls
//    fail at once with UnavailableError instead of each waiting out its own timeout, the queries
//    and connection waits in flight are cut, and probes run until it answers again.

import net from "node:net";
import {
  type CompiledQuery,
  Kysely,
  PostgresDialect,
  type PostgresPool,
  type PostgresPoolClient,
  type QueryResult,
} from "kysely";
import pg from "pg";
import type { Cancellation } from "../runtime/cancellation.js";
import { classifyError, suggestsUnreachable } from "./errors.js";
import type { Database } from "./schema.js";
import { type PoolStats, UnavailableError } from "./store.js";

/** How Kysely starts a transaction: `begin`, or `start transaction isolation level ...`. */
const TRANSACTION_START = /^(begin|start transaction)\b/i;
/** How a write's transaction starts (see writeStatement); TrackedClient adds its timeout. */
const WRITE_START = "start transaction isolation level repeatable read";
/** Commands whose affected rows Kysely reports as numAffectedRows, as its PostgresDriver does. */
const ROW_COUNT_COMMANDS = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);

/**
 * The most statement texts given names (each is prepared on every connection that runs it). Kysely
 * builds a bounded set of texts (one per query shape); past this, statements are parsed each time.
 */
const MAX_NAMED_STATEMENTS = 256;
/** PostgreSQL's answer to a prepared statement whose result columns changed under it (a migration). */
const STALE_PLAN = "cached plan must not change result type";

/** pg-pool's message when no connection became free, or none could be opened, in time. */
const POOL_WAIT_TIMEOUT = "timeout exceeded when trying to connect";
/** A CancelRequest that has not gone out by then is abandoned (the database does not answer). */
const CANCEL_TIMEOUT_MS = 2_000;
const CANCEL_REQUEST_CODE = 80877102;
/** A probe (`select 1` on a connection of its own) that has not answered by then finds the database unreachable. */
const PROBE_TIMEOUT_MS = 1_000;
/** While unreachable, how often a probe looks whether it answers again. */
const PROBE_INTERVAL_MS = 250;

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

  constructor(
    readonly client: pg.PoolClient,
    private readonly owner: StorePool,
  ) {}

  async query(text: string, values: ReadonlyArray<unknown>): Promise<pg.QueryResult> {
    try {
      // Kysely opens every transaction with one statement without parameters (`begin`, or `start
      // transaction isolation level ...` for writes): the simple protocol takes the timeout with it.
      if (TRANSACTION_START.test(text)) return await this.client.query(`${text}; ${this.owner.transactionTimeout}`);
      const name = values.length > 0 ? this.owner.statementName(text) : undefined;
      // Without a name (undefined), pg sends the statement unnamed: parsed each time.
      return await this.client.query({ name, text, values: values as unknown[] });
    } catch (error) {
      const { kind } = classifyError(error);
      // A connection whose prepared statement went stale is dropped with it; a new one prepares afresh.
      if (kind === "connection_lost" || kind === "unavailable" || isStalePlan(error)) this.broken = true;
      if (suggestsUnreachable(error)) this.owner.suspect();
      throw error;
    }
  }

  /** Fails the query running on it now (the database is unreachable: waiting on is pointless). */
  cut(): void {
    this.broken = true;
    (this.client as unknown as { connection?: { stream?: net.Socket } }).connection?.stream?.destroy();
  }

  /** Kysely passes `destroy` when its rollback failed. */
  release(destroy = false): void {
    this.owner.checkedIn(this);
    const broken = this.broken || destroy;
    this.broken = false;
    // pg destroys a client released with an error instead of pooling it.
    this.client.release(broken ? new Error("connection discarded after a timeout or a cancel") : undefined);
  }
}

export interface StorePoolOptions {
  /** How the probe connects (the pool's own settings). */
  readonly connection: pg.ClientConfig;
  /** Each transaction's statement_timeout. */
  readonly statementTimeoutMs: number;
  /**
   * Whether statements with parameters are prepared once per connection: only when every
   * transaction of a pooled connection runs on the same server connection (no pooler between).
   */
  readonly namedStatements: boolean;
  /** Told when a probe finds the database unreachable, and when it answers again. */
  readonly onReachability?: (reachable: boolean, cause?: unknown) => void;
}

export class StorePool {
  /** What Kysely's PostgresDialect gets as its pool. */
  readonly forKysely: PostgresPool;
  /** What follows every transaction's first statement: its statement timeout. */
  readonly transactionTimeout: string;
  readonly #pool: pg.Pool;
  readonly #max: number;
  readonly #options: StorePoolOptions;
  #exhausted = 0;
  /** Statement text to the name it is prepared under (namedStatements). */
  readonly #statementNames = new Map<string, string>();
  /** One Kysely per pg client, for transactions on a reserved connection. */
  readonly #reserved = new WeakMap<pg.PoolClient, PinnedClient>();
  /** Checked out now: cut when the database turns out unreachable. */
  readonly #checkedOut = new Set<TrackedClient>();
  /** Callers waiting for a connection, failed at once when the database turns out unreachable. */
  readonly #waiting = new Set<(error: Error) => void>();
  #unreachable: { readonly since: number; readonly cause: unknown } | undefined;
  #probeClient: pg.Client | undefined;
  #probing: Promise<void> | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(pool: pg.Pool, max: number, options: StorePoolOptions) {
    // writeStatement sends a statement before its BEGIN has answered: only a pipelining client
    // sends it at once, and stops (destroys the connection) when an answer times out.
    if ((pool.options as pg.PoolConfig).pipeline !== true) throw new Error("StorePool needs pipeline: true");
    this.#pool = pool;
    this.#max = max;
    this.#options = options;
    this.transactionTimeout = `set local statement_timeout = ${Math.trunc(options.statementTimeoutMs)}`;
    this.forKysely = {
      connect: () => this.#connect() as Promise<unknown> as Promise<PostgresPoolClient>,
      end: () => this.#end(),
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

  /** The name `text` is prepared under on every connection, or undefined: parsed each time it runs. */
  statementName(text: string): string | undefined {
    if (!this.#options.namedStatements) return undefined;
    let name = this.#statementNames.get(text);
    if (name === undefined && this.#statementNames.size < MAX_NAMED_STATEMENTS) {
      name = `connections_${this.#statementNames.size + 1}`;
      this.#statementNames.set(text, name);
    }
    return name;
  }

  /** Whether calls fail at once because a probe found the database unreachable. */
  get unreachable(): boolean {
    return this.#unreachable !== undefined;
  }

  /**
   * `select 1` on a connection of its own (so a busy pool does not make it wait), within
   * PROBE_TIMEOUT_MS. Finding the database unreachable, or reachable again, switches the pool.
   */
  probe(): Promise<void> {
    this.#probing ??= this.#probeOnce().finally(() => {
      this.#probing = undefined;
    });
    return this.#probing;
  }

  /** A query or a connect failed in a way that suggests the database is unreachable: probe now. */
  suspect(): void {
    if (this.#unreachable === undefined && !this.#closed) this.probe().catch(() => {});
  }

  /** A TrackedClient went back. */
  checkedIn(tracked: TrackedClient): void {
    this.#checkedOut.delete(tracked);
  }

  async #probeOnce(): Promise<void> {
    try {
      await this.#select1();
    } catch (first) {
      // A probe connection the server ended (a restart, pg_terminate_backend) says nothing yet, nor
      // does one slow answer (a machine busy for a second) or one refused connect: ask once more on
      // a new connection before failing every call and cutting every query in flight.
      const retry = classifyError(first).kind === "connection_lost" || suggestsUnreachable(first);
      try {
        if (!retry) throw first;
        await this.#select1();
      } catch (error) {
        this.#markUnreachable(error);
        throw new UnavailableError({ cause: error });
      }
    }
    this.#markReachable();
  }

  async #select1(): Promise<void> {
    let client = this.#probeClient;
    let timer: NodeJS.Timeout | undefined;
    try {
      if (client === undefined) {
        if (this.#closed) throw new UnavailableError();
        client = new pg.Client({ ...this.#options.connection, connectionTimeoutMillis: PROBE_TIMEOUT_MS });
        client.on("error", () => {});
        this.#probeClient = client;
        await client.connect();
        // Closed while connecting: this connection must not outlive the pool.
        if (this.#closed) throw new UnavailableError();
      }
      const silent = new Promise<never>((_, reject) => {
        // Timers run before the event loop reads its sockets: after a stall of this process (a
        // long GC, a starved CPU) the timer would fire with the answer already waiting unread.
        // setImmediate rejects only after the loop has read what arrived.
        timer = setTimeout(() => setImmediate(() => reject(new Error("Query read timeout (probe)"))), PROBE_TIMEOUT_MS);
      });
      await Promise.race([client.query("select 1"), silent]);
    } catch (error) {
      this.#dropProbeClient();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  #dropProbeClient(): void {
    const client = this.#probeClient;
    this.#probeClient = undefined;
    (client as unknown as { connection?: { stream?: net.Socket } } | undefined)?.connection?.stream?.destroy();
    client?.end().catch(() => {});
  }

  #markUnreachable(cause: unknown): void {
    if (this.#unreachable !== undefined || this.#closed) return;
    this.#unreachable = { since: Date.now(), cause };
    this.#options.onReachability?.(false, cause);
    const error = new UnavailableError({ cause });
    for (const fail of this.#waiting) fail(error);
    this.#waiting.clear();
    for (const tracked of this.#checkedOut) tracked.cut();
    this.#probeTimer = setInterval(() => this.probe().catch(() => {}), PROBE_INTERVAL_MS);
    this.#probeTimer.unref();
  }

  #markReachable(): void {
    if (this.#unreachable === undefined) return;
    this.#unreachable = undefined;
    clearInterval(this.#probeTimer);
    this.#options.onReachability?.(true);
  }

  async #end(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#probeTimer);
    this.#dropProbeClient();
    await this.#pool.end();
  }

  /**
   * Runs `work` on one connection of the pool. When `signal` aborts, the query running on it is
   * cancelled on the server and the connection is discarded afterwards (a late cancel must not
   * hit the next user's query).
   */
  reserve<T>(signal: Cancellation | undefined, work: (db: Kysely<Database>) => Promise<T>): Promise<T> {
    return this.#withConnection(signal, (tracked) => work(this.#kyselyFor(tracked)));
  }

  /**
   * Runs one statement as a transaction of its own at REPEATABLE READ, as reserve() with Kysely's
   * transaction() would, but sends BEGIN (with the statement timeout), the statement and COMMIT
   * together: on a pipelining client, one write to the socket and one wait for the answers, not
   * three. The server runs them in order; if the statement fails, COMMIT finds the transaction
   * aborted and rolls it back, so nothing of it commits. (BEGIN itself fails only with its
   * connection, and then nothing after it runs; were it to fail alone, the statement would still
   * be atomic, only outside REPEATABLE READ and the timeout.) When `signal` aborts while the three are
   * at the server, the running one is cancelled as in reserve(): a cancelled statement rolls back,
   * a COMMIT that already ran has committed (as before, when the abort came during COMMIT).
   */
  writeStatement<R>(signal: Cancellation | undefined, statement: CompiledQuery<R>): Promise<QueryResult<R>> {
    return this.#withConnection(signal, async (tracked) => {
      const stream = (tracked.client as unknown as { connection?: { stream?: net.Socket } }).connection?.stream;
      stream?.cork();
      const sent = [
        tracked.query(WRITE_START, []),
        tracked.query(statement.sql, statement.parameters),
        tracked.query("commit", []),
      ] as const;
      stream?.uncork();
      // Each settles; the first failure (in the order sent) is the write's error.
      const [begun, ran, committed] = await Promise.allSettled(sent);
      for (const outcome of [begun, ran, committed]) if (outcome.status === "rejected") throw outcome.reason;
      const result = (ran as PromiseFulfilledResult<pg.QueryResult>).value;
      if ((committed as PromiseFulfilledResult<pg.QueryResult>).value.command !== "COMMIT") {
        // Rolled back without an error of its own (never expected): not acknowledged.
        tracked.broken = true;
        throw new Error("a write's transaction ended without committing");
      }
      return {
        rows: result.rows as R[],
        ...(ROW_COUNT_COMMANDS.has(result.command) ? { numAffectedRows: BigInt(result.rowCount ?? 0) } : {}),
      };
    });
  }

  /** Runs `use` on one connection of the pool, cancelled as reserve() says. */
  async #withConnection<T>(signal: Cancellation | undefined, use: (tracked: TrackedClient) => Promise<T>): Promise<T> {
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
      return await use(tracked);
    } finally {
      signal?.removeEventListener("abort", cancel);
      tracked.release();
    }
  }

  async #connect(): Promise<TrackedClient> {
    const unreachable = this.#unreachable;
    if (unreachable !== undefined) throw new UnavailableError({ cause: unreachable.cause });
    let fail: ((error: Error) => void) | undefined;
    const failed = new Promise<never>((_, reject) => {
      fail = reject;
    });
    this.#waiting.add(fail as (error: Error) => void);
    const connecting = this.#pool.connect();
    try {
      const tracked = new TrackedClient(await Promise.race([connecting, failed]), this);
      this.#checkedOut.add(tracked);
      return tracked;
    } catch (error) {
      // Failed while waiting (the database turned out unreachable): the connection, if one still
      // comes, goes back.
      connecting.then(
        (client) => client.release(),
        () => {},
      );
      if (error instanceof Error && error.message.includes(POOL_WAIT_TIMEOUT) && this.#pool.totalCount >= this.#max) {
        this.#exhausted++;
        throw new UnavailableError({ cause: error, why: "pool_exhausted" });
      }
      if (suggestsUnreachable(error)) this.suspect();
      throw error;
    } finally {
      this.#waiting.delete(fail as (error: Error) => void);
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

function isStalePlan(error: unknown): boolean {
  return (error as { code?: unknown }).code === "0A000" && String((error as Error).message).includes(STALE_PLAN);
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
