// The transport-neutral RPC pipeline. Every transport (the gRPC fast path, and Connect/gRPC-Web/
// gRPC through connect-node) decodes a request, hands it to `invoke`, and encodes what comes back.
// So there is one caller policy, one organization check, one error mapping and one log line for
// every protocol, and the activation gate runs before any handler or database work, whatever the
// transport. Server-streaming RPCs (the change feed) go through the same steps; only their end
// differs: they are not cut by the unary deadline cap, and their one log line comes when they end.

import {
  create,
  type DescMessage,
  type DescMethod,
  type Message,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code } from "@connectrpc/connect";
import type { Logger } from "pino";
import { invalidArgument, ServiceError } from "../app/errors.js";
import { isOrganizationId } from "../app/ids.js";
import type { Organizations } from "../app/organizations.js";
import type { CallerAuthenticator, CallerName } from "./callers.js";
import { binaryDecoderFor, binaryEncoderFor } from "./check-encoding.js";
import { CALLER_TABLE } from "./policy.js";
import { requestIdFor } from "./request-id.js";
import { type RpcStatus, toRpcStatus } from "./status.js";

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
  readonly signal: AbortSignal;
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

interface MethodBase {
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

/** How a stream that the pipeline ran ended with an error, for the transport to send. */
export class RpcStreamError extends Error {
  constructor(readonly status: RpcStatus) {
    super(status.message);
    this.name = "RpcStreamError";
  }
}

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
}

const MAX_ACTOR_LENGTH = 200;

/** A stream whose client went away: nobody receives a status, but the log and metrics say so. */
const CANCELLED: RpcStatus = {
  code: Code.Canceled,
  message: "cancelled by the client",
  reason: "CANCELLED",
  metadata: {},
};
/** How close to its deadline a client's cancellation counts as the deadline passing. */
const DEADLINE_SLACK_MS = 100;

export class RpcPipeline {
  private readonly methods = new Map<string, RegisteredMethod>();
  /** The calls running now, so that shutdown can end them with SHUTTING_DOWN. */
  private readonly inFlight = new Set<CallScope>();
  private shuttingDown = false;
  /**
   * The one line per RPC. Its fields are set below and none can carry a secret, so it skips the
   * logger's redaction pass, which cost about as much as the rest of the line.
   */
  private readonly rpcLog: Logger;

  constructor(private readonly options: RpcPipelineOptions) {
    this.rpcLog = options.logger.child({}, { redact: [] });
  }

  register<T extends GenServiceMethods>(service: GenService<T>, handlers: ServiceHandlers<T>): void {
    for (const method of service.methods) {
      const key = `${service.typeName}/${method.name}`;
      const policy = CALLER_TABLE[key];
      if (policy === undefined) throw new Error(`no caller policy for ${key}`);
      const base: MethodBase = {
        path: `/${key}`,
        labels: { path: `/${key}`, service: service.typeName, method: method.name },
        method,
        callers: new Set(policy.callers),
        actsForOrganization: policy.actsForOrganization,
        actsForEveryOrganization: new Set(policy.actsForEveryOrganization),
      };
      const handler = handlers[method.localName as keyof T] as unknown;
      switch (method.methodKind) {
        case "unary":
          this.methods.set(base.path, {
            ...base,
            kind: "unary",
            handle: handler as UnaryMethod["handle"],
            decode: binaryDecoderFor(method.input),
            encode: binaryEncoderFor(method.output),
          });
          break;
        case "server_streaming":
          this.methods.set(base.path, {
            ...base,
            kind: "server_streaming",
            stream: handler as StreamingMethod["stream"],
          });
          break;
        default:
          throw new Error(`${key} is ${method.methodKind}: only unary and server-streaming RPCs are supported`);
      }
    }
  }

  lookup(path: string): RegisteredMethod | undefined {
    return this.methods.get(path);
  }

  registered(): IterableIterator<RegisteredMethod> {
    return this.methods.values();
  }

  /**
   * Ends every call in flight now with UNAVAILABLE SHUTTING_DOWN (their uncommitted writes roll
   * back), and every later one at once: what shutdown does when the grace period is over.
   */
  cancelInFlight(): void {
    this.shuttingDown = true;
    for (const scope of this.inFlight) scope.abort(shuttingDownError());
  }

  /** Runs one RPC through authentication, the caller table, the organization check and its handler. */
  invoke(method: UnaryMethod, request: Message, meta: RequestMeta): Promise<RpcResult> {
    const tracing = this.options.tracing;
    if (tracing === undefined) return this.run(method, request, meta, undefined);
    return tracing.serve(method.path, meta, (span) => this.run(method, request, meta, span));
  }

