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
import type { RpcLabels } from "../api/rpc/types.js";
import { errorInfoOf, type RpcStatus, toRpcStatus } from "../api/status.js";
import { type ErrorReason, ServiceError } from "../app/errors.js";

/** Thrown while reading a request that the transport answers without calling the handler. */
export class Refusal extends Error {
  constructor(readonly status: RpcStatus) {
    super(status.message);
    this.name = "Refusal";
  }
}

function refusal(reason: ErrorReason, message: string): Refusal {
  return new Refusal(toRpcStatus(new ServiceError(reason, message)).status);
}

export const refuse = {
  malformed: (what: string) => refusal("MALFORMED_REQUEST", what),
  notAMessage: (method: DescMethod, format: "binary" | "json") =>
    refusal(
      "MALFORMED_REQUEST",
      format === "binary"
        ? `the request is not a valid ${method.input.typeName} in the protobuf binary format`
        : `the request is not valid JSON for ${method.input.typeName}`,
    ),
  tooLarge: (maxBytes: number) =>
    refusal("REQUEST_TOO_LARGE", `the request message is larger than ${maxBytes} bytes, the most this service accepts`),
  notOneMessage: () => refusal("NOT_ONE_MESSAGE", "a unary call carries exactly one request message; this one did not"),
  unknownMethod: (path: string) => refusal("UNKNOWN_METHOD", `no method ${path} on this server`),
  unsupportedEncoding: (encoding: string) =>
    refusal("UNSUPPORTED_ENCODING", `message encoding "${encoding}" is not supported; use identity or gzip`),
  unsupportedMediaType: (contentType: string) =>
    refusal(
      "UNSUPPORTED_MEDIA_TYPE",
      `content-type "${contentType}" is not served here; use application/grpc, application/grpc-web, ` +
        "application/proto or application/json",
    ),
  notPost: () => refusal("MALFORMED_REQUEST", "RPCs are sent with the POST method"),
  badTimeout: (header: string) => refusal("MALFORMED_REQUEST", `the ${header} header is not a valid timeout`),
  bodyTooSlow: (timeoutMs: number) =>
    refusal("DEADLINE_EXCEEDED", `the request did not arrive completely within ${timeoutMs} ms`),
  deadlinePassed: () => refusal("DEADLINE_EXCEEDED", "the deadline passed before the request arrived completely"),
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
