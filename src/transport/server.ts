// One TCP port for gRPC, gRPC-Web and Connect, over HTTP/2 cleartext (prior knowledge) and
// HTTP/1.1, or, with TLS configured, over TLS only (ALPN h2 and http/1.1; see tls.ts).
//
// A net.Server accepts every connection and reads its first bytes: the HTTP/2 client preface goes
// to an http2 server, anything else to an http server. On HTTP/2 each stream is routed on its own:
// binary gRPC for a pipeline RPC goes to the fast path on the raw stream; every other stream gets
// node's compatibility request and response objects, built here exactly as node builds them for a
// 'request' listener, and goes to connect-node. No 'request' listener is registered, so node never
// builds compatibility objects for fast-path streams: those objects hook the stream's
// 'wantTrailers', 'close' and 'data' events and would fight the fast path over the trailers.

import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "pino";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { requestIdFor } from "../api/request-id.js";
import type { RpcPipeline } from "../api/rpc.js";
import { routePipeline } from "./connect-routes.js";
import { GrpcFastPath } from "./grpc-fast-path.js";
import { HealthController, routeHealth } from "./health.js";
import { REFLECTION_SERVICES, ReflectionIndex, routeReflection } from "./reflection.js";
import { createTlsTerminator, type TlsCredentials, type TlsTerminator, tlsContextValues } from "./tls.js";

export interface ServeOptions {
  readonly pipeline: RpcPipeline;
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  readonly logger: Logger;
  /** The largest request message accepted, by every protocol. */
  readonly maxRequestBytes: number;
  /** True when the database answers; health reports NOT_SERVING while it is false. */
  readonly readiness: () => Promise<boolean>;
  /** When set, the port serves TLS only. */
  readonly tls?: TlsCredentials | undefined;
}

export interface RunningServer {
  readonly port: number;
  /** grpc.health.v1: the owner may call health.shutDown() to report NOT_SERVING ahead of close(). */
  readonly health: HealthController;
  /**
   * Reports NOT_SERVING, stops accepting connections, lets RPCs in flight finish for up to
   * `graceMs`, then cancels what is left. Resolves when every connection is closed.
   */
  close(graceMs: number): Promise<void>;
  /** With TLS: connections accepted from now on use these credentials. */
  setTlsCredentials(credentials: TlsCredentials): void;
}

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
/** A connection that has not said which protocol it speaks by then is dropped. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;
/** While draining, how often HTTP/1.1 connections that finished their last request are closed. */
const IDLE_SWEEP_INTERVAL_MS = 50;
/**
 * node:http2 counts every response byte still queued for a connection against this and, past it,
 * refuses new streams with RST_STREAM ENHANCE_YOUR_CALM (clients see RESOURCE_EXHAUSTED), then
 * drops the connection with every call on it after 100 refusals. node's default of 10 MB is
 * reached by a few dozen concurrent large pages (ListConnections at page_size 500) on one
 * connection, so a well-behaved client failed. grpc-js lifts the limit for the same reason. What
 * bounds a connection's memory is the concurrent-stream limit times the largest response; this
 * stays as a backstop against a client that asks for far more than it reads.
 */
const HTTP2_MAX_SESSION_MEMORY_MB = 512;

export async function serve(options: ServeOptions): Promise<RunningServer> {
  const { pipeline, logger } = options;
  const pipelineServices = servicesOf(pipeline);
  const health = new HealthController({
    readiness: options.readiness,
    servicesNeedingReadiness: ["", ...pipelineServices.map((service) => service.typeName)],
    alwaysServingServices: [Health.typeName, ...REFLECTION_SERVICES.map((service) => service.typeName)],
    logger,
  });
  const reflection = new ReflectionIndex(
    [...pipelineServices, Health, ...REFLECTION_SERVICES],
    // Every error carries a google.rpc.ErrorInfo; clients resolve it through reflection too.
    [file_google_rpc_error_details],
  );
  const connectHandler = connectNodeAdapter({
    readMaxBytes: options.maxRequestBytes,
    // The client certificate's SPIFFE ID, for the pipeline; nothing per request without TLS.
    ...(options.tls === undefined ? {} : { contextValues: tlsContextValues }),
    routes(router) {
      routePipeline(router, pipeline);
      routeHealth(router, health);
      routeReflection(router, reflection);
    },
  });
  await health.start();
  const server = new MultiProtocolServer(
    pipeline,
    connectHandler,
    new GrpcFastPath(pipeline, options.maxRequestBytes, logger),
    health,
    logger,
    options.tls,
  );
  try {
    await server.listen(options.host, options.port);
  } catch (error) {
    health.shutDown();
    throw error;
  }
  return server;
}

function servicesOf(pipeline: RpcPipeline): DescService[] {
  const services = new Map<string, DescService>();
  for (const { method } of pipeline.registered()) services.set(method.parent.typeName, method.parent);
  return [...services.values()];
}

type ConnectHandler = ReturnType<typeof connectNodeAdapter>;

class MultiProtocolServer implements RunningServer {
  private readonly listener = net.createServer((socket) =>
    this.tls === undefined ? this.routeConnection(socket) : this.tls.accept(socket),
  );
  private readonly tls: TlsTerminator | undefined;
  private readonly http1Server = http.createServer((request, response) => this.serveWithConnect(request, response));
  private readonly http2Server = http2.createServer({ maxSessionMemory: HTTP2_MAX_SESSION_MEMORY_MB });
  /** Accepted connections whose first bytes have not arrived yet. */
  private readonly undecidedSockets = new Set<net.Socket>();
  private readonly http2Sessions = new Set<http2.ServerHttp2Session>();
  private draining = false;
  private closed: Promise<void> | undefined;

