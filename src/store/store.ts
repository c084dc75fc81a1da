// The one storage interface. Handlers and the domain know nothing of SQL or of which database
// is in use; the Kysely implementation translates driver errors into the sentinels below.

import type { EventType, State } from "../domain/connection.js";
import type { Cancellation } from "../runtime/cancellation.js";
import type { CheckCacheStats } from "./check-reader.js";

export type { CheckCacheStats };

export interface OrganizationRecord {
  readonly id: string;
  readonly name: string;
  readonly createTime: Date;
}

export interface ConnectionRecord {
  readonly id: string;
  readonly sourceOrganizationId: string;
  readonly destinationOrganizationId: string;
  readonly name: string;
  /** Sorted, without duplicates. */
  readonly scopes: readonly string[];
  readonly state: State;
  readonly createTime: Date;
  readonly updateTime: Date;
  readonly activateTime: Date | undefined;
  readonly deactivateTime: Date | undefined;
  /** The x-actor of the creating request, or "". */
  readonly creator: string;
  /** The CreateConnection request_id that made it, or "" (kept for the record; replays use IdempotencyRecord). */
  readonly createRequestId: string;
  /** Starts at 1 and grows by one with every transition: the etag and the optimistic lock. */
  readonly version: number;
}

export interface EventRecord {
  readonly id: string;
  readonly connectionId: string;
  readonly type: EventType;
  /** Undefined for CREATED. */
  readonly fromState: State | undefined;
  readonly toState: State;
  readonly sourceOrganizationId: string;
  readonly destinationOrganizationId: string;
  /** The Connection's scopes after the event. */
  readonly scopes: readonly string[];
  /** The Connection's scopes before the event: UPDATED only, else empty. */
  readonly previousScopes: readonly string[];
  readonly actorOrganizationId: string;
  readonly caller: string;
  readonly actor: string;
  readonly reason: string;
  readonly requestId: string;
  readonly createTime: Date;
}

/**
 * The first answer to an idempotent write, kept per (scope, requestId) and replayed to its
 * retries. Saved in the same transaction as the write it answers.
 */
export interface IdempotencyRecord {
  /** Whose key it is: "organization:<id>" for Connection writes, "caller:<name>" for provisioning. */
  readonly scope: string;
  readonly requestId: string;
  /** The RPC's name: the same key with another RPC is a misuse. */
  readonly method: string;
  /** A digest of the request's parameters: the same key with other parameters is a misuse. */
  readonly fingerprint: string;
  readonly outcome: IdempotentOutcome;
  readonly createTime: Date;
}

/** The response message as it was sent (protobuf binary), or the final error. */
export type IdempotentOutcome =
  | { readonly response: Uint8Array }
  | {
      readonly error: {
        readonly reason: string;
        readonly message: string;
        readonly metadata: Readonly<Record<string, string>>;
      };
    };

export type Direction = "BOTH" | "OUTBOUND" | "INBOUND";

export interface ListConnectionsQuery {
  /** The acting organization: only its Connections are listed. */
  readonly organizationId: string;
  readonly direction: Direction;
  /** Empty means every state. */
  readonly states: readonly State[];
  /** Keyset position: list only Connections that come after this cursor, newest first (exclusive). */
  readonly before: string | undefined;
  readonly limit: number;
}

export interface ListEventsQuery {
  readonly connectionId: string;
  /** Keyset position: list only events recorded after this cursor (exclusive). */
  readonly after: string | undefined;
  readonly limit: number;
}

/** A page of results, and the cursor of its last item when more may follow. */
export interface Page<T> {
  readonly items: T[];
  /** Opaque to callers of the store; undefined on the last page. */
  readonly nextCursor: string | undefined;
}

/**
 * A place in the change feed: (transaction id, position), written as one fixed-width string so that
 * `<` and `>` compare places. Transaction ids order the feed on PostgreSQL (see migrations.ts,
 * feedTransactionOrder); on SQLite, whose one connection commits one transaction after the other,
 * the transaction id is 0 and the position alone is commit order.
 */
export type FeedPosition = string;

const TRANSACTION_DIGITS = 20; // xid8 < 2^64
const POSITION_DIGITS = 16; // a safe integer

