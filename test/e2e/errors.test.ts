// Every error reason of the contract at least once, with its gRPC code and a google.rpc.ErrorInfo
// in the connections.v1 domain; refused requests change nothing; bad input is never INTERNAL and
// the service keeps serving after it.

import { createHash } from "node:crypto";
import { expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  ListConnectionsRequest_Direction,
} from "../../gen/connections/v1/connection_service_pb.js";
import { connectionFixture, eventCount, present, reread } from "../support/fixtures.js";
import {
  Code,
  describeE2E,
  expectInvalidArgument,
  expectRpcError,
  registerOrganizations,
  rpcError,
  uniqueId,
} from "../support/service.js";

/** A well-formed Connection id that no Connection has. */
const UNKNOWN_CONNECTION = "cxn_AAAAAAAAAAAAAAAAAAAAAA";

describeE2E("errors", (e2e) => {
  it("CALLER_UNAUTHENTICATED: no token, an unknown token, a malformed header", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    for (const context of [
      { caller: null },
      { authorization: "Bearer not-a-token" },
      { authorization: "Bearer " },
      { authorization: "Basic ZGV2LWRhc2hib2FyZC1iZmY6" },
      { authorization: "dev-dashboard-bff" },
    ]) {
      const error = await expectRpcError(
        e2e.client().call("getOrganization", { id: org }, context),
        Code.Unauthenticated,
        "CALLER_UNAUTHENTICATED",
      );
      expect(error.rawMessage).not.toContain("not-a-token");
    }
    await expectRpcError(
      e2e
        .client()
        .call(
          "createConnection",
          { destinationOrganizationId: org, scopes: ["account.read"] },
          { caller: null, organizationId: org },
        ),
      Code.Unauthenticated,
      "CALLER_UNAUTHENTICATED",
    );
  });

  it("CALLER_NOT_ALLOWED", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2);
    await expectRpcError(
      e2e
        .as("token-service", source)
        .createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] }),
      Code.PermissionDenied,
      "CALLER_NOT_ALLOWED",
    );
    await expectRpcError(
      e2e.as("dashboard-bff").createOrganization({ name: "Not for the dashboard" }),
      Code.PermissionDenied,
      "CALLER_NOT_ALLOWED",
    );
    expect((await e2e.as("dashboard-bff", source).listConnections({})).connections).toEqual([]);
  });

  it("ORGANIZATION_HEADER_REQUIRED and ORGANIZATION_NOT_REGISTERED for the acting organization", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    await expectRpcError(
      e2e.as("dashboard-bff").listConnections({}),
      Code.InvalidArgument,
      "ORGANIZATION_HEADER_REQUIRED",
    );
    await expectRpcError(
      e2e.as("api-gateway", "").createConnection({ destinationOrganizationId: org, scopes: ["account.read"] }),
      Code.InvalidArgument,
      "ORGANIZATION_HEADER_REQUIRED",
    );
    await expectRpcError(
      e2e.as("token-service").getConnection({ id: UNKNOWN_CONNECTION }),
      Code.InvalidArgument,
      "ORGANIZATION_HEADER_REQUIRED",
    );
    await expectRpcError(
      e2e.as("dashboard-bff", uniqueId("org_unregistered")).listConnections({}),
      Code.PermissionDenied,
      "ORGANIZATION_NOT_REGISTERED",
    );
    await expectRpcError(
      e2e.as("api-gateway", uniqueId("org_unregistered")).createConnection({
        destinationOrganizationId: org,
        scopes: ["account.read"],
      }),
      Code.PermissionDenied,
      "ORGANIZATION_NOT_REGISTERED",
    );
    await expectInvalidArgument(e2e.as("dashboard-bff", "not an id!").listConnections({}), "x-organization-id");
    await expectInvalidArgument(e2e.as("dashboard-bff", "x".repeat(65)).listConnections({}), "x-organization-id");
  });

  it("ONLY_DESTINATION_CAN_ACTIVATE and ONLY_SOURCE_CAN_REACTIVATE, changing nothing", async () => {
    const pending = await connectionFixture(e2e.client());
    await expectRpcError(
      e2e.as("dashboard-bff", pending.source).activateConnection({ id: pending.connection.id }),
      Code.PermissionDenied,
      "ONLY_DESTINATION_CAN_ACTIVATE",
    );
    expect(await reread(e2e.client(), pending)).toEqual(pending.connection);

    const inactive = await connectionFixture(e2e.client(), { state: "INACTIVE" });
    await expectRpcError(
      e2e.as("api-gateway", inactive.destination).reactivateConnection({ id: inactive.connection.id }),
      Code.PermissionDenied,
      "ONLY_SOURCE_CAN_REACTIVATE",
    );
    expect(await reread(e2e.client(), inactive)).toEqual(inactive.connection);
    expect(await eventCount(e2e.client(), inactive)).toBe(2);
  });

  it("INVALID_ARGUMENT names the field: malformed ids", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    const bff = e2e.as("dashboard-bff", org);
    await expectInvalidArgument(bff.getConnection({ id: "" }), "id");
    await expectInvalidArgument(bff.getConnection({ id: "not-a-connection" }), "id");
    await expectInvalidArgument(bff.getConnection({ id: "cxn_" }), "id");
    await expectInvalidArgument(bff.getConnection({ id: "cxn_'; drop table connections; --" }), "id");
    await expectInvalidArgument(bff.getConnection({ id: `cxn_${"a".repeat(5000)}` }), "id");
    await expectInvalidArgument(bff.activateConnection({ id: "org_1" }), "id");
    await expectInvalidArgument(bff.deactivateConnection({ id: "x" }), "id");
    await expectInvalidArgument(bff.reactivateConnection({ id: "" }), "id");
    await expectInvalidArgument(bff.listConnectionEvents({ connectionId: "nope" }), "connection_id");
    await expectInvalidArgument(
      bff.createConnection({ destinationOrganizationId: "", scopes: ["account.read"] }),
      "destination_organization_id",
    );
    await expectInvalidArgument(
      bff.createConnection({ destinationOrganizationId: "has space", scopes: ["account.read"] }),
      "destination_organization_id",
    );
    await expectInvalidArgument(e2e.as("provisioning").getOrganization({ id: "" }), "id");
    await expectInvalidArgument(e2e.as("provisioning").getOrganization({ id: "a/b" }), "id");
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ id: "bad id", name: "X" }), "id");
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ id: "x".repeat(65), name: "X" }), "id");

    const tokenService = e2e.as("token-service");
    const check = { connectionId: UNKNOWN_CONNECTION, organizationId: org, scope: "account.read" };
    await expectInvalidArgument(
      tokenService.checkConnection({
        ...check,
        connectionId: "x",
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
      }),
      "connection_id",
    );
    await expectInvalidArgument(
      tokenService.checkConnection({
        ...check,
        organizationId: "",
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
      }),
      "organization_id",
    );
  });

  it("INVALID_ARGUMENT names the field: lengths, scopes, enums, page sizes", async () => {
    const { source, destination, connection } = await connectionFixture(e2e.client());
    const [other = ""] = await registerOrganizations(e2e.client(), 1);
    const bff = e2e.as("dashboard-bff", source);

    await expectInvalidArgument(
      bff.createConnection({ destinationOrganizationId: other, scopes: ["account.read"], name: "n".repeat(201) }),
      "name",
    );
    await expectInvalidArgument(
      bff.createConnection({ destinationOrganizationId: other, scopes: ["account.read"], requestId: "r".repeat(129) }),
      "request_id",
    );
    await expectInvalidArgument(bff.createConnection({ destinationOrganizationId: other, scopes: [] }), "scopes");
    await expectInvalidArgument(
      e2e.as("dashboard-bff", source, "u".repeat(201)).getConnection({ id: connection.id }),
      "x-actor",
    );
    await expectInvalidArgument(bff.deactivateConnection({ id: connection.id, reason: "r".repeat(501) }), "reason");
    await expectInvalidArgument(bff.deactivateConnection({ id: connection.id, etag: "e".repeat(65) }), "etag");
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ name: "" }), "name");
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ name: "   " }), "name");
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ name: "n".repeat(201) }), "name");

    await expectInvalidArgument(bff.listConnections({ pageSize: -1 }), "page_size");
    await expectInvalidArgument(bff.listConnectionEvents({ connectionId: connection.id, pageSize: -5 }), "page_size");
    await expectInvalidArgument(bff.listConnections({ direction: 7 as ListConnectionsRequest_Direction }), "direction");
    await expectInvalidArgument(bff.listConnections({ states: [Connection_State.UNSPECIFIED] }), "states");
    await expectInvalidArgument(
      bff.listConnections({ states: [Connection_State.ACTIVE, 42 as Connection_State] }),
      "states",
    );

    const tokenService = e2e.as("token-service");
    const check = { connectionId: connection.id, organizationId: destination, scope: "account.read" };
    await expectInvalidArgument(
      tokenService.checkConnection({ ...check, action: CheckConnectionRequest_Action.UNSPECIFIED }),
      "action",
    );
    await expectInvalidArgument(
      tokenService.checkConnection({ ...check, action: 9 as CheckConnectionRequest_Action }),
      "action",
    );
    await expectInvalidArgument(
      tokenService.checkConnection({ ...check, action: CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN, scope: "" }),
      "scope",
    );

    // The limits themselves are accepted.
    const atLimit = present(
      (
        await e2e.as("dashboard-bff", source, "u".repeat(200)).createConnection({
          destinationOrganizationId: other,
          scopes: ["account.read"],
          name: "n".repeat(200),
          requestId: "r".repeat(128),
        })
      ).connection,
    );
    expect(atLimit.name).toHaveLength(200);
    expect(atLimit.creator).toHaveLength(200);
    expect(await reread(e2e.client(), { source, destination, connection })).toEqual(connection);
  });

  it("INVALID_ARGUMENT page_token: garbage, foreign, and bound to other filters", async () => {
    const [org = "", stranger = "", ...destinations] = await registerOrganizations(e2e.client(), 5);
    const bff = e2e.as("dashboard-bff", org);
    const connections = [];
    for (const destination of destinations) {
      connections.push(
        present(
          (await bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] })).connection,
        ),
      );
    }
    const first = await bff.listConnections({ pageSize: 1 });
    expect(first.nextPageToken).not.toBe("");

    for (const garbage of [
      "garbage",
      "!!!",
      "e30",
      "bnVsbA",
      Buffer.from('{"c":"1","f":"x"}').toString("base64url"),
      "a".repeat(2000),
    ]) {
      await expectInvalidArgument(bff.listConnections({ pageToken: garbage }), "page_token");
    }
    await expectInvalidArgument(
      bff.listConnections({ pageToken: first.nextPageToken, direction: ListConnectionsRequest_Direction.OUTBOUND }),
      "page_token",
    );
    await expectInvalidArgument(
      bff.listConnections({ pageToken: first.nextPageToken, states: [Connection_State.PENDING] }),
      "page_token",
    );
    // Another organization cannot use it.
    await expectInvalidArgument(
      e2e.as("dashboard-bff", stranger).listConnections({ pageToken: first.nextPageToken }),
      "page_token",
    );
    // Nor is it a token for the events of a Connection.
    const connection = present(connections[0]);
    await expectInvalidArgument(
      bff.listConnectionEvents({ connectionId: connection.id, pageToken: first.nextPageToken }),
      "page_token",
    );
    // The same token with the same filters still works.
    const second = await bff.listConnections({ pageToken: first.nextPageToken, pageSize: 1 });
    expect(second.connections).toHaveLength(1);
  });

  it("INVALID_ARGUMENT page_token: a token that carries a cursor this service never made is refused, not INTERNAL", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    const bff = e2e.as("dashboard-bff", org);
    // The same shape as the service's tokens, bound to the right filters, with a cursor that is
    // not one: whatever a token holds, a caller can send any bytes as page_token.
    const digest = (filters: unknown[]) =>
      createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);
    const forged = (cursor: string, filters: unknown[]) =>
      Buffer.from(JSON.stringify({ c: cursor, f: digest(filters) })).toString("base64url");
    for (const cursor of ["not-a-number", "-1", "1e3", "99999999999999999999"]) {
      const error = await rpcError(
        bff.listConnections({ pageToken: forged(cursor, ["connections", org, "BOTH", []]) }),
      );
      expect(Code[error.code], `${error.message}`).toBe(Code[Code.InvalidArgument]);
      expect(error.metadata.field).toBe("page_token");
    }
    const { connection } = await connectionFixture(e2e.client());
    const error = await rpcError(
      e2e
        .as("dashboard-bff", connection.sourceOrganizationId)
        .listConnectionEvents({ connectionId: connection.id, pageToken: forged("x", ["events", connection.id]) }),
    );
    expect(Code[error.code], `${error.message}`).toBe(Code[Code.InvalidArgument]);
  });

  it("SELF_CONNECTION, UNKNOWN_SCOPE, ORGANIZATION_NOT_FOUND on create", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2);
    const bff = e2e.as("dashboard-bff", source);
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: source, scopes: ["account.read"] }),
      Code.InvalidArgument,
      "SELF_CONNECTION",
    );
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read", "account.write"] }),
      Code.InvalidArgument,
      "UNKNOWN_SCOPE",
    );
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: destination, scopes: ["ACCOUNT.READ"] }),
      Code.InvalidArgument,
      "UNKNOWN_SCOPE",
    );
    await expectRpcError(
      e2e.as("token-service").checkConnection({
        connectionId: UNKNOWN_CONNECTION,
        organizationId: source,
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
        scope: "everything",
      }),
      Code.InvalidArgument,
      "UNKNOWN_SCOPE",
    );
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: uniqueId("org_missing"), scopes: ["account.read"] }),
      Code.NotFound,
      "ORGANIZATION_NOT_FOUND",
    );
    await expectRpcError(
      e2e.as("provisioning").getOrganization({ id: uniqueId("org_missing") }),
      Code.NotFound,
      "ORGANIZATION_NOT_FOUND",
    );
    expect((await bff.listConnections({})).connections).toEqual([]);
  });

  it("REQUEST_ID_REUSED", async () => {
    const [source = "", first = "", second = ""] = await registerOrganizations(e2e.client(), 3);
    const bff = e2e.as("dashboard-bff", source);
    const requestId = uniqueId("rid");
    await bff.createConnection({ destinationOrganizationId: first, scopes: ["account.read"], requestId });
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: second, scopes: ["account.read"], requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
    );
    expect((await bff.listConnections({})).connections).toHaveLength(1);
  });

  it("CONNECTION_NOT_FOUND and ORGANIZATION_NOT_FOUND", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    const bff = e2e.as("dashboard-bff", org);
    await expectRpcError(bff.getConnection({ id: UNKNOWN_CONNECTION }), Code.NotFound, "CONNECTION_NOT_FOUND");
    await expectRpcError(bff.activateConnection({ id: UNKNOWN_CONNECTION }), Code.NotFound, "CONNECTION_NOT_FOUND");
    await expectRpcError(bff.deactivateConnection({ id: UNKNOWN_CONNECTION }), Code.NotFound, "CONNECTION_NOT_FOUND");
    await expectRpcError(bff.reactivateConnection({ id: UNKNOWN_CONNECTION }), Code.NotFound, "CONNECTION_NOT_FOUND");
    await expectRpcError(
      bff.listConnectionEvents({ connectionId: UNKNOWN_CONNECTION }),
      Code.NotFound,
      "CONNECTION_NOT_FOUND",
    );
    await expectRpcError(
      e2e.as("dashboard-bff").getOrganization({ id: uniqueId("org_missing") }),
      Code.NotFound,
      "ORGANIZATION_NOT_FOUND",
    );
  });

  it("CONNECTION_ALREADY_EXISTS names the existing connection, in any state", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "INACTIVE" });
    for (const caller of ["dashboard-bff", "api-gateway"] as const) {
      await expectRpcError(
        e2e.as(caller, fixture.source).createConnection({
          destinationOrganizationId: fixture.destination,
          scopes: ["inquiry.read"],
          name: "again",
        }),
        Code.AlreadyExists,
        "CONNECTION_ALREADY_EXISTS",
        { connection_id: fixture.connection.id },
      );
    }
    expect(await reread(e2e.client(), fixture)).toEqual(fixture.connection);
    // The other direction is another Connection.
    const reverse = present(
      (
        await e2e.as("dashboard-bff", fixture.destination).createConnection({
          destinationOrganizationId: fixture.source,
          scopes: ["inquiry.read"],
        })
      ).connection,
    );
    expect(reverse.id).not.toBe(fixture.connection.id);
  });

  it("ORGANIZATION_ALREADY_EXISTS", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    await expectRpcError(
      e2e.as("provisioning").createOrganization({ id: org, name: "Duplicate" }),
      Code.AlreadyExists,
      "ORGANIZATION_ALREADY_EXISTS",
    );
    const { organization } = await e2e.as("provisioning").getOrganization({ id: org });
    expect(organization?.name).toBe(`Organization ${org}`);
  });

  it("INVALID_STATE_TRANSITION names the current state and changes nothing", async () => {
    const client = e2e.client();
    const pending = await connectionFixture(client);
    await expectRpcError(
      e2e.as("api-gateway", pending.source).reactivateConnection({ id: pending.connection.id }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_PENDING" },
    );
    expect(await reread(client, pending)).toEqual(pending.connection);

    const active = await connectionFixture(client, { state: "ACTIVE" });
    await expectRpcError(
      e2e
        .as("dashboard-bff", active.destination)
        .activateConnection({ id: active.connection.id, etag: active.connection.etag }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_ACTIVE" },
    );
    await expectRpcError(
      e2e.as("dashboard-bff", active.source).reactivateConnection({ id: active.connection.id }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_ACTIVE" },
    );
    expect(await reread(client, active)).toEqual(active.connection);
    expect(await eventCount(client, active)).toBe(2);

    const inactive = await connectionFixture(client, { state: "INACTIVE" });
    for (const side of [inactive.source, inactive.destination]) {
      await expectRpcError(
        e2e.as("api-gateway", side).deactivateConnection({ id: inactive.connection.id, reason: "twice" }),
        Code.FailedPrecondition,
        "INVALID_STATE_TRANSITION",
        { state: "STATE_INACTIVE" },
      );
    }
    await expectRpcError(
      e2e.as("dashboard-bff", inactive.destination).activateConnection({ id: inactive.connection.id }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_INACTIVE" },
    );
    expect(await reread(client, inactive)).toEqual(inactive.connection);
    expect(await eventCount(client, inactive)).toBe(2);
  });

  it("ETAG_MISMATCH for a stale etag, leaving the connection unchanged", async () => {
    const client = e2e.client();
    const fixture = await connectionFixture(client);
    const stale = fixture.connection.etag;
    const activated = present(
      (
        await e2e
          .as("dashboard-bff", fixture.destination)
          .activateConnection({ id: fixture.connection.id, etag: stale })
      ).connection,
    );
    await expectRpcError(
      e2e.as("api-gateway", fixture.source).deactivateConnection({ id: fixture.connection.id, etag: stale }),
      Code.Aborted,
      "ETAG_MISMATCH",
    );
    await expectRpcError(
      e2e.as("api-gateway", fixture.source).deactivateConnection({ id: fixture.connection.id, etag: '"not-an-etag"' }),
      Code.Aborted,
      "ETAG_MISMATCH",
    );
    expect(await reread(client, fixture)).toEqual(activated);
    expect(await eventCount(client, fixture)).toBe(2);
    // With the current etag it goes through.
    const deactivated = present(
      (
        await e2e
          .as("api-gateway", fixture.source)
          .deactivateConnection({ id: fixture.connection.id, etag: activated.etag })
      ).connection,
    );
    expect(deactivated.state).toBe(Connection_State.INACTIVE);
  });

  it("answers odd but well-typed input without INTERNAL and keeps serving", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2);
    const bff = e2e.as("dashboard-bff", source, 'user:o\'brien "quoted" <b>');
    const odd = "Robert'); DROP TABLE connections; -- 🚀 é \\ %_";
    const created = present(
      (await bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"], name: odd }))
        .connection,
    );
    expect(created.name).toBe(odd);
    expect((await bff.getConnection({ id: created.id })).connection).toEqual(created);
    const deactivated = await bff.deactivateConnection({ id: created.id, reason: odd });
    expect(deactivated.connection?.state).toBe(Connection_State.INACTIVE);
    const events = await bff.listConnectionEvents({ connectionId: created.id });
    expect(events.events.at(-1)?.reason).toBe(odd);

    expect((await bff.listConnections({ pageSize: 2 ** 31 - 1 })).connections).toHaveLength(1);
    await expectInvalidArgument(bff.listConnections({ pageSize: -(2 ** 31) }), "page_size");
    await expectInvalidArgument(bff.getConnection({ id: "cxn_\u0000" }), "id");
    await expectInvalidArgument(
      bff.listConnectionEvents({ connectionId: created.id, pageToken: "\u0000\u0001" }),
      "page_token",
    );
    await expectInvalidArgument(e2e.as("provisioning").createOrganization({ id: "org_\u00e9", name: "x" }), "id");
    // Still serving, and the data is intact.
    expect((await e2e.as("provisioning").getOrganization({ id: source })).organization?.id).toBe(source);
    expect((await bff.listConnections({})).connections).toHaveLength(1);
  });

  it("refuses a request larger than the service accepts without INTERNAL, and keeps serving", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2);
    const bff = e2e.as("dashboard-bff", source);
    const error = await rpcError(
      bff.createConnection({
        destinationOrganizationId: destination,
        scopes: ["account.read"],
        name: "n".repeat(300_000),
      }),
    );
    expect([Code[Code.ResourceExhausted], Code[Code.InvalidArgument]]).toContain(Code[error.code]);
    expect((await bff.listConnections({})).connections).toEqual([]);
    expect((await e2e.as("provisioning").getOrganization({ id: source })).organization?.id).toBe(source);
  });

  it("stores or refuses text with a NUL character, never INTERNAL", async () => {
    const [source = "", destination = "", other = ""] = await registerOrganizations(e2e.client(), 3);
    const bff = e2e.as("dashboard-bff", source);
    const withNul = "before\u0000after";
    /** Succeeds and gives the text back, or fails with INVALID_ARGUMENT naming `field`. */
    const storedOrRefused = async <T>(work: Promise<T>, field: string, readBack: (value: T) => string | undefined) => {
      const outcome = await work.then(
        (value) => ({ ok: true as const, value }),
        (error: unknown) => ({ ok: false as const, error }),
      );
      if (outcome.ok) expect(readBack(outcome.value), field).toBe(withNul);
      else {
        expect(outcome.error, field).toMatchObject({
          code: Code.InvalidArgument,
          reason: "INVALID_ARGUMENT",
          metadata: { field },
        });
      }
      return outcome.ok ? outcome.value : undefined;
    };

    const created = await storedOrRefused(
      bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"], name: withNul }),
      "name",
      (response) => response.connection?.name,
    );
    await storedOrRefused(
      bff.createConnection({ destinationOrganizationId: other, scopes: ["account.read"], requestId: withNul }),
      "request_id",
      () => withNul,
    );
    await storedOrRefused(
      e2e.as("provisioning").createOrganization({ id: uniqueId("org_nul"), name: withNul }),
      "name",
      (response) => response.organization?.name,
    );
    const target =
      created?.connection ??
      present(
        (
          await e2e
            .as("dashboard-bff", destination)
            .createConnection({ destinationOrganizationId: source, scopes: ["account.read"] })
        ).connection,
      );
    const actingFor = target.sourceOrganizationId;
    const deactivated = await storedOrRefused(
      e2e.as("dashboard-bff", actingFor).deactivateConnection({ id: target.id, reason: withNul }),
      "reason",
      () => withNul,
    );
    if (deactivated !== undefined) {
      const events = await e2e.as("dashboard-bff", actingFor).listConnectionEvents({ connectionId: target.id });
      expect(events.events.at(-1)?.reason).toBe(withNul);
    }
    expect((await e2e.as("provisioning").getOrganization({ id: source })).organization?.id).toBe(source);
  });

  // Raw bytes need the raw gRPC client: once per database is enough.
  it.runIf(e2e.kind === "grpc-js")(
    "refuses bytes that are not a valid message with INVALID_ARGUMENT, not INTERNAL",
    async () => {
      const [org = ""] = await registerOrganizations(e2e.client(), 1);
      const raw = e2e.service().grpcJs();
      const error = await rpcError(
        raw.unary(
          "/connections.v1.OrganizationService/GetOrganization",
          (bytes: Buffer) => bytes,
          (bytes: Buffer) => bytes,
          // Field 1 (id) as a length-delimited string that claims more bytes than follow.
          Buffer.from([0x0a, 0x7f, 0x61]),
          { caller: "provisioning" },
        ),
      );
      expect(Code[error.code]).toBe(Code[Code.InvalidArgument]);
      const unknown = await rpcError(
        raw.unary(
          "/connections.v1.ConnectionService/NoSuchMethod",
          (bytes: Buffer) => bytes,
          (bytes: Buffer) => bytes,
          Buffer.alloc(0),
          { caller: "provisioning" },
        ),
      );
      expect(Code[unknown.code]).toBe(Code[Code.Unimplemented]);
      expect((await e2e.as("provisioning").getOrganization({ id: org })).organization?.id).toBe(org);
    },
  );
});
