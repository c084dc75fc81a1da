// Every request that the gRPC fast path does not take: Connect, gRPC-Web, gRPC with JSON, health
// and reflection, over HTTP/2 and HTTP/1.1. connect-node does the protocol work; this edge stands
// in front of it, in place of connectNodeAdapter, so that nothing a client sends can crash the
// process or reach connect-node in a shape that it would answer without an ErrorInfo:
// - the protocol is told from the Content-Type here (parameters such as "; charset=utf-8" allowed),
//   and connect-node is handed the canonical Content-Type;
// - an unknown method gets the answer its protocol names (gRPC: HTTP 200 and status 12);
// - timeouts, encodings and Content-Length are checked here, and the body is checked by
//   CheckedBody before connect-node parses it (see request-body.ts);
// - the request URL is built from the path alone: connect-node throws on a missing or malformed
//   Host/:authority, which nothing here needs;
// - every refusal is logged and counted once, and ends its stream cleanly (RST_STREAM NO_ERROR
//   after the answer on HTTP/2, Connection: close on HTTP/1.1) so that the connection lives on.

import type http from "node:http";
import http2 from "node:http2";
import {
  type ConnectRouter,
  type ContextValues,
  createConnectRouter,
  createContextKey,
  createContextValues,
} from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { compressionGzip, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import type { Logger } from "pino";
import { requestIdFor } from "../api/request-id.js";
import { AdmissionTicket } from "../api/rpc/admission.js";
import type { RpcPipeline } from "../api/rpc/pipeline.js";
import type { RpcStatus } from "../api/status.js";
import { respondTrailersOnly, trailersOnlyHeaders } from "./envelope.js";
import type { PendingRead, ReadDeadlines, TransportLimits } from "./limits.js";
import {
  grpcStatusHeaders,
  labelsOf,
  type PortObserver,
  parseConnectTimeout,
  parseGrpcTimeout,
  Refusal,
  refuse,
  retryPushbackHeader,
  toConnectError,
  UNKNOWN_METHOD_LABELS,
  waitEnded,
} from "./refusals.js";
import { CheckedBody } from "./request-body.js";
import { peerSpiffeIdOf } from "./tls.js";

export type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/** The ticket that admission gave a unary pipeline call, for the route to hand to the pipeline. */
export const ADMISSION_TICKET = createContextKey<AdmissionTicket | undefined>(undefined, { description: "admission" });

/** The client's deadline (epoch ms, counted from the request's first byte), for the routes. */
export const REQUEST_DEADLINE = createContextKey<number | undefined>(undefined, { description: "deadline" });

type ProtocolName = "grpc" | "grpc-web" | "connect";

interface Protocol {
  readonly name: ProtocolName;
  readonly binary: boolean;
  /** Connect streaming ("application/connect+proto"); the other protocols frame every call. */
  readonly connectStream: boolean;
  /** What connect-node is told the Content-Type is. */
  readonly contentType: string;
  readonly timeoutHeader: string;
  readonly encodingHeader: string;
}

function protocol(name: ProtocolName, binary: boolean, contentType: string, connectStream = false): Protocol {
  const timeoutHeader = name === "connect" ? "connect-timeout-ms" : "grpc-timeout";
  const encodingHeader =
    name !== "connect" ? "grpc-encoding" : connectStream ? "connect-content-encoding" : "content-encoding";
  return { name, binary, connectStream, contentType, timeoutHeader, encodingHeader };
}

const PROTOCOLS: ReadonlyMap<string, Protocol> = new Map([
  ["application/grpc", protocol("grpc", true, "application/grpc")],
  ["application/grpc+proto", protocol("grpc", true, "application/grpc")],
  ["application/grpc+json", protocol("grpc", false, "application/grpc+json")],
  ["application/grpc-web", protocol("grpc-web", true, "application/grpc-web+proto")],
  ["application/grpc-web+proto", protocol("grpc-web", true, "application/grpc-web+proto")],
  ["application/grpc-web+json", protocol("grpc-web", false, "application/grpc-web+json")],
  ["application/proto", protocol("connect", true, "application/proto")],
  ["application/json", protocol("connect", false, "application/json")],
  ["application/connect+proto", protocol("connect", true, "application/connect+proto", true)],
  ["application/connect+json", protocol("connect", false, "application/connect+json", true)],
]);

/** The protocol that a Content-Type names, parameters aside; undefined when it names none. */
export function protocolOf(contentType: string | undefined): Protocol | undefined {
  if (contentType === undefined) return undefined;
  const semicolon = contentType.indexOf(";");
  const base = (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
  return PROTOCOLS.get(base);
}

/** Request headers that the edge has dealt with and connect-node must not act on again. */
const CONSUMED_HEADERS: ReadonlySet<string> = new Set([
  "grpc-timeout",
  "connect-timeout-ms",
  "grpc-encoding",
  "content-encoding",
  "connect-content-encoding",
  "content-length",
  "content-type",
  "host",
  "connection",
  "keep-alive",
  "transfer-encoding",
]);

export interface ConnectEdgeOptions {
  readonly pipeline: RpcPipeline;
  readonly routes: (router: ConnectRouter) => void;
  readonly maxRequestBytes: number;
  readonly limits: TransportLimits;
  readonly readDeadlines: ReadDeadlines;
  readonly logger: Logger;
  /** Hears of the requests refused here. */
  readonly observer?: PortObserver;
  /** Values for the routes' HandlerContext, such as the TLS peer's identity. */
  readonly contextValues?: (request: NodeRequest) => ContextValues;
}

/** A request's path without its query (Connect GET requests carry their message there). */
export function pathOf(url: string): string {
  const query = url.indexOf("?");
  return query === -1 ? url : url.slice(0, query);
}

export class ConnectEdge {
  private readonly handlers = new Map<string, UniversalHandler>();

  constructor(private readonly options: ConnectEdgeOptions) {
    const router = createConnectRouter({ readMaxBytes: options.maxRequestBytes, acceptCompression: [compressionGzip] });
    options.routes(router);
    for (const handler of router.handlers) this.handlers.set(handler.requestPath, handler);
  }

  /** Serves one request; never throws, whatever the request holds. `receivedAt`: its first byte, epoch ms. */
  serve(request: NodeRequest, response: NodeResponse, receivedAt: number): void {
    try {
      this.dispatch(request, response, receivedAt);
    } catch (error) {
      this.options.logger.error({ err: error }, "connect edge failed on a request");
      abandon(request, response);
    }
  }

  private dispatch(request: NodeRequest, response: NodeResponse, receivedAt: number): void {
    const started = performance.now();
    const url = request.url ?? "";
    const path = pathOf(url);
    const handler = this.handlers.get(path);
    const labels = handler === undefined ? UNKNOWN_METHOD_LABELS : labelsOf(handler.method);
    // Decided here, so that refusals and the pipeline's answer carry the same request id.
    const requestId = requestIdFor(single(request.headers["x-request-id"]));
    request.headers["x-request-id"] = requestId;
    response.setHeader("x-request-id", requestId);
    const contentType = single(request.headers["content-type"]);
    const spoken = protocolOf(contentType);
    const refused = (error: Refusal, as: Protocol | undefined) => {
      this.options.pipeline.refused(labels, as?.name ?? "unknown", error.status, requestId, secondsSince(started));
      if (error.portReason !== undefined) this.options.observer?.portRefused(error.portReason);
      writeRefusal(request, response, as, error.status, requestId);
    };

    if (spoken === undefined || handler === undefined) {
      const refusal =
        spoken === undefined ? refuse.unsupportedMediaType(contentType ?? "") : refuse.unknownMethod(path);
      refused(refusal, spoken);
      return;
    }
    let head: RequestHead;
    try {
      head = readHead(request, handler, spoken, this.options.maxRequestBytes);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      refused(error, spoken);
      return;
    }
    const { timeoutMs, gzipped } = head;
    const deadline = timeoutMs === undefined ? undefined : receivedAt + timeoutMs;

    /** Hands the request to connect-node, its body checked as it is read. */
    const handle = (ticket: AdmissionTicket | undefined) => {
      // Counted from now: a call that waited for room was not read until now.
      const bodyReadBy = Date.now() + this.options.limits.bodyReadTimeoutMs;
      // A refusal found in the body is answered here at once, while the client may still be sending:
      // connect-node would answer it too, but only finishes once the client has stopped sending.
      let answeredHere = false;
      const onRefusal = (refusal: Refusal) => {
        if (response.headersSent) return; // a stream already under way: connect-node ends it
        answeredHere = true;
        refused(refusal, spoken);
      };
      const body = new CheckedBody(
        request,
        {
          method: handler.method,
          enveloped: spoken.name !== "connect" || spoken.connectStream,
          binary: spoken.binary,
          gzipped,
          maxMessageBytes: this.options.maxRequestBytes,
          // A streaming request (reflection) is read for as long as the stream lasts.
          readBy:
            handler.method.methodKind === "bidi_streaming"
              ? Number.POSITIVE_INFINITY
              : Math.min(deadline ?? Number.POSITIVE_INFINITY, bodyReadBy),
          readByIsDeadline: deadline !== undefined && deadline <= bodyReadBy,
          readTimeoutMs: this.options.limits.bodyReadTimeoutMs,
        },
        this.options.readDeadlines,
        onRefusal,
      );
      const universal: UniversalServerRequest = {
        httpVersion: request.httpVersion,
        method: "POST",
        // Built from the path alone: connect-node needs a URL, and nothing here needs the authority.
        url: `http://localhost${url}`,
        header: headersFor(request, spoken),
        body,
        signal: closeSignal(response),
        contextValues: (this.options.contextValues?.(request) ?? createContextValues())
          .set(REQUEST_DEADLINE, deadline)
          .set(ADMISSION_TICKET, ticket),
      };
      handler(universal)
        .then(async (answer) => {
          if (!answeredHere) return universalResponseToNodeResponse(answer, response);
          // Already answered: let connect-node's side of the call finish and let go of it.
          await answer.body?.[Symbol.asyncIterator]().return?.();
        })
        .then(
          () => {},
          (error: unknown) => {
            // The client went away, or the stream was reset: nothing is left to answer.
            this.options.logger.debug({ err: error, method: labels.path }, "could not finish the answer");
            abandon(request, response);
          },
        );
    };

    // Admission control for the pipeline's unary RPCs, before any of the body is read.
    const pipeline = this.options.pipeline;
    if (pipeline.lookup(path)?.kind !== "unary") {
      handle(undefined);
      return;
    }
    const ticket = pipeline.enter({
      header: (name) => single(request.headers[name]),
      peerSpiffeId: () => peerSpiffeIdOf(request.socket),
    });
    if (!(ticket instanceof AdmissionTicket)) {
      refused(new Refusal(ticket.status), spoken);
      return;
    }
    // Abandoned if the exchange ends before the pipeline ran the call (a refused body, a reset, the
    // client gone while the call waited for room).
    response.once("close", () => ticket.abandon());
    // Nothing of the body is read while the call waits for room; the wait ends at its deadline.
    const wait: PendingRead | undefined = ticket.waiting
      ? {
          readBy: pipeline.waitUntil(deadline),
          expire(now) {
            if (ticket.waiting) refused(waitEnded(ticket, deadline, now, pipeline.overloaded), spoken);
          },
        }
      : undefined;
    if (wait !== undefined) this.options.readDeadlines.add(wait);
    ticket.whenAdmitted(() => {
      if (wait !== undefined) this.options.readDeadlines.delete(wait);
      handle(ticket);
    });
  }
}

interface RequestHead {
  readonly timeoutMs: number | undefined;
  readonly gzipped: boolean;
}

/** What the request's method and headers say, or the Refusal they earn before any body is read. */
function readHead(request: NodeRequest, handler: UniversalHandler, spoken: Protocol, maxBytes: number): RequestHead {
  if (request.method !== "POST") throw refuse.notPost();
  const unaryShaped = handler.method.methodKind === "unary";
  if (spoken.name === "connect" && spoken.connectStream === unaryShaped) {
    throw refuse.unsupportedMediaType(single(request.headers["content-type"]) ?? "");
  }
  if (handler.method.methodKind === "bidi_streaming" && request.httpVersion.startsWith("1.")) {
    throw refuse.malformed("a bidirectional stream needs HTTP/2");
  }
  const timeoutHeader = single(request.headers[spoken.timeoutHeader]);
  const timeoutMs = spoken.name === "connect" ? parseConnectTimeout(timeoutHeader) : parseGrpcTimeout(timeoutHeader);
  const encoding = single(request.headers[spoken.encodingHeader]);
  if (encoding !== undefined && encoding !== "identity" && encoding !== "gzip") {
    throw refuse.unsupportedEncoding(encoding);
  }
  const declaredLength = Number(single(request.headers["content-length"]) ?? 0);
  if (declaredLength > maxBytes + 5) throw refuse.tooLarge(maxBytes);
  return { timeoutMs, gzipped: encoding === "gzip" };
}

function headersFor(request: NodeRequest, spoken: Protocol): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(request.headers)) {
    if (name.startsWith(":") || CONSUMED_HEADERS.has(name) || value === undefined) continue;
    if (Array.isArray(value)) for (const each of value) headers.append(name, each);
    else headers.set(name, value);
  }
  headers.set("content-type", spoken.contentType);
  return headers;
}

