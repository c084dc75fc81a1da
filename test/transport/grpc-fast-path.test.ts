// The gRPC fast path on the wire: which streams it takes, its framing, compression, timeouts,
// status encoding, and what it does when the client goes away. A raw node:http2 client shows the
// exact frames; grpc-js and connect-node show that real clients agree.

import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import {
  GetOrganizationRequestSchema,
  GetOrganizationResponseSchema,
  OrganizationService,
} from "../../gen/connections/v1/organization_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { until } from "../support/until.js";
import {
  bearer,
  createTestClient,
  GrpcJsClient,
  HOLD_ID,
  MAX_REQUEST_BYTES,
  SLEEP_PREFIX,
  startTestServer,
  type TestServer,
  UNUSUAL_MESSAGE,
  UNUSUAL_MESSAGE_ID,
} from "./harness.js";

const GET_ORGANIZATION = "/connections.v1.OrganizationService/GetOrganization";
const GET_CONNECTION = "/connections.v1.ConnectionService/GetConnection";

interface RawResponse {
  readonly headers: http2.IncomingHttpHeaders;
  readonly trailers: http2.IncomingHttpHeaders | undefined;
  readonly body: Buffer;
}

function frame(message: Uint8Array, compressed = false): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = compressed ? 1 : 0;
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

/** The ErrorInfo in grpc-status-details-bin, from headers or trailers. */
function errorInfoOf(headers: http2.IncomingHttpHeaders | undefined) {
  const details = headers?.["grpc-status-details-bin"];
  if (typeof details !== "string") return undefined;
  const [detail] = fromBinary(StatusSchema, Buffer.from(details, "base64")).details;
  return detail && anyUnpack(detail, ErrorInfoSchema);
}

function getOrganizationBytes(id: string): Uint8Array {
  return toBinary(GetOrganizationRequestSchema, create(GetOrganizationRequestSchema, { id }));
}

