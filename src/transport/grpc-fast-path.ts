// The gRPC protocol for the pipeline's unary RPCs, served straight on the HTTP/2 stream.
//
// connect-node answers gRPC at a fraction of the rate of @grpc/grpc-js (docs/performance.md): per
// request it builds AbortControllers, Headers objects and a chain of async iterables. The RPCs that
// carry the traffic are unary, so this path reads the one length-prefixed message, decodes it,
// hands it to the pipeline and writes the answer, with none of that: the only per-request objects
// are the call itself (which is also the RequestMeta), its buffers and the response headers, and
// the stream listeners are shared functions that find the call on the stream.
//
// Framing, limits, gzip and the trailers-only refusal come from envelope.ts, which the connect
// edge's CheckedBody (request-body.ts) uses too, so that the same bad bytes get the same code,
// reason and words on every protocol.

import { constants, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import type { Message } from "@bufbuild/protobuf";
import type { Logger } from "pino";
import { requestIdFor } from "../api/request-id.js";
import { AdmissionTicket } from "../api/rpc/admission.js";
import type { RpcPipeline } from "../api/rpc/pipeline.js";
import type { RequestMeta, UnaryMethod } from "../api/rpc/types.js";
import { type RpcStatus, toRpcStatus } from "../api/status.js";
import { protocolOf } from "./connect-edge.js";
import {
  ACCEPTED_ENCODINGS,
  type Envelope,
  EnvelopeReader,
  frame,
  openEnvelope,
  respondTrailersOnly,
} from "./envelope.js";
import type { PendingRead, ReadDeadlines, TransportLimits } from "./limits.js";
import { type PortObserver, parseGrpcTimeout, Refusal, refuse, waitEnded } from "./refusals.js";
import type { CallerStreamShares } from "./stream-shares.js";
import { peerSpiffeIdOf } from "./tls.js";

const GRPC_CONTENT_TYPES: ReadonlySet<string> = new Set(["application/grpc", "application/grpc+proto"]);
const OK_TRAILERS: OutgoingHttpHeaders = { "grpc-status": "0" };
/**
 * `endStream` is given though it is the default: node:http2's respond() copies the options and sets
 * `endStream` on the copy. Added there as a new property, it gave each call's copy a hidden class of
 * its own (the copy's is detached from V8's transition tree), which young collections keep alive
 * until a mark-compact, and with it the call's objects (docs/performance.md, "Hidden classes of
 * their own").
 */
const RESPOND_WITH_TRAILERS = { endStream: false, waitForTrailers: true } as const;

export class GrpcFastPath {
  constructor(
    readonly pipeline: RpcPipeline,
    readonly maxRequestBytes: number,
    readonly limits: TransportLimits,
    readonly readDeadlines: ReadDeadlines,
    readonly logger: Logger,
    { observer, shares }: { readonly observer?: PortObserver; readonly shares?: CallerStreamShares } = {},
  ) {
    this.observer = observer;
    this.shares = shares;
  }

  readonly observer: PortObserver | undefined;
  /** Told each call's caller, to hold a one-caller connection to its share (stream-shares.ts). */
  private readonly shares: CallerStreamShares | undefined;

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
      this.refuse(stream, headers, method, error, 0);
      return;
    }
    // Admission control, once the headers name the caller and before any of the body is read.
    const ticket = this.pipeline.enter(call);
    this.shares?.called(stream.session, ticket.caller);
    if (!(ticket instanceof AdmissionTicket)) {
      this.refuse(stream, headers, method, new Refusal(ticket.status), 0);
      return;
    }
    (stream as CallStream)[CALL] = call;
    // Cancellation (lifecycle): a stream that closes before the answer (RST_STREAM from the
    // client, a dropped connection, shutdown destroying the session) aborts the call's signal,
    // and takes a call that waits for room out of its queue.
    stream.on("close", onStreamClose);
    call.entered(ticket);
  }

  /** Answers without the pipeline, and stops the client from sending the rest of its request. */
  refuse(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    method: UnaryMethod,
    refusal: Refusal,
    seconds: number,
  ): void {
    const requestId = requestIdFor(single(headers, "x-request-id"));
    respondWithFailure(stream, refusal.status, requestId);
    this.pipeline.refused(method.labels, "grpc", refusal.status, requestId, seconds);
    if (refusal.portReason !== undefined) this.observer?.portRefused(refusal.portReason);
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
  // The closed stream lets go of the call: node:http2 keeps its streams in a Map per connection,
  // whose replaced tables young collections take for live (runtime/under-way.ts), and through the
  // stream they kept the call's request, response and pipeline objects until a mark-compact.
  (this as Partial<CallStream>)[CALL] = undefined;
}