export function feedPosition(transaction: string | number, position: string | number): FeedPosition {
  return `${String(transaction).padStart(TRANSACTION_DIGITS, "0")}:${String(position).padStart(POSITION_DIGITS, "0")}`;
}

/** Before every event: where a feed read from the beginning starts. */
export const FEED_START: FeedPosition = feedPosition(0, 0);

/** The parts of a well-formed position (decimal strings without leading zeros), or undefined. */
export function feedPositionParts(position: string): { transaction: string; position: string } | undefined {
  const match = /^(\d{20}):(\d{16})$/.exec(position);
  if (match === null) return undefined;
  const strip = (digits: string) => digits.replace(/^0+(?=\d)/, "");
  return { transaction: strip(match[1] as string), position: strip(match[2] as string) };
}

/** The later of two places. */
export function laterFeedPosition(a: FeedPosition, b: FeedPosition): FeedPosition {
  return a > b ? a : b;
}

/** An event in the change feed, with the parties of its Connection (for visibility). */
export interface FeedEntry {
  /** Its place: every event that will ever come before it is committed (see FeedPosition). */
  readonly position: FeedPosition;
  readonly event: EventRecord;
  readonly sourceOrganizationId: string;
  readonly destinationOrganizationId: string;
}

export interface FeedQuery {
  /** Exclusive lower bound. */
  readonly after: FeedPosition;
  /** Inclusive upper bound, or none. */
  readonly through: FeedPosition | undefined;
  /** Only events of Connections this organization is a party to; undefined for every event. */
  readonly organizationId: string | undefined;
  readonly limit: number;
}

/** The database connections of a store, for metrics. */
export interface PoolStats {
  /** Connections open. */
  readonly total: number;
  /** Connections open and unused. */
  readonly idle: number;
  /** Queries waiting for a connection. */
  readonly waiting: number;
  /** Since start: calls refused because every connection stayed busy past the wait timeout. */
  readonly exhausted: number;
}

