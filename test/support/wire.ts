// Raw clients for the port, below any RPC library: send exactly these headers and bytes over
// HTTP/2 or HTTP/1.1, and read the answer back as one shape whatever the protocol (gRPC status in
// headers or trailers, gRPC-Web trailer frame, Connect JSON error), with the ErrorInfo decoded.
// The edge, fuzz and abuse suites use them to send what no well-behaved client would.

import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { codeFromString } from "@connectrpc/connect/protocol-connect";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";

export type WireFamily = "grpc" | "grpc-web" | "connect";

export interface WireAnswer {
  /** HTTP status, or 0 when the stream was reset or the connection closed before an answer. */
  readonly httpStatus: number;
  /** gRPC code (0 = OK), or undefined when the answer carries none. */
  readonly code: number | undefined;
  readonly message: string;
  readonly errorInfo: ErrorInfo | undefined;
  readonly headers: Record<string, string>;
  /** The HTTP/2 RST_STREAM code the stream closed with (0 = NO_ERROR). */
  readonly rstCode: number;
  /** What the client stack said when the stream failed, if it did. */
  readonly clientError?: string;
  readonly body: Buffer;
}

/** Which protocol family a Content-Type belongs to, as the client reads the answer. */
export function familyOf(contentType: string): WireFamily {
  const base = contentType.split(";")[0]?.trim().toLowerCase() ?? "";
  if (base.startsWith("application/grpc-web")) return "grpc-web";
  if (base.startsWith("application/grpc")) return "grpc";
  return "connect";
}

export function envelope(message: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

function flatten(headers: http2.IncomingHttpHeaders | http.IncomingHttpHeaders): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    record[name] = Array.isArray(value) ? value.join(", ") : String(value);
  }
  return record;
}

function errorInfoFromDetailsBin(value: string | undefined): ErrorInfo | undefined {
  if (value === undefined) return undefined;
  for (const detail of fromBinary(StatusSchema, Buffer.from(value, "base64")).details) {
    const info = anyUnpack(detail, ErrorInfoSchema);
    if (info !== undefined) return info;
  }
  return undefined;
}