function ignoreStreamError(): void {}

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/** One unary RPC on one stream; it is also the RequestMeta that the pipeline reads. */
class UnaryCall implements RequestMeta, PendingRead {
  readonly protocol = "grpc";
  readonly deadline: number | undefined;
  /** While the call waits for room, the end of its wait; then when its body must have arrived. */
  readBy: number;
  private readonly receivedAt: number;
  /** Cancellation (lifecycle): told when the stream closes before the call is answered. */
  private clientGone: (() => void) | undefined;
  private closedUnanswered = false;
  private answered = false;
  private readonly gzipped: boolean;
  private readonly envelopes: EnvelopeReader;
  /** The request's one message, once it has arrived whole. */
  private envelope: Envelope | undefined;
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
    this.envelopes = new EnvelopeReader(fastPath.maxRequestBytes, true);
    // Counted from the stream's first byte, as the client counts it.
    const timeoutMs = parseGrpcTimeout(single(headers, "grpc-timeout"));
    this.deadline = timeoutMs === undefined ? undefined : this.receivedAt + timeoutMs;
    this.readBy = this.deadline ?? Number.POSITIVE_INFINITY;
  }

  /**
   * Past admission: the body is read once the ticket holds a place. Until then the stream is not
   * read (what arrives stays in its buffer, then in the client, by flow control) and the wait is
   * ended at `waitUntil`.
   */
  entered(ticket: AdmissionTicket): void {
    this.ticket = ticket;
    if (ticket.waiting) {
      this.readBy = this.fastPath.pipeline.waitUntil(this.deadline);
      this.fastPath.readDeadlines.add(this);
    }
    ticket.whenAdmitted(() => this.read());
  }

  /** Reads the body: it must have arrived within BODY_READ_TIMEOUT_MS from now (and the deadline). */
  private read(): void {
    this.readBy = Math.min(
      this.deadline ?? Number.POSITIVE_INFINITY,
      Date.now() + this.fastPath.limits.bodyReadTimeoutMs,
    );
    this.fastPath.readDeadlines.add(this);
    this.stream.on("data", onRequestData);
    this.stream.on("end", onRequestEnd);
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
    try {
      this.envelopes.push(chunk);
      for (let next = this.envelopes.next(); next !== undefined; next = this.envelopes.next()) this.envelope = next;
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.refuseNow(error);
    }
  }

  /** The wait for room, or then the body, did not end in time: answered now, whatever the client is still sending. */
  expire(now: number): void {
    // A stream that the client reset is gone: nothing to answer, and not a refusal.
    if (this.refused || this.stream.destroyed) return;
    if (this.ticket?.waiting) {
      this.refuseNow(waitEnded(this.ticket, this.deadline, now, this.fastPath.pipeline.overloaded));
    } else if (this.deadline !== undefined && this.deadline <= now) {
      this.refuseNow(refuse.deadlinePassed());
    } else {
      this.refuseNow(refuse.bodyTooSlow(this.fastPath.limits.bodyReadTimeoutMs));
    }
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
    this.envelopes.release();
    this.envelope = undefined;
    this.fastPath.readDeadlines.delete(this);
    const seconds = (Date.now() - this.receivedAt) / 1000;
    this.fastPath.refuse(this.stream, this.headers, this.method, refusal, seconds);
  }

  private async decode(): Promise<Message> {
    this.envelopes.end();
    const envelope = this.envelope as Envelope;
    this.envelope = undefined;
    const message = await openEnvelope(envelope, this.gzipped, this.fastPath.maxRequestBytes);
    try {
      return this.method.decode(message);
    } catch {
      throw refuse.notAMessage(this.method.method, "binary");
    }
  }
}

function respondWithMessage(stream: ServerHttp2Stream, message: Uint8Array, requestId: string): void {
  // The client may have cancelled (RST_STREAM) while the pipeline worked: nothing to answer.
  if (stream.destroyed || stream.closed) return;
  stream.respond(
    {
      ":status": 200,
      "content-type": "application/grpc",
      "grpc-accept-encoding": ACCEPTED_ENCODINGS,
      "x-request-id": requestId,
    },
    RESPOND_WITH_TRAILERS,
  );
  stream.once("wantTrailers", sendOkTrailers);
  stream.end(frame(message));
}

function respondWithFailure(stream: ServerHttp2Stream, status: RpcStatus, requestId: string): void {
  respondTrailersOnly(stream, "application/grpc", status, requestId);
}

function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return typeof value === "string" ? value : undefined;
}