  constructor(
    private readonly pipeline: RpcPipeline,
    private readonly connectHandler: ConnectHandler,
    private readonly fastPath: GrpcFastPath,
    readonly health: HealthController,
    private readonly logger: Logger,
    tlsCredentials: TlsCredentials | undefined,
  ) {
    this.tls =
      tlsCredentials === undefined
        ? undefined
        : createTlsTerminator(
            tlsCredentials,
            FIRST_BYTES_TIMEOUT_MS,
            (socket) => (socket.alpnProtocol === "h2" ? this.http2Server : this.http1Server).emit("connection", socket),
            (error) => this.logger.debug({ err: error }, "TLS handshake failed"),
          );
    // node starts tracking an http server's connections (request and header timeouts,
    // closeIdleConnections) when it emits 'listening'; this one never listens itself.
    this.http1Server.emit("listening");
    this.http2Server.on("session", (session) => {
      this.http2Sessions.add(session);
      session.once("close", () => this.http2Sessions.delete(session));
    });
    // node passes rawHeaders as a fourth argument, which @types/node leaves out.
    const onStream = (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      _flags: number,
      rawHeaders: string[],
    ) => {
      const method = this.fastPath.methodFor(headers);
      if (method !== undefined) {
        this.fastPath.serve(stream, headers, method);
        return;
      }
      this.serveWithConnect(
        new http2.Http2ServerRequest(stream, headers, {}, rawHeaders),
        new http2.Http2ServerResponse(stream),
      );
    };
    this.http2Server.on("stream", onStream);
    this.listener.on("error", (error) => this.logger.error({ err: error }, "listener failed"));
  }

  get port(): number {
    return (this.listener.address() as AddressInfo).port;
  }

  listen(host: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.listener.once("error", reject);
      this.listener.listen(port, host, () => {
        this.listener.off("error", reject);
        resolve();
      });
    });
  }

  setTlsCredentials(credentials: TlsCredentials): void {
    if (this.tls === undefined) throw new Error("this server was started without TLS");
    this.tls.setCredentials(credentials);
  }

  close(graceMs: number): Promise<void> {
    this.closed ??= this.drain(graceMs);
    return this.closed;
  }

  private async drain(graceMs: number): Promise<void> {
    this.health.shutDown();
    this.draining = true;
    const allClosed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    for (const socket of this.undecidedSockets) socket.destroy();
    // GOAWAY: streams already started run to completion, new ones are refused.
    for (const session of this.http2Sessions) session.close();
    this.http1Server.closeIdleConnections();
    const sweep = setInterval(() => this.http1Server.closeIdleConnections(), IDLE_SWEEP_INTERVAL_MS);
    try {
      const drained = await Promise.race([allClosed.then(() => true), sleep(graceMs, false, { ref: false })]);
      if (!drained) {
        this.logger.warn({ graceMs }, "grace period over: cancelling the RPCs still in flight");
        for (const session of this.http2Sessions) session.destroy();
        this.http1Server.closeAllConnections();
      }
      await allClosed;
    } finally {
      clearInterval(sweep);
      // Stops the connection checks that emitting 'listening' started.
      this.http1Server.close();
    }
  }

  /** Reads the first bytes of a connection and hands it to the server for its protocol. */
  private routeConnection(socket: net.Socket): void {
    this.undecidedSockets.add(socket);
    let received: Buffer = Buffer.alloc(0);
    const drop = () => socket.destroy();
    const onData = (chunk: Buffer) => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      const compared = Math.min(received.length, HTTP2_PREFACE.length);
      const http2Preface = received.subarray(0, compared).equals(HTTP2_PREFACE.subarray(0, compared));
      if (http2Preface && received.length < HTTP2_PREFACE.length) return;
      socket.off("data", onData);
      socket.off("error", drop);
      socket.setTimeout(0);
      this.undecidedSockets.delete(socket);
      socket.pause();
      socket.unshift(received);
      if (http2Preface) {
        // No resume(): the http2 session reads what is buffered on the socket itself; resuming
        // would emit those bytes as 'data' to nobody, and the session would never see the preface.
        this.http2Server.emit("connection", socket);
      } else {
        this.http1Server.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", drop);
    socket.once("close", () => this.undecidedSockets.delete(socket));
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, drop);
  }

  private serveWithConnect(
    request: http.IncomingMessage | http2.Http2ServerRequest,
    response: http.ServerResponse | http2.Http2ServerResponse,
  ): void {
    const [path = ""] = (request.url ?? "").split("?", 1);
    if (this.pipeline.lookup(path) !== undefined) {
      // Decided here rather than in the pipeline so that the answers connect-node gives before the
      // pipeline runs (a body too large, bytes it cannot parse) carry the same x-request-id.
      const presented = request.headers["x-request-id"];
      const requestId = requestIdFor(typeof presented === "string" ? presented : undefined);
      request.headers["x-request-id"] = requestId;
      response.setHeader("x-request-id", requestId);
    }
    if (this.draining && response instanceof http.ServerResponse) response.setHeader("connection", "close");
    this.connectHandler(request, response);
  }
}
