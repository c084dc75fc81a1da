// The same behaviour through every client stack and protocol: one pipeline, one caller policy, one
// error mapping, whatever the transport.

import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import {
  bearer,
  CLIENT_KINDS,
  createTestClient,
  FetchJsonClient,
  GrpcJsClient,
  HOLD_ID,
  MAX_REQUEST_BYTES,
  type Outcome,
  startTestServer,
  type TestClient,
  type TestServer,
} from "./harness.js";

const { getOrganization } = OrganizationService.method;
const { getConnection, activateConnection } = ConnectionService.method;
const GENERATED_REQUEST_ID = /^req_[0-9a-f]{32}$/;

function failure<O>(outcome: Outcome<O>) {
  if (outcome.ok) throw new Error(`expected a failure, got ${JSON.stringify(outcome.message)}`);
  return outcome;
}

describe.each(CLIENT_KINDS)("%s", (kind) => {
  let server: TestServer;
  let client: TestClient;

  beforeAll(async () => {
    server = await startTestServer();
    client = createTestClient(kind, server);
  });

  afterAll(async () => {
    client.close();
    await server.running.close(1_000);
  });

  it("calls an RPC and echoes the x-request-id it was given", async () => {
    const outcome = await client.call(
      getOrganization,
      { id: "org_a" },
      { headers: { ...bearer("dev-provisioning"), "x-request-id": "given-id.1" } },
    );
    if (!outcome.ok) throw new Error(`unexpected failure: ${outcome.message}`);
    expect(outcome.message.organization).toMatchObject({ id: "org_a", name: "Stub Org" });
    expect(outcome.headers["x-request-id"]).toBe("given-id.1");
  });

  it("generates an x-request-id when none is given, or when it is not well formed", async () => {
    const absent = await client.call(getOrganization, { id: "org_a" }, { headers: bearer("dev-provisioning") });
    expect(absent.headers["x-request-id"]).toMatch(GENERATED_REQUEST_ID);
    const malformed = await client.call(
      getOrganization,
      { id: "org_a" },
      { headers: { ...bearer("dev-provisioning"), "x-request-id": "has spaces" } },
    );
    expect(malformed.headers["x-request-id"]).toMatch(GENERATED_REQUEST_ID);
  });

  it("refuses an unauthenticated call with CALLER_UNAUTHENTICATED, and still echoes the request id", async () => {
    const outcome = failure(
      await client.call(getOrganization, { id: "org_a" }, { headers: { "x-request-id": "r-1" } }),
    );
    expect(outcome.code).toBe(Code.Unauthenticated);
    expect(outcome.errorInfo).toMatchObject({ reason: "CALLER_UNAUTHENTICATED", domain: "connections.v1" });
    expect(outcome.headers["x-request-id"]).toBe("r-1");

    const generated = failure(await client.call(getOrganization, { id: "org_a" }, { headers: bearer("wrong") }));
    expect(generated.errorInfo?.reason).toBe("CALLER_UNAUTHENTICATED");
    expect(generated.headers["x-request-id"]).toMatch(GENERATED_REQUEST_ID);
  });

  it("gates ActivateConnection to the dashboard: the api-gateway is refused before the handler runs", async () => {
    const before = server.stubs.activations;
    const outcome = failure(
      await client.call(
        activateConnection,
        { id: "cxn_1" },
        { headers: { ...bearer("dev-api-gateway"), "x-organization-id": "org_a" } },
      ),
    );
    expect(outcome.code).toBe(Code.PermissionDenied);
    expect(outcome.errorInfo).toMatchObject({ reason: "CALLER_NOT_ALLOWED", domain: "connections.v1" });
    expect(server.stubs.activations).toBe(before);

    const allowed = await client.call(
      activateConnection,
      { id: "cxn_1" },
      { headers: { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" } },
    );
    expect(allowed.ok).toBe(true);
    expect(server.stubs.activations).toBe(before + 1);
  });

  it("refuses a request larger than maxRequestBytes with RESOURCE_EXHAUSTED", async () => {
    const outcome = failure(
      await client.call(
        getOrganization,
        { id: "x".repeat(MAX_REQUEST_BYTES + 1) },
        { headers: bearer("dev-provisioning") },
      ),
    );
    expect(outcome.code).toBe(Code.ResourceExhausted);
    expect(outcome.headers["x-request-id"]).toMatch(GENERATED_REQUEST_ID);
  });

  it("passes the client's deadline to the pipeline, which ends a slow handler with DEADLINE_EXCEEDED", async () => {
    // The handler waits until released: only the deadline can end the call.
    const outcome = failure(
      await client.call(
        getConnection,
        { id: HOLD_ID },
        { headers: { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" }, timeoutMs: 300 },
      ),
    );
    expect(outcome.code).toBe(Code.DeadlineExceeded);
    // The server, not only the client, gave up at the deadline.
    await server.waitForObserved("/connections.v1.ConnectionService/GetConnection", Code.DeadlineExceeded);
    server.stubs.releaseHolds();
  });
});

describe("malformed requests", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });

  afterAll(async () => {
    await server.running.close(1_000);
  });

  it("refuses malformed protobuf from grpc-js with INVALID_ARGUMENT MALFORMED_REQUEST", async () => {
    const client = new GrpcJsClient(server.address);
    const outcome = failure(
      await client.callWithBytes(getOrganization, Buffer.from([0x0a, 0x64, 0x61]), {
        headers: bearer("dev-provisioning"),
      }),
    );
    client.close();
    expect(outcome.code).toBe(Code.InvalidArgument);
    expect(outcome.errorInfo).toMatchObject({ reason: "MALFORMED_REQUEST", domain: "connections.v1" });
    expect(outcome.headers["x-request-id"]).toMatch(GENERATED_REQUEST_ID);
  });

  it("refuses malformed JSON over HTTP/1.1 with INVALID_ARGUMENT, with an x-request-id", async () => {
    const client = new FetchJsonClient(server.baseUrl);
    for (const body of ["{not json", '{"id": 42}', "[]"]) {
      const outcome = failure(await client.post(getOrganization, body, { headers: { "x-request-id": "json-1" } }));
      expect(outcome.code, body).toBe(Code.InvalidArgument);
      expect(outcome.errorInfo?.reason, body).toBe("MALFORMED_REQUEST");
      expect(outcome.headers["x-request-id"], body).toBe("json-1");
    }
  });
});
