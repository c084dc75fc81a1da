// One TCP port for gRPC, gRPC-Web and Connect, over HTTP/2 cleartext (prior knowledge) and
// HTTP/1.1, or, with TLS configured, over TLS only (ALPN h2 and http/1.1; see tls.ts).
//
// A net.Server accepts every connection and reads its first bytes: the HTTP/2 client preface goes
// to an http2 server, anything else to an http server. On HTTP/2 each stream is routed on its own:
// binary gRPC for a pipeline RPC goes to the fast path on the raw stream; every other stream gets
// node's compatibility request and response objects, built here exactly as node builds them for a
// 'request' listener, and goes to the connect edge. No 'request' listener is registered, so node
// never builds compatibility objects for fast-path streams: those objects hook the stream's
// 'wantTrailers', 'close' and 'data' events and would fight the fast path over the trailers.
//
// Every limit in TransportLimits is applied here or by the readers it hands requests to; node sets
// almost none by itself (no HTTP/2 idle timeout, SETTINGS at 2^32-1).

import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import net from "node:net";
import type stream from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import { createContextValues } from "@connectrpc/connect";
import type { Logger } from "pino";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import type { RpcPipeline } from "../api/rpc/pipeline.js";
import { ConnectEdge, pathOf } from "./connect-edge.js";
import { ABANDON_REQUEST, CONNECTION_AGING, routePipeline } from "./connect-routes.js";
import { ConnectionPacer } from "./connection-pacing.js";
import { closeGracefully } from "./goaway.js";
import { GrpcFastPath } from "./grpc-fast-path.js";
import { HealthController, routeHealth } from "./health.js";
import { DEFAULT_TRANSPORT_LIMITS, ReadDeadlines, type TransportLimits } from "./limits.js";
import { REFLECTION_SERVICES, ReflectionIndex, routeReflection } from "./reflection.js";
import type { PortObserver, PortRefusalReason } from "./refusals.js";
import { CallerStreamShares } from "./stream-shares.js";
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
  /** Anything left out takes its production default. */
  readonly limits?: Partial<TransportLimits>;
  /** Hears of every request and connection the port turns away. */
  readonly observer?: PortObserver;
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
/**
 * With per-caller stream limits: nghttp2 answers each stream a client opened beyond a limit it had
 * not seen yet with REFUSED_STREAM, and node counts every such stream as an invalid frame, closing
 * the connection past maxSessionInvalidFrames (1,000 by default, over the connection's whole life).
 * A client that starts with 100 streams loses 84 to FIRST_STREAMS alone, and every lowering may
 * refuse up to the previous limit's worth: an honest client must not be cut off for catching up.
 * Ten times node's default still bounds a client that sends nothing but invalid frames.
 */
const HELD_MAX_SESSION_INVALID_FRAMES = 10_000;
/** After the grace period, how long the calls cut short have to send their SHUTTING_DOWN answers. */
const CUT_CALLS_FLUSH_MS = 1_000;
/**
 * How long a drain waits, with health NOT_SERVING and nothing else changed, before its GOAWAYs when
 * someone watches health: a client that checks health (a service config's healthCheckConfig) stops
 * sending calls here once it reads NOT_SERVING, so that the GOAWAY meets none, which matters to a
 * client without retries (see goaway.ts). Part of the grace period, never longer.
 */
const HEALTH_WATCHERS_NOTICE_MS = 1_000;

interface Http1Refusal {
  readonly reason: PortRefusalReason;
  readonly answer: string;
}

const http1Answer = (status: string) => `HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`;
const HTTP1_MALFORMED: Http1Refusal = { reason: "http1_malformed", answer: http1Answer("400 Bad Request") };
/** What node answers to a bad HTTP/1.1 request, by its error code; anything else is HTTP1_MALFORMED. */
const HTTP1_REFUSALS: Readonly<Record<string, Http1Refusal>> = {
  ERR_HTTP_REQUEST_TIMEOUT: { reason: "http1_timeout", answer: http1Answer("408 Request Timeout") },
  HPE_HEADER_OVERFLOW: {
    reason: "http1_headers_too_large",
    answer: http1Answer("431 Request Header Fields Too Large"),
  },
};

