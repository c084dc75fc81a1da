// Errors that the service means to return. Each carries a stable reason; src/api/status.ts is the
// one place that turns a reason (or any other error) into a gRPC code and an ErrorInfo.

export type ErrorReason =
  // The contract's reasons (docs/API.md, "Errors").
  | "CALLER_UNAUTHENTICATED"
  | "CALLER_NOT_ALLOWED"
  | "ORGANIZATION_NOT_REGISTERED"
  | "ONLY_DESTINATION_CAN_ACTIVATE"
  | "ONLY_SOURCE_CAN_REACTIVATE"
  | "ONLY_SOURCE_CAN_UPDATE"
  | "INVALID_ARGUMENT"
  | "ORGANIZATION_HEADER_REQUIRED"
  | "SELF_CONNECTION"
  | "UNKNOWN_SCOPE"
  | "REQUEST_ID_REUSED"
  | "CONNECTION_NOT_FOUND"
  | "ORGANIZATION_NOT_FOUND"
  | "CONNECTION_ALREADY_EXISTS"
  | "ORGANIZATION_ALREADY_EXISTS"
  | "INVALID_STATE_TRANSITION"
  | "ETAG_MISMATCH"
  | "REQUEST_IN_PROGRESS"
  | "MALFORMED_REQUEST"
  | "WATCHER_TOO_SLOW"
  | "TOO_MANY_WATCHERS"
  // Failures of the service itself, which the contract leaves to us.
  | "WRITE_CONFLICT"
  | "DATABASE_UNAVAILABLE"
  | "REQUEST_TOO_LARGE"
  | "DEADLINE_EXCEEDED"
  // Admission control refused the call before any work: retry after grpc-retry-pushback-ms.
  | "OVERLOADED"
  // Refusals where the gRPC protocol names the status: an unknown method, a unary call without
  // exactly one request message, a compression this server does not speak.
  | "UNKNOWN_METHOD"
  | "NOT_ONE_MESSAGE"
  | "UNSUPPORTED_ENCODING"
  // A Content-Type that names no protocol this port speaks (HTTP 415).
  | "UNSUPPORTED_MEDIA_TYPE"
  // grpc.health.v1 asked about a service this server does not have.
  | "UNKNOWN_SERVICE"
  | "CANCELLED"
  | "SHUTTING_DOWN"
  | "CONNECTION_MAX_AGE"
  | "INTERNAL";

export class ServiceError extends Error {
  constructor(
    readonly reason: ErrorReason,
    message: string,
    readonly metadata: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = "ServiceError";
  }
}

/** INVALID_ARGUMENT naming the offending request field. */
export function invalidArgument(field: string, message: string): ServiceError {
  return new ServiceError("INVALID_ARGUMENT", message, { field });
}

/** UNKNOWN_SCOPE naming the request field and the scope, wherever a scope is read. */
export function unknownScope(field: string, scope: string): ServiceError {
  return new ServiceError("UNKNOWN_SCOPE", `scope "${scope}" is not in the catalogue`, { field, scope });
}
