// gRPC server reflection: through a connect-node client (v1 and v1alpha), and through `buf curl`,
// which resolves the schema by reflection when no --schema is given. No credentials needed, so the
// streams are bounded: a cap on how many are open, and an idle deadline.

import { execFile } from "node:child_process";
import http2 from "node:http2";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { h2Open, type WireAnswer } from "../support/wire.js";
import { startTestServer, type TestServer } from "./harness.js";

const run = promisify(execFile);
const BUF = "node_modules/.bin/buf";

type Question = ServerReflectionRequest["messageRequest"];

describe("gRPC server reflection", () => {
  let server: TestServer;
  let sessionManager: Http2SessionManager;

  beforeAll(async () => {
    server = await startTestServer();
    sessionManager = new Http2SessionManager(server.baseUrl);
  });

  afterAll(async () => {
    sessionManager.abort();
    await server.running.close(1_000);
  });

  /** Asks every question on one stream, as reflection clients do. */
  async function ask(...questions: Question[]): Promise<ServerReflectionResponse[]> {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: server.baseUrl, sessionManager }));
    const answers: ServerReflectionResponse[] = [];
    async function* requests() {
      for (const messageRequest of questions) yield { host: "", messageRequest };
    }
    for await (const answer of client.serverReflectionInfo(requests())) answers.push(answer);
    return answers;
  }

  function fileNames(answer: ServerReflectionResponse | undefined): string[] {
    if (answer?.messageResponse.case !== "fileDescriptorResponse") {
      throw new Error(`expected files, got ${answer?.messageResponse.case}`);
    }
    return answer.messageResponse.value.fileDescriptorProto.map(
      (bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name,
    );
  }

  it("lists the services, answers for symbols and files, and says NOT_FOUND for the unknown", async () => {
    const [services, service, nested, method, timestamp, unknown, extensions] = await ask(
      { case: "listServices", value: "" },
      { case: "fileContainingSymbol", value: "connections.v1.ConnectionService" },
      { case: "fileContainingSymbol", value: "connections.v1.Connection.State" },
      { case: "fileContainingSymbol", value: "connections.v1.OrganizationService.GetOrganization" },
      { case: "fileByFilename", value: "google/protobuf/timestamp.proto" },
      { case: "fileContainingSymbol", value: "connections.v1.Nope" },
      { case: "allExtensionNumbersOfType", value: "connections.v1.Connection" },
    );
    expect(services?.messageResponse).toMatchObject({ case: "listServicesResponse" });
    const listed =
      services?.messageResponse.case === "listServicesResponse"
        ? services.messageResponse.value.service.map((each) => each.name)
        : [];
    expect(listed.sort()).toEqual([
      "connections.v1.ConnectionService",
      "connections.v1.OrganizationService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);

    // The answer first, then what it imports.
    expect(fileNames(service)).toEqual([
      "connections/v1/connection_service.proto",
      "connections/v1/connection.proto",
      "google/protobuf/timestamp.proto",
      "google/protobuf/field_mask.proto",
    ]);
    expect(fileNames(nested)[0]).toBe("connections/v1/connection.proto");
    expect(fileNames(method)[0]).toBe("connections/v1/organization_service.proto");
    expect(fileNames(timestamp)).toEqual(["google/protobuf/timestamp.proto"]);
    expect(unknown?.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: Code.NotFound } });
    expect(extensions?.messageResponse).toMatchObject({
      case: "allExtensionNumbersResponse",
      value: { baseTypeName: "connections.v1.Connection", extensionNumber: [] },
    });
    expect(service?.originalRequest?.messageRequest.case).toBe("fileContainingSymbol");
  });

  it("answers v1alpha the same way", async () => {
    const client = createClient(
      ServerReflectionV1alpha,
      createGrpcTransport({ baseUrl: server.baseUrl, sessionManager }),
    );
    async function* requests() {
      yield { host: "", messageRequest: { case: "fileByFilename" as const, value: "grpc/health/v1/health.proto" } };
    }
    const answers = [];
    for await (const answer of client.serverReflectionInfo(requests())) answers.push(answer);
    expect(answers[0]?.messageResponse.case).toBe("fileDescriptorResponse");
  });

  it("lets `buf curl` list methods and call an RPC with no --schema", { timeout: 60_000 }, async () => {
    const url = server.baseUrl;
    const listed = await run(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", url]);
    expect(listed.stdout).toContain("connections.v1.ConnectionService/ActivateConnection");
    expect(listed.stdout).toContain("grpc.health.v1.Health/Check");

    for (const protocol of ["grpc", "connect", "grpcweb"]) {
      const called = await run(BUF, [
        "curl",
        "--protocol",
        protocol,
        "--http2-prior-knowledge",
        "-H",
        "authorization: Bearer dev-provisioning",
        "-d",
        '{"id":"org_a"}',
        `${url}/connections.v1.OrganizationService/GetOrganization`,
      ]);
      expect(JSON.parse(called.stdout), protocol).toEqual({ organization: { id: "org_a", name: "Stub Org" } });
    }
  });

  it("serves `buf curl` over HTTP/1.1 with a local schema (reflection needs HTTP/2)", { timeout: 60_000 }, async () => {
    const called = await run(BUF, [
      "curl",
      "--verbose",
      "--schema",
      "proto",
      "-H",
      "authorization: Bearer dev-provisioning",
      "-d",
      '{"id":"org_a"}',
      `${server.baseUrl}/connections.v1.OrganizationService/GetOrganization`,
    ]);
    expect(JSON.parse(called.stdout)).toEqual({ organization: { id: "org_a", name: "Stub Org" } });
    expect(called.stderr).toContain("HTTP/1.1 200 OK");
  });
});