/** A client that went away: not something the port refused. */
function hungUp(error: NodeJS.ErrnoException): boolean {
  return error.code === "ECONNRESET" || error.code === "EPIPE" || error.code === "ECONNABORTED";
}

export async function serve(options: ServeOptions): Promise<RunningServer> {
  const { pipeline, logger } = options;
  const limits: TransportLimits = { ...DEFAULT_TRANSPORT_LIMITS, ...options.limits };
  const pipelineServices = servicesOf(pipeline);
  const health = new HealthController({
    readiness: options.readiness,
    servicesNeedingReadiness: ["", ...pipelineServices.map((service) => service.typeName)],
    alwaysServingServices: [Health.typeName, ...REFLECTION_SERVICES.map((service) => service.typeName)],
    logger,
    maxWatchers: limits.maxHealthWatchers,
  });
  const reflection = new ReflectionIndex(
    [...pipelineServices, Health, ...REFLECTION_SERVICES],
    // Every error carries a google.rpc.ErrorInfo; clients resolve it through reflection too.
    [file_google_rpc_error_details],
  );
  const readDeadlines = new ReadDeadlines();
  const edge = new ConnectEdge({
    pipeline,
    maxRequestBytes: options.maxRequestBytes,
    limits,
    readDeadlines,
    logger,
    observer: options.observer,
    // Per request: how to reset it (a watch stream whose client stopped reading) and, with TLS,
    // the client certificate's SPIFFE ID for the pipeline.
    contextValues: (request) =>
      (options.tls === undefined ? createContextValues() : tlsContextValues(request))
        .set(ABANDON_REQUEST, () => abandonRequest(request))
        .set(CONNECTION_AGING, agingOf(request)),
    routes(router) {
      routePipeline(router, pipeline);
      routeHealth(router, health);
      routeReflection(router, reflection, {
        maxStreams: limits.maxReflectionStreams,
        idleTimeoutMs: limits.reflectionIdleTimeoutMs,
      });
    },
  });
  await health.start();
  // With admission control, a connection that carries one caller's calls is held to that caller's
  // share of the limit, spread over its connections (stream-shares.ts).
  const shares =
    pipeline.admission === undefined
      ? undefined
      : new CallerStreamShares(pipeline.admission, limits.http2MaxConcurrentStreams, options.observer);
  const fastPath = new GrpcFastPath(pipeline, options.maxRequestBytes, limits, readDeadlines, logger, {
    observer: options.observer,
    shares,
  });
  const server = new MultiProtocolServer(edge, fastPath, health, limits, logger, options.tls, options.observer, shares);
  try {
    await server.listen(options.host, options.port);
  } catch (error) {
    health.shutDown();
    throw error;
  }
  return server;
}

/** Resets a request whose client stopped reading: its HTTP/2 stream, or its HTTP/1.1 connection. */
/** Aborts when the request's HTTP/2 connection reaches its maximum age (HTTP/1.1: never). */
function agingOf(request: http.IncomingMessage | http2.Http2ServerRequest): AbortSignal | undefined {
  if (!(request instanceof http2.Http2ServerRequest)) return undefined;
  return (request.stream.session as ClockedSession | undefined)?.[SESSION_CLOCK]?.aging.signal;
}

function abandonRequest(request: http.IncomingMessage | http2.Http2ServerRequest): void {
  if (request instanceof http2.Http2ServerRequest) request.stream.close(http2.constants.NGHTTP2_CANCEL);
  else request.socket.destroy();
}

function servicesOf(pipeline: RpcPipeline): DescService[] {
  const services = new Map<string, DescService>();
  for (const { method } of pipeline.registered()) services.set(method.parent.typeName, method.parent);
  return [...services.values()];
}

