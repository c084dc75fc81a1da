// A real transport server on an ephemeral port, over the real RpcPipeline (dev tokens, the caller
// table, the activation gate) with stub handlers, and one client interface backed by every client
// stack and protocol the service speaks.

import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import {
  create,
  type DescMessage,
  type DescMethodUnary,
  fromBinary,
  fromJsonString,
  type MessageInitShape,
  type MessageShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { codeFromString } from "@connectrpc/connect/protocol-connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { CallerAuthenticator } from "../../src/api/callers.js";
import type { AdmissionController } from "../../src/api/rpc/admission.js";
import { RpcPipeline } from "../../src/api/rpc/pipeline.js";
import type { Call, RpcLabels } from "../../src/api/rpc/types.js";
import { ServiceError } from "../../src/app/errors.js";
import type { Organizations } from "../../src/app/organizations.js";
import type { TransportLimits } from "../../src/transport/limits.js";
import type { PortRefusalReason } from "../../src/transport/refusals.js";
import { type RunningServer, serve } from "../../src/transport/server.js";
import type { TlsCredentials } from "../../src/transport/tls.js";
import { until } from "../support/until.js";

export const MAX_REQUEST_BYTES = 16 * 1024;
/** getConnection with this id prefix sleeps for the number of milliseconds that follows. */
export const SLEEP_PREFIX = "cxn_sleep_";
/** getConnection with this id fails with a message that needs percent-encoding in grpc-message. */
export const UNUSUAL_MESSAGE_ID = "cxn_unusual";
export const UNUSUAL_MESSAGE = "naïve 100% failure\nline two";
/** getConnection with this id waits until the test calls `stubs.releaseHolds()`. */
export const HOLD_ID = "cxn_hold";

export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** The stub handlers, and what they saw. */
export class Stubs {
  activations = 0;
  /** getConnection calls that began their sleep. */
  sleepsStarted = 0;
  /** getConnection calls that ran to the end of their sleep. */
  sleepsFinished = 0;
  /** getConnection calls waiting on HOLD_ID. */
  private holds: (() => void)[] = [];
  /** The Call the latest getConnection was handed (only the latest: storms must not pile them up). */
  lastCall: Call | undefined;

  get held(): number {
    return this.holds.length;
  }

  releaseHolds(): void {
    for (const release of this.holds.splice(0)) release();
  }

  register(pipeline: RpcPipeline): void {
    pipeline.register(ConnectionService, {
      createConnection: async (request) => ({ connection: { id: "cxn_new", name: request.name } }),
      getConnection: async (request, call) => {
        this.lastCall = call;
        if (request.id.startsWith(SLEEP_PREFIX)) {
          this.sleepsStarted++;
          await sleep(Number(request.id.slice(SLEEP_PREFIX.length)));
          this.sleepsFinished++;
        }
        if (request.id === HOLD_ID) await new Promise<void>((resolve) => this.holds.push(resolve));
        if (request.id === UNUSUAL_MESSAGE_ID) throw new ServiceError("CONNECTION_NOT_FOUND", UNUSUAL_MESSAGE);
        return { connection: { id: request.id, name: "stub", sourceOrganizationId: call.organizationId } };
      },
      listConnections: async () => ({}),
      activateConnection: async (request) => {
        this.activations++;
        return { connection: { id: request.id } };
      },
      deactivateConnection: async (request) => ({ connection: { id: request.id } }),
      reactivateConnection: async (request) => ({ connection: { id: request.id } }),
      listConnectionEvents: async () => ({}),
      checkConnection: async () => ({ allowed: true }),
      updateConnection: async (request) => ({ connection: { id: request.connection?.id ?? "" } }),
      batchCheckConnection: async (request) => ({ results: request.checks.map(() => ({ allowed: true })) }),
      // Three messages (cursors "1" to "3"), then OK; start_after "fail" ends with NOT_FOUND after one.
      watchConnectionEvents: async function* (request) {
        for (let cursor = 1; cursor <= 3; cursor++) {
          yield { cursor: String(cursor) };
          if (request.startAfter === "fail") throw new ServiceError("CONNECTION_NOT_FOUND", "stub failure");
        }
      },
    });
    pipeline.register(OrganizationService, {
      createOrganization: async (request) => ({ organization: { id: request.id || "org_new", name: request.name } }),
      getOrganization: async (request) => ({ organization: { id: request.id, name: "Stub Org" } }),
    });
  }
}

export interface Observed {
  readonly path: string;
  readonly code: number;
}

export interface TestServer {
  readonly running: RunningServer;
  readonly stubs: Stubs;
  /** The status code of every RPC that went through the pipeline, as the server saw it. */
  readonly observed: Observed[];
  /** What the port turned away, in order, as connections_port_refusals_total counts it. */
  readonly portRefusals: PortRefusalReason[];
  /** The callers whose connections stopped reading for the rest of a turn, once per such turn. */
  readonly readsHeld: string[];
  readonly address: string;
  readonly baseUrl: string;
  setReady(ready: boolean): void;
  /** Resolves when the pipeline has finished an RPC on `path` with `code`. */
  waitForObserved(path: string, code: number): Promise<void>;
}

/**
 * The real pipeline (dev tokens, only org_a registered) over the stub handlers; `observed` hears
 * every RPC; `admission`: admission control, off when left out.
 */
export function createTestPipeline(
  stubs: Stubs,
  observed: Observed[] = [],
  admission?: AdmissionController,
): RpcPipeline {
  const organizations = { isRegistered: async (id: string) => id === "org_a" } as unknown as Organizations;
  const pipeline = new RpcPipeline({
    authenticator: CallerAuthenticator.dev(),
    organizations,
    logger: pino({ level: "silent" }),
    maxDeadlineMs: 30_000,
    observer: { observe: (labels: RpcLabels, code: number) => observed.push({ path: labels.path, code }) },
    admission: admission === undefined ? undefined : { controller: admission },
  });
  stubs.register(pipeline);
  return pipeline;
}

/**
 * `limits`: transport limits to use instead of the production defaults (short timeouts in tests);
 * `admission`: admission control, off when left out; `tls`: the port serves TLS only.
 */
export async function startTestServer(
  limits: Partial<TransportLimits> = {},
  admission?: AdmissionController,
  tls?: TlsCredentials,
): Promise<TestServer> {
  const observed: Observed[] = [];
  const portRefusals: PortRefusalReason[] = [];
  const readsHeld: string[] = [];
  const stubs = new Stubs();
  const pipeline = createTestPipeline(stubs, observed, admission);
  let ready = true;
  const running = await serve({
    pipeline,
    host: "127.0.0.1",
    port: 0,
    logger: pino({ level: "silent" }),
    maxRequestBytes: MAX_REQUEST_BYTES,
    readiness: async () => ready,
    limits,
    tls,
    observer: {
      portRefused: (reason) => portRefusals.push(reason),
      readsHeld: (caller) => readsHeld.push(caller),
    },
  });
  const address = `127.0.0.1:${running.port}`;
  return {
    running,
    stubs,
    observed,
    portRefusals,
    readsHeld,
    address,
    baseUrl: `http://${address}`,
    setReady(value) {
      ready = value;
    },
    waitForObserved(path, code) {
      return until(
        () => observed.some((entry) => entry.path === path && entry.code === code),
        `the pipeline to finish ${path} with code ${code}`,
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Clients: the same call through every stack.

export interface CallOptions {
  readonly headers?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

export type Outcome<O> =
  | { readonly ok: true; readonly message: O; readonly headers: Record<string, string> }
  | {
      readonly ok: false;
      readonly code: Code;
      readonly message: string;
      readonly errorInfo: ErrorInfo | undefined;
      readonly headers: Record<string, string>;
    };

export interface TestClient {
  readonly name: string;
  call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<Outcome<MessageShape<O>>>;
  close(): void;
}

export type ClientKind =
  | "grpc-js"
  | "connect-node gRPC (h2)"
  | "connect-node Connect binary (h2)"
  | "connect-node Connect JSON (HTTP/1.1)"
  | "connect-node gRPC-Web (h2)"
  | "connect-node gRPC-Web (HTTP/1.1)"
  | "fetch Connect JSON (HTTP/1.1)";

export const CLIENT_KINDS: readonly ClientKind[] = [
  "grpc-js",
  "connect-node gRPC (h2)",
  "connect-node Connect binary (h2)",
  "connect-node Connect JSON (HTTP/1.1)",
  "connect-node gRPC-Web (h2)",
  "connect-node gRPC-Web (HTTP/1.1)",
  "fetch Connect JSON (HTTP/1.1)",
];

export function createTestClient(kind: ClientKind, server: Pick<TestServer, "address" | "baseUrl">): TestClient {
  const { baseUrl } = server;
  const http1 = () => {
    const agent = new http.Agent({ keepAlive: true });
    return { agent, options: { httpVersion: "1.1" as const, nodeOptions: { agent } } };
  };
  switch (kind) {
    case "grpc-js":
      return new GrpcJsClient(server.address);
    case "connect-node gRPC (h2)": {
      const sessionManager = new Http2SessionManager(baseUrl);
      return new ConnectClient(kind, createGrpcTransport({ baseUrl, sessionManager }), () => sessionManager.abort());
    }
    case "connect-node Connect binary (h2)": {
      const sessionManager = new Http2SessionManager(baseUrl);
      const transport = createConnectTransport({ baseUrl, httpVersion: "2", sessionManager, useBinaryFormat: true });
      return new ConnectClient(kind, transport, () => sessionManager.abort());
    }
    case "connect-node gRPC-Web (h2)": {
      const sessionManager = new Http2SessionManager(baseUrl);
      const transport = createGrpcWebTransport({ baseUrl, httpVersion: "2", sessionManager });
      return new ConnectClient(kind, transport, () => sessionManager.abort());
    }
    case "connect-node Connect JSON (HTTP/1.1)": {
      const { agent, options } = http1();
      return new ConnectClient(kind, createConnectTransport({ baseUrl, ...options }), () => agent.destroy());
    }
    case "connect-node gRPC-Web (HTTP/1.1)": {
      const { agent, options } = http1();
      return new ConnectClient(kind, createGrpcWebTransport({ baseUrl, ...options }), () => agent.destroy());
    }
    case "fetch Connect JSON (HTTP/1.1)":
      return new FetchJsonClient(baseUrl);
  }
}

function headerRecord(headers: Headers): Record<string, string> {
  const record: Record<string, string> = {};
  headers.forEach((value, name) => {
    record[name.toLowerCase()] = value;
  });
  return record;
}

function pathOf(method: DescMethodUnary): string {
  return `/${method.parent.typeName}/${method.name}`;
}

class ConnectClient implements TestClient {
  constructor(
    readonly name: string,
    private readonly transport: Transport,
    private readonly dispose: () => void,
  ) {}

  async call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<Outcome<MessageShape<O>>> {
    try {
      const response = await this.transport.unary(
        method,
        undefined,
        options.timeoutMs ?? 20_000,
        new Headers(options.headers),
        request,
      );
      return {
        ok: true,
        message: response.message,
        headers: { ...headerRecord(response.header), ...headerRecord(response.trailer) },
      };
    } catch (error) {
      if (!(error instanceof ConnectError)) throw error;
      return {
        ok: false,
        code: error.code,
        message: error.rawMessage,
        errorInfo: error.findDetails(ErrorInfoSchema)[0],
        headers: headerRecord(error.metadata),
      };
    }
  }

  close(): void {
    this.dispose();
  }
}

interface ConnectErrorBody {
  code?: string;
  message?: string;
  details?: { type?: string; value?: string }[];
}

/** Connect with JSON as a developer writes it by hand: POST /<service>/<method>. */
export class FetchJsonClient implements TestClient {
  readonly name = "fetch Connect JSON (HTTP/1.1)";

  constructor(private readonly baseUrl: string) {}

  call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<Outcome<MessageShape<O>>> {
    return this.post(method, toJsonString(method.input, create(method.input, request)), options);
  }

  /** Sends any body, for requests that no generated client would make. */
  async post<O extends DescMessage>(
    method: DescMethodUnary<DescMessage, O>,
    body: string,
    options: CallOptions = {},
  ): Promise<Outcome<MessageShape<O>>> {
    const timeout: Record<string, string> =
      options.timeoutMs === undefined ? {} : { "connect-timeout-ms": String(options.timeoutMs) };
    const response = await fetch(`${this.baseUrl}${pathOf(method)}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...timeout, ...options.headers },
      body,
    });
    const text = await response.text();
    const headers = headerRecord(response.headers);
    if (response.status === 200) return { ok: true, message: fromJsonString(method.output, text), headers };
    const error = JSON.parse(text) as ConnectErrorBody;
    const detail = error.details?.find((each) => each.type === ErrorInfoSchema.typeName);
    return {
      ok: false,
      code: codeFromString(error.code ?? "") ?? Code.Unknown,
      message: error.message ?? "",
      errorInfo:
        detail?.value === undefined ? undefined : fromBinary(ErrorInfoSchema, Buffer.from(detail.value, "base64")),
      headers,
    };
  }

  close(): void {}
}

export class GrpcJsClient implements TestClient {
  readonly name = "grpc-js";
  private readonly client: grpc.Client;

  constructor(address: string) {
    // A connection of its own: grpc-js would otherwise share one with every client of the same
    // target, and with admission control a connection is held to its caller's share.
    this.client = new grpc.Client(address, grpc.credentials.createInsecure(), {
      "grpc.use_local_subchannel_pool": 1,
    });
  }

  call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<Outcome<MessageShape<O>>> {
    const bytes = Buffer.from(toBinary(method.input, create(method.input, request)));
    return this.callWithBytes(method, bytes, options);
  }

  /** Sends these bytes as the request message, valid or not. */
  callWithBytes<O extends DescMessage>(
    method: DescMethodUnary<DescMessage, O>,
    bytes: Buffer,
    options: CallOptions = {},
  ): Promise<Outcome<MessageShape<O>>> {
    const metadata = new grpc.Metadata();
    for (const [name, value] of Object.entries(options.headers ?? {})) metadata.set(name, value);
    return new Promise((resolve) => {
      const headers: Record<string, string> = {};
      let message: MessageShape<O> | undefined;
      const call = this.client.makeUnaryRequest(
        pathOf(method),
        (value: Buffer) => value,
        (value: Buffer) => fromBinary(method.output, value),
        bytes,
        metadata,
        { deadline: Date.now() + (options.timeoutMs ?? 20_000) },
        (_error, value) => {
          message = value;
        },
      );
      call.on("metadata", (received: grpc.Metadata) => Object.assign(headers, metadataRecord(received)));
      call.on("status", (status: grpc.StatusObject) => {
        Object.assign(headers, metadataRecord(status.metadata));
        if (status.code === grpc.status.OK && message !== undefined) {
          resolve({ ok: true, message, headers });
          return;
        }
        resolve({
          ok: false,
          code: status.code as number as Code,
          message: status.details,
          errorInfo: errorInfoFromStatusDetails(status.metadata),
          headers,
        });
      });
    });
  }

  close(): void {
    this.client.close();
  }
}

function metadataRecord(metadata: grpc.Metadata): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [name, value] of Object.entries(metadata.getMap())) {
    if (typeof value === "string") record[name] = value;
  }
  return record;
}

/** The ErrorInfo inside grpc-status-details-bin (a google.rpc.Status). */
export function errorInfoFromStatusDetails(metadata: grpc.Metadata): ErrorInfo | undefined {
  const raw = metadata.get("grpc-status-details-bin")[0];
  if (raw === undefined || typeof raw === "string") return undefined;
  for (const detail of fromBinary(StatusSchema, raw).details) {
    const info = anyUnpack(detail, ErrorInfoSchema);
    if (info !== undefined) return info;
  }
  return undefined;
}
