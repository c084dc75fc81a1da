// The Connect protocol with JSON over plain HTTP/1.1, the way a developer calls it with curl or
// fetch: no generated client, just POST /<service>/<method> with application/json.

import { fromBinary } from "@bufbuild/protobuf";
import { expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { describeEachDatabase } from "../support/databases.js";
import { devToken, uniqueId, useTestService } from "../support/service.js";

interface ConnectErrorBody {
  code?: string;
  message?: string;
  details?: { type?: string; value?: string; debug?: unknown }[];
}

describeEachDatabase("Connect JSON over HTTP/1.1 with fetch", (database) => {
  const service = useTestService(database);

  async function post(
    path: string,
    body: unknown,
    headers: Record<string, string> = { authorization: `Bearer ${devToken("provisioning")}` },
  ): Promise<{ status: number; headers: Headers; json: unknown }> {
    const response = await fetch(`${service().baseUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await response.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: response.status, headers: response.headers, json };
  }

  function errorInfo(body: ConnectErrorBody) {
    const detail = body.details?.find((entry) => entry.type === "google.rpc.ErrorInfo");
    expect(detail?.value, `an ErrorInfo detail in ${JSON.stringify(body)}`).toBeDefined();
    return fromBinary(ErrorInfoSchema, Buffer.from(detail?.value ?? "", "base64"));
  }

  it("creates and gets an organization", async () => {
    const id = uniqueId("org_json");
    const created = await post("/connections.v1.OrganizationService/CreateOrganization", { id, name: "Json Inc." });
    expect(created.status).toBe(200);
    expect(created.json).toMatchObject({ organization: { id, name: "Json Inc." } });

    const requestId = uniqueId("curl");
    const got = await post(
      "/connections.v1.OrganizationService/GetOrganization",
      { id },
      { authorization: `Bearer ${devToken("dashboard-bff")}`, "x-request-id": requestId },
    );
    expect(got.status).toBe(200);
    expect(got.headers.get("content-type")).toMatch(/^application\/json/);
    expect(got.headers.get("x-request-id")).toBe(requestId);
    const organization = (got.json as { organization?: { id?: string; name?: string; createTime?: string } })
      .organization;
    expect(organization).toMatchObject({ id, name: "Json Inc." });
    expect(Number.isNaN(Date.parse(organization?.createTime ?? ""))).toBe(false);
  });

  it("answers errors with a JSON body carrying the code and an ErrorInfo detail", async () => {
    const missing = await post("/connections.v1.OrganizationService/GetOrganization", { id: uniqueId("org_missing") });
    expect(missing.status).toBe(404);
    const body = missing.json as ConnectErrorBody;
    expect(body.code).toBe("not_found");
    expect(body.message).toBeTruthy();
    expect(errorInfo(body)).toMatchObject({ reason: "ORGANIZATION_NOT_FOUND", domain: "connections.v1" });
    expect(missing.headers.get("x-request-id")).toMatch(/^req_/);

    const unauthenticated = await post("/connections.v1.OrganizationService/GetOrganization", { id: "x" }, {});
    expect(unauthenticated.status).toBe(401);
    expect((unauthenticated.json as ConnectErrorBody).code).toBe("unauthenticated");
    expect(errorInfo(unauthenticated.json as ConnectErrorBody).reason).toBe("CALLER_UNAUTHENTICATED");

    const denied = await post(
      "/connections.v1.OrganizationService/CreateOrganization",
      { name: "x" },
      { authorization: `Bearer ${devToken("api-gateway")}` },
    );
    expect(denied.status).toBe(403);
    expect((denied.json as ConnectErrorBody).code).toBe("permission_denied");
    expect(errorInfo(denied.json as ConnectErrorBody).reason).toBe("CALLER_NOT_ALLOWED");

    const invalid = await post("/connections.v1.OrganizationService/GetOrganization", { id: "not an id" });
    expect(invalid.status).toBe(400);
    const info = errorInfo(invalid.json as ConnectErrorBody);
    expect(info.reason).toBe("INVALID_ARGUMENT");
    expect(info.metadata.field).toBe("id");
  });

  it("refuses malformed JSON as a client error, not INTERNAL, and keeps serving", async () => {
    for (const body of ["{not json", '{"id": 42}', '{"unknownField": true}', "[]"]) {
      const response = await post("/connections.v1.OrganizationService/GetOrganization", body);
      expect(response.status, body).toBeGreaterThanOrEqual(400);
      expect(response.status, body).toBeLessThan(500);
      expect((response.json as ConnectErrorBody).code, body).not.toBe("internal");
    }
    const id = uniqueId("org_json");
    expect((await post("/connections.v1.OrganizationService/CreateOrganization", { id, name: "Still" })).status).toBe(
      200,
    );
  });

  it("speaks the JSON names of fields and enums for connections", async () => {
    const source = uniqueId("org_json");
    const destination = uniqueId("org_json");
    for (const id of [source, destination]) {
      expect((await post("/connections.v1.OrganizationService/CreateOrganization", { id, name: id })).status).toBe(200);
    }
    const bff = { authorization: `Bearer ${devToken("dashboard-bff")}`, "x-organization-id": source };
    const created = await post(
      "/connections.v1.ConnectionService/CreateConnection",
      { destination_organization_id: destination, scopes: ["verification.read", "account.read"], name: "JSON" },
      bff,
    );
    expect(created.status).toBe(200);
    const connection = (created.json as { connection?: Record<string, unknown> }).connection;
    expect(connection).toMatchObject({
      sourceOrganizationId: source,
      destinationOrganizationId: destination,
      scopes: ["account.read", "verification.read"],
      state: "STATE_PENDING",
    });
    expect(connection?.activateTime).toBeUndefined();

    const listed = await post(
      "/connections.v1.ConnectionService/ListConnections",
      { direction: "DIRECTION_OUTBOUND", states: ["STATE_PENDING"] },
      bff,
    );
    expect(listed.status).toBe(200);
    expect((listed.json as { connections?: { id?: string }[] }).connections?.map((c) => c.id)).toEqual([
      connection?.id,
    ]);

    const duplicate = await post(
      "/connections.v1.ConnectionService/CreateConnection",
      { destinationOrganizationId: destination, scopes: ["account.read"] },
      bff,
    );
    expect(duplicate.status).toBe(409);
    const info = errorInfo(duplicate.json as ConnectErrorBody);
    expect(info.reason).toBe("CONNECTION_ALREADY_EXISTS");
    expect(info.metadata.connection_id).toBe(connection?.id);
  });
});