function closeSignal(response: NodeResponse): AbortSignal {
  const controller = new AbortController();
  response.once("close", () => controller.abort());
  return controller.signal;
}

/**
 * Answers a refusal in the request's protocol (Connect's JSON error when it names none), then ends
 * the exchange without poisoning the connection: on HTTP/2, RST_STREAM(NO_ERROR) once the answer
 * is out asks the client to stop sending (RFC 9113 8.1); on HTTP/1.1 an unread body means
 * Connection: close.
 */
function writeRefusal(
  request: NodeRequest,
  response: NodeResponse,
  spoken: Protocol | undefined,
  status: RpcStatus,
  requestId: string,
): void {
  // gRPC and gRPC-Web: trailers-only, the status in the only HEADERS frame, as the fast path answers.
  const grpcFamily = spoken !== undefined && spoken.name !== "connect";
  if (grpcFamily && request instanceof http2.Http2ServerRequest) {
    respondTrailersOnly(request.stream, spoken.contentType, status, requestId);
    return;
  }
  const headers: http2.OutgoingHttpHeaders = grpcFamily
    ? trailersOnlyHeaders(spoken.contentType, status, requestId)
    : spoken === undefined
      ? // No protocol named: the status in gRPC headers too, for whichever client this is.
        { "content-type": "application/json", ...grpcStatusHeaders(status), "x-request-id": requestId }
      : { "content-type": "application/json", ...retryPushbackHeader(status), "x-request-id": requestId };
  const httpStatus = grpcFamily ? 200 : spoken === undefined ? 415 : codeToHttpStatus(status.code);
  const body = grpcFamily ? undefined : Buffer.from(errorToJsonBytes(toConnectError(status), {}));
  if (request instanceof http2.Http2ServerRequest) {
    const { stream } = request;
    if (stream.destroyed || stream.closed || stream.headersSent) return;
    stream.respond({ ":status": httpStatus, ...headers }, { endStream: body === undefined });
    if (body !== undefined) stream.end(body);
    // node sends the RST_STREAM after the answer has been flushed.
    if (!stream.readableEnded) stream.close(http2.constants.NGHTTP2_NO_ERROR);
    return;
  }
  if (response.headersSent) {
    response.destroy();
    return;
  }
  if (!request.complete) headers.connection = "close";
  response.writeHead(httpStatus, headers);
  if (body === undefined) response.end();
  else response.end(body);
}

function abandon(request: NodeRequest, response: NodeResponse): void {
  if (request instanceof http2.Http2ServerRequest) {
    if (!request.stream.destroyed) request.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
  } else {
    response.destroy();
  }
}

function single(value: string | string[] | undefined): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function secondsSince(started: number): number {
  return (performance.now() - started) / 1000;
}