function decodeGrpcMessage(value: string | undefined): string {
  if (value === undefined) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The gRPC-Web trailer frame (flag 0x80) at the end of a body, as lower-case headers. */
function grpcWebTrailers(body: Buffer): Record<string, string> {
  let offset = 0;
  const trailers: Record<string, string> = {};
  while (offset + 5 <= body.length) {
    const flags = body[offset] as number;
    const length = body.readUInt32BE(offset + 1);
    const data = body.subarray(offset + 5, offset + 5 + length);
    if ((flags & 0x80) !== 0) {
      for (const line of data.toString("utf8").split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) trailers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
    }
    offset += 5 + length;
  }
  return trailers;
}

/** Reads an answer in the protocol family of the request. */
export function interpret(
  family: WireFamily,
  httpStatus: number,
  headers: Record<string, string>,
  trailers: Record<string, string>,
  body: Buffer,
  rstCode = 0,
): WireAnswer {
  const base = { httpStatus, headers: { ...headers, ...trailers }, rstCode, body };
  if (httpStatus === 0) return { ...base, code: undefined, message: "", errorInfo: undefined };
  if (family !== "connect" || headers["grpc-status"] !== undefined) {
    const status = { ...(family === "grpc-web" ? grpcWebTrailers(body) : {}), ...trailers, ...headers };
    const code = status["grpc-status"] === undefined ? undefined : Number(status["grpc-status"]);
    return {
      ...base,
      code,
      message: decodeGrpcMessage(status["grpc-message"]),
      errorInfo: errorInfoFromDetailsBin(status["grpc-status-details-bin"]),
    };
  }
  if (httpStatus === 200) return { ...base, code: 0, message: "", errorInfo: undefined };
  try {
    const error = JSON.parse(body.toString("utf8")) as {
      code?: string;
      message?: string;
      details?: { type?: string; value?: string }[];
    };
    const detail = error.details?.find((each) => each.type === ErrorInfoSchema.typeName);
    return {
      ...base,
      code: codeFromString(error.code ?? ""),
      message: error.message ?? "",
      errorInfo:
        detail?.value === undefined ? undefined : fromBinary(ErrorInfoSchema, Buffer.from(detail.value, "base64")),
    };
  } catch {
    return { ...base, code: undefined, message: body.toString("utf8").slice(0, 200), errorInfo: undefined };
  }
}

export interface WireRequest {
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
  /** Defaults to the family of the content-type header. */
  readonly family?: WireFamily;
}

/** One request on an HTTP/2 session; resolves when the stream closes, or after `timeoutMs` (rejects). */
export function h2Request(
  session: http2.ClientHttp2Session,
  request: WireRequest,
  timeoutMs = 10_000,
): Promise<WireAnswer> {
  const { stream, answer } = h2Open(session, { ...request, body: Buffer.alloc(0) }, timeoutMs);
  stream.end(request.body);
  return answer;
}

/**
 * Opens a stream and writes `request.body` without ending it: the caller may write more, slowly,
 * or never. `answer` resolves when the stream closes.
 */
export function h2Open(
  session: http2.ClientHttp2Session,
  request: WireRequest,
  timeoutMs = 10_000,
): { readonly stream: http2.ClientHttp2Stream; readonly answer: Promise<WireAnswer> } {
  const family = request.family ?? familyOf(request.headers["content-type"] ?? "");
  const stream = session.request({ ":method": "POST", ":path": request.path, ...request.headers });
  const answer = new Promise<WireAnswer>((resolve, reject) => {
    let headers: Record<string, string> = {};
    let trailers: Record<string, string> = {};
    let status = 0;
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error(`no answer within ${timeoutMs} ms on ${request.path}`));
    }, timeoutMs);
    stream.on("response", (received) => {
      status = Number(received[":status"] ?? 0);
      headers = flatten(received);
    });
    stream.on("trailers", (received) => {
      trailers = flatten(received);
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    let clientError: string | undefined;
    stream.on("error", (error) => {
      clientError = error.message;
    });
    stream.on("close", () => {
      clearTimeout(timer);
      const answer = interpret(family, status, headers, trailers, Buffer.concat(chunks), stream.rstCode ?? 0);
      resolve(clientError === undefined ? answer : { ...answer, clientError });
    });
  });
  if (request.body.length > 0) stream.write(request.body);
  return { stream, answer };
}

/** One request over HTTP/1.1 with node's client (keep-alive when an agent is given). */
export function http1Request(
  port: number,
  request: WireRequest,
  agent: http.Agent | undefined,
  timeoutMs = 10_000,
): Promise<WireAnswer> {
  const family = request.family ?? familyOf(request.headers["content-type"] ?? "");
  return new Promise((resolve, reject) => {
    const outgoing = http.request(
      { host: "127.0.0.1", port, method: "POST", path: request.path, headers: request.headers, agent },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          clearTimeout(timer);
          resolve(
            interpret(
              family,
              response.statusCode ?? 0,
              flatten(response.headers),
              flatten(response.trailers),
              Buffer.concat(chunks),
            ),
          );
        });
        response.on("error", reject);
      },
    );
    const timer = setTimeout(() => {
      outgoing.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms on ${request.path}`));
    }, timeoutMs);
    outgoing.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    outgoing.end(request.body);
  });
}

/**
 * Writes raw bytes on a new TCP connection and collects what comes back until the server closes
 * it or `waitMs` passes. `closed` says whether the server closed the connection.
 */
export function tcpExchange(
  port: number,
  bytes: Buffer | string,
  waitMs = 5_000,
): Promise<{ readonly text: string; readonly closed: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString("latin1"), closed });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => finish(true));
    socket.on("close", () => finish(true));
    socket.write(bytes);
  });
}

/** Resolves when the server closes this socket; rejects if it is still open after `timeoutMs`. */
export function closedWithin(socket: net.Socket, timeoutMs: number): Promise<void> {
  // Reads (and drops) what the server sends: a paused socket never sees the server's FIN.
  socket.resume();
  return new Promise((resolve, reject) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
