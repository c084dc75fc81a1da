// Every write is safe to retry (docs/API.md, "Idempotency"): ActivateConnection,
// DeactivateConnection, ReactivateConnection, UpdateConnection and CreateOrganization replay the
// first call's answer for a retry with the same request_id — the response as it was then, or its
// final error — record no event and change nothing; a key reused for another request is refused
// before any other rule; concurrent calls with one key write once.

import { expect, it } from "vitest";
import { Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import { connectionFixture, eventCount, present, reread } from "../support/fixtures.js";
import {
  Code,
  describeE2E,
  expectInvalidArgument,
  expectRpcError,
  registerOrganizations,
  uniqueId,
} from "../support/service.js";

describeE2E("idempotent writes", (e2e) => {
  it("replays an activation as it was answered, after later changes, with no new event", async () => {
    const fixture = await connectionFixture(e2e.client());
    const destination = e2e.as("dashboard-bff", fixture.destination);
    const request = { id: fixture.connection.id, requestId: uniqueId("rid") };
    const first = present((await destination.activateConnection(request)).connection);
    expect(first.state).toBe(Connection_State.ACTIVE);
    await e2e.as("api-gateway", fixture.source).deactivateConnection({ id: first.id, reason: "later" });
    const events = await eventCount(e2e.client(), fixture);

    expect((await destination.activateConnection(request)).connection).toEqual(first);
    expect(await eventCount(e2e.client(), fixture)).toBe(events);
    expect((await reread(e2e.client(), fixture)).state).toBe(Connection_State.INACTIVE);
  });

  it("answers a retried deactivation that already worked with its success, not FAILED_PRECONDITION", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "ACTIVE" });
    const gateway = e2e.as("api-gateway", fixture.destination);
    const request = {
      id: fixture.connection.id,
      reason: "revoked",
      etag: fixture.connection.etag,
      requestId: uniqueId("rid"),
    };
    const first = present((await gateway.deactivateConnection(request)).connection);
    // Through another caller of the same organization too: the key belongs to the organization.
    expect((await e2e.as("dashboard-bff", fixture.destination).deactivateConnection(request)).connection).toEqual(
      first,
    );
    expect((await gateway.deactivateConnection(request)).connection).toEqual(first);
    // Without the key, the same request is a new call: the state no longer allows it.
    await expectRpcError(
      gateway.deactivateConnection({ id: fixture.connection.id, reason: "revoked" }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_INACTIVE" },
    );
    const events = await e2e.as("dashboard-bff", fixture.source).listConnectionEvents({ connectionId: first.id });
    expect(events.events.map((event) => ConnectionEvent_Type[event.type])).toEqual([
      "CREATED",
      "ACTIVATED",
      "DEACTIVATED",
    ]);
    expect(events.events.at(-1)?.requestId).not.toBe("");
  });

  it("replays a reactivation, and an update, each as it was then", async () => {
    const fixture = await connectionFixture(e2e.client(), {
      state: "INACTIVE",
      scopes: ["account.read", "inquiry.read"],
    });
    const source = e2e.as("dashboard-bff", fixture.source);
    const reactivate = { id: fixture.connection.id, requestId: uniqueId("rid") };
    const reactivated = present((await source.reactivateConnection(reactivate)).connection);
    expect(reactivated.state).toBe(Connection_State.PENDING);

    const update = {
      connection: { id: fixture.connection.id, scopes: ["account.read"], name: "Narrowed" },
      updateMask: { paths: ["scopes", "name"] },
      requestId: uniqueId("rid"),
    };
    const updated = present((await source.updateConnection(update)).connection);
    expect(updated.scopes).toEqual(["account.read"]);
    // Widening afterwards (another key), then replaying both earlier calls.
    await source.updateConnection({
      connection: { id: fixture.connection.id, scopes: ["account.read", "transaction.read"] },
      updateMask: { paths: ["scopes"] },
    });
    const events = await eventCount(e2e.client(), fixture);
    expect((await source.reactivateConnection(reactivate)).connection).toEqual(reactivated);
    // The mask lists its paths as a set: another order is the same request.
    const reordered = { ...update, updateMask: { paths: ["name", "scopes"] } };
    expect((await source.updateConnection(reordered)).connection).toEqual(updated);
    expect(await eventCount(e2e.client(), fixture)).toBe(events);
    expect((await reread(e2e.client(), fixture)).scopes).toEqual(["account.read", "transaction.read"]);
  });

  it("replays an update that changed nothing as the Connection it answered then", async () => {
    const fixture = await connectionFixture(e2e.client());
    const source = e2e.as("dashboard-bff", fixture.source);
    const unchanged = {
      connection: { id: fixture.connection.id, name: fixture.connection.name },
      updateMask: { paths: ["name"] },
      requestId: uniqueId("rid"),
    };
    const first = present((await source.updateConnection(unchanged)).connection);
    expect(first).toEqual(fixture.connection);
    await source.updateConnection({ connection: { id: first.id, name: "Renamed" }, updateMask: { paths: ["name"] } });
    expect((await source.updateConnection(unchanged)).connection).toEqual(first);
  });

  it("replays a final error with its code, reason and metadata, and runs a retryable one again", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "INACTIVE" });
    const source = e2e.as("dashboard-bff", fixture.source);
    const deactivate = { id: fixture.connection.id, requestId: uniqueId("rid") };
    const refused = await expectRpcError(
      source.deactivateConnection(deactivate),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_INACTIVE" },
    );
    await source.reactivateConnection({ id: fixture.connection.id });
    // Now PENDING, so a new call would succeed: the retry answers what the first call answered.
    const replayed = await expectRpcError(
      source.deactivateConnection(deactivate),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_INACTIVE" },
    );
    expect(replayed.rawMessage).toBe(refused.rawMessage);
    expect((await reread(e2e.client(), fixture)).state).toBe(Connection_State.PENDING);

    // A stale etag (ABORTED) says "read again and retry": it is not remembered.
    const stale = { id: fixture.connection.id, etag: fixture.connection.etag, requestId: uniqueId("rid") };
    await expectRpcError(source.deactivateConnection(stale), Code.Aborted, "ETAG_MISMATCH");
    await expectRpcError(source.deactivateConnection(stale), Code.Aborted, "ETAG_MISMATCH");
    // PERMISSION_DENIED is final: the destination may not reactivate, and its retry says so again.
    const forbidden = { id: fixture.connection.id, requestId: uniqueId("rid") };
    const destination = e2e.as("dashboard-bff", fixture.destination);
    await destination.deactivateConnection({ id: fixture.connection.id });
    await expectRpcError(
      destination.reactivateConnection(forbidden),
      Code.PermissionDenied,
      "ONLY_SOURCE_CAN_REACTIVATE",
    );
    await expectRpcError(
      destination.reactivateConnection(forbidden),
      Code.PermissionDenied,
      "ONLY_SOURCE_CAN_REACTIVATE",
    );
  });

  it("refuses a key reused with another RPC or other parameters, before any other rule", async () => {
    const fixture = await connectionFixture(e2e.client());
    const source = e2e.as("dashboard-bff", fixture.source);
    const requestId = uniqueId("rid");
    await source.deactivateConnection({ id: fixture.connection.id, reason: "first", requestId });
    const reused = { field: "request_id" };
    await expectRpcError(
      source.deactivateConnection({ id: fixture.connection.id, reason: "second", requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
      reused,
    );
    await expectRpcError(
      source.reactivateConnection({ id: fixture.connection.id, requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
      reused,
    );
    // Parameters that would be refused on their own: the reuse is what the caller must hear.
    await expectRpcError(
      source.createConnection({ destinationOrganizationId: fixture.destination, scopes: ["bogus.read"], requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
      reused,
    );
    await expectRpcError(
      source.updateConnection({ connection: { id: "not-an-id" }, updateMask: { paths: ["name"] }, requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
      reused,
    );
  });

  it("refuses an over-long or non-printable request_id, naming the field", async () => {
    const fixture = await connectionFixture(e2e.client());
    const source = e2e.as("dashboard-bff", fixture.source);
    for (const requestId of ["r".repeat(129), "tab\there", "caf\u00e9", "line\nbreak"]) {
      await expectInvalidArgument(source.deactivateConnection({ id: fixture.connection.id, requestId }), "request_id");
      await expectInvalidArgument(
        e2e.as("provisioning").createOrganization({ name: "Bad key", requestId }),
        "request_id",
      );
    }
    // 128 printable characters, spaces and punctuation included, are a key.
    const longest = `${"k".repeat(120)} !~"{}#$`.slice(0, 128);
    const first = present(
      (await source.deactivateConnection({ id: fixture.connection.id, requestId: longest })).connection,
    );
    expect((await source.deactivateConnection({ id: fixture.connection.id, requestId: longest })).connection).toEqual(
      first,
    );
  });

  it("registers an organization once per provisioning key, generated id included", async () => {
    const provisioning = e2e.as("provisioning");
    const request = { name: "Generated", requestId: uniqueId("rid") };
    const first = present((await provisioning.createOrganization(request)).organization, "organization");
    expect(first.id).toMatch(/^org_/);
    expect((await provisioning.createOrganization(request)).organization).toEqual(first);
    await expectRpcError(
      provisioning.createOrganization({ ...request, name: "Other name" }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
      { field: "request_id" },
    );
    // A duplicate id is a final error: remembered with its key.
    const taken = { id: first.id, name: "Generated", requestId: uniqueId("rid") };
    await expectRpcError(provisioning.createOrganization(taken), Code.AlreadyExists, "ORGANIZATION_ALREADY_EXISTS");
    await expectRpcError(provisioning.createOrganization(taken), Code.AlreadyExists, "ORGANIZATION_ALREADY_EXISTS");
  });

  it("writes once when 50 calls with one key race, for every write RPC", async () => {
    const fixture = await connectionFixture(e2e.client());
    const source = e2e.as("dashboard-bff", fixture.source);
    const destination = e2e.as("dashboard-bff", fixture.destination);
    const race = async <T>(call: () => Promise<T>): Promise<T[]> => {
      const results = await Promise.allSettled(Array.from({ length: 50 }, call));
      const failures = results.flatMap((result) => (result.status === "rejected" ? [result.reason as unknown] : []));
      // The only other answer the contract allows is "in progress, retry".
      for (const failure of failures)
        expect(failure).toMatchObject({ code: Code.Aborted, reason: "REQUEST_IN_PROGRESS" });
      const answers = results.flatMap((result) => (result.status === "fulfilled" ? [result.value] : []));
      expect(answers.length).toBeGreaterThan(0);
      for (const answer of answers) expect(answer).toEqual(answers[0]);
      return answers;
    };
    const id = fixture.connection.id;
    await race(() => destination.activateConnection({ id, requestId: "race-activate" }));
    await race(() =>
      source.updateConnection({
        connection: { id, scopes: ["account.read"] },
        updateMask: { paths: ["scopes"] },
        requestId: "race-update",
      }),
    );
    await race(() => source.deactivateConnection({ id, requestId: "race-deactivate" }));
    await race(() => source.reactivateConnection({ id, requestId: "race-reactivate" }));
    const events = await source.listConnectionEvents({ connectionId: id });
    expect(events.events.map((event) => ConnectionEvent_Type[event.type])).toEqual([
      "CREATED",
      "ACTIVATED",
      "UPDATED",
      "DEACTIVATED",
      "REACTIVATED",
    ]);

    const registration = { name: "Raced", requestId: uniqueId("rid") };
    const [organization] = await race(() => e2e.as("provisioning").createOrganization(registration));
    expect(organization?.organization?.id).toMatch(/^org_/);
    const [, other = ""] = await registerOrganizations(e2e.client(), 2, "org_race");
    const created = await race(() =>
      source.createConnection({ destinationOrganizationId: other, scopes: ["account.read"], requestId: "race-create" }),
    );
    expect(created[0]?.connection?.sourceOrganizationId).toBe(fixture.source);
  });
});