describe("the gRPC fast path", () => {
  let server: TestServer;
  let session: http2.ClientHttp2Session;

  function raw(path: string, body: Buffer, headers: http2.OutgoingHttpHeaders = {}): Promise<RawResponse> {
    return new Promise((resolve, reject) => {
      const request = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        ...bearer("dev-provisioning"),
        ...headers,
      });
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      request.on("response", (received) => {
        responseHeaders = received;
      });
      request.on("trailers", (received) => {
        trailers = received;
      });
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => resolve({ headers: responseHeaders, trailers, body: Buffer.concat(chunks) }));
      request.on("error", reject);
      request.end(body);
    });
  }

  beforeAll(async () => {
    server = await startTestServer();
    session = http2.connect(server.baseUrl);
  });

  afterAll(async () => {
    session.close();
    await server.running.close(1_000);
  });

  it("answers a call with headers, one framed message and grpc-status 0 in trailers", async () => {
    const response = await raw(GET_ORGANIZATION, frame(getOrganizationBytes("org_a")), { "x-request-id": "raw-1" });
    expect(response.headers).toMatchObject({
      ":status": 200,
      "content-type": "application/grpc",
      "x-request-id": "raw-1",
    });
    expect(response.trailers?.["grpc-status"]).toBe("0");
    expect(response.body.readUInt32BE(1)).toBe(response.body.length - 5);
    const message = fromBinary(GetOrganizationResponseSchema, response.body.subarray(5));
    expect(message.organization?.id).toBe("org_a");
  });

  it("answers an error trailers-only, with grpc-status-details-bin carrying the ErrorInfo", async () => {
    const response = await raw(GET_ORGANIZATION, frame(getOrganizationBytes("org_a")), { authorization: "" });
    expect(response.trailers).toBeUndefined();
    expect(response.body.length).toBe(0);
    expect(response.headers["grpc-status"]).toBe(String(Code.Unauthenticated));
    expect(response.headers["x-request-id"]).toMatch(/^req_/);
    const details = response.headers["grpc-status-details-bin"];
    expect(typeof details).toBe("string");
    const status = fromBinary(StatusSchema, Buffer.from(details as string, "base64"));
    expect(status.code).toBe(Code.Unauthenticated);
    expect(status.message).toBe(decodeURIComponent(response.headers["grpc-message"] as string));
    const [detail] = status.details;
    expect(detail && anyUnpack(detail, ErrorInfoSchema)).toMatchObject({
      reason: "CALLER_UNAUTHENTICATED",
      domain: "connections.v1",
    });
  });

  it("leaves gRPC with JSON, unknown paths and other protocols to connect-node", async () => {
    // connect-node always sends headers, then the status in trailers.
    const json = await raw(GET_ORGANIZATION, frame(Buffer.from('{"id":"org_a"}')), {
      "content-type": "application/grpc+json",
      authorization: "",
    });
    expect(json.headers["grpc-status"]).toBeUndefined();
    expect(json.trailers?.["grpc-status"]).toBe(String(Code.Unauthenticated));
    expect(json.headers["x-request-id"]).toMatch(/^req_/);

    // As grpc-go answers: HTTP 200 and grpc-status 12, with an ErrorInfo.
    const unknown = await raw("/connections.v1.OrganizationService/Nope", frame(getOrganizationBytes("org_a")));
    expect(unknown.headers[":status"]).toBe(200);
    expect(unknown.headers["grpc-status"]).toBe(String(Code.Unimplemented));
    expect(unknown.headers["grpc-status-details-bin"]).toBeDefined();
  });

  it("percent-encodes grpc-message as the gRPC spec says, and clients decode it back", async () => {
    const headers = { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" };
    const bytes = toBinary(
      ConnectionService.method.getConnection.input,
      create(ConnectionService.method.getConnection.input, { id: UNUSUAL_MESSAGE_ID }),
    );
    const response = await raw(GET_CONNECTION, frame(bytes), headers);
    expect(response.headers["grpc-message"]).toBe("na%C3%AFve 100%25 failure%0Aline two");

    const client = new GrpcJsClient(server.address);
    const outcome = await client.call(ConnectionService.method.getConnection, { id: UNUSUAL_MESSAGE_ID }, { headers });
    client.close();
    expect(outcome).toMatchObject({ ok: false, code: Code.NotFound, message: UNUSUAL_MESSAGE });
  });

  it("refuses malformed protobuf with INVALID_ARGUMENT MALFORMED_REQUEST, never INTERNAL", async () => {
    const client = new GrpcJsClient(server.address);
    // Field 1, length-delimited, claiming 100 bytes that never come.
    const outcome = await client.callWithBytes(
      OrganizationService.method.getOrganization,
      Buffer.from([0x0a, 0x64, 0x61]),
      {
        headers: { ...bearer("dev-provisioning"), "x-request-id": "bad-bytes" },
      },
    );
    client.close();
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.code).toBe(Code.InvalidArgument);
    expect(outcome.errorInfo).toMatchObject({ reason: "MALFORMED_REQUEST", domain: "connections.v1" });
    expect(outcome.message).not.toMatch(/premature|EOF|wire type|illegal/i);
    expect(outcome.headers["x-request-id"]).toBe("bad-bytes");
  });

  it("refuses a unary call without exactly one message with UNIMPLEMENTED, a torn one as MALFORMED_REQUEST", async () => {
    const message = getOrganizationBytes("org_a");
    const cases: [Buffer, Code, string][] = [
      [Buffer.alloc(0), Code.Unimplemented, "NOT_ONE_MESSAGE"],
      [Buffer.concat([frame(message), frame(message)]), Code.Unimplemented, "NOT_ONE_MESSAGE"],
      [Buffer.from([0, 0, 0]), Code.InvalidArgument, "MALFORMED_REQUEST"],
      [Buffer.concat([frame(message), Buffer.from([0, 0])]), Code.InvalidArgument, "MALFORMED_REQUEST"],
      // Compressed-Flag 2 means nothing in gRPC.
      [Buffer.concat([Buffer.from([2]), frame(message).subarray(1)]), Code.InvalidArgument, "MALFORMED_REQUEST"],
    ];
    for (const [body, code, reason] of cases) {
      const response = await raw(GET_ORGANIZATION, body);
      expect(response.headers["grpc-status"], `body ${body.toString("hex")}`).toBe(String(code));
      expect(errorInfoOf(response.headers)?.reason, `body ${body.toString("hex")}`).toBe(reason);
    }
  });

  it("accepts gzip-compressed requests and refuses other encodings with UNIMPLEMENTED", async () => {
    const gzipped = await raw(GET_ORGANIZATION, frame(gzipSync(getOrganizationBytes("org_a")), true), {
      "grpc-encoding": "gzip",
    });
    expect(gzipped.trailers?.["grpc-status"]).toBe("0");

    const sessionManager = new Http2SessionManager(server.baseUrl);
    const transport = createGrpcTransport({
      baseUrl: server.baseUrl,
      sessionManager,
      sendCompression: compressionGzip,
      compressMinBytes: 0,
    });
    const viaConnect = await transport.unary(
      OrganizationService.method.getOrganization,
      undefined,
      5_000,
      new Headers(bearer("dev-provisioning")),
      { id: "org_a" },
    );
    sessionManager.abort();
    expect(viaConnect.message.organization?.id).toBe("org_a");

    const deflated = await raw(GET_ORGANIZATION, frame(getOrganizationBytes("org_a"), true), {
      "grpc-encoding": "deflate",
    });
    expect(deflated.headers["grpc-status"]).toBe(String(Code.Unimplemented));
    expect(deflated.headers["grpc-accept-encoding"]).toContain("gzip");

    const flaggedButIdentity = await raw(GET_ORGANIZATION, frame(getOrganizationBytes("org_a"), true));
    expect(flaggedButIdentity.headers["grpc-status"]).toBe(String(Code.InvalidArgument));
  });

  it("bounds the decompressed size too", async () => {
    const bomb = gzipSync(Buffer.alloc(MAX_REQUEST_BYTES * 4));
    expect(bomb.length).toBeLessThan(MAX_REQUEST_BYTES);
    const response = await raw(GET_ORGANIZATION, frame(bomb, true), { "grpc-encoding": "gzip" });
    expect(response.headers["grpc-status"]).toBe(String(Code.ResourceExhausted));
  });

  it("refuses a request larger than maxRequestBytes while the client is still sending it", async () => {
    const response = await raw(GET_ORGANIZATION, frame(Buffer.alloc(MAX_REQUEST_BYTES * 8, 0x41)));
    expect(response.headers["grpc-status"]).toBe(String(Code.ResourceExhausted));
    const details = fromBinary(
      StatusSchema,
      Buffer.from(response.headers["grpc-status-details-bin"] as string, "base64"),
    );
    expect(details.details[0] && anyUnpack(details.details[0], ErrorInfoSchema)?.reason).toBe("REQUEST_TOO_LARGE");
  });

  it("reads grpc-timeout into the deadline and refuses a malformed one", async () => {
    const bytes = toBinary(
      ConnectionService.method.getConnection.input,
      create(ConnectionService.method.getConnection.input, { id: HOLD_ID }),
    );
    const headers = { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" };
    const expired = await raw(GET_CONNECTION, frame(bytes), { ...headers, "grpc-timeout": "200000u" });
    expect(expired.headers["grpc-status"]).toBe(String(Code.DeadlineExceeded));
    // The handler waits until released: only the deadline can have ended the call.
    server.stubs.releaseHolds();

    const malformed = await raw(GET_CONNECTION, frame(bytes), { ...headers, "grpc-timeout": "soon" });
    expect(malformed.headers["grpc-status"]).toBe(String(Code.InvalidArgument));
  });

  it("survives clients that cancel or reset streams mid-call, and keeps serving", async () => {
    const startedBefore = server.stubs.sleepsStarted;
    const finishedBefore = server.stubs.sleepsFinished;
    const headers = { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" };
    const bytes = toBinary(
      ConnectionService.method.getConnection.input,
      create(ConnectionService.method.getConnection.input, { id: `${SLEEP_PREFIX}300` }),
    );

    // RST_STREAM(CANCEL), as grpc-js sends on cancel().
    const grpcJs = new grpc.Client(server.address, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    for (const [name, value] of Object.entries(headers)) metadata.set(name, value);
    const cancelled = new Promise<number>((resolve) => {
      const call = grpcJs.makeUnaryRequest(
        GET_CONNECTION,
        (value: Buffer) => value,
        (value: Buffer) => value,
        Buffer.from(bytes),
        metadata,
        () => {},
      );
      call.on("status", (status: grpc.StatusObject) => resolve(status.code));
      // Mid-call: once the handler runs.
      until(() => server.stubs.sleepsStarted === startedBefore + 1, "the handler to start").then(() => call.cancel());
    });
    expect(await cancelled).toBe(grpc.status.CANCELLED);

    // RST_STREAM with an error code, which makes node emit 'error' on the server's stream.
    const request = session.request({
      ":method": "POST",
      ":path": GET_CONNECTION,
      "content-type": "application/grpc",
      ...headers,
    });
    request.on("error", () => {});
    request.end(frame(bytes));
    await until(() => server.stubs.sleepsStarted === startedBefore + 2, "the second handler to start");
    request.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);

    // Both handlers still run to the end; their answers go nowhere, and nothing breaks.
    await until(() => server.stubs.sleepsFinished === finishedBefore + 2, "both handlers to finish");
    grpcJs.close();

    const client = createTestClient("grpc-js", server);
    const after = await client.call(
      OrganizationService.method.getOrganization,
      { id: "org_a" },
      { headers: bearer("dev-provisioning") },
    );
    client.close();
    expect(after.ok).toBe(true);
  });
});
