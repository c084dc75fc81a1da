// End-to-end harness: the real service (startService, as main.ts runs it) on an ephemeral port
// over a fresh test database, and ONE typed client interface that the suites use, backed by
// three different client stacks:
//   - "connect-grpc":  connect-node, gRPC protocol over HTTP/2 (h2c)
//   - "connect-http1": connect-node, Connect protocol (JSON) over HTTP/1.1
//   - "grpc-js":       @grpc/grpc-js with protobuf-es serializers
// Every failure, whatever the stack, becomes an RpcError { code, reason, domain, metadata, headers }
// with the google.rpc.ErrorInfo decoded from the wire.

import { randomBytes } from "node:crypto";
import http from "node:http";
import https from "node:https";
import {
  create,
  type DescMessage,
  type DescMethod,
  fromBinary,
  type Message,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { type CallOptions, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import { afterAll, beforeAll, describe, expect } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { type RunningService, startService } from "../../src/composition/start-service.js";
import { loadConfig } from "../../src/config/config.js";
import {
  acceptanceDatabases,
  describeEachDatabase,
  type ProvisionedDatabase,
  provisionDatabase,
  type TestDatabase,
} from "./databases.js";

export { Code } from "@connectrpc/connect";

// ---------------------------------------------------------------------------------------------
// Types: the RPCs of both services by their local names, with request and response shapes.

type ConnectionMethods = (typeof ConnectionService)["method"];
type OrganizationMethods = (typeof OrganizationService)["method"];
export type Rpcs = ConnectionMethods & OrganizationMethods;
export type RpcName = keyof Rpcs & string;
export type RpcRequest<K extends RpcName> = MessageInitShape<Rpcs[K]["input"]>;
export type RpcResponse<K extends RpcName> = MessageShape<Rpcs[K]["output"]>;

const METHODS: ReadonlyMap<string, DescMethod> = new Map(
  [...ConnectionService.methods, ...OrganizationService.methods].map((method) => [method.localName, method]),
);

/**
 * The local names of every RPC of both services ("createConnection", ..., "getOrganization"). A
 * server-streaming RPC (watchConnectionEvents) is called like the others: the call resolves with
 * its first response message and then cancels the stream, or rejects with the stream's error.
 */
export const RPC_NAMES: readonly RpcName[] = [...METHODS.keys()] as RpcName[];

export const CALLERS = ["dashboard-bff", "api-gateway", "token-service", "provisioning"] as const;
export type Caller = (typeof CALLERS)[number];

export const ERROR_DOMAIN = "connections.v1";

/** What a call sends besides its message. */
export interface CallContext {
  /** Sends `authorization: Bearer dev-<caller>`; null sends no authorization header at all. */
  readonly caller?: Caller | null;
  /** Sends this exact authorization header value (overrides `caller`). */
  readonly authorization?: string;
  /** x-organization-id; omitted when undefined. */
  readonly organizationId?: string;
  /** x-actor; omitted when undefined. */
  readonly actor?: string;
  /** x-request-id; omitted when undefined. */
  readonly requestId?: string;
  /** Any other request headers, e.g. traceparent. */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface RpcReply<K extends RpcName> {
  readonly message: RpcResponse<K>;
  /** Response headers and trailers, lower-case names (binary values left out). */
  readonly headers: Readonly<Record<string, string>>;
}

/** A failed RPC, the same shape from every client stack. */
export class RpcError extends Error {
  constructor(
    readonly code: Code,
    readonly rawMessage: string,
    /** ErrorInfo.reason, or "" when the error carried no ErrorInfo. */
    readonly reason: string,
    /** ErrorInfo.domain, or "". */
    readonly domain: string,
    /** ErrorInfo.metadata. */
    readonly metadata: Readonly<Record<string, string>>,
    /** Response headers and trailers, lower-case names. */
    readonly headers: Readonly<Record<string, string>>,
  ) {
    super(`[${Code[code] ?? code}${reason === "" ? "" : ` ${reason}`}] ${rawMessage}`);
    this.name = "RpcError";
  }
}

export type ClientKind = "connect-grpc" | "connect-http1" | "grpc-js" | "in-memory";
/** The clients every end-to-end suite runs through (the in-memory one has its own, faster layer). */
export const CLIENT_KINDS: readonly ClientKind[] = ["connect-grpc", "connect-http1", "grpc-js"];

/** A facade acting as one caller for one organization: each RPC resolves with its response message. */
export type Session = {
  readonly [K in RpcName]: (request: RpcRequest<K>, extra?: CallContext) => Promise<RpcResponse<K>>;
};

export interface RpcClient {
  readonly kind: ClientKind;
  call<K extends RpcName>(rpc: K, request: RpcRequest<K>, context?: CallContext): Promise<RpcReply<K>>;
  /** A facade that sends `context` (merged with per-call `extra`) on every call. */
  as(context: CallContext): Session;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Headers.

export function devToken(caller: Caller): string {
  return `dev-${caller}`;
}

export function requestHeaders(context: CallContext): Record<string, string> {
  const headers: Record<string, string> = {};
  const caller = context.caller === undefined ? "dashboard-bff" : context.caller;
  if (context.authorization !== undefined) headers.authorization = context.authorization;
  else if (caller !== null) headers.authorization = `Bearer ${devToken(caller)}`;
  if (context.organizationId !== undefined) headers["x-organization-id"] = context.organizationId;
  if (context.actor !== undefined) headers["x-actor"] = context.actor;
  if (context.requestId !== undefined) headers["x-request-id"] = context.requestId;
  return { ...headers, ...context.headers };
}

function methodOf(rpc: string): DescMethod {
  const method = METHODS.get(rpc);
  if (method === undefined) throw new Error(`unknown RPC ${rpc}`);
  return method;
}

function sessionOf(client: Pick<RpcClient, "call">, context: CallContext): Session {
  const session: Record<string, (request: unknown, extra?: CallContext) => Promise<unknown>> = {};
  for (const rpc of RPC_NAMES) {
    session[rpc] = async (request, extra) =>
      (await client.call(rpc, request as RpcRequest<typeof rpc>, { ...context, ...extra })).message;
  }
  return session as unknown as Session;
}

// ---------------------------------------------------------------------------------------------
// connect-node.

type ConnectCall = (request: unknown, options: CallOptions) => Promise<Message> | AsyncIterable<Message>;

class ConnectRpcClient implements RpcClient {
  private readonly clients: Readonly<Record<string, Record<string, ConnectCall>>>;

  constructor(
    readonly kind: ClientKind,
    transport: Transport,
    private readonly dispose: () => void,
  ) {
    this.clients = {
      [ConnectionService.typeName]: createClient(ConnectionService, transport) as unknown as Record<
        string,
        ConnectCall
      >,
      [OrganizationService.typeName]: createClient(OrganizationService, transport) as unknown as Record<
        string,
        ConnectCall
      >,
    };
  }

  async call<K extends RpcName>(rpc: K, request: RpcRequest<K>, context: CallContext = {}): Promise<RpcReply<K>> {
    const method = methodOf(rpc);
    const call = this.clients[method.parent.typeName]?.[method.localName];
    if (call === undefined) throw new Error(`no connect client for ${rpc}`);
    const headers: Record<string, string> = {};
    const collect = (received: Headers) => {
      received.forEach((value, name) => {
        headers[name.toLowerCase()] = value;
      });
    };
    const abort = new AbortController();
    try {
      const response = call(request, {
        headers: requestHeaders(context),
        onHeader: collect,
        onTrailer: collect,
        timeoutMs: 20_000,
        signal: abort.signal,
      });
      const message = Symbol.asyncIterator in response ? await firstOf(response, abort) : await response;
      return { message: message as RpcResponse<K>, headers };
    } catch (error) {
      if (!(error instanceof ConnectError)) throw error;
      collect(error.metadata);
      const info = error.findDetails(ErrorInfoSchema)[0];
      throw new RpcError(
        error.code,
        error.rawMessage,
        info?.reason ?? "",
        info?.domain ?? "",
        { ...info?.metadata },
        headers,
      );
    }
  }

  as(context: CallContext): Session {
    return sessionOf(this, context);
  }

  async close(): Promise<void> {
    this.dispose();
  }
}

/** A client over any connect Transport, e.g. connect's createRouterTransport: no port, no HTTP. */
export function transportRpcClient(transport: Transport): RpcClient {
  return new ConnectRpcClient("in-memory", transport, () => {});
}

function connectGrpcClient(baseUrl: string): RpcClient {
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return new ConnectRpcClient("connect-grpc", transport, () => sessionManager.abort());
}

function connectHttp1Client(baseUrl: string): RpcClient {
  const agent = new http.Agent({ keepAlive: true });
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } });
  return new ConnectRpcClient("connect-http1", transport, () => agent.destroy());
}

/** PEM material for a client over TLS; `cert` and `key` make it mTLS. */
export interface ClientTls {
  readonly ca: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

/** A client of `kind` to https://127.0.0.1:<port>, verifying the server against `tls.ca`. */
export function tlsRpcClient(kind: ClientKind, port: number, tls: ClientTls): RpcClient {
  const baseUrl = `https://127.0.0.1:${port}`;
  const nodeOptions = { ca: tls.ca, cert: tls.cert, key: tls.key };
  if (kind === "grpc-js") {
    return new GrpcJsRpcClient(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(tls.ca, tls.key ?? null, tls.cert ?? null),
    );
  }
  if (kind === "connect-grpc") {
    const sessionManager = new Http2SessionManager(baseUrl, undefined, nodeOptions);
    const transport = createGrpcTransport({ baseUrl, sessionManager });
    return new ConnectRpcClient(kind, transport, () => sessionManager.abort());
  }
  const agent = new https.Agent({ keepAlive: true, ...nodeOptions });
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } });
  return new ConnectRpcClient(kind, transport, () => agent.destroy());
}

