// UpdateConnection (AIP-134): the source changes the name or the scopes named in update_mask.
// Narrowing applies at once in every state; widening sends an ACTIVE Connection back to PENDING for
// consent; a name alone never changes the state; an update that changes nothing records nothing.
// Every effective update is a TYPE_UPDATED event, and checks see it as soon as it has returned.

import { expect, it } from "vitest";
import { type Connection, Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action as Action,
  CheckConnectionResponse_Reason as Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { type ConnectionFixture, connectionFixture, eventCount, present, reread } from "../support/fixtures.js";
import { Code, describeE2E, expectInvalidArgument, expectRpcError, registerOrganizations } from "../support/service.js";

describeE2E("UpdateConnection", (e2e) => {
  const update = (
    organizationId: string,
    connection: { id: string; name?: string; scopes?: string[]; etag?: string },
    paths: string[],
  ) => e2e.as("api-gateway", organizationId).updateConnection({ connection, updateMask: { paths } });

  const events = async (fixture: ConnectionFixture) =>
    (
      await e2e
        .as("api-gateway", fixture.destination)
        .listConnectionEvents({ connectionId: fixture.connection.id, pageSize: 100 })
    ).events;

  const check = (fixture: ConnectionFixture, scope: string) =>
    e2e.as("token-service").checkConnection({
      connectionId: fixture.connection.id,
      organizationId: fixture.destination,
      action: Action.REDEEM_SHARE_TOKEN,
      scope,
    });

  it("narrows an ACTIVE connection at once, without asking for consent", async () => {
    const fixture = await connectionFixture(e2e.client(), {
      state: "ACTIVE",
      scopes: ["account.read", "transaction.read"],
    });
    expect((await check(fixture, "transaction.read")).allowed).toBe(true);
    const narrowed = present(
      (await update(fixture.source, { id: fixture.connection.id, scopes: ["account.read"] }, ["scopes"])).connection,
    );
    expect(narrowed).toMatchObject({ state: Connection_State.ACTIVE, scopes: ["account.read"] });
    expect(narrowed.etag).not.toBe(fixture.connection.etag);
    expect(await reread(e2e.client(), fixture)).toEqual(narrowed);
    expect(Reason[(await check(fixture, "transaction.read")).reason]).toBe("SCOPE_NOT_GRANTED");
    expect((await check(fixture, "account.read")).allowed).toBe(true);

    const last = (await events(fixture)).at(-1);
    expect(last).toMatchObject({
      type: ConnectionEvent_Type.UPDATED,
      fromState: Connection_State.ACTIVE,
      toState: Connection_State.ACTIVE,
      previousScopes: ["account.read", "transaction.read"],
      scopes: ["account.read"],
      sourceOrganizationId: fixture.source,
      destinationOrganizationId: fixture.destination,
      actorOrganizationId: fixture.source,
      caller: "api-gateway",
    });
  });

  it("sends an ACTIVE connection back to PENDING when it widens, until the destination consents again", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "ACTIVE", scopes: ["account.read"] });
    const widened = present(
      (
        await update(fixture.source, { id: fixture.connection.id, scopes: ["inquiry.read", "account.read"] }, [
          "scopes",
        ])
      ).connection,
    );
    expect(widened).toMatchObject({ state: Connection_State.PENDING, scopes: ["account.read", "inquiry.read"] });
    // Consent was given to the old set only: nothing may be shared until it is given again.
    for (const scope of ["account.read", "inquiry.read"]) {
      expect(Reason[(await check(fixture, scope)).reason]).toBe("NOT_ACTIVE");
    }
    expect((await events(fixture)).at(-1)).toMatchObject({
      type: ConnectionEvent_Type.UPDATED,
      fromState: Connection_State.ACTIVE,
      toState: Connection_State.PENDING,
      previousScopes: ["account.read"],
      scopes: ["account.read", "inquiry.read"],
    });
    await e2e.as("dashboard-bff", fixture.destination).activateConnection({ id: fixture.connection.id });
    expect((await check(fixture, "inquiry.read")).allowed).toBe(true);
  });

  it("keeps a PENDING or INACTIVE connection in its state whether it widens or narrows", async () => {
    for (const state of ["PENDING", "INACTIVE"] as const) {
      const fixture = await connectionFixture(e2e.client(), { state, scopes: ["account.read", "inquiry.read"] });
      const steps = [["verification.read", "account.read", "inquiry.read"], ["account.read"], ["transaction.read"]];
      let previous = fixture.connection.scopes;
      for (const scopes of steps) {
        const updated = present(
          (await update(fixture.source, { id: fixture.connection.id, scopes }, ["scopes"])).connection,
        );
        expect(updated).toMatchObject({ state: Connection_State[state], scopes: [...scopes].sort() });
        expect((await events(fixture)).at(-1)).toMatchObject({
          type: ConnectionEvent_Type.UPDATED,
          fromState: Connection_State[state],
          toState: Connection_State[state],
          previousScopes: previous,
          scopes: [...scopes].sort(),
        });
        previous = updated.scopes;
      }
    }
  });

  it("renames without changing the state, and ignores fields outside the mask", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "ACTIVE", scopes: ["account.read"] });
    const renamed = present(
      (await update(fixture.source, { id: fixture.connection.id, name: "Renamed", scopes: ["inquiry.read"] }, ["name"]))
        .connection,
    );
    expect(renamed).toMatchObject({ name: "Renamed", state: Connection_State.ACTIVE, scopes: ["account.read"] });
    expect((await events(fixture)).at(-1)).toMatchObject({
      type: ConnectionEvent_Type.UPDATED,
      fromState: Connection_State.ACTIVE,
      toState: Connection_State.ACTIVE,
      previousScopes: ["account.read"],
      scopes: ["account.read"],
    });
    // Both fields in one update.
    const both = present(
      (
        await update(
          fixture.source,
          { id: fixture.connection.id, name: "", scopes: ["account.read", "inquiry.read"] },
          ["name", "scopes"],
        )
      ).connection,
    );
    expect(both).toMatchObject({ name: "", state: Connection_State.PENDING, scopes: ["account.read", "inquiry.read"] });
  });

  it("records nothing and keeps the etag when the update changes nothing", async () => {
    const fixture = await connectionFixture(e2e.client(), {
      state: "ACTIVE",
      scopes: ["inquiry.read", "account.read"],
    });
    const before = await eventCount(e2e.client(), fixture);
    const same = present(
      (
        await update(
          fixture.source,
          {
            id: fixture.connection.id,
            name: fixture.connection.name,
            scopes: ["inquiry.read", "account.read", "inquiry.read"],
            etag: fixture.connection.etag,
          },
          ["name", "scopes"],
        )
      ).connection,
    );
    expect(same).toEqual(fixture.connection);
    expect(await eventCount(e2e.client(), fixture)).toBe(before);
  });

  it("honours the etag: the current one works, a stale one is ABORTED and changes nothing", async () => {
    const fixture = await connectionFixture(e2e.client(), { scopes: ["account.read"] });
    const first = present(
      (
        await update(fixture.source, { id: fixture.connection.id, name: "One", etag: fixture.connection.etag }, [
          "name",
        ])
      ).connection,
    );
    await expectRpcError(
      update(fixture.source, { id: fixture.connection.id, name: "Two", etag: fixture.connection.etag }, ["name"]),
      Code.Aborted,
      "ETAG_MISMATCH",
    );
    expect(await reread(e2e.client(), fixture)).toEqual(first);
  });

  it("lets only the source update: the destination is refused, a stranger told it does not exist", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "ACTIVE" });
    const [stranger = ""] = await registerOrganizations(e2e.client(), 1);
    const request = { id: fixture.connection.id, scopes: ["account.read"] };
    await expectRpcError(
      update(fixture.destination, request, ["scopes"]),
      Code.PermissionDenied,
      "ONLY_SOURCE_CAN_UPDATE",
    );
    await expectRpcError(update(stranger, request, ["scopes"]), Code.NotFound, "CONNECTION_NOT_FOUND");
    expect(await reread(e2e.client(), fixture)).toEqual(fixture.connection);
    expect(await eventCount(e2e.client(), fixture)).toBe(2);
  });

  it("refuses a bad mask or bad values, naming the field, and changes nothing", async () => {
    const fixture = await connectionFixture(e2e.client());
    const id = fixture.connection.id;
    await expectInvalidArgument(update(fixture.source, { id, name: "x" }, []), "update_mask");
    await expectInvalidArgument(update(fixture.source, { id, name: "x" }, ["state"]), "update_mask");
    await expectInvalidArgument(update(fixture.source, { id, name: "x" }, ["*"]), "update_mask");
    await expectInvalidArgument(update(fixture.source, { id, scopes: [] }, ["scopes"]), "connection.scopes");
    await expectRpcError(
      update(fixture.source, { id, scopes: ["account.write"] }, ["scopes"]),
      Code.InvalidArgument,
      "UNKNOWN_SCOPE",
      { field: "connection.scopes", scope: "account.write" },
    );
    await expectInvalidArgument(update(fixture.source, { id, name: "n".repeat(201) }, ["name"]), "connection.name");
    await expectInvalidArgument(update(fixture.source, { id: "nope", name: "x" }, ["name"]), "connection.id");
    await expectInvalidArgument(
      e2e.as("api-gateway", fixture.source).updateConnection({ updateMask: { paths: ["name"] } }),
      "connection",
    );
    expect(await reread(e2e.client(), fixture)).toEqual(fixture.connection);
  });

  it("puts the parties and the scopes after it on every event", async () => {
    const fixture = await connectionFixture(e2e.client(), { state: "INACTIVE", scopes: ["account.read"] });
    await e2e.as("api-gateway", fixture.source).reactivateConnection({ id: fixture.connection.id });
    await update(fixture.source, { id: fixture.connection.id, scopes: ["verification.read"] }, ["scopes"]);
    const all = await events(fixture);
    expect(all.map((event) => [ConnectionEvent_Type[event.type], event.scopes, event.previousScopes])).toEqual([
      ["CREATED", ["account.read"], []],
      ["DEACTIVATED", ["account.read"], []],
      ["REACTIVATED", ["account.read"], []],
      ["UPDATED", ["verification.read"], ["account.read"]],
    ]);
    for (const event of all) {
      expect(event).toMatchObject({
        sourceOrganizationId: fixture.source,
        destinationOrganizationId: fixture.destination,
      });
    }
  });

  it("never lets a check allow a removed scope once the update has returned, under concurrent checks", async () => {
    const fixture = await connectionFixture(e2e.client(), {
      state: "ACTIVE",
      scopes: ["account.read", "transaction.read"],
    });
    const id = fixture.connection.id;
    const single = () => check(fixture, "transaction.read");
    const batch = () =>
      e2e.as("token-service").batchCheckConnection({
        checks: Array.from({ length: 10 }, () => ({
          connectionId: id,
          organizationId: fixture.source,
          action: Action.ISSUE_SHARE_TOKEN,
          scope: "transaction.read",
        })),
      });
    let current: Connection = fixture.connection;
    for (let round = 0; round < 6; round++) {
      // Checks in flight while the scope is removed: they may see either side of it...
      const racing = Promise.all([single(), batch(), single()]);
      current = present((await update(fixture.source, { id, scopes: ["account.read"] }, ["scopes"])).connection);
      await racing;
      // ...but every check that starts after the update returned must deny it.
      const [one, many] = await Promise.all([single(), batch()]);
      expect(Reason[one.reason]).toBe("SCOPE_NOT_GRANTED");
      for (const result of many.results) expect(Reason[result.reason]).toBe("SCOPE_NOT_GRANTED");
      expect(one.connection?.etag).toBe(current.etag);
      // Give it back (widening: PENDING), and consent again.
      await update(fixture.source, { id, scopes: ["account.read", "transaction.read"] }, ["scopes"]);
      await e2e.as("dashboard-bff", fixture.destination).activateConnection({ id });
      expect((await single()).allowed).toBe(true);
    }
  });
});
