// Server streaming through the port on every protocol that has it: gRPC (which the unary fast
// path must leave to connect-node), gRPC-Web and Connect, over HTTP/2 and HTTP/1.1, plus
// @grpc/grpc-js. The pipeline authenticates the stream, the response carries x-request-id, messages
// arrive in order, and an error after messages still arrives as a status with its ErrorInfo.

import http from "node:http";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ConnectionService,
  WatchConnectionEventsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { bearer, errorInfoFromStatusDetails, startTestServer, type TestServer } from "./harness.js";

const PATH = "/connections.v1.ConnectionService/WatchConnectionEvents";

interface StreamOutcome {
  readonly cursors: string[];
  readonly code: Code | 0;
  readonly reason: string | undefined;
  readonly requestId: string | undefined;
}

type Streamer = (startAfter: string, token: string) => Promise<StreamOutcome>;

function connectStreamer(transport: Transport): Streamer {
  const client = createClient(ConnectionService, transport);
  return async (startAfter, token) => {
    const cursors: string[] = [];
    let requestId: string | undefined;
    try {
      for await (const message of client.watchConnectionEvents(
        { startAfter },
        { headers: bearer(token), onHeader: (headers) => (requestId = headers.get("x-request-id") ?? undefined) },
      )) {
        cursors.push(message.cursor);
      }
      return { cursors, code: 0, reason: undefined, requestId };
    } catch (error) {
      const connectError = ConnectError.from(error);
      requestId ??= connectError.metadata.get("x-request-id") ?? undefined;
      return {
        cursors,
        code: connectError.code,
        reason: connectError.findDetails(ErrorInfoSchema)[0]?.reason,
        requestId,
      };
    }
  };
}

function grpcJsStreamer(address: string): { streamer: Streamer; close: () => void } {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const method = ConnectionService.method.watchConnectionEvents;
  const streamer: Streamer = (startAfter, token) =>
    new Promise((resolve) => {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${token}`);
      const cursors: string[] = [];
      let requestId: string | undefined;
      const call = client.makeServerStreamRequest(
        PATH,
        (value: { startAfter: string }) => Buffer.from(toBinary(method.input, create(method.input, value))),
        (bytes: Buffer) => fromBinary(WatchConnectionEventsResponseSchema, bytes),
        { startAfter },
        metadata,
      );
      call.on("metadata", (headers: grpc.Metadata) => {
        requestId = headers.get("x-request-id")[0]?.toString();
      });
      call.on("data", (message: { cursor: string }) => cursors.push(message.cursor));
      call.on("error", () => {});
      call.on("status", (status: grpc.StatusObject) => {
        requestId ??= status.metadata.get("x-request-id")[0]?.toString();
        const code = status.code === grpc.status.OK ? 0 : (status.code as number as Code);
        resolve({ cursors, code, reason: errorInfoFromStatusDetails(status.metadata)?.reason, requestId });
      });
    });
  return { streamer, close: () => client.close() };
}

describe("server streaming on every protocol", () => {
  let server: TestServer;
  const streamers = new Map<string, Streamer>();
  const disposers: (() => void)[] = [];

  beforeAll(async () => {
    server = await startTestServer();
    const baseUrl = server.baseUrl;
    const h2 = () => {
      const sessionManager = new Http2SessionManager(baseUrl);
      disposers.push(() => sessionManager.abort());
      return sessionManager;
    };
    const agent = () => {
      const made = new http.Agent({ keepAlive: true });
      disposers.push(() => made.destroy());
      return { httpVersion: "1.1" as const, nodeOptions: { agent: made } };
    };
    streamers.set("connect-node gRPC (h2)", connectStreamer(createGrpcTransport({ baseUrl, sessionManager: h2() })));
    streamers.set(
      "connect-node Connect binary (h2)",
      connectStreamer(
        createConnectTransport({ baseUrl, httpVersion: "2", sessionManager: h2(), useBinaryFormat: true }),
      ),
    );
    streamers.set(
      "connect-node gRPC-Web (h2)",
      connectStreamer(createGrpcWebTransport({ baseUrl, httpVersion: "2", sessionManager: h2() })),
    );
    streamers.set(
      "connect-node Connect JSON (HTTP/1.1)",
      connectStreamer(createConnectTransport({ baseUrl, ...agent() })),
    );
    streamers.set("connect-node gRPC-Web (HTTP/1.1)", connectStreamer(createGrpcWebTransport({ baseUrl, ...agent() })));
    const grpcJs = grpcJsStreamer(server.address);
    disposers.push(grpcJs.close);
    streamers.set("grpc-js", grpcJs.streamer);
  });

  afterAll(async () => {
    for (const dispose of disposers) dispose();
    await server?.running.close(1000);
  });

  it("streams every message in order, then OK, with x-request-id, on every protocol", async () => {
    for (const [name, streamer] of streamers) {
      const outcome = await streamer("", "dev-token-service");
      expect(outcome, name).toMatchObject({ cursors: ["1", "2", "3"], code: 0 });
      expect(outcome.requestId, name).toMatch(/^req_/);
    }
    await server.waitForObserved(PATH, 0);
  });

  it("ends with the handler's error and its ErrorInfo after the messages already sent", async () => {
    for (const [name, streamer] of streamers) {
      const outcome = await streamer("fail", "dev-token-service");
      expect(outcome, name).toMatchObject({ cursors: ["1"], code: Code.NotFound, reason: "CONNECTION_NOT_FOUND" });
    }
    await server.waitForObserved(PATH, Code.NotFound);
  });

  it("authenticates and applies the caller table before the stream starts", async () => {
    for (const [name, streamer] of streamers) {
      expect(await streamer("", "not-a-token"), name).toMatchObject({
        cursors: [],
        code: Code.Unauthenticated,
        reason: "CALLER_UNAUTHENTICATED",
      });
      expect(await streamer("", "dev-provisioning"), name).toMatchObject({
        cursors: [],
        code: Code.PermissionDenied,
        reason: "CALLER_NOT_ALLOWED",
      });
    }
  });
});
