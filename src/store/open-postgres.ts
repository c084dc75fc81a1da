// PostgreSQL's side of opening the store (open.ts): the pool, the LISTEN connection, migrations
// over a direct connection. A module of its own, imported only when DATABASE_URL names
// PostgreSQL, so that a service on SQLite does not load the pg driver at start.

import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { translateError } from "./errors.js";
import { FeedListener } from "./feed-notifications.js";
import { KyselyStore } from "./kysely-store.js";
import type { OpenStoreOptions } from "./open.js";
import { StorePool } from "./pg-pool.js";
import type { Database } from "./schema.js";
import { PostgresMigrationDialect, prepareSchema } from "./schema-version.js";
import type { Store } from "./store.js";

const PG_CONNECT_TIMEOUT_MS = 2000;
/** Idle time before the first TCP keepalive probe on a PostgreSQL connection. */
const PG_KEEPALIVE_DELAY_MS = 10_000;
/** The client gives a query this long past the server's statement_timeout before giving up on it. */
const PG_QUERY_TIMEOUT_MARGIN_MS = 1_000;

/** What every PostgreSQL connection of the service is opened with: no startup parameters beyond
 * application_name, which PgBouncer knows (it refuses others, e.g. statement_timeout). */
function pgConnection(url: string): pg.ClientConfig {
  return {
    connectionString: url,
    connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
    application_name: "connections",
    // Finds a peer that vanished without a FIN or RST (a dead host, a dropped route).
    keepAlive: true,
    keepAliveInitialDelayMillis: PG_KEEPALIVE_DELAY_MS,
  };
}

export async function openPostgres(url: string, options: OpenStoreOptions): Promise<Store> {
  const poolSize = options.poolSize ?? 10;
  const statementTimeoutMs = options.statementTimeoutMs ?? 5000;
  const connection = pgConnection(url);
  // Migrations may wait on replicas that migrate first: no client-side timeout on their connection.
  if (options.migrate ?? true) await migratePostgres(options.migrationUrl ?? url, options);
  const pooled = await throughPooler(url);
  const feedListener = feedListenerFor(url, pooled, options);
  const pool = new pg.Pool({
    ...connection,
    max: poolSize,
    // Messages go out without waiting for the answers to those before them (StorePool.writeStatement).
    pipeline: true,
    // The client's own clock: a database that stops answering (frozen, partitioned, no packets at
    // all) fails the query instead of holding the connection; the server's statement_timeout
    // cannot, since it never gets to run.
    query_timeout: statementTimeoutMs + PG_QUERY_TIMEOUT_MARGIN_MS,
  });
  // A client whose server went away emits 'error', on the pool when idle and on the client while
  // checked out (its query fails too); an unheard 'error' would crash the process. The pool
  // drops such a client and connects a new one when next asked.
  pool.on("error", (error) => options.logger?.warn({ err: error }, "an idle PostgreSQL connection failed"));
  pool.on("connect", (client) =>
    client.on("error", (error) => options.logger?.debug({ err: error }, "a PostgreSQL connection failed")),
  );
  const storePool = new StorePool(pool, poolSize, {
    connection,
    statementTimeoutMs,
    namedStatements: !pooled,
    onReachability(reachable, cause) {
      if (reachable) options.logger?.info("PostgreSQL answers again: serving calls");
      else
        options.logger?.error(
          { err: cause },
          "PostgreSQL is unreachable: calls fail at once with UNAVAILABLE until a probe finds it answering",
        );
    },
  });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: storePool.forKysely }) });
  if (!(options.migrate ?? true)) await prepareSchema(db, "postgres", { ...options, migrate: false });
  return new KyselyStore(db, {
    dialect: "postgres",
    poolSize,
    pool: storePool,
    feedListener,
  });
}

/**
 * The LISTEN connection: DATABASE_LISTEN_URL when set; DATABASE_URL when it reaches PostgreSQL
 * directly; none (the feed polls) when DATABASE_URL goes through a pooler, where LISTEN runs on one
 * server connection and is then lost to whichever client gets it next.
 */
function feedListenerFor(url: string, pooled: boolean, options: OpenStoreOptions): FeedListener | undefined {
  if (options.listenUrl !== undefined) return new FeedListener(options.listenUrl, options.logger);
  if (!pooled) return new FeedListener(url, options.logger);
  options.logger?.warn(
    "DATABASE_URL reaches PostgreSQL through a connection pooler (PgBouncer?), where LISTEN does not work: the " +
      "change feed only polls (every WATCH_POLL_INTERVAL_MS), so events committed on other replicas reach " +
      "watchers later. Set DATABASE_LISTEN_URL to a direct or session-pooled connection to be notified at once",
  );
  return undefined;
}

/**
 * True when the server process answering a query is not the one whose key the connection was given
 * at start: a pooler (PgBouncer hands out keys of its own) sits between. A plain TCP proxy passes
 * the key through, so it is not mistaken for one.
 */
async function throughPooler(url: string): Promise<boolean> {
  const client = new pg.Client(pgConnection(url));
  client.on("error", () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ pid: number }>("select pg_backend_pid() as pid");
    return rows[0]?.pid !== (client as unknown as { processID?: number }).processID;
  } catch (error) {
    throw translateError(error);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Applies the pending migrations over one direct connection to `url`, then closes it. */
export async function migratePostgres(
  url: string,
  options: Pick<OpenStoreOptions, "schemaAheadLimit" | "logger">,
): Promise<void> {
  const client = new pg.Client(pgConnection(url));
  client.on("error", (error) => options.logger?.debug({ err: error }, "the migration connection failed"));
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw translateError(error);
  }
  const pinned = { query: (text: string, values: unknown[]) => client.query(text, values), release: () => {} };
  const db = new Kysely<Database>({
    dialect: new PostgresMigrationDialect({ pool: { connect: async () => pinned as never, end: () => client.end() } }),
  });
  await prepareSchema(db, "postgres", options);
  await db.destroy();
}