  private async run(
    method: UnaryMethod,
    request: Message,
    meta: RequestMeta,
    span: RpcSpan | undefined,
  ): Promise<RpcResult> {
    const started = performance.now();
    const requestId = requestIdFor(meta.header("x-request-id"));
    // One deadline for the whole call: authentication and the organization lookup count too.
    const deadline = Math.min(meta.deadline ?? Number.POSITIVE_INFINITY, Date.now() + this.options.maxDeadlineMs);
    const scope = new CallScope(meta, deadline);
    this.inFlight.add(scope);
    if (this.shuttingDown) scope.abort(shuttingDownError());
    let result: RpcResult;
    try {
      const response = await scope.race(this.authorizeAndHandle(method, request, meta, requestId, scope));
      result = { ok: true, response: create(method.method.output, response), requestId };
    } catch (error) {
      const { status, internalCause } = toRpcStatus(error);
      if (internalCause !== undefined) {
        this.options.logger.error({ err: internalCause, requestId, method: method.path }, "rpc failed");
      }
      result = { ok: false, status, requestId };
    } finally {
      this.inFlight.delete(scope);
      scope.end();
    }
    this.finish(method, meta, scope, requestId, started, result.ok ? undefined : result.status, span);
    return result;
  }

  /** The end of every RPC the pipeline ran: one observation, its span, one log line. */
  private finish(
    method: RegisteredMethod,
    meta: RequestMeta,
    scope: CallScope,
    requestId: string,
    started: number,
    failure: RpcStatus | undefined,
    span: RpcSpan | undefined,
  ): void {
    const code = failure === undefined ? 0 : failure.code;
    const seconds = (performance.now() - started) / 1000;
    this.options.observer?.observe(method.labels, code, seconds);
    span?.end({
      code,
      reason: failure?.reason,
      caller: scope.caller,
      organizationId: scope.organizationId,
      requestId,
    });
    this.rpcLog.info(
      {
        method: method.path,
        protocol: meta.protocol,
        code: codeName(code),
        reason: failure?.reason,
        durationMs: Math.round(seconds * 1e6) / 1000,
        caller: scope.caller,
        organizationId: scope.organizationId || meta.header("x-organization-id"),
        requestId,
      },
      "rpc",
    );
  }

  /**
   * Runs a server-streaming RPC: the same admission as `invoke`, then the handler's responses.
   * The stream ends when the handler does (OK), with an error (thrown as RpcStreamError), or when
   * the client goes away (logged as CANCELLED); one log line, one observation and one span.
   */
  stream(
    method: StreamingMethod,
    request: Message,
    meta: RequestMeta,
    transport: Omit<StreamControl, "deadline">,
  ): RpcStream {
    const requestId = requestIdFor(meta.header("x-request-id"));
    return { requestId, responses: this.runStream(method, request, meta, transport, requestId) };
  }

  private async *runStream(
    method: StreamingMethod,
    request: Message,
    meta: RequestMeta,
    transport: Omit<StreamControl, "deadline">,
    requestId: string,
  ): AsyncGenerator<Message, void> {
    const { signal } = transport;
    const started = performance.now();
    const span = this.options.tracing?.open(method.path, meta);
    // No deadline here: the client's own is the handler's to keep (MAX_DEADLINE_MS is for unary).
    const scope = new CallScope(meta, Number.POSITIVE_INFINITY);
    let failure: RpcStatus | undefined = CANCELLED;
    try {
      if (this.shuttingDown) throw shuttingDownError();
      const call = await this.admit(method, meta, requestId, scope);
      for await (const response of method.stream(request, call, { ...transport, deadline: meta.deadline })) {
        yield create(method.method.output, response);
      }
      failure = signal.aborted ? CANCELLED : undefined;
    } catch (error) {
      if (signal.aborted) failure = CANCELLED;
      else {
        const { status, internalCause } = toRpcStatus(error);
        if (internalCause !== undefined) {
          this.options.logger.error({ err: internalCause, requestId, method: method.path }, "rpc failed");
        }
        failure = status;
      }
      throw new RpcStreamError(failure);
    } finally {
      scope.end();
      this.finish(method, meta, scope, requestId, started, failure, span);
    }
  }

  /**
   * Logs and counts a request that the transport answered itself before the pipeline ran (bytes
   * that do not parse, too large, an unknown method...): one log line and one count, like any RPC.
   */
  refused(labels: RpcLabels, protocol: string, status: RpcStatus, requestId: string, seconds: number): void {
    this.options.observer?.observe(labels, status.code, seconds);
    this.rpcLog.info(
      {
        method: labels.path,
        protocol,
        code: codeName(status.code),
        reason: status.reason,
        durationMs: Math.round(seconds * 1e6) / 1000,
        requestId,
      },
      "rpc refused by the transport",
    );
  }

  private async authorizeAndHandle(
    method: UnaryMethod,
    request: Message,
    meta: RequestMeta,
    requestId: string,
    scope: CallScope,
  ): Promise<MessageInitShape<DescMessage>> {
    return method.handle(request, await this.admit(method, meta, requestId, scope));
  }

