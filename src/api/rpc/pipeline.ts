// The transport-neutral RPC pipeline. Every transport (the gRPC fast path, and Connect/gRPC-Web/
// gRPC through connect-node) decodes a request, hands it to `invoke`, and encodes what comes back.
// So there is one caller policy, one organization check, one error mapping and one log line for
// every protocol, and the activation gate runs before any handler or database work, whatever the
// transport. Server-streaming RPCs (the change feed) go through the same steps; only their end
// differs: they are not cut by the unary deadline cap, and their one log line comes when they end.
// The vocabulary is in types.ts, the method table in methods.ts, one call's cancellation in
// call-scope.ts.

import { create, type DescMessage, type Message, type MessageInitShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code } from "@connectrpc/connect";
import type { Logger } from "pino";
import { invalidArgument, ServiceError } from "../../app/errors.js";
import { isOrganizationId } from "../../app/ids.js";
import type { Cancellation } from "../../runtime/cancellation.js";
import { UnderWay } from "../../runtime/under-way.js";
import type { CallerName } from "../callers.js";
import { requestIdFor } from "../request-id.js";
import { type RpcStatus, toRpcStatus } from "../status.js";
import { type AdmissionController, AdmissionTicket, keyOf } from "./admission.js";
import { CallScope, shuttingDownError } from "./call-scope.js";
import { methodsOf } from "./methods.js";
import type {
  AdmissionMeta,
  Call,
  RegisteredMethod,
  RequestMeta,
  RpcLabels,
  RpcPipelineOptions,
  RpcResult,
  RpcSpan,
  RpcStream,
  ServiceHandlers,
  StreamControl,
  StreamingMethod,
  UnaryMethod,
} from "./types.js";

/** A call that admission refused, carried to the end of `run` like any failure. */
class RefusedError extends Error {
  constructor(readonly status: RpcStatus) {
    super(status.message);
  }
}

/** A call that admission refused: the answer to send at once, and the caller it authenticated as. */
export class AdmissionRefused {
  constructor(
    readonly status: RpcStatus,
    readonly caller: CallerName | undefined,
  ) {}
}

/** How a stream that the pipeline ran ended with an error, for the transport to send. */
export class RpcStreamError extends Error {
  constructor(readonly status: RpcStatus) {
    super(status.message);
    this.name = "RpcStreamError";
  }
}

const MAX_ACTOR_LENGTH = 200;

/**
 * The Call a handler gets. A class, not an object literal with `get signal()`: V8 gives every
 * evaluation of such a literal a hidden class of its own, made in the old generation and holding
 * the getter, so each call's objects stayed reachable from there through young-generation
 * collections, were promoted, and piled up until a full collection's pause (docs/performance.md).
 */
class AdmittedCall implements Call {
  constructor(
    readonly caller: CallerName,
    readonly organizationId: string,
    readonly actor: string,
    readonly requestId: string,
    private readonly scope: CallScope,
  ) {}

  get signal(): Cancellation {
    return this.scope;
  }
}

/** A stream whose client went away: nobody receives a status, but the log and metrics say so. */
const CANCELLED: RpcStatus = {
  code: Code.Canceled,
  message: "cancelled by the client",
  reason: "CANCELLED",
  metadata: {},
};

export class RpcPipeline {
  private readonly methods = new Map<string, RegisteredMethod>();
  /** The calls running now, so that shutdown can end them with SHUTTING_DOWN. */
  private readonly inFlight = new UnderWay<CallScope>();
  private shuttingDown = false;
  /**
   * The one line per RPC. Its fields are set below and none can carry a secret, so it skips the
   * logger's redaction pass, which cost about as much as the rest of the line.
   */
  private readonly rpcLog: Logger;

  /** The one answer to every call that admission refuses, or whose wait for room reached MAX_DEADLINE_MS. */
  readonly overloaded: RpcStatus;

  constructor(private readonly options: RpcPipelineOptions) {
    this.rpcLog = options.logger.child({}, { redact: [] });
    const pushbackMs = options.admission?.controller.settings.pushbackMs ?? 0;
    this.overloaded = {
      ...toRpcStatus(
        new ServiceError(
          "OVERLOADED",
          `the service is at capacity for this caller: retry after ${pushbackMs} ms (grpc-retry-pushback-ms)`,
        ),
      ).status,
      retryPushbackMs: pushbackMs,
    };
  }

  /** Admission control, when on: the transport holds each caller's connections to its share. */
  get admission(): AdmissionController | undefined {
    return this.options.admission?.controller;
  }

  register<T extends GenServiceMethods>(service: GenService<T>, handlers: ServiceHandlers<T>): void {
    for (const method of methodsOf(service, handlers)) this.methods.set(method.path, method);
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
    for (const scope of this.inFlight.values()) scope.abort(shuttingDownError());
  }