/** The first message of a server stream, then the stream cancelled. */
async function firstOf(stream: AsyncIterable<Message>, abort: AbortController): Promise<Message> {
  for await (const message of stream) {
    abort.abort();
    return message;
  }
  throw new Error("the stream ended without a message");
}

// ---------------------------------------------------------------------------------------------
// @grpc/grpc-js.

function metadataRecord(metadata: grpc.Metadata | undefined): Record<string, string> {
  const record: Record<string, string> = {};
  if (metadata === undefined) return record;
  for (const [name, value] of Object.entries(metadata.getMap())) {
    if (typeof value === "string") record[name.toLowerCase()] = value;
  }
  return record;
}

/** Decodes google.rpc.ErrorInfo from the grpc-status-details-bin trailer (a google.rpc.Status). */
export function errorInfoFromTrailer(metadata: grpc.Metadata | undefined) {
  const raw = metadata?.get("grpc-status-details-bin")[0];
  if (raw === undefined || typeof raw === "string") return undefined;
  const status = fromBinary(StatusSchema, raw);
  for (const detail of status.details) {
    const info = anyUnpack(detail, ErrorInfoSchema);
    if (info !== undefined) return info;
  }
  return undefined;
}

export function grpcMetadata(headers: Readonly<Record<string, string>>): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [name, value] of Object.entries(headers)) metadata.set(name, value);
  return metadata;
}

