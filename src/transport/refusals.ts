// Requests that the transport answers itself, before any handler runs, and how an error status
// travels on each protocol. One vocabulary for every protocol, so that the same bad input gets the
// same code and reason on gRPC, gRPC-Web and Connect, always with a google.rpc.ErrorInfo and never
// with a decoder's or a setting's words in the message.

import type { OutgoingHttpHeaders } from "node:http2";
import { create, type DescMethod, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { type Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import type { AdmissionTicket } from "../api/rpc/admission.js";
import type { RpcLabels } from "../api/rpc/types.js";
import { errorInfoOf, type RpcStatus, toRpcStatus } from "../api/status.js";
import { type ErrorReason, ServiceError } from "../app/errors.js";

/**
 * Why the port turns a request or a connection away before the pipeline runs: the `reason` label
 * of connections_port_refusals_total (docs/operations.md says what each one points to). Admission
 * control's refusals are the pipeline's, counted by connections_admission_refused_total.
 */
export const PORT_REFUSAL_REASONS = [
  // Requests, answered with a status.
  "malformed", // MALFORMED_REQUEST: bytes that do not parse, not POST, a bad timeout header
  "too_large", // REQUEST_TOO_LARGE
  "not_one_message", // NOT_ONE_MESSAGE
  "unknown_method", // UNKNOWN_METHOD
  "unsupported_encoding", // UNSUPPORTED_ENCODING
  "unsupported_media_type", // UNSUPPORTED_MEDIA_TYPE
  "body_too_slow", // DEADLINE_EXCEEDED: the body took longer than BODY_READ_TIMEOUT_MS
  "deadline_passed", // DEADLINE_EXCEEDED: the caller's own deadline passed before the body arrived
  // Connections, dropped or sent away.
  "first_bytes_timeout", // said nothing (or not which protocol) within FIRST_BYTES_TIMEOUT_MS
  "tls_handshake_failed", // no certificate, an untrusted or expired one, a handshake timeout
  "http1_timeout", // HTTP/1.1 head or request not complete in time (slowloris)
  "http1_headers_too_large", // HTTP/1.1 head over MAX_HEADER_LIST_BYTES
  "http1_malformed", // bytes that are not HTTP/1.1
  "http2_session_error", // bad frames, more streams than SETTINGS_MAX_CONCURRENT_STREAMS: dropped
  "keepalive_timeout", // an HTTP/2 peer that did not answer a keepalive PING
  "connection_cap", // GOAWAY to the idlest connection past MAX_HTTP2_CONNECTIONS
] as const;

export type PortRefusalReason = (typeof PORT_REFUSAL_REASONS)[number];

/** Hears of everything the port turns away or holds back (the metrics). */
export interface PortObserver {
  portRefused(reason: PortRefusalReason): void;
  /** A caller's held connections stopped reading for the rest of a turn: its calls in that turn reached its share. */
  readsHeld(caller: string): void;
}

/** Thrown while reading a request that the transport answers without calling the handler. */
export class Refusal extends Error {
  constructor(
    readonly status: RpcStatus,
    /** Undefined for admission control's refusals, which the pipeline counts itself. */
    readonly portReason?: PortRefusalReason,
  ) {
    super(status.message);
    this.name = "Refusal";
  }
}

/**
 * A call whose wait for room in admission control ended (`readBy` came) before it was admitted: it
 * leaves its caller's queue, and nothing of it was done. DEADLINE_EXCEEDED when its own deadline
 * passed, otherwise (the service's cap on every call) `overloaded`, the pipeline's refusal.
 */
export function waitEnded(
  ticket: AdmissionTicket,
  deadline: number | undefined,
  now: number,
  overloaded: RpcStatus,
): Refusal {
  ticket.expire();
  return deadline !== undefined && deadline <= now ? refuse.deadlinePassed() : new Refusal(overloaded);
}

function refusal(portReason: PortRefusalReason, reason: ErrorReason, message: string): Refusal {
  return new Refusal(toRpcStatus(new ServiceError(reason, message)).status, portReason);
}

export const refuse = {
  malformed: (what: string) => refusal("malformed", "MALFORMED_REQUEST", what),
  notAMessage: (method: DescMethod, format: "binary" | "json") =>
    refusal(
      "malformed",
      "MALFORMED_REQUEST",
      format === "binary"
        ? `the request is not a valid ${method.input.typeName} in the protobuf binary format`
        : `the request is not valid JSON for ${method.input.typeName}`,
    ),
  tooLarge: (maxBytes: number) =>
    refusal(
      "too_large",
      "REQUEST_TOO_LARGE",
      `the request message is larger than ${maxBytes} bytes, the most this service accepts`,
    ),
  notOneMessage: () =>
    refusal("not_one_message", "NOT_ONE_MESSAGE", "a unary call carries exactly one request message; this one did not"),
  unknownMethod: (path: string) => refusal("unknown_method", "UNKNOWN_METHOD", `no method ${path} on this server`),
  unsupportedEncoding: (encoding: string) =>
    refusal(
      "unsupported_encoding",
      "UNSUPPORTED_ENCODING",
      `message encoding "${encoding}" is not supported; use identity or gzip`,
    ),
  unsupportedMediaType: (contentType: string) =>
    refusal(
      "unsupported_media_type",
      "UNSUPPORTED_MEDIA_TYPE",
      `content-type "${contentType}" is not served here; use application/grpc, application/grpc-web, ` +
        "application/proto or application/json",
    ),
  notPost: () => refusal("malformed", "MALFORMED_REQUEST", "RPCs are sent with the POST method"),
  badTimeout: (header: string) =>
    refusal("malformed", "MALFORMED_REQUEST", `the ${header} header is not a valid timeout`),
  bodyTooSlow: (timeoutMs: number) =>
    refusal("body_too_slow", "DEADLINE_EXCEEDED", `the request did not arrive completely within ${timeoutMs} ms`),
  deadlinePassed: () =>
    refusal("deadline_passed", "DEADLINE_EXCEEDED", "the deadline passed before the request arrived completely"),
};

/** Labels for metrics and logs of a request whose path names no method. */
export const UNKNOWN_METHOD_LABELS: RpcLabels = { path: "unknown", service: "unknown", method: "unknown" };

export function labelsOf(method: DescMethod): RpcLabels {
  return { path: `/${method.parent.typeName}/${method.name}`, service: method.parent.typeName, method: method.name };
}

/**
 * The status as connect-node sends it: code, message and the ErrorInfo detail, and
 * grpc-retry-pushback-ms as metadata (trailers on gRPC and gRPC-Web, a header on Connect).
 */
export function toConnectError(status: RpcStatus): ConnectError {
  return new ConnectError(status.message, status.code, retryPushbackHeader(status), [
    { desc: ErrorInfoSchema, value: errorInfoOf(status) },
  ]);
}

/** A ServiceError as connect-node throws it from a handler outside the pipeline (health, reflection). */
export function serviceFailure(reason: ErrorReason, message: string): ConnectError {
  return toConnectError(toRpcStatus(new ServiceError(reason, message)).status);
}

/** grpc-retry-pushback-ms when the status asks the client to wait before it retries; else nothing. */
export function retryPushbackHeader(status: RpcStatus): Record<string, string> {
  return status.retryPushbackMs === undefined ? {} : { "grpc-retry-pushback-ms": String(status.retryPushbackMs) };
}

/**
 * Statuses that are answered again and again as the same object (admission's OVERLOADED): their
 * headers are built once, so that a refusal under a storm costs no encoding.
 */
const sharedStatusHeaders = new WeakMap<RpcStatus, OutgoingHttpHeaders>();

/**
 * grpc-status, grpc-message and grpc-status-details-bin (and grpc-retry-pushback-ms when the
 * status has one) for a trailers-only answer or for trailers.
 */
export function grpcStatusHeaders(status: RpcStatus): OutgoingHttpHeaders {
  const shared = sharedStatusHeaders.get(status);
  if (shared !== undefined) return shared;
  const headers = {
    "grpc-status": String(status.code),
    "grpc-message": percentEncodeGrpcMessage(status.message),
    "grpc-status-details-bin": statusDetails(status.code, status.message, status),
    ...retryPushbackHeader(status),
  };
  if (status.retryPushbackMs !== undefined) sharedStatusHeaders.set(status, headers);
  return headers;
}

/** A google.rpc.Status carrying the ErrorInfo, base64 without padding as the spec asks of senders. */
function statusDetails(code: Code, message: string, status: RpcStatus): string {
  const details = create(StatusSchema, { code, message, details: [anyPack(ErrorInfoSchema, errorInfoOf(status))] });
  return Buffer.from(toBinary(StatusSchema, details)).toString("base64").replace(/=+$/, "");
}

const GRPC_MESSAGE_SAFE = /^[\x20-\x24\x26-\x7e]*$/;

/** grpc-message: UTF-8, with every byte outside printable ASCII, and "%" itself, as %XX. */
function percentEncodeGrpcMessage(message: string): string {
  if (GRPC_MESSAGE_SAFE.test(message)) return message;
  let encoded = "";
  for (const byte of Buffer.from(message, "utf8")) {
    encoded +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return encoded;
}

const TIMEOUT_UNIT_MS: Readonly<Record<string, number>> = {
  H: 3_600_000,
  M: 60_000,
  S: 1_000,
  m: 1,
  u: 0.001,
  n: 0.000_001,
};

/** Milliseconds from a grpc-timeout header ("250m", "5S"); undefined when there is none. */
export function parseGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  const unitMs = TIMEOUT_UNIT_MS[match?.[2] ?? ""];
  if (match === null || unitMs === undefined) throw refuse.badTimeout("grpc-timeout");
  return Number(match[1]) * unitMs;
}

/** Milliseconds from a connect-timeout-ms header (at most 10 digits); undefined when there is none. */
export function parseConnectTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,10}$/.test(value)) throw refuse.badTimeout("connect-timeout-ms");
  return Number(value);
}