export interface Store {
  /**
   * Throws AlreadyExistsError when the id is taken. Every write takes the call's signal: once it
   * aborts, a transaction that has not committed rolls back and the write rejects with its reason.
   * Every write also takes the IdempotencyRecord that answers it, if any, and saves it in the same
   * transaction (AlreadyExistsError `conflict: "request_id"` when its key is taken: nothing is written).
   */
  createOrganization(
    organization: OrganizationRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<OrganizationRecord>;
  getOrganization(id: string): Promise<OrganizationRecord | undefined>;
  /** Organizations are never deleted, so a positive answer may be remembered. */
  organizationExists(id: string): Promise<boolean>;

  /**
   * Inserts a Connection and its CREATED event in one transaction. Throws AlreadyExistsError
   * (`conflict: "pair"`) when the ordered pair already has a Connection.
   */
  createConnection(
    connection: ConnectionRecord,
    event: EventRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<void>;
  getConnection(id: string): Promise<ConnectionRecord | undefined>;
  findConnectionByPair(
    sourceOrganizationId: string,
    destinationOrganizationId: string,
  ): Promise<ConnectionRecord | undefined>;
  listConnections(query: ListConnectionsQuery): Promise<Page<ConnectionRecord>>;

  /**
   * Replaces `next.version - 1` by `next` (state, name, scopes, times) and records `event`, in one
   * transaction: every transition and every update. Returns false, changing nothing, when the
   * stored version is no longer `next.version - 1` (someone else won).
   */
  saveTransition(
    next: ConnectionRecord,
    event: EventRecord,
    signal?: Cancellation,
    answer?: IdempotencyRecord,
  ): Promise<boolean>;
  listEvents(query: ListEventsQuery): Promise<Page<EventRecord>>;

  /**
   * The hot path of CheckConnection, and GetConnection's read. Exact: reflects every transition
   * that has returned to its caller, on this process or any other that shares the database.
   */
  getConnectionForCheck(id: string): Promise<ConnectionRecord | undefined>;
  /**
   * getConnectionForCheck for many ids at once (BatchCheckConnection), read together: one query
   * on PostgreSQL. Answers in the order of `ids`, undefined where there is no such Connection.
   */
  getConnectionsForCheck(ids: readonly string[]): Promise<(ConnectionRecord | undefined)[]>;

  /** The answer recorded for a key, if any. */
  findIdempotencyRecord(scope: string, requestId: string): Promise<IdempotencyRecord | undefined>;
  /** Saves an answer that no other write carries (a final error, an update that changed nothing). */
  saveIdempotencyRecord(record: IdempotencyRecord, signal?: Cancellation): Promise<void>;
  /** Deletes at most `limit` of the records made before `before`, oldest first; returns how many. */
  pruneIdempotencyRecords(before: Date, limit: number): Promise<number>;

  /** The random identity of this database's change feed (fixed by its migration; read once). */
  feedId(): Promise<string>;
  /**
   * The place of the last event that readFeed can return now (FEED_START when there is none):
   * every event that will ever come before it is committed.
   */
  feedHead(): Promise<FeedPosition>;
  /** Whether `position` is the place of an event (so a cursor that carries it is one this feed issued). */
  feedContains(position: FeedPosition): Promise<boolean>;
  /**
   * Feed entries in position order, only those that no transaction still running can come before:
   * a place returned here never gets an event before it later.
   */
  readFeed(query: FeedQuery): Promise<FeedEntry[]>;
  /**
   * Calls `listener` whenever events may have been appended: at once after a write of this process,
   * and on PostgreSQL also when another process commits one (NOTIFY) or the listening connection
   * was re-established (notifications may have been missed). A hint only: readers still poll.
   * Returns the function that unsubscribes.
   */
  onFeedAppended(listener: () => void): () => void;

  /** Connections open to the database, idle ones, and queries waiting for one. */
  poolStats(): PoolStats;

  /** The CheckConnection cache's counters (SQLite); undefined where checks are not cached (PostgreSQL). */
  checkCacheStats(): CheckCacheStats | undefined;

  /** Resolves when the database answers; throws UnavailableError when it does not. */
  ping(): Promise<void>;
  /**
   * SQLite: an online backup, a consistent copy of the database written to `destination` while
   * writes go on. PostgreSQL refuses: it is backed up with its own tools (pg_dump, pg_basebackup).
   */
  backup(destination: string): Promise<void>;
  /** The migrations this build ships that the database has not applied yet (none: the schema is current). */
  pendingMigrations(): Promise<readonly string[]>;
  close(): Promise<void>;
}

/** A unique constraint was violated: an organization id, a pair, or an idempotency key ("request_id"). */
export class AlreadyExistsError extends Error {
  constructor(readonly conflict: "organization" | "pair" | "request_id") {
    super(`already exists: ${conflict}`);
    this.name = "AlreadyExistsError";
  }
}

/** The database cannot be reached or refused work for a while (down, pool exhausted, timeout). */
export class UnavailableError extends Error {
  /**
   * `pool_exhausted`: the database answers but every pooled connection stayed busy (this replica is
   * overloaded); `schema_behind`: the `migrate` step has not run for this release yet (schema-gate.ts).
   */
  readonly why: "unreachable" | "pool_exhausted" | "schema_behind";

  constructor(options?: { cause?: unknown; why?: UnavailableError["why"] }) {
    const why = options?.why ?? "unreachable";
    super(UNAVAILABLE_MESSAGES[why], options);
    this.name = "UnavailableError";
    this.why = why;
  }
}

const UNAVAILABLE_MESSAGES: Readonly<Record<UnavailableError["why"], string>> = {
  unreachable: "database unavailable",
  pool_exhausted: "database connection pool exhausted",
  schema_behind: "database schema behind this release",
};

/** A transaction lost a race (serialization failure, deadlock, busy) and retries ran out. */
export class ConflictError extends Error {
  constructor(options?: { cause?: unknown }) {
    super("write conflict", options);
    this.name = "ConflictError";
  }
}

/** A cursor that this store never handed out (callers can forge the page tokens that carry one). */
export class InvalidCursorError extends Error {
  constructor() {
    super("not a cursor of this store");
    this.name = "InvalidCursorError";
  }
}