describe("gRPC server reflection's bounds (it needs no credentials)", () => {
  const REFLECTION_PATH = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
  let server: TestServer | undefined;
  let session: http2.ClientHttp2Session | undefined;

  afterEach(async () => {
    session?.destroy();
    await server?.running.close(1_000);
  });

  /** Opens a reflection stream that asks nothing; resolves with its status once the server ends it. */
  function openIdle(client: http2.ClientHttp2Session): { stream: http2.ClientHttp2Stream; ended: Promise<WireAnswer> } {
    const { stream, answer } = h2Open(
      client,
      { path: REFLECTION_PATH, headers: { "content-type": "application/grpc" }, body: Buffer.alloc(0) },
      60_000,
    );
    // The server ending its side is the answer; the client's side stays open, so close it then.
    stream.on("trailers", () => stream.close());
    stream.on("response", (headers) => {
      if (headers["grpc-status"] !== undefined) stream.close();
    });
    return { stream, ended: answer };
  }

  it("refuses a stream beyond MAX_REFLECTION_STREAMS with RESOURCE_EXHAUSTED, and serves again when one ends", async () => {
    server = await startTestServer({ maxReflectionStreams: 3 });
    session = http2.connect(server.baseUrl);
    const open = [openIdle(session), openIdle(session), openIdle(session)];
    const beyond = await openIdle(session).ended;
    expect(beyond.code).toBe(Code.ResourceExhausted);
    expect(beyond.errorInfo?.reason).toBe("OVERLOADED");
    (open[0] as { stream: http2.ClientHttp2Stream }).stream.close(http2.constants.NGHTTP2_CANCEL);
    await open[0]?.ended;
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: server.baseUrl }));
    async function* listServices() {
      yield { host: "", messageRequest: { case: "listServices" as const, value: "" } };
    }
    const answers: ServerReflectionResponse[] = [];
    for await (const answer of client.serverReflectionInfo(listServices())) answers.push(answer);
    expect(answers[0]?.messageResponse.case).toBe("listServicesResponse");
  });

  it("ends a stream that asks nothing within REFLECTION_IDLE_TIMEOUT_MS with DEADLINE_EXCEEDED", async () => {
    server = await startTestServer({ reflectionIdleTimeoutMs: 200 });
    session = http2.connect(server.baseUrl);
    const idle = await openIdle(session).ended;
    expect(idle.code).toBe(Code.DeadlineExceeded);
  });
});