  /**
   * Admission control for a unary call, before its body is read: authenticates the caller (once:
   * the ticket carries it on to `invoke`) and asks the limiter for room. Returns the ticket to pass
   * to `invoke` (the transport abandons it if the call ends before that), or the RESOURCE_EXHAUSTED
   * OVERLOADED status to answer at once, without reading the body. Either names the caller. A
   * ticket that is `waiting` has no room yet: the transport reads the body once `whenAdmitted`
   * says so, and ends the wait (`expire`) at `waitUntil`.
   */
  enter(meta: AdmissionMeta): AdmissionTicket | AdmissionRefused {
    const caller = this.authenticate(meta);
    const admission = this.options.admission;
    if (admission === undefined) return new AdmissionTicket(undefined, caller);
    const entered = admission.controller.enter(caller, performance.now());
    if (entered instanceof AdmissionTicket) return entered;
    admission.observer?.admissionRefused(keyOf(caller), entered);
    return new AdmissionRefused(this.overloaded, caller);
  }

  /**
   * Until when (epoch ms) a call that entered now may wait for room: its deadline, capped as every
   * call's is. A wait that ends at the cap is answered OVERLOADED (nothing was done), at the
   * client's own deadline DEADLINE_EXCEEDED.
   */
  waitUntil(deadline: number | undefined): number {
    return Math.min(deadline ?? Number.POSITIVE_INFINITY, Date.now() + this.options.maxDeadlineMs);
  }

  /**
   * Runs one RPC through authentication, the caller table, the organization check and its handler.
   * `ticket` is what `enter` gave the transport; without one, admission happens here.
   */
  invoke(method: UnaryMethod, request: Message, meta: RequestMeta, ticket?: AdmissionTicket): Promise<RpcResult> {
    const tracing = this.options.tracing;
    if (tracing === undefined) return this.run(method, request, meta, ticket, undefined);
    return tracing.serve(method.path, meta, (span) => this.run(method, request, meta, ticket, span));
  }

  private async run(
    method: UnaryMethod,
    request: Message,
    meta: RequestMeta,
    given: AdmissionTicket | undefined,
    span: RpcSpan | undefined,
  ): Promise<RpcResult> {
    const started = performance.now();
    const requestId = requestIdFor(meta.header("x-request-id"));
    // One deadline for the whole call: authentication and the organization lookup count too.
    const deadline = Math.min(meta.deadline ?? Number.POSITIVE_INFINITY, Date.now() + this.options.maxDeadlineMs);
    const scope = new CallScope(meta, deadline);
    const running = this.inFlight.add(scope);
    if (this.shuttingDown) scope.abort(shuttingDownError());
    const ticket = given ?? this.enter(meta);
    let result: RpcResult;
    try {
      if (!(ticket instanceof AdmissionTicket)) throw new RefusedError(ticket.status);
      // A call entered here has been read already: it is not made to wait for room.
      if (ticket.waiting) {
        ticket.abandon();
        throw new RefusedError(this.overloaded);
      }
      ticket.claim();
      const work = this.authorizeAndHandle(method, request, meta, requestId, scope, ticket.caller);
      // The hold on the limit lasts as long as the work does, even when the call is answered
      // early (deadline, cancellation) and its store calls are still rolling back.
      const release = () => ticket.release();
      work.then(release, release);
      const response = await scope.race(work);
      result = { ok: true, response: create(method.method.output, response), requestId };
    } catch (error) {
      const { status, internalCause } =
        error instanceof RefusedError ? { status: error.status, internalCause: undefined } : toRpcStatus(error);
      if (internalCause !== undefined) {
        this.options.logger.error({ err: internalCause, requestId, method: method.path }, "rpc failed");
      }
      result = { ok: false, status, requestId };
    } finally {
      this.inFlight.remove(running);
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
      const call = await this.admit(method, meta, requestId, scope, this.authenticate(meta));
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
    // Admission's refusals are counted by caller and reason (connections_admission_refused_total);
    // under a storm a log line each would cost more than the refusals themselves.
    this.rpcLog[status.reason === "OVERLOADED" ? "debug" : "info"](
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
    caller: CallerName | undefined,
  ): Promise<MessageInitShape<DescMessage>> {
    return method.handle(request, await this.admit(method, meta, requestId, scope, caller));
  }

  /** The caller that the token and/or client certificate name; undefined when they name none. */
  private authenticate(meta: AdmissionMeta): CallerName | undefined {
    return this.options.authenticator.authenticate(meta.header("authorization"), meta.peerSpiffeId?.());
  }

  /** The caller table, x-actor and the acting organization for an authenticated caller: the Call, or a throw. */
  private async admit(
    method: RegisteredMethod,
    meta: RequestMeta,
    requestId: string,
    scope: CallScope,
    caller: CallerName | undefined,
  ): Promise<Call> {
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
    return new AdmittedCall(caller, scope.organizationId, actor, requestId, scope);
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

const CODE_NAMES = new Map<number, string>(
  Object.entries(Code)
    .filter((entry): entry is [string, Code] => typeof entry[1] === "number")
    .map(([name, code]) => [code, name]),
);

/** "OK", "NotFound", ...: connect's names, with 0 for success. */
export function codeName(code: number): string {
  return code === 0 ? "OK" : (CODE_NAMES.get(code) ?? String(code));
}