/** A grpc-js status that is not OK, as an RpcError. */
export function rpcErrorOf(status: grpc.StatusObject, headers: Readonly<Record<string, string>> = {}): RpcError {
  const info = errorInfoFromTrailer(status.metadata);
  return new RpcError(
    status.code as number as Code,
    status.details,
    info?.reason ?? "",
    info?.domain ?? "",
    { ...info?.metadata },
    headers,
  );
}

export class GrpcJsRpcClient implements RpcClient {
  readonly kind: ClientKind = "grpc-js";
  private readonly client: grpc.Client;

  constructor(address: string, credentials = grpc.credentials.createInsecure()) {
    this.client = new grpc.Client(address, credentials);
  }

  call<K extends RpcName>(rpc: K, request: RpcRequest<K>, context: CallContext = {}): Promise<RpcReply<K>> {
    const method = methodOf(rpc);
    const input: DescMessage = method.input;
    const output: DescMessage = method.output;
    const path = `/${method.parent.typeName}/${method.name}`;
    const serialize = (value: RpcRequest<K>) =>
      Buffer.from(toBinary(input, create(input, value as MessageInitShape<DescMessage>)));
    const deserialize = (bytes: Buffer) => fromBinary(output, bytes) as RpcResponse<K>;
    return method.methodKind === "server_streaming"
      ? this.firstOfStream(path, serialize, deserialize, request, context)
      : this.unary(path, serialize, deserialize, request, context);
  }

