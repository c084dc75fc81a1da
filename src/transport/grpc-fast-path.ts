// The gRPC protocol for the pipeline's unary RPCs, served straight on the HTTP/2 stream.
//
// connect-node answers gRPC at about a sixth of the rate of @grpc/grpc-js on this machine: per
// request it builds AbortControllers, Headers objects and a chain of async iterables. The RPCs that
// carry the traffic are unary, so this path reads the one length-prefixed message, decodes it,
// hands it to the pipeline and writes the answer, with none of that: the only per-request objects
// are the call itself (which is also the RequestMeta), its buffers and the response headers, and
// the stream listeners are shared functions that find the call on the stream.
//
// Wire format (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): a message is a
// 1-byte compressed flag, a 4-byte big-endian length and the bytes; the status travels in trailers,
// or, for an error before any message, in the only HEADERS frame ("trailers-only").

import { constants, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import { create, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { Logger } from "pino";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { requestIdFor } from "../api/request-id.js";
import { codeName, type RegisteredMethod, type RequestMeta, type RpcPipeline } from "../api/rpc.js";
import { errorInfoOf, type RpcStatus, toRpcStatus } from "../api/status.js";
import { type ErrorReason, ServiceError } from "../app/errors.js";
import { peerSpiffeIdOf } from "./tls.js";

const GRPC_CONTENT_TYPES: ReadonlySet<string> = new Set(["application/grpc", "application/grpc+proto"]);
const ACCEPTED_ENCODINGS = "identity,gzip";
const PREFIX_BYTES = 5;
const COMPRESSED_FLAG = 0b1;
const OK_TRAILERS: OutgoingHttpHeaders = { "grpc-status": "0" };

const gunzipAsync = promisify(gunzip);

/** A status to answer with; `errorInfo` is absent only for protocol-level refusals. */
interface GrpcFailure {
  readonly code: Code;
  readonly message: string;
  readonly reason: ErrorReason | undefined;
  readonly errorInfo: ErrorInfo | undefined;
}

/** Thrown while reading a request that this path answers without calling the pipeline. */
class Refusal extends Error {
  constructor(readonly failure: GrpcFailure) {
    super(failure.message);
  }
}

function failureOf(status: RpcStatus): GrpcFailure {
  return { code: status.code, message: status.message, reason: status.reason, errorInfo: errorInfoOf(status) };
}

function refusal(reason: ErrorReason, message: string): Refusal {
  return new Refusal(failureOf(toRpcStatus(new ServiceError(reason, message)).status));
}

export class GrpcFastPath {
  /** The most bytes that one framed request may take on the wire. */
  readonly maxFramedBytes: number;

  constructor(
    readonly pipeline: RpcPipeline,
    readonly maxRequestBytes: number,
    readonly logger: Logger,
  ) {
    this.maxFramedBytes = PREFIX_BYTES + maxRequestBytes;
  }

  /** The pipeline method that this stream calls with binary gRPC, or undefined when it is not for this path. */
  methodFor(headers: IncomingHttpHeaders): RegisteredMethod | undefined {
    const contentType = headers["content-type"];
    const path = headers[":path"];
    if (headers[":method"] !== "POST" || contentType === undefined || path === undefined) return undefined;
    return GRPC_CONTENT_TYPES.has(contentType) ? this.pipeline.lookup(path) : undefined;
  }

  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: RegisteredMethod): void {
    // An RST_STREAM with an error code makes the stream emit "error"; without a listener that
    // would crash the process. The stream is destroyed either way, and answers check for that.
    stream.on("error", ignoreStreamError);
    let call: UnaryCall;
    try {
      call = new UnaryCall(this, stream, headers, method);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.refuse(stream, headers, method, error.failure);
      return;
    }
    (stream as CallStream)[CALL] = call;
    stream.on("data", onRequestData);
    stream.on("end", onRequestEnd);
  }

  /** Answers without the pipeline, and stops the client from sending the rest of its request. */
  refuse(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: RegisteredMethod, failure: GrpcFailure) {
    const requestId = requestIdFor(single(headers, "x-request-id"));
    respondWithFailure(stream, failure, requestId);
    // RST_STREAM(NO_ERROR) after a complete response asks the client to stop sending (RFC 9113
    // 8.1); node sends it once the response has been flushed.
    if (!stream.destroyed && !stream.readableEnded) stream.close(constants.NGHTTP2_NO_ERROR);
    this.logger.info(
      { method: method.path, protocol: "grpc", code: codeName(failure.code), reason: failure.reason, requestId },
      "rpc refused by the transport",
    );
  }
}

const CALL = Symbol("grpcUnaryCall");
type CallStream = ServerHttp2Stream & { [CALL]: UnaryCall };

function onRequestData(this: ServerHttp2Stream, chunk: Buffer): void {
  (this as CallStream)[CALL].receive(chunk);
}

function onRequestEnd(this: ServerHttp2Stream): void {
  void (this as CallStream)[CALL].complete();
}

function ignoreStreamError(): void {}

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/** One unary RPC on one stream; it is also the RequestMeta that the pipeline reads. */
class UnaryCall implements RequestMeta {
  readonly protocol = "grpc";
  readonly deadline: number | undefined;
  private readonly gzipped: boolean;
  private chunks: Buffer[] = [];
  private receivedBytes = 0;
  private refused = false;

  constructor(
    private readonly fastPath: GrpcFastPath,
    private readonly stream: ServerHttp2Stream,
    private readonly headers: IncomingHttpHeaders,
    private readonly method: RegisteredMethod,
  ) {
    const encoding = single(headers, "grpc-encoding");
    if (encoding !== undefined && encoding !== "identity" && encoding !== "gzip") {
      throw new Refusal({
        code: Code.Unimplemented,
        message: `grpc-encoding "${encoding}" is not supported; use one of ${ACCEPTED_ENCODINGS}`,
        reason: undefined,
        errorInfo: undefined,
      });
    }
    this.gzipped = encoding === "gzip";
    const timeoutMs = parseGrpcTimeout(single(headers, "grpc-timeout"));
    this.deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
  }

  header(name: string): string | undefined {
    return single(this.headers, name);
  }

  peerSpiffeId(): string | undefined {
    return peerSpiffeIdOf(this.stream.session?.socket);
  }

  receive(chunk: Buffer): void {
    if (this.refused) return;
    this.receivedBytes += chunk.length;
    if (this.receivedBytes > this.fastPath.maxFramedBytes) {
      this.refused = true;
      this.chunks = [];
      const tooLarge = refusal(
        "REQUEST_TOO_LARGE",
        `the request message is larger than ${this.fastPath.maxRequestBytes} bytes`,
      );
      this.fastPath.refuse(this.stream, this.headers, this.method, tooLarge.failure);
      return;
    }
    this.chunks.push(chunk);
  }

  async complete(): Promise<void> {
    if (this.refused) return;
    try {
      let request: Message;
      try {
        request = await this.decode();
      } catch (error) {
        if (!(error instanceof Refusal)) throw error;
        this.fastPath.refuse(this.stream, this.headers, this.method, error.failure);
        return;
      }
      const result = await this.fastPath.pipeline.invoke(this.method, request, this);
      if (result.ok) {
        respondWithMessage(this.stream, toBinary(this.method.method.output, result.response), result.requestId);
      } else {
        respondWithFailure(this.stream, failureOf(result.status), result.requestId);
      }
    } catch (error) {
      this.fastPath.logger.error({ err: error, method: this.method.path }, "gRPC fast path failed");
      if (this.stream.headersSent) this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      else
        respondWithFailure(
          this.stream,
          failureOf(toRpcStatus(error).status),
          requestIdFor(this.header("x-request-id")),
        );
    }
  }

  private async decode(): Promise<Message> {
    const body = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = [];
    if (body.length < PREFIX_BYTES) throw refusal("INVALID_ARGUMENT", "the request carries no message");
    const messageBytes = body.readUInt32BE(1);
    if (body.length !== PREFIX_BYTES + messageBytes) {
      throw refusal("INVALID_ARGUMENT", "a unary request carries exactly one length-prefixed message");
    }
    let message: Uint8Array = body.subarray(PREFIX_BYTES);
    if (((body[0] as number) & COMPRESSED_FLAG) !== 0) message = await this.decompress(message);
    try {
      return fromBinary(this.method.method.input, message);
    } catch {
      throw refusal("INVALID_ARGUMENT", `the request is not a valid ${this.method.method.input.typeName}`);
    }
  }

  private async decompress(message: Uint8Array): Promise<Buffer> {
    if (!this.gzipped)
      throw refusal("INVALID_ARGUMENT", "the message is flagged compressed but grpc-encoding is identity");
    try {
      return await gunzipAsync(message, { maxOutputLength: this.fastPath.maxRequestBytes });
    } catch (error) {
      if (error instanceof RangeError) {
        throw refusal("REQUEST_TOO_LARGE", `the request message is larger than ${this.fastPath.maxRequestBytes} bytes`);
      }
      throw refusal("INVALID_ARGUMENT", "the request message is not valid gzip");
    }
  }
}

function respondWithMessage(stream: ServerHttp2Stream, message: Uint8Array, requestId: string): void {
  // The client may have cancelled (RST_STREAM) while the pipeline worked: nothing to answer.
  if (stream.destroyed || stream.closed) return;
  const frame = Buffer.allocUnsafe(PREFIX_BYTES + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, PREFIX_BYTES);
  stream.respond(
    {
      ":status": 200,
      "content-type": "application/grpc",
      "grpc-accept-encoding": ACCEPTED_ENCODINGS,
      "x-request-id": requestId,
    },
    { waitForTrailers: true },
  );
  stream.once("wantTrailers", sendOkTrailers);
  stream.end(frame);
}

function respondWithFailure(stream: ServerHttp2Stream, failure: GrpcFailure, requestId: string): void {
  if (stream.destroyed || stream.closed) return;
  const headers: OutgoingHttpHeaders = {
    ":status": 200,
    "content-type": "application/grpc",
    "grpc-accept-encoding": ACCEPTED_ENCODINGS,
    "grpc-status": String(failure.code),
    "grpc-message": percentEncodeGrpcMessage(failure.message),
    "x-request-id": requestId,
  };
  if (failure.errorInfo !== undefined) {
    headers["grpc-status-details-bin"] = statusDetails(failure.code, failure.message, failure.errorInfo);
  }
  stream.respond(headers, { endStream: true });
}

/** A google.rpc.Status carrying the ErrorInfo, base64 without padding as the spec asks of senders. */
function statusDetails(code: Code, message: string, errorInfo: ErrorInfo): string {
  const status = create(StatusSchema, { code, message, details: [anyPack(ErrorInfoSchema, errorInfo)] });
  return Buffer.from(toBinary(StatusSchema, status)).toString("base64").replace(/=+$/, "");
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
function parseGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  const unitMs = TIMEOUT_UNIT_MS[match?.[2] ?? ""];
  if (match === null || unitMs === undefined) {
    throw refusal("INVALID_ARGUMENT", `grpc-timeout "${value}" is not 1-8 digits and one of H, M, S, m, u, n`);
  }
  return Number(match[1]) * unitMs;
}

function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return typeof value === "string" ? value : undefined;
}