  /** Authentication, the caller table, x-actor and the acting organization: the Call, or a throw. */
  private async admit(method: RegisteredMethod, meta: RequestMeta, requestId: string, scope: CallScope): Promise<Call> {
    const caller = this.options.authenticator.authenticate(meta.header("authorization"), meta.peerSpiffeId?.());
    if (caller === undefined) {
      throw new ServiceError(
        "CALLER_UNAUTHENTICATED",
        "send a valid token as 'authorization: Bearer <token>' or a client certificate listed for a caller " +
          "(when both are sent they must name the same caller)",
      );
    }
    scope.caller = caller;
    if (!method.callers.has(caller)) {
      throw new ServiceError("CALLER_NOT_ALLOWED", `caller "${caller}" may not call ${method.method.name}`);
    }
    const actor = meta.header("x-actor") ?? "";
    if (actor.length > MAX_ACTOR_LENGTH) {
      throw invalidArgument("x-actor", `x-actor must be at most ${MAX_ACTOR_LENGTH} characters`);
    }
    if (method.actsForOrganization && !method.actsForEveryOrganization.has(caller)) {
      scope.organizationId = await this.actingOrganization(meta.header("x-organization-id"));
    }
    const { organizationId } = scope;
    return {
      caller,
      organizationId,
      actor,
      requestId,
      get signal() {
        return scope.signal;
      },
    };
  }

  private async actingOrganization(header: string | undefined): Promise<string> {
    if (header === undefined || header === "") {
      throw new ServiceError("ORGANIZATION_HEADER_REQUIRED", "send the acting organization as x-organization-id");
    }
    if (!isOrganizationId(header)) {
      throw invalidArgument("x-organization-id", "x-organization-id must be 1-64 letters, digits, '_' or '-'");
    }
    if (!(await this.options.organizations.isRegistered(header))) {
      throw new ServiceError("ORGANIZATION_NOT_REGISTERED", `organization "${header}" is not registered`);
    }
    return header;
  }
}

function deadlineExceeded(): ServiceError {
  return new ServiceError("DEADLINE_EXCEEDED", "the deadline passed before the RPC finished");
}

/**
 * One call's cancellation: aborted by the client going away, by the deadline, or by shutdown
 * (RpcPipeline.cancelInFlight). Also what the log line reports of a call that ended early. The
 * AbortSignal that handlers pass to the store is made only when one asks for it: a check never does.
 */
class CallScope {
  caller: CallerName | undefined;
  organizationId = "";
  #reason: ServiceError | undefined;
  #controller: AbortController | undefined;
  #interrupt: ((reason: ServiceError) => void) | undefined;
  #ended = false;
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(
    meta: RequestMeta,
    private readonly deadline: number,
  ) {
    const remaining = deadline - Date.now();
    // A deadline that has already passed (grpc-timeout "1n") is not served, however fast the handler.
    if (remaining <= 0) this.expire();
    else if (remaining !== Number.POSITIVE_INFINITY) this.timer = setTimeout(this.expire, remaining);
    meta.onClientGone(this.clientGone);
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#reason !== undefined) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  abort(reason: ServiceError): void {
    if (this.#reason !== undefined || this.#ended) return;
    this.#reason = reason;
    this.#controller?.abort(reason);
    this.#interrupt?.(reason);
  }

  /**
   * `work`'s outcome, or a rejection with the abort reason as soon as the call is aborted. Work cut
   * off this way runs on in the background (its store calls see the signal and roll back); its
   * result is dropped.
   */
  race<T>(work: Promise<T>): Promise<T> {
    if (this.#reason !== undefined) {
      work.catch(() => {});
      return Promise.reject(this.#reason);
    }
    return new Promise<T>((resolve, reject) => {
      this.#interrupt = reject;
      work.then(resolve, reject);
    });
  }

  end(): void {
    this.#ended = true;
    this.#interrupt = undefined;
    clearTimeout(this.timer);
  }

  private readonly expire = (): void => {
    this.abort(deadlineExceeded());
  };

  private readonly clientGone = (): void => {
    // A client whose deadline passed resets the stream on its own clock, which runs ahead of ours
    // by the time its request took to arrive: a reset that close to the deadline is the deadline.
    if (Date.now() >= this.deadline - DEADLINE_SLACK_MS) this.expire();
    else this.abort(new ServiceError("CANCELLED", "the client cancelled the call"));
  };
}

function shuttingDownError(): ServiceError {
  return new ServiceError(
    "SHUTTING_DOWN",
    "the server is shutting down and cut this call short; what it did not commit was rolled back. Retry",
  );
}

const CODE_NAMES = new Map<number, string>(
  Object.entries(Code)
    .filter((entry): entry is [string, Code] => typeof entry[1] === "number")
    .map(([name, code]) => [code, name]),
);

/** "OK", "NotFound", ...: connect's names, with 0 for success. */
export function codeName(code: number): string {
  return code === 0 ? "OK" : (CODE_NAMES.get(code) ?? String(code));
}