/** Per HTTP/2 session: when it last opened a stream (the idle timeout counts from it). */
interface SessionClock {
  /** Aborts when the connection reached its maximum age: long streams end before the forced close. */
  readonly aging: AbortController;
  lastStreamAt: number;
}

const SESSION_CLOCK = Symbol("sessionClock");
type ClockedSession = http2.ServerHttp2Session & { [SESSION_CLOCK]?: SessionClock };

class MultiProtocolServer implements RunningServer {
  private readonly listener = net.createServer((socket) =>
    this.tls === undefined ? this.routeConnection(socket) : this.tls.accept(socket),
  );
  private readonly tls: TlsTerminator | undefined;
  private readonly http1Server: http.Server;
  private readonly http2Server: http2.Http2Server;
  /** Accepted connections not yet handed to a server: their first bytes have not arrived, or they wait for their turn. */
  private readonly undecidedSockets = new Set<net.Socket>();
  private readonly pacer = new ConnectionPacer();
  private readonly http2Sessions = new Set<http2.ServerHttp2Session>();
  private draining = false;
  private closed: Promise<void> | undefined;

  constructor(
    private readonly edge: ConnectEdge,
    private readonly fastPath: GrpcFastPath,
    readonly health: HealthController,
    private readonly limits: TransportLimits,
    private readonly logger: Logger,
    tlsCredentials: TlsCredentials | undefined,
    private readonly observer: PortObserver | undefined,
    private readonly shares: CallerStreamShares | undefined,
  ) {
    this.tls =
      tlsCredentials === undefined
        ? undefined
        : createTlsTerminator(
            tlsCredentials,
            limits.firstBytesTimeoutMs,
            (socket) =>
              this.pacer.admit(socket, () =>
                (socket.alpnProtocol === "h2" ? this.http2Server : this.http1Server).emit("connection", socket),
              ),
            (error) => {
              this.logger.debug({ err: error }, "TLS handshake failed");
              if (!hungUp(error)) this.observer?.portRefused("tls_handshake_failed");
            },
          );
    this.http1Server = http.createServer(
      {
        headersTimeout: limits.http1HeadersTimeoutMs,
        requestTimeout: limits.http1RequestTimeoutMs,
        maxHeaderSize: limits.maxHeaderListBytes,
        // node checks the two timeouts above on this period (30 s by default).
        connectionsCheckingInterval: Math.max(10, Math.min(1_000, limits.http1HeadersTimeoutMs / 4)),
      },
      (request, response) => {
        if (this.draining) response.setHeader("connection", "close");
        this.edge.serve(request, response, Date.now());
      },
    );
    this.http1Server.keepAliveTimeout = limits.http1KeepAliveTimeoutMs;
    this.http1Server.on("clientError", this.onHttp1ClientError);
    // node starts tracking an http server's connections (request and header timeouts,
    // closeIdleConnections) when it emits 'listening'; this one never listens itself.
    this.http1Server.emit("listening");
    this.http2Server = http2.createServer({
      settings: {
        // With per-caller stream limits, every connection starts low until its first stream.
        maxConcurrentStreams: shares?.firstStreams ?? limits.http2MaxConcurrentStreams,
        maxHeaderListSize: limits.maxHeaderListBytes,
      },
      maxSessionMemory: HTTP2_MAX_SESSION_MEMORY_MB,
      ...(shares === undefined ? {} : { maxSessionInvalidFrames: HELD_MAX_SESSION_INVALID_FRAMES }),
    });
    this.http2Server.on("session", (session) => this.police(session));
    // A session that fails (a protocol error, a reset socket) is destroyed by node; nothing to do
    // but not let the event go unheard (police() counts it, on the session's own 'error').
    this.http2Server.on("sessionError", (error) => this.logger.debug({ err: error }, "HTTP/2 session failed"));
    this.http2Server.on("stream", this.onStream);
    this.listener.on("error", (error) => this.logger.error({ err: error }, "listener failed"));
  }

