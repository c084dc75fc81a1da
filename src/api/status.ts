// The one place where errors become gRPC statuses. Every status carries a google.rpc.ErrorInfo
// with a stable reason; anything unexpected becomes INTERNAL with no driver text, and its cause
// is handed back for the log instead.

import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type ErrorReason, invalidArgument, ServiceError } from "../app/errors.js";
import { ConflictError, InvalidCursorError, UnavailableError } from "../store/store.js";

export const ERROR_DOMAIN = "connections.v1";

const CODE_BY_REASON: Readonly<Record<ErrorReason, Code>> = {
  CALLER_UNAUTHENTICATED: Code.Unauthenticated,
  CALLER_NOT_ALLOWED: Code.PermissionDenied,
  ORGANIZATION_NOT_REGISTERED: Code.PermissionDenied,
  ONLY_DESTINATION_CAN_ACTIVATE: Code.PermissionDenied,
  ONLY_SOURCE_CAN_REACTIVATE: Code.PermissionDenied,
  ONLY_SOURCE_CAN_UPDATE: Code.PermissionDenied,
  INVALID_ARGUMENT: Code.InvalidArgument,
  ORGANIZATION_HEADER_REQUIRED: Code.InvalidArgument,
  SELF_CONNECTION: Code.InvalidArgument,
  UNKNOWN_SCOPE: Code.InvalidArgument,
  REQUEST_ID_REUSED: Code.InvalidArgument,
  CONNECTION_NOT_FOUND: Code.NotFound,
  ORGANIZATION_NOT_FOUND: Code.NotFound,
  CONNECTION_ALREADY_EXISTS: Code.AlreadyExists,
  ORGANIZATION_ALREADY_EXISTS: Code.AlreadyExists,
  INVALID_STATE_TRANSITION: Code.FailedPrecondition,
  ETAG_MISMATCH: Code.Aborted,
  REQUEST_IN_PROGRESS: Code.Aborted,
  MALFORMED_REQUEST: Code.InvalidArgument,
  WATCHER_TOO_SLOW: Code.ResourceExhausted,
  TOO_MANY_WATCHERS: Code.ResourceExhausted,
  WRITE_CONFLICT: Code.Aborted,
  DATABASE_UNAVAILABLE: Code.Unavailable,
  REQUEST_TOO_LARGE: Code.ResourceExhausted,
  OVERLOADED: Code.ResourceExhausted,
  DEADLINE_EXCEEDED: Code.DeadlineExceeded,
  UNKNOWN_METHOD: Code.Unimplemented,
  NOT_ONE_MESSAGE: Code.Unimplemented,
  UNSUPPORTED_ENCODING: Code.Unimplemented,
  UNSUPPORTED_MEDIA_TYPE: Code.InvalidArgument,
  UNKNOWN_SERVICE: Code.NotFound,
  CANCELLED: Code.Canceled,
  SHUTTING_DOWN: Code.Unavailable,
  CONNECTION_MAX_AGE: Code.Unavailable,
  INTERNAL: Code.Internal,
};

const DATABASE_UNAVAILABLE_MESSAGES: Readonly<Record<UnavailableError["why"], string>> = {
  unreachable: "the database is unavailable; retry with backoff",
  pool_exhausted: "every database connection of this replica is busy; retry with backoff",
  schema_behind: "this replica's database schema is behind its release until the migrate step runs; retry with backoff",
};

export interface RpcStatus {
  readonly code: Code;
  readonly message: string;
  readonly reason: ErrorReason;
  readonly metadata: Readonly<Record<string, string>>;
  /** Sent as grpc-retry-pushback-ms: how long the client should wait before it retries. */
  readonly retryPushbackMs?: number;
}

export interface MappedError {
  readonly status: RpcStatus;
  /** Set when the error was not one we meant to return: log it, never send it. */
  readonly internalCause: unknown;
}

/**
 * Messages and metadata travel in headers (grpc-message, grpc-status-details-bin), and some echo
 * what the caller sent: bounded, so that no request can make a header too large for the client.
 */
const MAX_MESSAGE_CHARS = 512;
const MAX_METADATA_VALUE_CHARS = 128;

/** At most `max` characters (an ellipsis marks the cut), with lone surrogates replaced. */
export function boundedText(text: string, max: number): string {
  const cut = text.length <= max ? text : `${text.slice(0, max - 1)}…`;
  return cut.toWellFormed();
}

function statusOf(error: ServiceError): RpcStatus {
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(error.metadata))
    metadata[key] = boundedText(value, MAX_METADATA_VALUE_CHARS);
  return {
    code: CODE_BY_REASON[error.reason],
    message: boundedText(error.message, MAX_MESSAGE_CHARS),
    reason: error.reason,
    metadata,
  };
}

export function toRpcStatus(error: unknown): MappedError {
  if (error instanceof ServiceError) return { status: statusOf(error), internalCause: undefined };
  if (error instanceof InvalidCursorError) {
    const forged = invalidArgument("page_token", "page_token is not a token this service issued");
    return { status: statusOf(forged), internalCause: undefined };
  }
  if (error instanceof UnavailableError) {
    const unavailable = new ServiceError("DATABASE_UNAVAILABLE", DATABASE_UNAVAILABLE_MESSAGES[error.why]);
    return { status: statusOf(unavailable), internalCause: error.cause };
  }
  if (error instanceof ConflictError) {
    const conflict = new ServiceError("WRITE_CONFLICT", "the write lost a race with another; retry");
    return { status: statusOf(conflict), internalCause: undefined };
  }
  const internal = new ServiceError("INTERNAL", "internal error; the server log has the details under this request id");
  return { status: statusOf(internal), internalCause: error };
}

export function errorInfoOf(status: RpcStatus): ErrorInfo {
  return create(ErrorInfoSchema, { reason: status.reason, domain: ERROR_DOMAIN, metadata: { ...status.metadata } });
}
