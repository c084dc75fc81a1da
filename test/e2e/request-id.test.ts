// x-request-id: echoed when the caller sends one, generated ("req_...") when it does not, on
// success and on error, and recorded on the events of the transitions it made.

import { expect, it } from "vitest";
import { Code, describeE2E, expectRpcError, registerOrganizations, uniqueId } from "../support/service.js";

const GENERATED = /^req_[A-Za-z0-9_-]{8,}$/;

describeE2E("x-request-id", (e2e) => {
  it("is echoed when given, on success and on every kind of error", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1, "org_rid");
    const client = e2e.client();

    const requestId = uniqueId("rq-given.1:a");
    const ok = await client.call("getOrganization", { id: org }, { caller: "provisioning", requestId });
    expect(ok.message.organization?.id).toBe(org);
    expect(ok.headers["x-request-id"]).toBe(requestId);

    const failures = [
      () => client.call("getOrganization", { id: uniqueId("org_missing") }, { caller: "provisioning", requestId }),
      () => client.call("getOrganization", { id: org }, { caller: null, requestId }),
      () => client.call("getOrganization", { id: org }, { caller: "token-service", requestId }),
      () => client.call("getConnection", { id: "bad" }, { caller: "dashboard-bff", organizationId: org, requestId }),
      () => client.call("listConnections", {}, { caller: "dashboard-bff", requestId }),
    ];
    const codes = [
      Code.NotFound,
      Code.Unauthenticated,
      Code.PermissionDenied,
      Code.InvalidArgument,
      Code.InvalidArgument,
    ];
    const reasons = [
      "ORGANIZATION_NOT_FOUND",
      "CALLER_UNAUTHENTICATED",
      "CALLER_NOT_ALLOWED",
      "INVALID_ARGUMENT",
      "ORGANIZATION_HEADER_REQUIRED",
    ];
    for (const [index, failure] of failures.entries()) {
      const error = await expectRpcError(failure(), codes[index] ?? Code.Unknown, reasons[index] ?? "");
      expect(error.headers["x-request-id"], reasons[index]).toBe(requestId);
    }
  });

  it("is generated as req_... when absent, on success and on error, a new one every time", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1, "org_rid");
    const client = e2e.client();
    const seen = new Set<string>();
    for (let attempt = 0; attempt < 3; attempt++) {
      const ok = await client.call("getOrganization", { id: org }, { caller: "dashboard-bff" });
      const generated = ok.headers["x-request-id"] ?? "";
      expect(generated).toMatch(GENERATED);
      seen.add(generated);
      const error = await expectRpcError(
        client.call("getOrganization", { id: uniqueId("org_missing") }, { caller: "dashboard-bff" }),
        Code.NotFound,
        "ORGANIZATION_NOT_FOUND",
      );
      expect(error.headers["x-request-id"] ?? "").toMatch(GENERATED);
      seen.add(error.headers["x-request-id"] ?? "");
      const unauthenticated = await expectRpcError(
        client.call("getOrganization", { id: org }, { caller: null }),
        Code.Unauthenticated,
        "CALLER_UNAUTHENTICATED",
      );
      expect(unauthenticated.headers["x-request-id"] ?? "").toMatch(GENERATED);
      seen.add(unauthenticated.headers["x-request-id"] ?? "");
    }
    expect(seen.size).toBe(9);
  });

  it("is recorded on the event of the transition it made, generated or given", async () => {
    const client = e2e.client();
    const [source = "", destination = ""] = await registerOrganizations(client, 2, "org_rid");
    const created = await client.call(
      "createConnection",
      { destinationOrganizationId: destination, scopes: ["account.read"] },
      { caller: "api-gateway", organizationId: source },
    );
    const generated = created.headers["x-request-id"] ?? "";
    expect(generated).toMatch(GENERATED);
    const id = created.message.connection?.id ?? "";
    const given = uniqueId("trace-abc");
    const deactivated = await client.call(
      "deactivateConnection",
      { id },
      { caller: "api-gateway", organizationId: destination, requestId: given },
    );
    expect(deactivated.headers["x-request-id"]).toBe(given);
    const events = await e2e.as("api-gateway", source).listConnectionEvents({ connectionId: id });
    expect(events.events.map((event) => event.requestId)).toEqual([generated, given]);
  });
});