  // node passes rawHeaders as a fourth argument, which @types/node leaves out.
  private readonly onStream = (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ) => {
    const receivedAt = Date.now();
    const clock = (stream.session as ClockedSession | undefined)?.[SESSION_CLOCK];
    if (clock !== undefined) clock.lastStreamAt = receivedAt;
    try {
      const method = this.fastPath.methodFor(headers);
      if (method !== undefined) {
        this.fastPath.serve(stream, headers, method);
        return;
      }
      if (this.shares !== undefined) {
        // A pipeline call through connect-node (Connect, gRPC-Web, the change feed): its caller is
        // not learnt here, so its connection is never held to one caller's share. Anything else
        // (health, reflection) needs no credentials: room for it beside the calls.
        if (this.fastPath.pipeline.lookup(pathOf(headers[":path"] ?? "")) !== undefined)
          this.shares.unattributed(stream.session);
        else this.shares.beside(stream.session, (listener) => stream.once("close", listener));
      }
      this.edge.serve(
        new http2.Http2ServerRequest(stream, headers, {}, rawHeaders),
        new http2.Http2ServerResponse(stream),
        receivedAt,
      );
    } catch (error) {
      // Nothing a client sends may throw out of this listener: that would end the process.
      this.logger.error({ err: error }, "could not serve an HTTP/2 stream");
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
  };

  /**
   * HTTP/2 keepalive (a PING every interval; no answer within the timeout drops the connection),
   * the idle timeout (no new stream for that long: GOAWAY) and the maximum connection age (GOAWAY
   * at the age, ±10% so that connections made together do not all leave together; whatever still
   * runs is cancelled after the grace).
   */
  private police(session: http2.ServerHttp2Session): void {
    const { limits } = this;
    this.http2Sessions.add(session);
    this.shares?.opened(session);
    session.on("error", (error) => {
      this.logger.debug({ err: error }, "HTTP/2 session error");
      if (!hungUp(error)) this.observer?.portRefused("http2_session_error");
    });
    const clock: SessionClock = { lastStreamAt: Date.now(), aging: new AbortController() };
    (session as ClockedSession)[SESSION_CLOCK] = clock;
    this.capConnections();
    const open = () => !session.closed && !session.destroyed;

    // One PING in flight at a time.
    let awaitingAck: NodeJS.Timeout | undefined;
    const keepalive = setInterval(() => {
      if (!open() || awaitingAck !== undefined) return;
      let sent: boolean;
      try {
        sent = session.ping(() => {
          clearTimeout(awaitingAck);
          awaitingAck = undefined;
        });
      } catch {
        return; // the session went away between the check and the PING
      }
      if (!sent) return;
      awaitingAck = setTimeout(() => {
        this.logger.debug("HTTP/2 peer did not answer a keepalive PING: dropping the connection");
        this.observer?.portRefused("keepalive_timeout");
        session.destroy();
      }, limits.http2KeepaliveTimeoutMs).unref();
    }, limits.http2KeepaliveIntervalMs).unref();
    const idle = setInterval(
      () => {
        if (open() && Date.now() - clock.lastStreamAt >= limits.http2IdleTimeoutMs) closeGracefully(session);
      },
      Math.max(10, Math.min(limits.http2IdleTimeoutMs / 4, 1_000)),
    ).unref();
    let grace: NodeJS.Timeout | undefined;
    const age = setTimeout(
      () => {
        if (!open()) return;
        clock.aging.abort();
        closeGracefully(session);
        grace = setTimeout(() => session.destroy(), limits.maxConnectionAgeGraceMs).unref();
      },
      limits.maxConnectionAgeMs * (0.9 + Math.random() * 0.2),
    ).unref();
    session.once("close", () => {
      this.http2Sessions.delete(session);
      clearInterval(keepalive);
      clearInterval(idle);
      clearTimeout(awaitingAck);
      clearTimeout(age);
      clearTimeout(grace);
    });
  }

  /** Past MAX_HTTP2_CONNECTIONS, the connection that has gone longest without a new stream gets GOAWAY. */
  private capConnections(): void {
    let open = 0;
    let idlest: http2.ServerHttp2Session | undefined;
    let idlestSince = Number.POSITIVE_INFINITY;
    for (const session of this.http2Sessions) {
      if (session.closed || session.destroyed) continue;
      open++;
      const since = (session as ClockedSession)[SESSION_CLOCK]?.lastStreamAt ?? 0;
      if (since < idlestSince) {
        idlest = session;
        idlestSince = since;
      }
    }
    // GOAWAY lets the streams it still runs finish; the client opens a new connection for more.
    if (open > this.limits.maxHttp2Connections && idlest !== undefined) {
      idlest.close();
      this.observer?.portRefused("connection_cap");
    }
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
    const started = Date.now();
    this.shares?.stop();
    this.health.shutDown();
    this.draining = true;
    const allClosed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    this.pacer.flush();
    for (const socket of this.undecidedSockets) socket.destroy();
    if (this.health.watcherCount > 0)
      await sleep(Math.min(HEALTH_WATCHERS_NOTICE_MS, graceMs), undefined, { ref: false });
    this.health.endWatches();
    // GOAWAY (see goaway.ts): streams already started run to completion, new ones are refused.
    for (const session of this.http2Sessions) closeGracefully(session);
    this.http1Server.closeIdleConnections();
    const sweep = setInterval(() => this.http1Server.closeIdleConnections(), IDLE_SWEEP_INTERVAL_MS);
    try {
      const left = Math.max(0, graceMs - (Date.now() - started));
      const drained = await Promise.race([allClosed.then(() => true), sleep(left, false, { ref: false })]);
      if (!drained) {
        this.logger.warn({ graceMs }, "grace period over: cancelling the RPCs still in flight");
        // Lifecycle: the calls still running end with UNAVAILABLE SHUTTING_DOWN (their uncommitted
        // writes roll back), answered on their streams, before the connections are torn down.
        this.fastPath.pipeline.cancelInFlight();
        await Promise.race([allClosed, sleep(CUT_CALLS_FLUSH_MS, undefined, { ref: false })]);
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

  /**
   * A bad HTTP/1.1 request (node's own head and request timeouts, an oversized head, bytes that do
   * not parse): counted, then answered as node answers it without this listener, unless a
   * response is already under way on the connection, and the connection closed.
   */
  private readonly onHttp1ClientError = (error: NodeJS.ErrnoException, socket: stream.Duplex) => {
    if (!hungUp(error)) {
      const refusal = HTTP1_REFUSALS[error.code ?? ""] ?? HTTP1_MALFORMED;
      this.observer?.portRefused(refusal.reason);
      // The response node is writing on this connection, where node's own handler looks for it.
      const inFlight = (socket as { _httpMessage?: http.ServerResponse })._httpMessage;
      if (socket.writable && inFlight?.headersSent !== true) socket.write(refusal.answer);
    }
    socket.destroy();
  };

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
      socket.pause();
      socket.unshift(received);
      // It stays undecided until handed over; a drain hands over every waiting connection at once.
      this.pacer.admit(socket, () => {
        this.undecidedSockets.delete(socket);
        if (http2Preface) {
          // No resume(): the http2 session reads what is buffered on the socket itself; resuming
          // would emit those bytes as 'data' to nobody, and the session would never see the preface.
          this.http2Server.emit("connection", socket);
        } else {
          this.http1Server.emit("connection", socket);
          socket.resume();
        }
      });
    };
    socket.on("data", onData);
    socket.on("error", drop);
    socket.once("close", () => this.undecidedSockets.delete(socket));
    socket.setTimeout(this.limits.firstBytesTimeoutMs, () => {
      this.observer?.portRefused("first_bytes_timeout");
      drop();
    });
  }
}
