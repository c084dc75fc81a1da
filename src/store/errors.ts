// The one place where driver errors (better-sqlite3, pg, node:net) become the store's sentinels.
// Driver text never becomes a sentinel's message: it stays reachable as `cause` for the log.

import { CONSTRAINTS } from "./migrations.js";
import { AlreadyExistsError, ConflictError, UnavailableError } from "./store.js";

type Conflict = AlreadyExistsError["conflict"];

export type Failure =
  /** A unique constraint that the interface names. */
  | { readonly kind: "already_exists"; readonly conflict: Conflict }
  /** A lost race that a new attempt of the same transaction may win. */
  | { readonly kind: "retryable" }
  /** The connection broke under a statement: a read may be retried once on a fresh one. */
  | { readonly kind: "connection_lost" }
  | { readonly kind: "unavailable" }
  | { readonly kind: "other" };

const RETRYABLE: Failure = { kind: "retryable" };
const CONNECTION_LOST: Failure = { kind: "connection_lost" };
const UNAVAILABLE: Failure = { kind: "unavailable" };
const OTHER: Failure = { kind: "other" };

const PG_CONFLICTS: ReadonlyMap<string, Conflict> = new Map<string, Conflict>([
  [CONSTRAINTS.organizationId, "organization"],
  [CONSTRAINTS.pair, "pair"],
  [CONSTRAINTS.idempotencyKey, "request_id"],
]);

/** SQLite names the columns of the violated unique index, not the index. */
const SQLITE_CONFLICTS: ReadonlyMap<string, Conflict> = new Map<string, Conflict>([
  ["organizations.id", "organization"],
  ["connections.source_organization_id, connections.destination_organization_id", "pair"],
  ["idempotency_records.scope, idempotency_records.request_id", "request_id"],
]);

const SQLITE_UNIQUE_PREFIX = "UNIQUE constraint failed: ";

const NET_LOST = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED"]);
const NET_UNAVAILABLE = new Set([
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** pg reports these without a code. */
const PG_LOST_MESSAGES = [
  "Connection terminated unexpectedly",
  "is not queryable",
  "Postgres connection has been discarded",
];
const PG_UNAVAILABLE_MESSAGES = [
  "timeout exceeded when trying to connect",
  "Connection terminated due to connection timeout",
  // A lone pg.Client (not pooled) whose connect timed out.
  "timeout expired",
  // query_timeout: the database did not answer in time on the client's clock (frozen, partitioned).
  "Query read timeout",
  "Cannot use a pool after calling end on the pool",
];

/** pg's words for a server that did not answer at all on the client's clock. */
const PG_SILENT_MESSAGES = [
  "timeout exceeded when trying to connect",
  "Connection terminated due to connection timeout",
  "timeout expired",
  "Query read timeout",
];

/**
 * Whether `error` suggests that the database cannot be reached at all (refused, unroutable, or
 * silent past a client-side timeout), as opposed to one that answers with a refusal or a slow
 * statement. A suggestion only: the pool confirms it with a probe before failing calls at once.
 */
export function suggestsUnreachable(error: unknown): boolean {
  const code = codeOf(error);
  if (code !== undefined && NET_UNAVAILABLE.has(code)) return true;
  const message = error instanceof Error ? error.message : "";
  return PG_SILENT_MESSAGES.some((m) => message.includes(m));
}

function codeOf(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string") return code;
  // node:net reports every address it tried (::1 and 127.0.0.1) in an AggregateError.
  if (error instanceof AggregateError) return codeOf(error.errors[0]);
  return undefined;
}

function conflictOf(error: unknown, code: string): Conflict | undefined {
  if (code === "23505") {
    const constraint = (error as { constraint?: unknown }).constraint;
    return typeof constraint === "string" ? PG_CONFLICTS.get(constraint) : undefined;
  }
  const message = error instanceof Error ? error.message : "";
  if (!message.startsWith(SQLITE_UNIQUE_PREFIX)) return undefined;
  return SQLITE_CONFLICTS.get(message.slice(SQLITE_UNIQUE_PREFIX.length));
}

export function classifyError(error: unknown): Failure {
  if (error instanceof AlreadyExistsError) return { kind: "already_exists", conflict: error.conflict };
  if (error instanceof ConflictError) return RETRYABLE;
  if (error instanceof UnavailableError) return UNAVAILABLE;
  const code = codeOf(error);
  if (code !== undefined) {
    if (code === "23505" || code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
      const conflict = conflictOf(error, code);
      return conflict === undefined ? OTHER : { kind: "already_exists", conflict };
    }
    if (code === "40001" || code === "40P01" || code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
      return RETRYABLE;
    }
    if (code.startsWith("08") || code === "57P01" || code === "57P02" || NET_LOST.has(code)) return CONNECTION_LOST;
    if (
      code === "57P03" ||
      code === "57014" ||
      code.startsWith("53") ||
      NET_UNAVAILABLE.has(code) ||
      code.startsWith("SQLITE_IOERR") ||
      code === "SQLITE_FULL" ||
      code.startsWith("SQLITE_CANTOPEN")
    ) {
      return UNAVAILABLE;
    }
  }
  const message = error instanceof Error ? error.message : "";
  if (PG_LOST_MESSAGES.some((m) => message.includes(m))) return CONNECTION_LOST;
  if (PG_UNAVAILABLE_MESSAGES.some((m) => message.includes(m))) return UNAVAILABLE;
  return OTHER;
}

/**
 * The sentinel for a driver error, or the error itself when it is none of them (a bug or an
 * unexpected constraint: the API layer reports it as INTERNAL and logs it).
 */
export function translateError(error: unknown, failure: Failure = classifyError(error)): unknown {
  if (error instanceof AlreadyExistsError || error instanceof ConflictError || error instanceof UnavailableError) {
    return error;
  }
  switch (failure.kind) {
    case "already_exists": {
      const sentinel = new AlreadyExistsError(failure.conflict);
      sentinel.cause = error;
      return sentinel;
    }
    case "retryable":
      return new ConflictError({ cause: error });
    case "connection_lost":
    case "unavailable":
      return new UnavailableError({ cause: error });
    case "other":
      return error;
  }
}
