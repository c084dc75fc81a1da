// The RPC layer's vocabulary, shared by the transports, the pipeline and the service handlers: what a
// transport knows of a request (RequestMeta), who is calling (Call), what a handler is given and
// returns, how a registered method looks, and what the pipeline reports to metrics and tracing.
// Types only, so that every side can import them without pulling in the pipeline.

import type { DescMessage, DescMethod, Message, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { Logger } from "pino";
import type { Organizations } from "../../app/organizations.js";
import type { Cancellation } from "../../runtime/cancellation.js";
import type { CallerAuthenticator, CallerName } from "../callers.js";
import type { RpcStatus } from "../status.js";
import type { AdmissionController, AdmissionRefusal } from "./admission.js";

/** What a transport knows about an incoming request besides its message. */
export interface RequestMeta {
  /** A request header by lower-case name. */
  header(name: string): string | undefined;
  /** The client's deadline in ms since the epoch, if it sent one. */
  readonly deadline: number | undefined;
  /** For logs and metrics: "grpc", "grpc-web" or "connect". */
  readonly protocol: string;
  /** Over mTLS, the URI SAN (SPIFFE ID) of the client's verified certificate; else undefined. */
  peerSpiffeId?(): string | undefined;
  /**
   * Calls `listener`, at most once, if the client gives up on the call (cancels it, resets the
   * stream, disconnects) before the answer went out; the pipeline adds the deadline and shutdown.
   * A callback rather than an AbortSignal: each signal and its listeners cost the hot path a few
   * microseconds per call, and almost no call is ever cancelled.
   */
  onClientGone(listener: () => void): void;
}

/** Who is calling, established before any handler runs. */
export interface Call {
  readonly caller: CallerName;
  /** The registered acting organization; "" for RPCs that do not act for one. */
  readonly organizationId: string;
  /** The x-actor header, or "". */
  readonly actor: string;
  readonly requestId: string;
  /**
   * Aborted when the call stops mattering: the client cancelled, its deadline passed, or shutdown
   * cut it. The reason is a ServiceError (CANCELLED, DEADLINE_EXCEEDED, SHUTTING_DOWN). Pass it to
   * the store so that a write which has not committed rolls back instead.
   */
  readonly signal: Cancellation;
}

/** What a server-streaming handler learns besides the call: when to stop. */
export interface StreamControl {
  /** Aborts when the client cancelled or went away. */
  readonly signal: AbortSignal;
  /** The client's own deadline (ms since the epoch); the unary cap does not apply to streams. */
  readonly deadline: number | undefined;
  /** Resets the stream without a status, when the transport can (for a client that stopped reading). */
  readonly abandon: (() => void) | undefined;
  /** Aborts when the stream's connection reached its maximum age: end with UNAVAILABLE before it is cut. */
  readonly connectionAging: AbortSignal | undefined;
}

/** A handler per RPC: unary ones return the response, server-streaming ones yield responses. */
export type ServiceHandlers<T extends GenServiceMethods> = {
  [K in keyof T]: T[K]["methodKind"] extends "server_streaming"
    ? (
        request: MessageShape<T[K]["input"]>,
        call: Call,
        control: StreamControl,
      ) => AsyncIterable<MessageInitShape<T[K]["output"]>>
    : (request: MessageShape<T[K]["input"]>, call: Call) => Promise<MessageInitShape<T[K]["output"]>>;
};

/** How an RPC is named in metrics and logs. */
export interface RpcLabels {
  /** "/connections.v1.ConnectionService/CreateConnection": the HTTP path of every protocol. */
  readonly path: string;
  /** "connections.v1.ConnectionService" */
  readonly service: string;
  /** "CreateConnection" */
  readonly method: string;
}

export interface MethodBase {
  /** "/connections.v1.ConnectionService/CreateConnection": the HTTP path of every protocol. */
  readonly path: string;
  readonly labels: RpcLabels;
  readonly method: DescMethod;
  readonly callers: ReadonlySet<CallerName>;
  readonly actsForOrganization: boolean;
  /** Callers for which actsForOrganization does not hold: they act for every organization. */
  readonly actsForEveryOrganization: ReadonlySet<CallerName>;
}

export interface UnaryMethod extends MethodBase {
  readonly kind: "unary";
  readonly handle: (request: Message, call: Call) => Promise<MessageInitShape<DescMessage>>;
  /** The request from protobuf binary (fromBinary, or a hand-written decoder on the hot path). */
  readonly decode: (bytes: Uint8Array) => Message;
  /** The response's protobuf binary encoding (toBinary, or a hand-written encoder on the hot path). */
  readonly encode: (response: Message) => Uint8Array;
}

export interface StreamingMethod extends MethodBase {
  readonly kind: "server_streaming";
  readonly stream: (
    request: Message,
    call: Call,
    control: StreamControl,
  ) => AsyncIterable<MessageInitShape<DescMessage>>;
}

export type RegisteredMethod = UnaryMethod | StreamingMethod;

/** A server stream as the pipeline hands it to a transport. */
export interface RpcStream {
  readonly requestId: string;
  /** The responses; throws RpcStreamError when the stream ends with an error. */
  readonly responses: AsyncGenerator<Message, void>;
}

export type RpcResult =
  | { readonly ok: true; readonly response: Message; readonly requestId: string }
  | { readonly ok: false; readonly status: RpcStatus; readonly requestId: string };

export interface RpcObserver {
  /** Called once per RPC when it ends, also when the transport refused it; `code` 0 is OK. */
  observe(labels: RpcLabels, code: number, seconds: number): void;
}

/** What the pipeline reports when an RPC ends, for its trace span. */
export interface RpcOutcome {
  readonly code: number;
  readonly reason: string | undefined;
  readonly caller: string | undefined;
  readonly organizationId: string;
  readonly requestId: string;
}

export interface RpcSpan {
  end(outcome: RpcOutcome): void;
}

/** Traces RPCs (src/tracing.ts); absent when tracing is off, so untraced calls pay nothing. */
export interface RpcTracing {
  /** Runs `work` inside a span for the RPC at `path`; `work` ends the span. */
  serve<T>(path: string, meta: RequestMeta, work: (span: RpcSpan) => Promise<T>): Promise<T>;
  /** A span for the stream at `path`, ended by the caller when the stream ends. */
  open(path: string, meta: RequestMeta): RpcSpan;
}

export interface RpcPipelineOptions {
  readonly authenticator: CallerAuthenticator;
  readonly organizations: Organizations;
  readonly logger: Logger;
  readonly observer?: RpcObserver;
  /** The longest any RPC may run, whatever deadline the client sent. */
  readonly maxDeadlineMs: number;
  readonly tracing?: RpcTracing | undefined;
  /** Admission control for unary calls; absent, every call is admitted. */
  readonly admission?: AdmissionOptions | undefined;
}

export interface AdmissionOptions {
  readonly controller: AdmissionController;
  readonly observer?: AdmissionObserver;
}

/** Counts admission's refusals (src/observability/metrics.ts). */
export interface AdmissionObserver {
  admissionRefused(caller: string, reason: AdmissionRefusal): void;
}

/** What admission reads of a request: its headers and, over mTLS, the client's SPIFFE ID. */
export type AdmissionMeta = Pick<RequestMeta, "header" | "peerSpiffeId">;
