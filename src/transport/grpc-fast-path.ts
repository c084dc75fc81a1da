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
// or, for an error before any message, in the only HEADERS frame ("trailers-only"). Refusals follow
// the same rules as the connect edge's CheckedBody (request-body.ts), so that the same bad bytes
// get the same code and reason on every protocol.

import { constants, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import type { Message } from "@bufbuild/protobuf";
import type { Logger } from "pino";
import { requestIdFor } from "../api/request-id.js";
import { AdmissionTicket } from "../api/rpc/admission.js";
import type { RpcPipeline } from "../api/rpc/pipeline.js";
import type { RequestMeta, UnaryMethod } from "../api/rpc/types.js";
import { type RpcStatus, toRpcStatus } from "../api/status.js";
import { protocolOf } from "./connect-edge.js";
import type { PendingRead, ReadDeadlines, TransportLimits } from "./limits.js";
import { grpcStatusHeaders, parseGrpcTimeout, Refusal, refuse } from "./refusals.js";
import { peerSpiffeIdOf } from "./tls.js";

const GRPC_CONTENT_TYPES: ReadonlySet<string> = new Set(["application/grpc", "application/grpc+proto"]);
const ACCEPTED_ENCODINGS = "identity,gzip";
const PREFIX_BYTES = 5;
const COMPRESSED_FLAG = 0b1;
const OK_TRAILERS: OutgoingHttpHeaders = { "grpc-status": "0" };

const gunzipAsync = promisify(gunzip);

export class GrpcFastPath {
  constructor(
    readonly pipeline: RpcPipeline,
    readonly maxRequestBytes: number,
    readonly limits: TransportLimits,
    readonly readDeadlines: ReadDeadlines,
    readonly logger: Logger,
  ) {}

  /**
   * The unary pipeline method that this stream calls with binary gRPC, or undefined when it is not
   * for this path (streaming RPCs, other protocols: connect-node serves them).
   */
  methodFor(headers: IncomingHttpHeaders): UnaryMethod | undefined {
    const contentType = headers["content-type"];
    const path = headers[":path"];
    if (headers[":method"] !== "POST" || contentType === undefined || path === undefined) return undefined;
    if (!GRPC_CONTENT_TYPES.has(contentType)) {
      // "application/grpc; charset=utf-8" and other spellings are gRPC with protobuf too.
      const spoken = protocolOf(contentType);
      if (spoken?.name !== "grpc" || !spoken.binary) return undefined;
    }
    const method = this.pipeline.lookup(path);
    return method?.kind === "unary" ? method : undefined;
  }

  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: UnaryMethod): void {
    // An RST_STREAM with an error code makes the stream emit "error"; without a listener that
    // would crash the process. The stream is destroyed either way, and answers check for that.
    stream.on("error", ignoreStreamError);
    let call: UnaryCall;
    try {
      call = new UnaryCall(this, stream, headers, method);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.refuse(stream, headers, method, error.status, 0);
      return;
    }
    // Admission control, once the headers name the caller and before any of the body is read.
    const ticket = this.pipeline.enter(call);
    if (!(ticket instanceof AdmissionTicket)) {
      this.refuse(stream, headers, method, ticket, 0);
      return;
    }
    call.admitted(ticket);
    (stream as CallStream)[CALL] = call;
    stream.on("data", onRequestData);
    stream.on("end", onRequestEnd);
    // Cancellation (lifecycle): a stream that closes before the answer (RST_STREAM from the
    // client, a dropped connection, shutdown destroying the session) aborts the call's signal.
    stream.on("close", onStreamClose);
  }

  /** Answers without the pipeline, and stops the client from sending the rest of its request. */
  refuse(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    method: UnaryMethod,
    status: RpcStatus,
    seconds: number,
  ): void {
    const requestId = requestIdFor(single(headers, "x-request-id"));
    respondWithFailure(stream, status, requestId);
    // RST_STREAM(NO_ERROR) after a complete response asks the client to stop sending (RFC 9113
    // 8.1); node sends it once the response has been flushed.
    if (!stream.destroyed && !stream.readableEnded) stream.close(constants.NGHTTP2_NO_ERROR);
    this.pipeline.refused(method.labels, "grpc", status, requestId, seconds);
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

function onStreamClose(this: ServerHttp2Stream): void {
  (this as CallStream)[CALL].streamClosed();
}

function ignoreStreamError(): void {}

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/** One unary RPC on one stream; it is also the RequestMeta that the pipeline reads. */
class UnaryCall implements RequestMeta, PendingRead {
  readonly protocol = "grpc";
  readonly deadline: number | undefined;
  readonly readBy: number;
  private readonly receivedAt: number;
  /** Cancellation (lifecycle): told when the stream closes before the call is answered. */
  private clientGone: (() => void) | undefined;
  private closedUnanswered = false;
  private answered = false;
  private readonly gzipped: boolean;
  private chunks: Buffer[] = [];
  private receivedBytes = 0;
  /** Where the next length prefix starts, and how many messages have begun. */
  private nextPrefixAt = 0;
  private messages = 0;
  private refused = false;
  private ticket: AdmissionTicket | undefined;

  constructor(
    private readonly fastPath: GrpcFastPath,
    private readonly stream: ServerHttp2Stream,
    private readonly headers: IncomingHttpHeaders,
    private readonly method: UnaryMethod,
  ) {
    this.receivedAt = Date.now();
    const encoding = single(headers, "grpc-encoding");
    if (encoding !== undefined && encoding !== "identity" && encoding !== "gzip") {
      throw refuse.unsupportedEncoding(encoding);
    }
    this.gzipped = encoding === "gzip";
    // Counted from the stream's first byte, as the client counts it.
    const timeoutMs = parseGrpcTimeout(single(headers, "grpc-timeout"));
    this.deadline = timeoutMs === undefined ? undefined : this.receivedAt + timeoutMs;
    this.readBy = Math.min(
      this.deadline ?? Number.POSITIVE_INFINITY,
      this.receivedAt + fastPath.limits.bodyReadTimeoutMs,
    );
  }

  /** Past admission: the body is read from now on. */
  admitted(ticket: AdmissionTicket): void {
    this.ticket = ticket;
    this.fastPath.readDeadlines.add(this);
  }

  header(name: string): string | undefined {
    return single(this.headers, name);
  }

  peerSpiffeId(): string | undefined {
    return peerSpiffeIdOf(this.stream.session?.socket);
  }

  onClientGone(listener: () => void): void {
    if (this.closedUnanswered) listener();
    else this.clientGone = listener;
  }

  streamClosed(): void {
    this.ticket?.abandon();
    if (this.answered) return;
    this.closedUnanswered = true;
    this.clientGone?.();
  }

  receive(chunk: Buffer): void {
    if (this.refused) return;
    this.chunks.push(chunk);
    this.receivedBytes += chunk.length;
    try {
      this.checkPrefixes();
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.refuseNow(error);
    }
  }

  /** The body did not arrive in time: answered now, whatever the client is still sending. */
  expire(now: number): void {
    // A stream that the client reset is gone: nothing to answer, and not a refusal.
    if (this.refused || this.stream.destroyed) return;
    const expired =
      this.deadline !== undefined && this.deadline <= now
        ? refuse.deadlinePassed()
        : refuse.bodyTooSlow(this.fastPath.limits.bodyReadTimeoutMs);
    this.refuseNow(expired);
  }

  async complete(): Promise<void> {
    this.fastPath.readDeadlines.delete(this);
    if (this.refused) return;
    try {
      let request: Message;
      try {
        request = await this.decode();
      } catch (error) {
        if (!(error instanceof Refusal)) throw error;
        this.refuseNow(error);
        return;
      }
      const result = await this.fastPath.pipeline.invoke(this.method, request, this, this.ticket);
      this.answered = true;
      if (result.ok) {
        respondWithMessage(this.stream, this.method.encode(result.response), result.requestId);
      } else {
        respondWithFailure(this.stream, result.status, result.requestId);
      }
    } catch (error) {
      this.fastPath.logger.error({ err: error, method: this.method.path }, "gRPC fast path failed");
      if (this.stream.headersSent) this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      else respondWithFailure(this.stream, toRpcStatus(error).status, requestIdFor(this.header("x-request-id")));
    }
  }

  private refuseNow(refusal: Refusal): void {
    this.ticket?.abandon();
    this.refused = true;
    this.chunks = [];
    this.fastPath.readDeadlines.delete(this);
    const seconds = (Date.now() - this.receivedAt) / 1000;
    this.fastPath.refuse(this.stream, this.headers, this.method, refusal.status, seconds);
  }

  /**
   * Reads each length prefix as soon as its five bytes are in: a declared-large message is refused
   * before its bytes arrive, and a second message before it is buffered whole.
   */
  private checkPrefixes(): void {
    while (this.receivedBytes >= this.nextPrefixAt + PREFIX_BYTES) {
      const flags = this.byteAt(this.nextPrefixAt);
      let length = 0;
      for (let index = 1; index < PREFIX_BYTES; index++) length = length * 256 + this.byteAt(this.nextPrefixAt + index);
      if (length > this.fastPath.maxRequestBytes) throw refuse.tooLarge(this.fastPath.maxRequestBytes);
      if ((flags & ~COMPRESSED_FLAG) !== 0) throw refuse.malformed("a message carries flags other than compressed");
      this.messages++;
      this.nextPrefixAt += PREFIX_BYTES + length;
      if (this.messages > 1 && this.receivedBytes >= this.nextPrefixAt) throw refuse.notOneMessage();
    }
  }

  private byteAt(offset: number): number {
    let skipped = 0;
    for (const chunk of this.chunks) {
      if (offset < skipped + chunk.length) return chunk[offset - skipped] as number;
      skipped += chunk.length;
    }
    throw new RangeError("offset past the received bytes");
  }

  private async decode(): Promise<Message> {
    if (this.receivedBytes !== this.nextPrefixAt) {
      throw refuse.malformed("the request ends inside a length-prefixed message");
    }
    if (this.messages !== 1) throw refuse.notOneMessage();
    const body = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = [];
    let message: Uint8Array = body.subarray(PREFIX_BYTES);
    if (((body[0] as number) & COMPRESSED_FLAG) !== 0) message = await this.decompress(message);
    try {
      return this.method.decode(message);
    } catch {
      throw refuse.notAMessage(this.method.method, "binary");
    }
  }

  private async decompress(message: Uint8Array): Promise<Buffer> {
    if (!this.gzipped) throw refuse.malformed("a message is flagged compressed but no encoding was named");
    try {
      return await gunzipAsync(message, { maxOutputLength: this.fastPath.maxRequestBytes });
    } catch (error) {
      if (error instanceof RangeError) throw refuse.tooLarge(this.fastPath.maxRequestBytes);
      throw refuse.malformed("the request message is not valid gzip");
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

function respondWithFailure(stream: ServerHttp2Stream, status: RpcStatus, requestId: string): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond(
    {
      ":status": 200,
      "content-type": "application/grpc",
      "grpc-accept-encoding": ACCEPTED_ENCODINGS,
      ...grpcStatusHeaders(status),
      "x-request-id": requestId,
    },
    { endStream: true },
  );
}

function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return typeof value === "string" ? value : undefined;
}