  /** One unary call with any serializers: also used to send bytes that are not a valid message. */
  unary<Req, Res>(
    path: string,
    serialize: (value: Req) => Buffer,
    deserialize: (bytes: Buffer) => Res,
    request: Req,
    context: CallContext,
  ): Promise<{ message: Res; headers: Record<string, string> }> {
    const metadata = grpcMetadata(requestHeaders(context));
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      let outcome: { error: grpc.ServiceError | null; message: Res | undefined } | undefined;
      const call = this.client.makeUnaryRequest<Req, Res>(
        path,
        serialize,
        deserialize,
        request,
        metadata,
        { deadline: Date.now() + 20_000 },
        (error, message) => {
          outcome = { error, message };
        },
      );
      call.on("metadata", (received: grpc.Metadata) => Object.assign(headers, metadataRecord(received)));
      // grpc-js calls the callback first and emits "status" right after it, with the trailers.
      call.on("status", (status: grpc.StatusObject) => {
        Object.assign(headers, metadataRecord(status.metadata));
        const error = outcome?.error ?? null;
        if (error === null && outcome?.message !== undefined) {
          resolve({ message: outcome.message, headers });
          return;
        }
        const info = errorInfoFromTrailer(status.metadata);
        reject(
          new RpcError(
            (error?.code ?? status.code) as number as Code,
            error?.details ?? status.details,
            info?.reason ?? "",
            info?.domain ?? "",
            { ...info?.metadata },
            headers,
          ),
        );
      });
    });
  }

  /** A server-streaming call: its first message (the stream is then cancelled), or its error. */
  firstOfStream<Req, Res>(
    path: string,
    serialize: (value: Req) => Buffer,
    deserialize: (bytes: Buffer) => Res,
    request: Req,
    context: CallContext,
  ): Promise<{ message: Res; headers: Record<string, string> }> {
    const metadata = grpcMetadata(requestHeaders(context));
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      const call = this.client.makeServerStreamRequest<Req, Res>(path, serialize, deserialize, request, metadata, {
        deadline: Date.now() + 20_000,
      });
      call.on("metadata", (received: grpc.Metadata) => Object.assign(headers, metadataRecord(received)));
      call.on("data", (message: Res) => {
        resolve({ message, headers });
        call.cancel();
      });
      call.on("error", () => {});
      call.on("status", (status: grpc.StatusObject) => {
        Object.assign(headers, metadataRecord(status.metadata));
        reject(rpcErrorOf(status, headers));
      });
    });
  }

  as(context: CallContext): Session {
    return sessionOf(this, context);
  }

  async close(): Promise<void> {
    this.client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The service.

export interface TestService {
  readonly database: TestDatabase;
  readonly port: number;
  /** "http://127.0.0.1:<port>" */
  readonly baseUrl: string;
  /** "127.0.0.1:<port>" */
  readonly address: string;
  /** One client of this kind, made on first use and closed with the service. */
  client(kind: ClientKind): RpcClient;
  /** A raw @grpc/grpc-js client, for sending bytes that are not a valid message. */
  grpcJs(): GrpcJsRpcClient;
  close(): Promise<void>;
}

/** Starts the real service on an ephemeral port over a new, empty database. */
export async function startTestService(
  database: TestDatabase,
  env: Readonly<Record<string, string>> = {},
): Promise<TestService> {
  const provisioned: ProvisionedDatabase = await provisionDatabase(database);
  let running: RunningService;
  try {
    const config = loadConfig({
      PORT: "0",
      ADMIN_PORT: "off",
      DATABASE_URL: provisioned.url,
      LOG_LEVEL: "silent",
      ...env,
    });
    // E2E_LOG_LEVEL=debug shows the service's log while investigating a failure.
    const level = process.env.E2E_LOG_LEVEL ?? "silent";
    running = await startService(config, pino({ level }, pino.destination(2)));
  } catch (error) {
    await provisioned.drop();
    throw error;
  }
  const address = `127.0.0.1:${running.port}`;
  const baseUrl = `http://${address}`;
  const clients = new Map<ClientKind, RpcClient>();
  let raw: GrpcJsRpcClient | undefined;
  return {
    database,
    port: running.port,
    baseUrl,
    address,
    client(kind) {
      let client = clients.get(kind);
      if (client === undefined) {
        client =
          kind === "connect-grpc"
            ? connectGrpcClient(baseUrl)
            : kind === "connect-http1"
              ? connectHttp1Client(baseUrl)
              : new GrpcJsRpcClient(address);
        clients.set(kind, client);
      }
      return client;
    },
    grpcJs() {
      raw ??= new GrpcJsRpcClient(address);
      return raw;
    },
    async close() {
      for (const client of clients.values()) await client.close();
      await raw?.close();
      try {
        await running.close();
      } finally {
        await provisioned.drop();
      }
    },
  };
}

/** Starts one service for the enclosing describe block (beforeAll) and closes it (afterAll). */
export function useTestService(database: TestDatabase, env: Readonly<Record<string, string>> = {}): () => TestService {
  let service: TestService | undefined;
  beforeAll(async () => {
    service = await startTestService(database, env);
  });
  afterAll(async () => {
    await service?.close();
    service = undefined;
  });
  return () => {
    if (service === undefined) throw new Error("the test service is not running (outside a test?)");
    return service;
  };
}

/** What a suite body gets: the database, the client kind, and lazy access to service and client. */
export interface E2E {
  readonly database: TestDatabase;
  readonly kind: ClientKind;
  service(): TestService;
  client(): RpcClient;
  /** A facade for `caller` acting for `organizationId` (and `actor`, when given). */
  as(caller: Caller, organizationId?: string, actor?: string): Session;
}

/**
 * Declares `body` for every test database and PostgreSQL through PgBouncer (one service per
 * database, shared by the client kinds) and, inside, for every client kind:
 * `title [database] > via <kind>`.
 */
export function describeE2E(
  title: string,
  body: (e2e: E2E) => void,
  options: { readonly kinds?: readonly ClientKind[]; readonly env?: Readonly<Record<string, string>> } = {},
): void {
  describeEachDatabase(
    title,
    (database) => {
      const service = useTestService(database, options.env);
      describe.each((options.kinds ?? CLIENT_KINDS).map((kind) => ({ kind })))("via $kind", ({ kind }) => {
        const client = () => service().client(kind);
        body({
          database,
          kind,
          service,
          client,
          as: (caller, organizationId, actor) =>
            client().as({
              caller,
              ...(organizationId === undefined ? {} : { organizationId }),
              ...(actor === undefined ? {} : { actor }),
            }),
        });
      });
    },
    acceptanceDatabases,
  );
}

// ---------------------------------------------------------------------------------------------
// Helpers for the suites.

/** A fresh identifier (letters, digits, '_'), unique across tests and runs. */
export function uniqueId(prefix: string): string {
  return `${prefix}_${randomBytes(6).toString("hex")}`;
}

/** Registers `count` new organizations through the provisioning caller; resolves with their ids. */
export async function registerOrganizations(client: RpcClient, count: number, prefix = "org"): Promise<string[]> {
  const provisioning = client.as({ caller: "provisioning" });
  const ids = Array.from({ length: count }, () => uniqueId(prefix));
  for (const id of ids) {
    const { organization } = await provisioning.createOrganization({ id, name: `Organization ${id}` });
    expect(organization?.id).toBe(id);
  }
  return ids;
}

/** Awaits `work` and returns its RpcError; fails the test when it succeeds or throws something else. */
export async function rpcError(work: Promise<unknown>): Promise<RpcError> {
  try {
    await work;
  } catch (error) {
    if (error instanceof RpcError) return error;
    throw error;
  }
  throw new Error("expected the RPC to fail, but it succeeded");
}

/**
 * Awaits `work`, asserts it failed with `code` and an ErrorInfo of `reason` in the connections.v1
 * domain (and, when given, these ErrorInfo metadata entries), and returns the error.
 */
export async function expectRpcError(
  work: Promise<unknown>,
  code: Code,
  reason: string,
  metadata?: Readonly<Record<string, string>>,
): Promise<RpcError> {
  const error = await rpcError(work);
  expect(
    { code: Code[error.code], reason: error.reason, domain: error.domain },
    `error was: ${error.message} ${JSON.stringify(error.metadata)}`,
  ).toEqual({ code: Code[code], reason, domain: ERROR_DOMAIN });
  if (metadata !== undefined) expect(error.metadata).toMatchObject(metadata);
  expect(error.rawMessage, "an error message a person can act on").not.toBe("");
  return error;
}

/** INVALID_ARGUMENT INVALID_ARGUMENT naming `field`. */
export function expectInvalidArgument(work: Promise<unknown>, field: string): Promise<RpcError> {
  return expectRpcError(work, Code.InvalidArgument, "INVALID_ARGUMENT", { field });
}
